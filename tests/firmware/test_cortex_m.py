"""The cortex-m target on emulated cores: real TFLM C++ (CMSIS-NN), QEMU, bit-exact outputs.

Needs arm-none-eabi-gcc (+ newlib, libstdc++), make, qemu-system-arm and a TFLM tree
(``$NONN_TFLM_DIR`` or ../shared/tflm); without them the tests fail saying what to install.
The TFLM runtime is built once per (cpu, kernels) and cached under ~/.cache/nonn-tflite.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge.cortex_m import run_project, student_inputs, tflm_python_outputs
from firmware_bridge.deployment import load_deployment
from firmware_bridge.qemu import (Config, ToolchainError, check_tools, min_arena, run_probe,
                                  tflm_tree)
from nonn_tflite.profile import arena_32bit_with_margin
from nonn_tflite.tflite_model import parse_tflite


def _require(kernels: str = "cmsis-nn") -> None:
    try:
        check_tools()
        tflm_tree(kernels)
    except ToolchainError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cm") / "run"
    subprocess.run(["python3", "-m", "nonn_tflite.synthetic", str(root), "--students", "2"],
                   check=True, capture_output=True)
    return root


def _export(run: Path, out: Path, cpu: str) -> None:
    from firmware_bridge import export_project

    export_project(run, "cortex-m", out, cpu=cpu, kernels="cmsis-nn")


@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m7", "cortex-m55"])
def test_exported_device_runs_bit_exact_on_qemu(synthetic, tmp_path, cpu):
    _require()
    config = Config(cpu, "cmsis-nn")
    _export(synthetic, tmp_path / "fw", cpu)
    dep = load_deployment(synthetic)
    for student in dep.students:
        run = run_project(tmp_path / "fw" / f"device_{student.id}", config)
        assert run.returncode == 0, run.stdout
        inputs = student_inputs(dep, student.model)
        expected = tflm_python_outputs(student.model.data, inputs)
        assert np.array_equal(np.array(run.outputs, np.int8), expected), run.stdout
        macs = parse_tflite(student.model.data).macs
        # Plausible: CMSIS-NN does at most ~4 MACs per instruction (SMLAD/MVE), and a tiny
        # student is not 100x slower than its MACs plus a fixed TFLM dispatch cost.
        for n in run.instructions:
            assert macs / 8 < n < 100 * macs + 200_000, (n, macs)
        # The arena the export reserves is the minimal arena measured on this core + margin.
        reserved = int(re.search(r"reserved=(\d+)", run.stdout).group(1))
        probe = run_probe(student.model.data, inputs[:1], config)
        measured = min_arena(student.model.data, inputs[:1], config, probe.arena_used_bytes)
        assert reserved == arena_32bit_with_margin(measured)
        assert run.arena_used_bytes == probe.arena_used_bytes <= reserved
        assert reserved <= measured * 1.05 + 64  # issue 16: reserved <= measured + 5 %
        assert run.size.flash_bytes > len(student.model.data) + 20_000  # runtime included


def test_corrupted_model_is_refused_at_boot_on_the_emulated_core(synthetic, tmp_path):
    _require()
    config = Config("cortex-m4", "cmsis-nn")
    _export(synthetic, tmp_path / "fw", "cortex-m4")
    project = tmp_path / "fw" / "device_0"
    src = project / "src" / "student_0_model_data.cc"
    text = src.read_text()
    lines = text.splitlines()
    i = len(lines) // 2  # a line of model bytes in the middle of the array
    first = re.search(r"0x([0-9a-f]{2})", lines[i])
    flipped = f"0x{int(first.group(1), 16) ^ 0x01:02x}"
    lines[i] = lines[i][:first.start()] + flipped + lines[i][first.end():]
    src.write_text("\n".join(lines) + "\n")
    run = run_project(project, config)
    assert run.returncode == 1
    assert "refusing to run the model" in run.stdout and "CRC" in run.stdout.upper(), run.stdout
    assert not run.outputs


def test_probe_is_bit_exact_and_reference_kernels_cost_more(synthetic):
    _require("cmsis-nn")
    _require("reference")
    data = (synthetic / "tflite" / "student_0.tflite").read_bytes()
    dep = load_deployment(synthetic)
    inputs = student_inputs(dep, dep.students[0].model)
    expected = tflm_python_outputs(data, inputs)
    cmsis = run_probe(data, inputs, Config("cortex-m4", "cmsis-nn"))
    ref = run_probe(data, inputs, Config("cortex-m4", "reference"))
    assert np.array_equal(cmsis.outputs, expected) and np.array_equal(ref.outputs, expected)
    assert ref.instructions_median > 2 * cmsis.instructions_median


def test_missing_tools_and_tree_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError, match="apt-get install gcc-arm-none-eabi"):
        check_tools()
    monkeypatch.setenv("NONN_TFLM_DIR", str(tmp_path))
    with pytest.raises(ToolchainError, match="NONN_TFLM_DIR"):
        tflm_tree("cmsis-nn")
