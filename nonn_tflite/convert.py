"""The ``convert`` stage: a distilled run -> int8 .tflite files, verification, measurements, report.

This module orchestrates; :mod:`nonn_tflite.verify` evaluates, profiles and gates, and
:mod:`nonn_tflite.convert_outputs` assembles and writes the report and deployment.json.

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

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nonn_tflite.convert_outputs import (  # noqa: F401  (report and deployment, re-exported)
    TEST_SAMPLE_MAX,
    build_report,
    deployment_doc,
    ratios,
    write_outputs,
)
from nonn_tflite.data import to_float
from nonn_tflite.energy import energy_section
from nonn_tflite.errors import BoardFitError, ConversionError, RunDirError, UsageError
from nonn_tflite.parity import check_parity
from nonn_tflite.profile import ARENA_NOTE, DEFAULT_LATENCY_RUNS
from nonn_tflite.quantize import (
    calibration_indices,
    captured_output,
    check_tflm,
    convert_int8,
    indices_digest,
    keras_layer_names,
    write_model,
)
from nonn_tflite.rundir import RunDir
from nonn_tflite.tflite_model import parse_tflite
from nonn_tflite.verify import (  # noqa: F401  (verification, re-exported)
    Evaluation,
    board_fit,
    evaluate,
    feature_agreement,
    profile_all,
    system_accuracy,
    tflm_exact_accuracy,
)
from nonn_tflite.verify import predict as _predict

log = logging.getLogger("nonn_tflite")


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
        write_outputs(tdir, report, ds, indices)
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
