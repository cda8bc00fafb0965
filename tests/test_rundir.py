"""Run directories: a failed stage leaves nothing that looks complete; --force discards later stages."""

from __future__ import annotations

import json

import pytest

from nonn_tflite.errors import RunDirError
from nonn_tflite.rundir import RunDir, atomic_write_text


def _stage(run: RunDir, name: str, files: dict, force: bool = False, metrics=None):
    with run.stage(name, force=force) as st:
        for rel, text in files.items():
            (st.dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (st.dir / rel).write_text(text)
        st.metrics = metrics or {}


def test_finished_stage_is_recorded_with_hashes(tmp_path):
    run = RunDir(tmp_path / "r")
    _stage(run, "teacher", {"teacher.keras": "t"}, metrics={"teacher_accuracy": 0.9})
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert "teacher" in m["stages"] and len(m["files"]["teacher.keras"]) == 64
    assert m["metrics"]["teacher_accuracy"] == 0.9
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".staging")]


def test_failed_stage_leaves_the_run_as_it_was(tmp_path):
    run = RunDir(tmp_path / "r")
    _stage(run, "teacher", {"teacher.keras": "t"})
    before = (tmp_path / "r" / "manifest.json").read_text()
    with pytest.raises(KeyboardInterrupt):
        with run.stage("partition") as st:
            (st.dir / "partition.json").write_text("{half")
            raise KeyboardInterrupt
    assert (tmp_path / "r" / "manifest.json").read_text() == before
    assert not (tmp_path / "r" / "partition.json").exists()
    assert not RunDir(tmp_path / "r").has("partition")


def test_force_redo_discards_later_stages(tmp_path):
    run = RunDir(tmp_path / "r")
    _stage(run, "teacher", {"teacher.keras": "t"})
    _stage(run, "partition", {"partition.json": "{}"}, metrics={"modularity": 0.3})
    _stage(run, "distill", {"student_0.keras": "s"}, metrics={"nonn_accuracy": 0.9})
    with pytest.raises(RunDirError, match="--force"):
        _stage(run, "partition", {"partition.json": "{}"})
    _stage(run, "partition", {"partition.json": "{\"v\": 2}"}, force=True)
    run = RunDir(tmp_path / "r")
    assert run.has("partition") and not run.has("distill")
    assert not (tmp_path / "r" / "student_0.keras").exists()
    assert "nonn_accuracy" not in run.manifest["metrics"]
    assert run.verify_files() == []


def test_verify_files_notices_changes(tmp_path):
    run = RunDir(tmp_path / "r")
    _stage(run, "teacher", {"teacher.keras": "t"})
    (tmp_path / "r" / "teacher.keras").write_text("tampered")
    assert RunDir(tmp_path / "r").verify_files() == ["teacher.keras"]


def test_damaged_manifest_is_reported(tmp_path):
    (tmp_path / "r").mkdir()
    atomic_write_text(tmp_path / "r" / "manifest.json", "{not json")
    with pytest.raises(RunDirError, match="unreadable"):
        RunDir.open(tmp_path / "r")
