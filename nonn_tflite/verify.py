"""Verification of a converted run: what the int8 system computes, and whether it fits.

* :func:`evaluate`: float (Keras) against int8 (LiteRT builtin kernels, as the live nodes run
  them, and XNNPACK) accuracy on the test split, and per-student feature agreement.
* :func:`profile_all`: flash, arena, latency and TFLM parity of every file
  (:mod:`nonn_tflite.profile`); :func:`nonn_tflite.parity.check_parity` is the gate on it.
* :func:`tflm_exact_accuracy`: the system accuracy TFLM devices compute (report.json's
  ``system.accuracy_int8``).
* :func:`board_fit`: flash and 32-bit arena against a board. The arena is
  ``arena_bytes_32bit``: the graph estimate + 2 % (:mod:`nonn_tflite.arena_model`), the figure
  the student sizer checked the budget with; ``nonn-tflite measure`` later checks the fit again
  with the QEMU-measured arena (nonn_tflite/measure.py), which the estimate bounds from above.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nonn_tflite.data import Dataset, to_float
from nonn_tflite.int8 import dequantize, images_to_int8, requantise
from nonn_tflite.interpreters import Int8Runner
from nonn_tflite.profile import ModelProfile, profile_model, qparams
from nonn_tflite.tflite_model import parse_tflite

if TYPE_CHECKING:  # the orchestrator's containers; verify is imported by convert, not the reverse
    from nonn_tflite.convert import ConvertOptions, Converted, KerasSystem

log = logging.getLogger("nonn_tflite")


@dataclass
class Evaluation:
    """Accuracy of the float and int8 systems on the test split, and per-student agreement."""

    accuracy_float: float
    accuracy_int8: float
    teacher_float: float
    teacher_int8: float
    features: list[dict]
    test_images: int
    fusion_inputs: np.ndarray = field(repr=False)  # int8 fusion inputs of the test images
    accuracy_int8_builtin: float = float("nan")  # LiteRT builtin kernels (the live nodes)
    accuracy_int8_xnnpack: float = float("nan")  # LiteRT default delegate (XNNPACK)
    int8_runtimes: dict = field(default_factory=dict)  # model -> runtime of the TFLM-exact figure


def predict(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Eager batched calls: ``model.predict`` retraces (and warns) for every new model."""
    if len(x) == 0:
        return np.zeros((0, *model.outputs[0].shape[1:]), np.float32)
    with warnings.catch_warnings():  # a model saved with inputs=[x] warns about a bare tensor
        warnings.filterwarnings("ignore", "The structure of `inputs` doesn't match")
        return np.concatenate([np.asarray(model(x[i:i + batch], training=False), dtype=np.float32)
                               for i in range(0, len(x), batch)])


# -- verification -------------------------------------------------------------------------------

def evaluate(system: KerasSystem, conv: Converted, ds: Dataset) -> Evaluation:
    """Float (Keras) vs int8 (separate LiteRT models, requantised as the fusion node does)."""
    xf = to_float(ds.x_test)
    float_vecs = [predict(m, xf) for m in system.students]
    acc_float = _accuracy(predict(system.fusion, np.concatenate(float_vecs, axis=1)), ds.y_test)
    fusion_in = qparams(parse_tflite(conv.fusion).input_tensors()[0])
    slices, features = [], []
    for k, buf in enumerate(conv.students):
        q_k, out_q = _run_student(buf, ds.x_test)
        slices.append(requantise(q_k, out_q, fusion_in))
        features.append({"id": k, **feature_agreement(float_vecs[k], q_k, out_q)})
    fusion_inputs = np.concatenate(slices, axis=1)
    acc_int8 = _accuracy(Int8Runner(conv.fusion)(fusion_inputs), ds.y_test)
    teacher_q, _ = _run_student(conv.teacher, ds.x_test)
    return Evaluation(acc_float, acc_int8, _accuracy(predict(system.teacher, xf), ds.y_test),
                      _accuracy(teacher_q, ds.y_test), features, len(ds.y_test), fusion_inputs,
                      accuracy_int8_builtin=acc_int8,
                      accuracy_int8_xnnpack=system_accuracy(conv, ds, lambda name, b: Int8Runner(b, "default")))


def system_accuracy(conv: Converted, ds: Dataset, runner) -> float:
    """int8 system accuracy on the test split, each model run by ``runner(name, bytes)``
    (a callable over a batch of int8 inputs), students requantised as the fusion node does."""
    fusion_in = qparams(parse_tflite(conv.fusion).input_tensors()[0])
    slices = []
    for k, buf in enumerate(conv.students):
        m = parse_tflite(buf)
        q_k = runner(f"student_{k}.tflite", buf)(images_to_int8(ds.x_test, qparams(m.input_tensors()[0])))
        slices.append(requantise(q_k, qparams(m.output_tensors()[0]), fusion_in))
    return _accuracy(runner("fusion.tflite", conv.fusion)(np.concatenate(slices, axis=1)), ds.y_test)


def tflm_exact_accuracy(conv: Converted, ds: Dataset, profiles: dict[str, ModelProfile],
                        ev: Evaluation) -> None:
    """The system accuracy a set of TFLM devices computes, into ``ev.accuracy_int8``.

    A model with an op whose kernels round differently in LiteRT and TFLM
    (:data:`nonn_tflite.parity.ROUNDING_OPS`) runs on TFLite Micro itself; every other model on
    LiteRT's reference kernels, which the parity gate has just shown bit-exact with TFLM.
    """
    from nonn_tflite.interpreters import MicroRunner
    from nonn_tflite.parity import ROUNDING_OPS

    def runner(name: str, buf: bytes):
        if ROUNDING_OPS & set(parse_tflite(buf).op_names):
            ev.int8_runtimes[name] = "TFLite Micro"
            return MicroRunner(buf, profiles[name].arena_bytes)
        ev.int8_runtimes[name] = "LiteRT BUILTIN_REF (bit-exact with TFLM: parity gate)"
        return Int8Runner(buf, "reference")

    ev.accuracy_int8 = system_accuracy(conv, ds, runner)


def _run_student(buf: bytes, x_uint8: np.ndarray) -> tuple[np.ndarray, tuple[float, int]]:
    """int8 outputs of an image model over uint8 images, and its output (scale, zero point)."""
    m = parse_tflite(buf)
    x = images_to_int8(x_uint8, qparams(m.input_tensors()[0]))
    return Int8Runner(buf)(x), qparams(m.output_tensors()[0])


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y)) if len(y) else float("nan")


def feature_agreement(float_vec: np.ndarray, q: np.ndarray, out_q: tuple[float, int]) -> dict:
    """Max |float - int8| in LSB of the output scale, and cosine similarity per image.

    Values the int8 model saturated (127: the float value exceeds the calibrated range) are
    counted apart: their error measures calibration coverage, not rounding.
    """
    deq = dequantize(q, out_q)
    f = np.asarray(float_vec, np.float64)
    num = (f * deq).sum(axis=1)
    nf, nd = np.linalg.norm(f, axis=1), np.linalg.norm(deq, axis=1)
    cos = np.where((nf == 0) & (nd == 0), 1.0, num / np.where(nf * nd == 0, 1.0, nf * nd))
    lsb = np.abs(f - deq) / out_q[0]
    saturated = np.asarray(q) == 127
    return {"max_abs_diff_lsb": float(lsb.max()) if lsb.size else 0.0,
            "max_abs_diff_lsb_unsaturated": float(lsb[~saturated].max()) if (~saturated).any() else 0.0,
            "saturated_fraction": float(saturated.mean()) if saturated.size else 0.0,
            "cosine_mean": float(cos.mean()) if cos.size else float("nan"),
            "cosine_min": float(cos.min()) if cos.size else float("nan")}


# -- measurement and fit ------------------------------------------------------------------------

def profile_all(tdir: Path, conv: Converted, ds: Dataset, ev: Evaluation,
                opts: ConvertOptions) -> dict[str, ModelProfile]:
    """ModelProfile per file, parity on the first ``parity_samples`` test images."""
    n = min(opts.parity_samples, len(ds.y_test))
    out = {}
    for name, buf in conv.files().items():
        m = parse_tflite(buf, name)
        if name == "fusion.tflite":
            inputs = ev.fusion_inputs[:n]
        else:
            inputs = images_to_int8(ds.x_test[:n], qparams(m.input_tensors()[0]))
        log.info("profiling %s", name)
        out[name] = profile_model(tdir / name, latency_runs=opts.latency_runs, parity_inputs=inputs)
    return out


def board_fit(profile: ModelProfile, board, what: str) -> dict:
    """Fit of one model on its board (flash, ``arena_bytes_32bit``); ``problem`` names the
    numbers when it does not fit."""
    if board is None:
        return {"board": None, "fits": None, "problem": None}
    over = []
    if profile.flash_bytes > board.model_flash_bytes:
        over.append(f"flash {profile.flash_bytes:,} B > {board.model_flash_bytes:,} B left for the model")
    if profile.arena_bytes_32bit > board.model_ram_bytes:
        est = profile.arena_bytes_32bit_estimate
        basis = f"32-bit estimate {est:,} B + margin" if est else "32-bit + margin"
        over.append(f"arena {profile.arena_bytes_32bit:,} B ({basis}) > "
                    f"{board.model_ram_bytes:,} B of RAM left for the arena")
    return {"board": board.name, "fits": not over,
            "board_model_flash_bytes": board.model_flash_bytes,
            "board_model_ram_bytes": board.model_ram_bytes,
            "problem": f"{what} does not fit {board.name}: {'; '.join(over)}" if over else None}
