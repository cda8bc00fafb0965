"""Corrupted models never kill a process: each ends in a clean error or a valid run.

Cases run in worker processes that announce each (case, target) before running it, so a dead
process would be caught and counted as a crash (the self-test below proves that it is). CI runs
NONN_FUZZ_MODELS cases (default 60); fuzz/README.md documents the 1,000-case run.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from fuzz.corrupt_models import BASELINE, KINDS, TARGETS, Corrupter, Plan, run_cases

pytestmark = pytest.mark.timeout(600)


def test_corruptions_are_deterministic_and_cover_every_kind(student_bytes):
    a, b = Corrupter(student_bytes, seed=3), Corrupter(student_bytes, seed=3)
    cases = [a.case(i) for i in range(2 * len(KINDS))]
    assert cases == [b.case(i) for i in range(2 * len(KINDS))]
    assert {kind for kind, _, _ in cases} == set(KINDS)
    assert all(data != student_bytes for _, data, _ in cases)
    weights = [data for kind, data, _ in cases if kind == "weights"]
    assert all(len(d) == len(student_bytes) for d in weights)  # flips, not cuts


def test_corrupted_students_end_clean_or_valid_never_dead(k4_run, tmp_path):
    count = int(os.environ.get("NONN_FUZZ_MODELS", "60"))
    plan = Plan(str(k4_run / "tflite" / "student_0.tflite"), str(k4_run), seed=0)
    results = run_cases(plan, count, jobs=2, crash_dir=tmp_path / "crashes")
    table = {row["target"]: row for row in results.table()}
    for target in TARGETS:
        row = table[target]
        assert row["total"] == count, row  # every case reached every target
        assert row["crash"] == 0 and row["unhandled"] == 0, results.failures()[:5]
        assert row["clean_error"] > 0 and row["valid"] > 0, row  # both outcomes exercised
    assert not (tmp_path / "crashes").exists()
    kinds = {r["kind"] for r in results.records}
    assert kinds == set(KINDS)
    errors = [r["detail"] for r in results.records if r["outcome"] == "clean_error"]
    assert all("\n" not in e for e in errors)


def _zero_channel_killer(good: bytes) -> bytes:
    """The input's channel dimension set to 0: sound to the schema, SIGFPE inside TFLM."""
    shape = np.array([4, 1, 8, 8, 1], "<i4").tobytes()  # vector length 4, then [1, 8, 8, 1]
    assert good.count(shape) == 1
    data = bytearray(good)
    struct.pack_into("<i", data, good.find(shape) + 16, 0)
    return bytes(data)


def test_a_dead_process_is_detected_and_the_run_goes_on(student_bytes, k4_run, tmp_path):
    """Self-test of the harness: raw TFLM (the baseline) dies on the killer; the supervisor
    records the signal and a fresh worker runs the remaining targets and cases."""
    files = {"good": student_bytes, "killer": _zero_channel_killer(student_bytes),
             "cut": student_bytes[:100]}
    paths = []
    for name, data in files.items():
        (tmp_path / f"{name}.tflite").write_bytes(data)
        paths.append(str(tmp_path / f"{name}.tflite"))
    plan = Plan("", str(k4_run), files=tuple(paths), targets=(BASELINE, *TARGETS))
    results = run_cases(plan, len(paths), jobs=1)
    out = {(r["case"], r["target"]): r for r in results.records}
    assert len(out) == 3 * 4  # nothing skipped after the crash
    assert out[1, BASELINE]["outcome"] == "crash" and "SIGFPE" in out[1, BASELINE]["detail"]
    assert all(out[0, t]["outcome"] == "valid" for t in (BASELINE, *TARGETS))
    for t in TARGETS:  # the toolkit survives the model that kills raw TFLM
        assert out[1, t]["outcome"] == "clean_error" and out[2, t]["outcome"] == "clean_error"
    assert "TFLite Micro crashed (SIGFPE)" in out[1, "arena"]["detail"]  # its child died
    assert "input_channel > 0" in out[1, "device"]["detail"]  # LiteRT refuses, in one line
    baseline_row = results.table()[0]
    assert baseline_row["target"] == BASELINE and baseline_row["crash"] >= 1
