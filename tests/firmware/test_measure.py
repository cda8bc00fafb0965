"""``nonn-tflite measure`` on a real converted run: QEMU figures into the report and the export.

The run is a copy of the committed models/digits-k2, converted again with ``--board
nano33ble`` (so the board fit and the energy section have a board with an emulated core), then
measured on the emulated Cortex-M4 with CMSIS-NN (teacher included) through the CLI. Needs
arm-none-eabi-gcc (+ newlib, libstdc++), make, qemu-system-arm and a TFLM tree; without them
the tests fail saying what to install. The TFLM runtime is cached under ~/.cache/nonn-tflite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_bridge.qemu import ToolchainError, check_tools, tflm_tree
from nonn_tflite.boards import BOARDS
from nonn_tflite.profile import arena_32bit_with_margin

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "cortex-m4-cmsis-nn"


def _cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "nonn_tflite.cli", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        pytest.fail(f"nonn-tflite {' '.join(args)} exited {proc.returncode}: {proc.stderr[-600:]}")
    return proc


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    try:
        check_tools()
        tflm_tree("cmsis-nn")
    except ToolchainError as exc:
        pytest.fail(str(exc))
    run = tmp_path_factory.mktemp("measure") / "digits-k2"
    shutil.copytree(ROOT / "models" / "digits-k2", run)
    _cli("convert", str(run), "--force", "--board", "nano33ble", "--parity-samples", "8", "-q")
    before = json.loads((run / "tflite" / "report.json").read_text())
    out = _cli("measure", str(run), "--cpu", "cortex-m4", "--kernels", "cmsis-nn",
               "--samples", "2")
    report = json.loads((run / "tflite" / "report.json").read_text())
    return {"run": run, "before": before, "report": report, "stdout": out.stdout,
            "stderr": out.stderr}


def _models(report: dict) -> list[dict]:
    return [report["teacher"], report["fusion"], *report["students"]]


def test_measure_writes_the_measured_section_bit_exact(measured):
    report = measured["report"]
    section = report["measured"]
    assert [c["label"] for c in section["configs"]] == [
        "measured on QEMU mps2-an386 (instruction counts, not cycles)"]
    rows = section["rows"]
    assert {r["model"] for r in rows} == {m["file"] for m in _models(report)}
    assert all(r["config"] == CONFIG and r["bit_exact"] is True for r in rows), rows
    for r in rows:
        assert r["arena_used_bytes"] <= r["arena_bytes_min"] <= r["arena_reserved_bytes"]
        assert r["flash_bytes"] > 20_000 and r["static_ram_bytes"] >= r["arena_reserved_bytes"]
    t = report["teacher"]["measured"][CONFIG]["instructions_per_inference"]
    s = max(x["measured"][CONFIG]["instructions_per_inference"] for x in report["students"])
    assert section["teacher_student_instruction_ratio"][CONFIG] == pytest.approx(t / s)
    assert t > s  # the teacher does 8x the MACs of a student
    md = (measured["run"] / "tflite" / "report.md").read_text()
    assert "Measured on QEMU mps2-an386 (cortex-m4)" in md
    assert re.search(r"\| student_0\.tflite \| cortex-m4-cmsis-nn \| [\d,]+ \|", md)
    # the printed table and the ratio line
    assert "instructions / inference" in measured["stdout"]
    assert "Teacher / largest student" in measured["stdout"]


def test_deployment_and_board_fit_use_the_measured_32bit_arena(measured):
    report, before = measured["report"], measured["before"]
    dep = json.loads((measured["run"] / "tflite" / "deployment.json").read_text())
    board = BOARDS["nano33ble"]
    for s, d, old in zip(report["students"], dep["students"], before["students"]):
        minimal = s["measured"][CONFIG]["arena_bytes_min"]
        assert s["arena_bytes_32bit_measured"] == minimal
        assert s["arena_bytes_32bit"] == arena_32bit_with_margin(minimal) == d["arena_bytes"]
        assert "measured on QEMU" in s["arena_32bit_basis"]  # not convert's graph estimate
        assert s.get("arena_bytes_32bit_estimate") == old.get("arena_bytes_32bit_estimate")
        assert s["arena_bytes_32bit"] <= minimal * 1.05 + 64
        assert s["fits"] == (s["arena_bytes_32bit"] <= board.model_ram_bytes
                             and s["flash_bytes"] <= board.model_flash_bytes)


def test_energy_uses_measured_instructions_times_cpi(measured):
    report = measured["report"]
    board = BOARDS["nano33ble"]
    cpi = board.cost.cycles_per_instruction
    assert cpi and board.cost.emulated_cpu == "cortex-m4"
    for device, s in zip(report["energy"]["devices"], report["students"]):
        est = device["estimate"]
        assert est["basis"] == "measured instructions x CPI"
        n = s["measured"][CONFIG]["instructions_per_inference"]
        assert est["latency_ms"] == pytest.approx(n * cpi / (board.clock_mhz * 1e6) * 1e3)
    before = measured["before"]["energy"]["devices"][0]["estimate"]
    assert before["basis"] == "macs"


def test_export_afterwards_reserves_the_measured_arena(measured, tmp_path):
    from firmware_bridge import export_project
    from firmware_bridge.cortex_m import run_project
    from firmware_bridge.qemu import Config

    report = measured["report"]
    result = export_project(measured["run"], "cortex-m", tmp_path / "fw", cpu="cortex-m4",
                            kernels="cmsis-nn")
    for p in (p for p in result.projects if p.role == "device"):
        s = report["students"][p.student]
        assert p.arena_bytes == s["arena_bytes_32bit"]
        config = (tmp_path / "fw" / p.name / "src" / "nonn_config.h").read_text()
        assert f"#define NONN_ARENA_BYTES {s['arena_bytes_32bit']}\n" in config
    run = run_project(tmp_path / "fw" / "device_0", Config("cortex-m4", "cmsis-nn"))
    assert run.returncode == 0, run.stdout
    s0 = report["students"][0]
    assert f"reserved={s0['arena_bytes_32bit']}" in run.stdout
    assert run.arena_used_bytes == s0["measured"][CONFIG]["arena_used_bytes"]
    # the same program as measure's link, but with 4 embedded test inputs instead of 1
    assert abs(run.size.flash_bytes - s0["measured"][CONFIG]["flash_bytes"]) < 2048


def test_missing_toolchain_is_one_line_and_fails_before_work(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir)}
    run = tmp_path / "run"
    shutil.copytree(ROOT / "models" / "digits-k2" / "tflite", run / "tflite")
    for args in (("measure", str(run)), ("convert", str(run), "--measure", "qemu")):
        proc = _cli(*args, env=env, check=False)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "apt-get install gcc-arm-none-eabi" in lines[0], proc.stderr
    assert not (run / "tflite" / "report.json").read_text().count('"measured"')


def test_measure_refuses_an_unconverted_folder_and_bad_names(tmp_path):
    proc = _cli("measure", str(tmp_path), check=False)
    assert proc.returncode == 2 and "nonn-tflite convert" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli("measure", str(tmp_path), "--cpu", "cortex-m3", check=False)
    assert proc.returncode == 2 and "--cpu 'cortex-m3'" in proc.stderr


def test_fusion_minimal_arena_on_the_m55_survives_a_crashing_trial_arena():
    """CMSIS-NN FULLY_CONNECTED on the M55 hard-faults (instead of failing AllocateTensors) at
    some arenas below the minimum; the bisection must count that as too small."""
    import numpy as np

    from firmware_bridge.cortex_m import measure_model
    from firmware_bridge.qemu import Config

    try:
        check_tools()
        tflm_tree("cmsis-nn")
    except ToolchainError as exc:
        pytest.fail(str(exc))
    data = (ROOT / "models" / "digits-k2" / "tflite" / "fusion.tflite").read_bytes()
    inputs = np.random.default_rng(0).integers(-128, 128, (2, 128), dtype=np.int8)
    m = measure_model("fusion", data, inputs, [Config("cortex-m55", "cmsis-nn")], link=False)
    m = m["cortex-m55-cmsis-nn"]
    assert m["bit_exact"] and m["arena_used_bytes"] <= m["arena_bytes_min"]
