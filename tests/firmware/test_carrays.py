"""Model arrays: the generated .cc, compiled by g++, holds exactly the .tflite bytes."""

from __future__ import annotations

import re
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge.carrays import array_symbol, to_c_array
from nonn_tflite.errors import UsageError

MODELS = ("student_0", "student_1", "fusion")


def _write_array(tmp: Path, name: str, data: bytes) -> Path:
    header, source = to_c_array(name, data)
    (tmp / f"{name}_model_data.h").write_text(header)
    (tmp / f"{name}_model_data.cc").write_text(source)
    return tmp


def _model_program(cc, c_drivers: Path, src: Path, name: str, crc_dir: Path, tag: str) -> Path:
    return cc.program(
        f"model_{name}_{tag}",
        [c_drivers / "model_driver.cc", src / f"{name}_model_data.cc", crc_dir / "nonn_crc32.c"],
        includes=[src, crc_dir],
        defines=[f'MODEL_HEADER="{name}_model_data.h"', f"MODEL={array_symbol(name)}"])


@pytest.mark.parametrize("name", MODELS)
def test_array_compiles_back_to_the_same_bytes(run, esp32_fw, cc, c_drivers, tmp_path, name):
    data = run.model(name)
    src = _write_array(tmp_path, name, data)
    crc_dir = esp32_fw.project("device_0").path / "src"
    exe = _model_program(cc, c_drivers, src, name, crc_dir, "roundtrip")
    out = tmp_path / "back.tflite"
    size, crc, misalign = cc.run(exe, [], "dump", str(out)).stdout.split()
    assert out.read_bytes() == data
    assert int(size) == len(data)
    assert int(crc) == zlib.crc32(data)
    assert int(misalign) == 0


@pytest.mark.parametrize("name", MODELS)
def test_array_is_declared_16_byte_aligned(run, tmp_path, name):
    """The compiler itself must emit 16-byte alignment, not just happen to place it there."""
    src = _write_array(tmp_path, name, run.model(name))
    asm = subprocess.run(["g++", "-std=c++17", "-S", "-o", "-", str(src / f"{name}_model_data.cc")],
                         capture_output=True, text=True, check=True).stdout
    before = asm[:asm.index(f"\n{array_symbol(name)}:")]
    directive = re.findall(r"\.(align|p2align)\s+(\d+)", before)[-1]
    assert directive in (("align", "16"), ("p2align", "4"))  # x86 GAS: bytes / log2


def test_bytes_read_back_run_identically_in_tflm(run, esp32_fw, cc, c_drivers, tmp_path):
    from tflite_micro import runtime

    data = run.model("student_1")
    src = _write_array(tmp_path, "student_1", data)
    exe = _model_program(cc, c_drivers, src, "student_1", esp32_fw.project("device_0").path / "src",
                         "tflm")
    back = tmp_path / "back.tflite"
    cc.run(exe, [], "dump", str(back))
    original = runtime.Interpreter.from_bytes(data, arena_size=64 * 1024)
    copy = runtime.Interpreter.from_bytes(back.read_bytes(), arena_size=64 * 1024)
    for image in run.images[:16]:
        x = (image.astype(np.int16) - 128).astype(np.int8)[None]
        original.set_input(x, 0)
        copy.set_input(x, 0)
        original.invoke()
        copy.invoke()
        assert np.array_equal(original.get_output(0), copy.get_output(0))


def test_boot_check_refuses_a_flipped_byte(run, esp32_fw, cc, c_drivers, tmp_path):
    """The exported project's own arrays pass; one flipped byte in the array is refused."""
    src = esp32_fw.project("device_0").path / "src"
    ok = _model_program(cc, c_drivers, src, "student_0", src, "boot_ok")
    proc = cc.run(ok, [], "boot")
    assert "ok" in proc.stdout

    data = bytearray(run.model("student_0"))
    data[len(data) // 2] ^= 0x01
    _, corrupted = to_c_array("student_0", bytes(data))
    bad_src = tmp_path / "bad"
    bad_src.mkdir()
    (bad_src / "student_0_model_data.cc").write_text(corrupted)
    (bad_src / "student_0_model_data.h").write_text(
        (src / "student_0_model_data.h").read_text())  # the CRC the firmware was built with
    bad = _model_program(cc, c_drivers, bad_src, "student_0", src, "boot_bad")
    proc = cc.run(bad, [], "boot", check=False)
    assert proc.returncode == 3
    assert "refusing to run a corrupted model" in proc.stdout
    assert f"expected 0x{zlib.crc32(run.model('student_0')):08X}" in proc.stdout


def test_header_follows_tflm_conventions(run):
    header, source = to_c_array("student_0", run.model("student_0"))
    assert "#pragma once" in header
    assert "extern const unsigned char g_student_0_model_data[];" in header
    assert f"constexpr unsigned int g_student_0_model_data_size = {len(run.model('student_0'))}u;" \
        in header
    assert "alignas(16) const unsigned char g_student_0_model_data[] = {" in source


@pytest.mark.parametrize("bad", ["student-0", "0student", "", "a b"])
def test_rejects_names_that_are_not_c_identifiers(bad):
    with pytest.raises(UsageError, match="C identifier"):
        to_c_array(bad, b"\x00" * 8)


def test_rejects_empty_model():
    with pytest.raises(UsageError, match="empty"):
        to_c_array("student_0", b"")
