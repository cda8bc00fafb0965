"""The committed reference deployment in models/ is intact and still scores what its report says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nonn_tflite.rundir import RunDir

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_digits_k2_files_match_the_manifest():
    run = RunDir.open(MODELS / "digits-k2", need="convert")
    assert run.verify_files() == []  # every file's sha256 as recorded
    for name in ("student_0.tflite", "student_1.tflite", "fusion.tflite", "teacher.tflite",
                 "deployment.json", "report.json", "report.md"):
        assert (run.path / "tflite" / name).exists(), name


def test_digits_k2_still_runs_and_scores_as_reported():
    from nonn_tflite.deployment import load_deployment
    from nonn_tflite.live.offline import OfflineSystem

    root = MODELS / "digits-k2"
    report = json.loads((root / "tflite" / "report.json").read_text())
    sample = np.load(root / "tflite" / "test_sample.npz")
    predicted = OfflineSystem(load_deployment(root)).classify(sample["x"])
    accuracy = float(np.mean(predicted == sample["y"]))
    assert len(sample["y"]) == 360  # the whole digits test split
    assert accuracy == report["system"]["accuracy_int8"]
    assert accuracy >= report["system"]["accuracy_float"] - 0.01
