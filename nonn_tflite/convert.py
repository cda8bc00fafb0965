"""The ``convert`` stage: a distilled run -> int8 .tflite files, verification, measurements, report.

Everything happens inside ``run.stage("convert")``: a failure (conversion, TFLM check) leaves
the run as it was. Board misfit is different: the models and report are still written (the
numbers are what a user needs to resize), then :class:`BoardFitError` is raised.

Fusion requantisation: each student's int8 vector has its own scale. The fusion model is
calibrated on the float concatenation of the students' float vectors over the calibration
images, which fixes one fusion input scale ``s_f``/``zp_f``; the fusion node maps student
``k``'s slice with ``q_f = clip(round((q_k - zp_k) * s_k / s_f) + zp_f, -128, 127)`` (round
half away from zero, as C's ``round``). The int8 system accuracy here is computed exactly so.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nonn_tflite.data import Dataset, to_float
from nonn_tflite.energy import energy_section
from nonn_tflite.errors import BoardFitError, ConversionError, RunDirError, UsageError
from nonn_tflite.profile import (
    ARENA_NOTE,
    DEFAULT_LATENCY_RUNS,
    WIRE_HEADER_BYTES,
    Int8Runner,
    ModelProfile,
    profile_model,
    qparams,
)
from nonn_tflite.int8 import dequantize, images_to_int8, requantise
from nonn_tflite.quantize import (
    calibration_indices,
    captured_output,
    check_tflm,
    convert_int8,
    indices_digest,
    keras_layer_names,
    write_model,
)
from nonn_tflite.parity import check_parity, parity_summary
from nonn_tflite.rundir import RunDir, atomic_write_bytes, write_json
from nonn_tflite.tflite_model import parse_tflite

log = logging.getLogger("nonn_tflite")

TEST_SAMPLE_MAX = 2000


@dataclass
class ConvertOptions:
    """Settings of the convert stage (recorded in the manifest's config["convert"])."""

    calibration: int = 500  # training images used to calibrate int8 ranges
    seed: int = 0  # picks the calibration images
    boards: list[str] | None = None  # None: the boards the distill stage used; []: skip fit
    latency_runs: int = DEFAULT_LATENCY_RUNS  # >= 200 for reported figures; tests use fewer
    parity_samples: int = 32  # test images run through TFLM and LiteRT(reference)
    force: bool = False


@dataclass
class KerasSystem:
    """The float models of a distilled run; students already cut to image -> vector."""

    teacher: object
    students: list
    fusion: object

    @property
    def widths(self) -> list[int]:
        return [int(s.outputs[0].shape[-1]) for s in self.students]


@dataclass
class Converted:
    """The int8 flatbuffers of one run, in memory."""

    students: list[bytes]
    fusion: bytes
    teacher: bytes

    def files(self) -> dict[str, bytes]:
        out = {f"student_{k}.tflite": b for k, b in enumerate(self.students)}
        out.update({"fusion.tflite": self.fusion, "teacher.tflite": self.teacher})
        return out


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


@dataclass
class ConvertResult:
    """What ``convert_run`` produced; ``report`` is report.json's content."""

    run_dir: Path
    tflite_dir: Path
    report: dict
    misfits: list[str]


# -- loading ------------------------------------------------------------------------------------

def load_keras_system(run: RunDir) -> KerasSystem:
    """teacher.keras, student_<k>.keras (k = 0, 1, ...) and fusion.keras of a distilled run."""
    from nonn_tflite.teacher import load_keras_model

    files = sorted(run.path.glob("student_*.keras"), key=lambda p: _index(p.stem))
    if not files:
        raise ConversionError(f"{run.path} has no student_<k>.keras files; rerun distill")
    students = [_vector_model(load_keras_model(f, f"student {_index(f.stem)}")) for f in files]
    system = KerasSystem(load_keras_model(run.file("teacher.keras"), "teacher"), students,
                         load_keras_model(run.file("fusion.keras"), "fusion"))
    width = int(system.fusion.inputs[0].shape[-1]) if len(system.fusion.inputs) == 1 else -1
    if width != sum(system.widths):
        raise ConversionError(f"fusion.keras takes {width} features but the students give "
                              f"{system.widths} (sum {sum(system.widths)}); the run is inconsistent")
    return system


def _index(stem: str) -> int:
    try:
        return int(stem.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        raise ConversionError(f"unexpected model file name {stem}.keras; "
                              "expected student_<k>.keras") from None


def _vector_model(model):
    """The image -> pooled-vector part (a student saved with its attention map too)."""
    if len(model.outputs) == 1:
        return model
    vectors = [o for o in model.outputs if len(o.shape) == 2]
    if len(vectors) != 1:
        raise ConversionError(f"student {model.name} has {len(model.outputs)} outputs and no "
                              "single pooled vector output")
    import keras

    return keras.Model(model.inputs, vectors[0], name=model.name)


def _partitions(run: RunDir, count: int) -> list[list[int] | None]:
    path = run.file("partition.json")
    try:
        parts = json.loads(path.read_text())["partitions"]
    except (OSError, ValueError, KeyError):
        log.warning("no readable partition.json in %s; student filters left empty", run.path)
        return [None] * count
    return [list(map(int, p)) for p in parts] + [None] * (count - len(parts))


def resolve_boards(requested: list[str] | None, run: RunDir, count: int) -> list:
    """One Board (or None: skip the fit) per student: --board, else the distill stage's boards."""
    from nonn_tflite.boards import get_board

    names = requested if requested is not None else \
        run.config("distill").get("budget", {}).get("boards", []) or []
    names = [n for n in names if n]
    if not names:
        return [None] * count
    if len(names) not in (1, count):
        raise UsageError(f"{len(names)} boards given for {count} students; give one board for all "
                         "or exactly one per student")
    return [get_board(names[k if len(names) > 1 else 0]) for k in range(count)]


# -- conversion ---------------------------------------------------------------------------------

def convert_system(system: KerasSystem, calib_uint8: np.ndarray) -> Converted:
    """int8 students, fusion (calibrated on the students' float vectors) and teacher, each
    checked for TFLite Micro before anything is written."""
    xf = to_float(calib_uint8)
    students = [_convert_checked(m, xf, f"student_{k}.tflite") for k, m in enumerate(system.students)]
    vectors = np.concatenate([_predict(m, xf) for m in system.students], axis=1)
    fusion = _convert_checked(system.fusion, vectors, "fusion.tflite")
    teacher = _convert_checked(system.teacher, xf, "teacher.tflite")
    return Converted(students, fusion, teacher)


def _convert_checked(model, samples: np.ndarray, name: str) -> bytes:
    log.info("converting %s (%d calibration inputs)", name, len(samples))
    data = convert_int8(model, samples)
    check_tflm(parse_tflite(data, name), name, keras_layer_names(model))
    return data


def _predict(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
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
    float_vecs = [_predict(m, xf) for m in system.students]
    acc_float = _accuracy(_predict(system.fusion, np.concatenate(float_vecs, axis=1)), ds.y_test)
    fusion_in = qparams(parse_tflite(conv.fusion).input_tensors()[0])
    slices, features = [], []
    for k, buf in enumerate(conv.students):
        q_k, out_q = _run_student(buf, ds.x_test)
        slices.append(requantise(q_k, out_q, fusion_in))
        features.append({"id": k, **feature_agreement(float_vecs[k], q_k, out_q)})
    fusion_inputs = np.concatenate(slices, axis=1)
    acc_int8 = _accuracy(Int8Runner(conv.fusion)(fusion_inputs), ds.y_test)
    teacher_q, _ = _run_student(conv.teacher, ds.x_test)
    return Evaluation(acc_float, acc_int8, _accuracy(_predict(system.teacher, xf), ds.y_test),
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
    """Fit of one model on its board; ``problem`` names the numbers when it does not fit."""
    if board is None:
        return {"board": None, "fits": None, "problem": None}
    over = []
    if profile.flash_bytes > board.model_flash_bytes:
        over.append(f"flash {profile.flash_bytes:,} B > {board.model_flash_bytes:,} B left for the model")
    if profile.arena_bytes_32bit > board.model_ram_bytes:
        over.append(f"arena {profile.arena_bytes_32bit:,} B (host {profile.arena_bytes:,} B + 32-bit "
                    f"margin) > {board.model_ram_bytes:,} B of RAM left for the arena")
    return {"board": board.name, "fits": not over,
            "board_model_flash_bytes": board.model_flash_bytes,
            "board_model_ram_bytes": board.model_ram_bytes,
            "problem": f"{what} does not fit {board.name}: {'; '.join(over)}" if over else None}


# -- report and deployment ------------------------------------------------------------------------

def _model_entry(p: ModelProfile, acc_float: float | None, acc_int8: float | None) -> dict:
    d = p.as_dict()
    d.update(accuracy_float=acc_float, accuracy_int8=acc_int8)
    return d


def build_report(run: RunDir, ds: Dataset, system: KerasSystem, profiles: dict[str, ModelProfile],
                 ev: Evaluation, fits: list[dict], parts: list, calib: dict) -> dict:
    """report.json: one entry per model (M), the system accuracies and teacher/student ratios."""
    students = []
    for k, width in enumerate(system.widths):
        entry = _model_entry(profiles[f"student_{k}.tflite"], None, None)
        entry.update(id=k, filters=parts[k], width=width, payload_bytes=width + WIRE_HEADER_BYTES,
                     feature_agreement=ev.features[k], **fits[k])
        students.append(entry)
    teacher = _model_entry(profiles["teacher.tflite"], ev.teacher_float, ev.teacher_int8)
    fusion = _model_entry(profiles["fusion.tflite"], ev.accuracy_float, ev.accuracy_int8)
    fusion["payload_bytes"] = fusion["output"]["shape"][-1] + WIRE_HEADER_BYTES  # prediction
    return {
        "schema": 1,
        "deployment": run.manifest.get("name", run.path.name),
        "dataset": {"name": ds.name, "sha256": ds.sha256, "test_images": ev.test_images},
        "teacher": teacher, "fusion": fusion, "students": students,
        "system": {"accuracy_float": ev.accuracy_float, "accuracy_int8": ev.accuracy_int8,
                   "accuracy_drop_points": 100 * (ev.accuracy_float - ev.accuracy_int8),
                   "num_students": len(students), "teacher_accuracy_float": ev.teacher_float,
                   "teacher_accuracy_int8": ev.teacher_int8,
                   "int8_runtime": "TFLM-exact: models with FULLY_CONNECTED run on TFLite Micro "
                                   "itself, the others on LiteRT reference kernels (bit-exact "
                                   "with TFLM, checked by the parity gate); see int8_runtimes",
                   "int8_runtimes": ev.int8_runtimes,
                   "accuracy_int8_litert_builtin": ev.accuracy_int8_builtin,
                   "accuracy_int8_litert_xnnpack": ev.accuracy_int8_xnnpack,
                   "accuracy_int8_note": "accuracy_int8 is what TFLM devices compute (reports "
                                         "without this note gave the LiteRT builtin figure "
                                         "there, now accuracy_int8_litert_builtin: what the "
                                         "Python live nodes run); accuracy_int8_litert_xnnpack "
                                         "uses LiteRT's default XNNPACK delegate"},
        "parity": parity_summary({name: profiles[name].parity for name in profiles}),
        "ratios": ratios(teacher, students),
        "calibration": calib,
        "notes": {"arena": ARENA_NOTE,
                  "latency": "LiteRT on this host, 1 thread, single-image invokes; latency_ms is "
                             "the median with reference kernels (BUILTIN_REF); latency.default "
                             "uses the default delegate (XNNPACK). Ranks models; not MCU time.",
                  "macs": "multiply-accumulates of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED "
                          "(TRANSPOSE_CONV, BATCH_MATMUL); element-wise/pool/mean work is "
                          "elementwise_ops",
                  "payload": f"int8 vector + {WIRE_HEADER_BYTES}-byte wire header",
                  "fusion_input": "requantise"},
    }


def ratios(teacher: dict, students: list[dict]) -> dict:
    """Teacher / largest student, per measure."""
    out = {}
    for key, field_ in (("flash", "flash_bytes"), ("arena", "arena_bytes"),
                        ("latency", "latency_ms"), ("macs", "macs"), ("params", "params")):
        biggest = max((s[field_] or 0 for s in students), default=0)
        out[key] = (teacher[field_] / biggest) if biggest and teacher[field_] is not None else None
    return out


def deployment_doc(report: dict, ds: Dataset) -> dict:
    """tflite/deployment.json: the contract the live nodes and firmware read (ARCHITECTURE.md)."""
    def q(tensor: dict) -> dict:
        return {"scale": tensor["scale"], "zero_point": tensor["zero_point"]}

    f = report["fusion"]
    return {
        "schema": 1,
        "deployment": report["deployment"],
        "num_classes": ds.num_classes,
        "class_names": list(ds.class_names),
        "input_shape": list(ds.input_shape),
        "students": [{"id": s["id"], "file": s["file"], "filters": s["filters"], "width": s["width"],
                      "input": q(s["input"]), "output": q(s["output"]),
                      "arena_bytes": s["arena_bytes_32bit"], "arena_bytes_host": s["arena_bytes"],
                      "board": s["board"]} for s in report["students"]],
        "fusion": {"file": f["file"], "input_width": f["input"]["shape"][-1],
                   "input": q(f["input"]), "output": q(f["output"]),
                   "arena_bytes": f["arena_bytes_32bit"], "arena_bytes_host": f["arena_bytes"]},
        "teacher": {"file": report["teacher"]["file"], "input": q(report["teacher"]["input"]),
                    "output": q(report["teacher"]["output"])},
        "fusion_input": "requantise",
    }


def _write_outputs(tdir: Path, report: dict, ds: Dataset, indices: np.ndarray) -> None:
    from nonn_tflite.deployment import with_model_hashes  # model_crc32: checked on the wire
    from nonn_tflite.report import write_report

    write_json(tdir / "deployment.json", with_model_hashes(deployment_doc(report, ds), tdir))
    write_json(tdir / "calibration_indices.json",
               {"split": "train", "seed": report["calibration"]["seed"],
                "count": len(indices), "indices": [int(i) for i in indices]})
    n = min(TEST_SAMPLE_MAX, len(ds.y_test))
    mem = io.BytesIO()
    np.savez_compressed(mem, x=ds.x_test[:n], y=ds.y_test[:n].astype(np.int64))
    atomic_write_bytes(tdir / "test_sample.npz", mem.getvalue())
    write_report(report, tdir)


# -- the stage ----------------------------------------------------------------------------------

def convert_run(run_dir: str | Path, options: ConvertOptions | None = None) -> ConvertResult:
    """Convert, verify, measure and report a distilled run into ``<run>/tflite/``.

    Raises CompatibilityError / ConversionError (nothing written) or, after writing everything,
    BoardFitError when a student does not fit its board.
    """
    opts = options or ConvertOptions()
    with captured_output((2,)):  # TensorFlow's C++ start-up banner; Python errors still raise
        import tensorflow  # noqa: F401  (fail early, before the heavy work, if missing)

    run = RunDir.open(run_dir, need="distill")
    if run.has("convert") and not opts.force:  # say so before minutes of work, not after
        raise RunDirError(f"stage 'convert' already finished in {run.path}; pass --force to redo it")
    ds = run.load_dataset()
    system = load_keras_system(run)
    boards = resolve_boards(opts.boards, run, len(system.students))
    parts = _partitions(run, len(system.students))
    indices = calibration_indices(len(ds.y_train), opts.calibration, opts.seed)
    calib = {"split": "train", "count": int(len(indices)), "requested": opts.calibration,
             "seed": opts.seed, "indices_sha256": indices_digest(indices),
             "file": "tflite/calibration_indices.json"}
    with run.stage("convert", force=opts.force) as st:
        tdir = st.dir / "tflite"
        conv = convert_system(system, ds.x_train[indices])
        for name, data in conv.files().items():
            write_model(tdir / name, data)
        ev = evaluate(system, conv, ds)
        profiles = profile_all(tdir, conv, ds, ev, opts)
        check_parity({name: p.parity for name, p in profiles.items()})  # ParityError: exit 1
        tflm_exact_accuracy(conv, ds, profiles, ev)
        fits = [board_fit(profiles[f"student_{k}.tflite"], b, f"student {k}")
                for k, b in enumerate(boards)]
        report = build_report(run, ds, system, profiles, ev, fits, parts, calib)
        report["energy"] = energy_section(report, boards)  # estimates (nonn_tflite/energy.py)
        _write_outputs(tdir, report, ds, indices)
        st.config = {**{k: v for k, v in asdict(opts).items() if k != "force"},
                     "boards": [b.name if b else None for b in boards],
                     "calibration_count": calib["count"],
                     "calibration_indices_sha256": calib["indices_sha256"],
                     "calibration_file": calib["file"], "arena_note": ARENA_NOTE}
        st.metrics = {"int8_accuracy": ev.accuracy_int8, "float_accuracy": ev.accuracy_float,
                      "teacher_int8_accuracy": ev.teacher_int8,
                      "teacher_float_accuracy": ev.teacher_float}
    misfits = [f["problem"] for f in fits if f["problem"]]
    result = ConvertResult(run.path, run.path / "tflite", report, misfits)
    if misfits:
        err = BoardFitError("; ".join(misfits) + f" (models and report written to {result.tflite_dir})")
        err.result = result  # type: ignore[attr-defined]  (callers may still print the report)
        raise err
    return result
