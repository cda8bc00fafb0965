"""What ``convert`` writes besides the models: report.json's content, deployment.json (the
contract the live nodes and firmware read, docs/ARCHITECTURE.md), the calibration record and
the test sample. :mod:`nonn_tflite.report` renders the report's other views.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nonn_tflite.data import Dataset
from nonn_tflite.parity import parity_summary
from nonn_tflite.profile import ARENA_NOTE, WIRE_HEADER_BYTES, ModelProfile
from nonn_tflite.rundir import RunDir, atomic_write_bytes, write_json
from nonn_tflite.verify import Evaluation

if TYPE_CHECKING:
    from nonn_tflite.convert import KerasSystem

TEST_SAMPLE_MAX = 2000  # test images written to test_sample.npz


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


def write_outputs(tdir: Path, report: dict, ds: Dataset, indices: np.ndarray) -> None:
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
