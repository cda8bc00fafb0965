"""The whole convert stage on a real (tiny) distilled run: files, numbers, contracts, CLI."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nonn_tflite.boards import Board, get_board
from nonn_tflite.cli import main
from nonn_tflite.convert import board_fit, resolve_boards
from nonn_tflite.errors import UsageError
from nonn_tflite.int8 import images_to_int8, requantise
from nonn_tflite.profile import WIRE_HEADER_BYTES, Int8Runner, arena_32bit_with_margin, qparams
from nonn_tflite.quantize import convert_int8, tflm_problems
from nonn_tflite.rundir import RunDir, sha256_file
from nonn_tflite.teacher import load_keras_model
from nonn_tflite.tflite_model import parse_tflite, read_tflite
from nonn_tflite.wire import HEADER_SIZE

MODELS = ("student_0.tflite", "student_1.tflite", "fusion.tflite", "teacher.tflite")


@pytest.fixture(scope="module")
def tdir(converted) -> Path:
    return converted.tflite_dir


@pytest.fixture(scope="module")
def report(tdir) -> dict:
    return json.loads((tdir / "report.json").read_text())


def test_every_model_is_full_int8_for_tflm(tdir):
    for name in MODELS:
        m = read_tflite(tdir / name)
        assert tflm_problems(m) == [], name
        activations = {i for op in m.operators for i in op.outputs} | set(m.inputs)
        assert {m.tensors[i].dtype for i in activations} == {"int8"}, name
        assert all(m.tensors[i].shape[0] == 1 for i in m.inputs + m.outputs), name


def test_student_io_follows_the_architecture_convention(tdir):
    for k, width in enumerate((5, 6)):
        m = read_tflite(tdir / f"student_{k}.tflite")
        (inp,), (out,) = m.input_tensors(), m.output_tensors()
        assert inp.shape == (1, 8, 8, 1) and out.shape == (1, width)
        scale, zp = qparams(inp)
        assert zp == -128 and scale == pytest.approx(1 / 255, rel=1e-6)  # int8 = uint8 - 128
        assert qparams(out)[1] == -128  # ReLU'd vector: 0.0 maps to -128


def test_int8_system_within_one_point_of_float(report):
    s = report["system"]
    assert s["num_students"] == 2
    assert s["accuracy_float"] > 0.8  # the synthetic run learned something
    assert abs(s["accuracy_float"] - s["accuracy_int8"]) <= 0.01
    assert abs(s["teacher_accuracy_float"] - s["teacher_accuracy_int8"]) <= 0.02


def test_int8_system_recomputed_from_files_matches_report(tdir, report, digits):
    """Students -> requantise -> fusion, from the files alone, as the fusion node does it."""
    dep = json.loads((tdir / "deployment.json").read_text())
    f_in = (dep["fusion"]["input"]["scale"], dep["fusion"]["input"]["zero_point"])
    slices = []
    for s in dep["students"]:
        buf = (tdir / s["file"]).read_bytes()
        x = images_to_int8(digits.x_test, (s["input"]["scale"], s["input"]["zero_point"]))
        q = Int8Runner(buf)(x)
        slices.append(requantise(q, (s["output"]["scale"], s["output"]["zero_point"]), f_in))
    logits = Int8Runner((tdir / "fusion.tflite").read_bytes())(np.concatenate(slices, axis=1))
    acc = float(np.mean(np.argmax(logits, axis=1) == digits.y_test))
    assert acc == pytest.approx(report["system"]["accuracy_int8_litert_builtin"])


def test_int8_system_accuracy_is_what_tflm_computes(tdir, report, digits):
    """accuracy_int8 is the TFLM figure: every model run by TFLite Micro itself, from the files."""
    from nonn_tflite.interpreters import MicroRunner

    dep = json.loads((tdir / "deployment.json").read_text())
    f_in = (dep["fusion"]["input"]["scale"], dep["fusion"]["input"]["zero_point"])
    slices = []
    for s, r in zip(dep["students"], report["students"], strict=True):
        x = images_to_int8(digits.x_test, (s["input"]["scale"], s["input"]["zero_point"]))
        q = MicroRunner((tdir / s["file"]).read_bytes(), r["arena_bytes"])(x)
        slices.append(requantise(q, (s["output"]["scale"], s["output"]["zero_point"]), f_in))
    fusion = MicroRunner((tdir / "fusion.tflite").read_bytes(), report["fusion"]["arena_bytes"])
    logits = fusion(np.concatenate(slices, axis=1))
    acc = float(np.mean(np.argmax(logits, axis=1) == digits.y_test))
    system = report["system"]
    assert acc == pytest.approx(system["accuracy_int8"])
    assert system["int8_runtimes"]["fusion.tflite"] == "TFLite Micro"  # FULLY_CONNECTED
    assert system["int8_runtimes"]["student_0.tflite"].startswith("LiteRT BUILTIN_REF")
    assert 0.8 < system["accuracy_int8_litert_xnnpack"] <= 1
    assert report["parity"]["rule"].startswith("bit-exact")
    assert all(m["passed"] for m in report["parity"]["models"].values())


def test_batched_runner_equals_single_image_runs(tdir, digits):
    buf = (tdir / "student_0.tflite").read_bytes()
    x = images_to_int8(digits.x_test[:40], (1 / 255, -128))
    batched = Int8Runner(buf, chunk=16)(x)
    single = np.concatenate([Int8Runner(buf)(x[i:i + 1]) for i in range(len(x))])
    assert np.array_equal(batched, single)


def test_student_feature_agreement(report):
    for s in report["students"]:
        fa = s["feature_agreement"]
        # rounding error through two convs and a mean: a few output LSB; saturation (test
        # features above the calibrated range) is reported apart and is rare
        assert 0 <= fa["max_abs_diff_lsb_unsaturated"] < 8
        assert fa["max_abs_diff_lsb"] >= fa["max_abs_diff_lsb_unsaturated"]
        assert fa["saturated_fraction"] < 0.01
        assert fa["cosine_min"] > 0.99 and fa["cosine_mean"] > 0.999


def test_tflm_parity_with_litert_reference(report):
    for s in report["students"]:  # CONV_2D + MEAN only: bit-exact in both runtimes
        assert s["parity"]["bit_exact"], s["parity"]
        assert s["parity"]["samples"] == 16 and s["parity"]["total_values"] == 16 * s["width"]
    for m in (report["teacher"], report["fusion"]):
        p = m["parity"]
        # per-channel FULLY_CONNECTED may round 1 LSB apart; then the report names that op
        assert p["bit_exact"] or (p["max_abs_diff"] <= 1 and
                                  p["first_mismatch"]["opcode"] == "FULLY_CONNECTED"), p


def _probe(path: Path, size: int) -> str:
    """TFLM allocate+invoke in a child (TFLM may segfault just under the minimum)."""
    code = ("import sys, numpy as np; from tflite_micro import runtime\n"
            "b = open(sys.argv[1], 'rb').read()\n"
            "try:\n it = runtime.Interpreter.from_bytes(b, arena_size=int(sys.argv[2]))\n"
            " d = it.get_input_details(0); it.set_input(np.zeros(d['shape'], d['dtype']), 0)\n"
            " it.invoke(); print('ok')\nexcept RuntimeError: print('fail')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(size)],
                          capture_output=True, text=True, timeout=60)
    return proc.stdout.strip() or f"crash {proc.returncode}"


def test_arena_found_works_and_clearly_smaller_fails(tdir, report):
    for m in [report["teacher"], report["fusion"], *report["students"]]:
        path, arena = tdir / m["file"], m["arena_bytes"]
        assert _probe(path, arena) == "ok", m["file"]
        assert _probe(path, int(arena * 0.8)) != "ok", m["file"]
        # the 32-bit figure: the graph estimate + the 32-bit margin (tests/test_sizing.py checks
        # the estimate against QEMU)
        assert m["arena_bytes_32bit"] == arena_32bit_with_margin(m["arena_bytes_32bit_estimate"])
        assert m["arena_bytes_32bit"] % 16 == 0


def test_report_keys_and_numbers_match_the_files(tdir, report, converted):
    assert converted.report == report
    for key in ("teacher", "fusion", "students", "system", "ratios"):
        assert key in report
    assert set(report["ratios"]) >= {"flash", "arena", "latency", "macs"}
    assert set(report["system"]) >= {"accuracy_float", "accuracy_int8", "num_students"}
    models = [report["teacher"], report["fusion"], *report["students"]]
    for m in models:
        for key in ("flash_bytes", "arena_bytes", "params", "macs", "latency_ms",
                    "accuracy_float", "accuracy_int8"):
            assert key in m, key
        parsed = read_tflite(tdir / m["file"])
        assert m["flash_bytes"] == (tdir / m["file"]).stat().st_size
        assert (m["params"], m["macs"]) == (parsed.params, parsed.macs)
        assert m["latency"]["reference"]["runs"] == 20 and m["latency"]["default"]["runs"] == 20
        assert 0 < m["latency_ms"] <= m["latency_p90_ms"]
    for s in report["students"]:
        assert {"id", "filters", "payload_bytes", "board"} <= set(s)
        assert s["payload_bytes"] == s["width"] + WIRE_HEADER_BYTES == len(s["filters"]) + HEADER_SIZE
        assert s["accuracy_float"] is None and s["accuracy_int8"] is None
        assert s["board"] is None and s["fits"] is None  # boards=[]: fit skipped
    biggest = max(s["macs"] for s in report["students"])
    assert report["ratios"]["macs"] == pytest.approx(report["teacher"]["macs"] / biggest)
    assert report["fusion"]["accuracy_int8"] == report["system"]["accuracy_int8"]


def test_report_views_agree_with_json(tdir, report):
    rows = list(csv.DictReader(io.StringIO((tdir / "report.csv").read_text())))
    assert [r["model"] for r in rows] == ["teacher", "student 0", "student 1", "fusion"]
    assert int(rows[1]["flash_bytes"]) == report["students"][0]["flash_bytes"]
    md = (tdir / "report.md").read_text()
    assert "q_f = clip(round((q_k - zp_k) * s_k / s_f) + zp_f, -128, 127)" in md
    assert "## Models" in md and "student 1" in md
    png = (tdir / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_deployment_json_contract(tdir, report, digits):
    dep = json.loads((tdir / "deployment.json").read_text())
    assert dep["schema"] == 1 and dep["deployment"] == "digits-k2" and dep["fusion_input"] == "requantise"
    assert dep["num_classes"] == 10 and dep["class_names"] == digits.class_names
    assert dep["input_shape"] == [8, 8, 1]
    assert sum(s["width"] for s in dep["students"]) == dep["fusion"]["input_width"] == 11
    for s, r in zip(dep["students"], report["students"], strict=True):
        assert set(s) >= {"id", "file", "filters", "width", "input", "output", "arena_bytes", "board"}
        assert s["arena_bytes"] == r["arena_bytes_32bit"] and (tdir / s["file"]).is_file()
        m = read_tflite(tdir / s["file"])
        assert (s["output"]["scale"], s["output"]["zero_point"]) == qparams(m.output_tensors()[0])
    fm = read_tflite(tdir / "fusion.tflite")
    assert (dep["fusion"]["input"]["scale"], dep["fusion"]["input"]["zero_point"]) == \
        qparams(fm.input_tensors()[0])
    from nonn_tflite.deployment import load_deployment  # the live nodes' own reader accepts it

    assert load_deployment(tdir).fusion.input_width == 11


def test_test_sample_and_calibration_record(tdir, converted, digits):
    with np.load(tdir / "test_sample.npz") as z:
        assert z["x"].dtype == np.uint8 and np.array_equal(z["x"], digits.x_test[:2000])
        assert np.array_equal(z["y"], digits.y_test[:2000])
    cal = json.loads((tdir / "calibration_indices.json").read_text())
    assert cal["split"] == "train" and cal["seed"] == 3 and cal["count"] == len(cal["indices"]) == 200
    run = RunDir.open(converted.run_dir, need="convert")
    cfg = run.config("convert")
    assert cfg["calibration_count"] == 200 and cfg["seed"] == 3
    assert cfg["calibration_indices_sha256"] == converted.report["calibration"]["indices_sha256"]
    assert run.manifest["metrics"]["int8_accuracy"] == converted.report["system"]["accuracy_int8"]
    assert run.verify_files() == []
    assert run.manifest["files"]["tflite/student_0.tflite"] == sha256_file(tdir / "student_0.tflite")


def test_reconversion_is_byte_identical(tdir, converted, digits):
    """Same Keras model + same calibration indices + same seed -> the very same bytes."""
    cal = json.loads((tdir / "calibration_indices.json").read_text())
    student = load_keras_model(converted.run_dir / "student_0.keras", "student 0")
    x = digits.x_train[np.asarray(cal["indices"])].astype(np.float32) / 255.0
    assert convert_int8(student, x) == (tdir / "student_0.tflite").read_bytes()


def test_board_fit_names_the_numbers(converted):
    from nonn_tflite.profile import ModelProfile

    r = converted.report["students"][0]
    profile = ModelProfile(**{k: r[k] for k in ModelProfile.__dataclass_fields__})
    tiny = Board("tiny", "tiny test board", flash_bytes=64 * 1024, ram_bytes=4096,
                 reserve_flash_bytes=62 * 1024, reserve_ram_bytes=3072, clock_mhz=16, core="m0",
                 radio="none", os="none", source="test")
    fit = board_fit(profile, tiny, "student 0")
    assert fit["fits"] is False
    msg = fit["problem"]
    assert "student 0 does not fit tiny" in msg
    assert f"{r['arena_bytes_32bit']:,} B" in msg and "1,024 B of RAM" in msg
    assert f"flash {r['flash_bytes']:,} B > 2,048 B" in msg
    assert board_fit(profile, get_board("esp32"), "student 0")["fits"] is True


def test_board_resolution(converted):
    run = RunDir.open(converted.run_dir)
    assert resolve_boards(None, run, 2) == [None, None]  # distill recorded no boards
    assert [b.name for b in resolve_boards(["esp32"], run, 2)] == ["esp32", "esp32"]
    assert [b.name for b in resolve_boards(["esp32", "rp2040"], run, 2)] == ["esp32", "rp2040"]
    with pytest.raises(UsageError, match="3 boards given for 2 students"):
        resolve_boards(["esp32", "rp2040", "nano33ble"], run, 2)
    with pytest.raises(UsageError, match="unknown board"):
        resolve_boards(["toaster"], run, 2)


# -- CLI ---------------------------------------------------------------------------------------

def test_cli_convert_with_board_prints_table(synthetic_run, tmp_path):
    path = tmp_path / "cli-run"
    shutil.copytree(synthetic_run, path)
    res = CliRunner().invoke(main, ["convert", str(path), "--board", "esp32", "--calibration", "100",
                                    "--parity-samples", "4"])
    assert res.exit_code == 0, res.output
    assert "student 0" in res.output and "esp32 ok" in res.output and "teacher / largest" in res.output
    rep = json.loads((path / "tflite" / "report.json").read_text())
    assert [s["board"] for s in rep["students"]] == ["esp32", "esp32"]
    assert rep["teacher"]["latency"]["reference"]["runs"] == 200  # the CLI keeps >= 200
    again = CliRunner().invoke(main, ["convert", str(path)])
    assert again.exit_code == 2 and "--force" in again.output and "Traceback" not in again.output


def test_cli_convert_refuses_too_few_latency_runs(synthetic_run):
    res = CliRunner().invoke(main, ["convert", str(synthetic_run), "--latency-runs", "10"])
    assert res.exit_code == 2 and "latency-runs" in res.output


def test_cli_inspect_shows_the_facts(tdir):
    res = CliRunner().invoke(main, ["inspect", str(tdir / "student_0.tflite"), "--latency", "5"])
    assert res.exit_code == 0, res.output
    for text in ("CONV_2D", "MEAN", "int8", "TFLite Micro check: OK", "arena:", "MACs", "params",
                 "latency"):
        assert text in res.output, text
    js = CliRunner().invoke(main, ["inspect", str(tdir / "fusion.tflite"), "--json", "--no-tensors"])
    facts = json.loads(js.output)
    assert facts["tflm_compatible"] and facts["ops"] == ["FULLY_CONNECTED"]
    assert facts["arena"]["arena_bytes"] > 0
    assert facts["flash_bytes"] == (tdir / "fusion.tflite").stat().st_size


@pytest.mark.parametrize("content", [b"hello, I am text\n" * 30, b"\x00" * 3, b"TFL3" * 100])
def test_cli_inspect_corrupt_file_is_one_line(tmp_path, content):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(content)
    res = CliRunner().invoke(main, ["inspect", str(bad)])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "not a valid TFLite model" in lines[0]


def test_cli_inspect_survives_a_model_that_kills_tflm(tdir, tmp_path):
    """A flatbuffer that is structurally sound but makes TFLM divide by zero (SIGFPE):
    the input's channel dimension set to 0. The child dies; the CLI reports it."""
    data = bytearray((tdir / "student_0.tflite").read_bytes())
    shape = np.array([4, 1, 8, 8, 1], "<i4").tobytes()  # vector length 4, then [1, 8, 8, 1]
    assert data.count(shape) == 1
    pos = data.find(shape) + 16
    data[pos:pos + 4] = np.array([0], "<i4").tobytes()
    evil = tmp_path / "evil.tflite"
    evil.write_bytes(bytes(data))
    assert read_tflite(evil).tensors[0].shape == (1, 8, 8, 0)  # passes structural checks
    res = CliRunner().invoke(main, ["inspect", str(evil), "--no-tensors"])
    assert res.exit_code == 2 and "TFLite Micro crashed (SIGFPE)" in res.output
    assert "CONV_2D" in res.output  # the facts were still shown


def test_cli_inspect_flags_unsupported_ops(tmp_path, float_images):
    import keras

    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Activation("gelu", name="smooth")(keras.layers.Conv2D(4, 3, name="conv")(inp))
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D(name="gap")(x))
    path = tmp_path / "gelu.tflite"
    path.write_bytes(convert_int8(model, float_images))
    res = CliRunner().invoke(main, ["inspect", str(path), "--no-tensors", "--no-arena"])
    assert res.exit_code == 1 and "GELU" in res.output and "has no TFLite Micro kernel" in res.output
    assert parse_tflite(path.read_bytes()).op_names == ["CONV_2D", "GELU", "MEAN"]


def test_board_misfit_fails_convert_after_writing_the_report(synthetic_run, tmp_path):
    """A student too big for the board: convert writes everything, then says which numbers."""
    import keras

    from nonn_tflite.convert import ConvertOptions, convert_run
    from nonn_tflite.errors import BoardFitError

    path = tmp_path / "too-big"
    shutil.copytree(synthetic_run, path)
    inp = keras.Input((8, 8, 1), name="s1_image")  # ~630k int8 weights, few MACs
    x = keras.layers.Conv2D(9000, 8, activation="relu", name="s1_wide")(inp)
    x = keras.layers.Conv2D(6, 1, activation="relu", name="s1_proj")(x)
    big = keras.Model(inp, keras.layers.GlobalAveragePooling2D(name="s1_vector")(x), name="student_1")
    big.save(path / "student_1.keras")
    with pytest.raises(BoardFitError) as exc:
        convert_run(path, ConvertOptions(calibration=20, boards=["esp32"], latency_runs=3,
                                         parity_samples=2))
    msg = str(exc.value)
    flash = (path / "tflite" / "student_1.tflite").stat().st_size
    limit = get_board("esp32").model_flash_bytes
    assert msg.startswith("student 1 does not fit esp32: ") and "student 0" not in msg
    assert f"flash {flash:,} B > {limit:,} B left for the model" in msg
    rep = json.loads((path / "tflite" / "report.json").read_text())
    assert [s["fits"] for s in rep["students"]] == [True, False]
    assert "Board fit: FAILED" in (path / "tflite" / "report.md").read_text()
    assert RunDir.open(path).has("convert")  # the numbers are kept for resizing
