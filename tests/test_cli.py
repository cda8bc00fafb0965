"""The CLI end to end on digits, and every user error as one line with the right exit code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from nonn_tflite.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, code: int, match: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.output
    assert match in lines[-1], lines[-1]
    assert "Traceback" not in result.output


def test_run_on_digits_end_to_end(digits_run):
    manifest = json.loads((digits_run / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"teacher", "partition", "distill"}
    metrics = manifest["metrics"]
    assert 0.5 < metrics["teacher_accuracy"] <= 1.0
    assert 0.3 < metrics["nonn_accuracy"] <= 1.0  # 4 epochs only: far above chance (0.1)
    for name in ("teacher.keras", "student_0.keras", "student_1.keras", "fusion.keras",
                 "partition.json", "partition.png", "history_teacher.csv", "history_distill.csv"):
        assert (digits_run / name).exists(), name
        assert name in manifest["files"]
    part = json.loads((digits_run / "partition.json").read_text())
    assert sorted(f for p in part["partitions"] for f in p) == list(range(part["num_filters"]))
    for s in manifest["students"]:  # each student well under 1/8 of the teacher
        assert s["params"] * 8 <= metrics["teacher_params"]
    assert manifest["dataset"]["name"] == "digits" and len(manifest["dataset"]["sha256"]) == 64
    assert manifest["versions"]["keras"].startswith("3.")


def test_info_prints_the_run(digits_run):
    result = invoke("info", digits_run)
    assert result.exit_code == 0, result.output
    assert "teacher" in result.output and "NoNN (float)" in result.output
    data = json.loads(invoke("info", digits_run, "--json").output)
    assert data["format"] == 1


def test_rerunning_a_finished_stage_asks_for_force(digits_run):
    result = invoke("partition", digits_run, "--students", "2")
    assert_one_line_error(result, 2, "already finished")
    assert "--force" in result.output


def test_a_finished_distill_is_refused_before_any_training(digits_run):
    """The refusal comes first: a dropout of 1.5 would fail inside training, so reaching
    "already finished" proves no training was started (minutes saved on a real run)."""
    from nonn_tflite.config import DistillConfig
    from nonn_tflite.errors import RunDirError
    from nonn_tflite.pipeline import run_distill
    from nonn_tflite.rundir import RunDir

    with pytest.raises(RunDirError, match="already finished"):
        run_distill(RunDir(digits_run), DistillConfig(student_dropout=1.5))
    stages = json.loads((digits_run / "manifest.json").read_text())["stages"]
    assert stages["distill"]["seconds"] > 1.0  # the training itself is timed, not the saving


def test_stage_on_a_missing_run_dir(tmp_path):
    assert_one_line_error(invoke("distill", tmp_path / "nope"), 2, "not found")


def test_stage_needs_previous_stage(tmp_path, tiny_teacher_path):
    run = tmp_path / "r"
    result = invoke("teacher", "--teacher", tiny_teacher_path, "--out", run, "-q")
    assert result.exit_code == 0, result.output
    assert_one_line_error(invoke("distill", run), 2, "no finished 'partition' stage")


def test_partition_from_a_users_teacher(tmp_path, tiny_teacher_path):
    run = tmp_path / "mine"
    result = invoke("partition", run, "--students", "3", "--teacher", tiny_teacher_path, "-q")
    assert result.exit_code == 0, result.output
    part = json.loads((run / "partition.json").read_text())
    assert part["num_filters"] == 24 and len(part["partitions"]) == 3
    assert part["feature_layer"] == "features"


@pytest.mark.parametrize("k", ["0", "25"])
def test_k_out_of_range(tmp_path, tiny_teacher_path, k):
    result = invoke("partition", tmp_path / "r", "--students", k, "--teacher", tiny_teacher_path)
    assert_one_line_error(result, 2, "--students")


def test_missing_corrupt_and_non_keras_model_files(tmp_path):
    assert_one_line_error(invoke("teacher", "--teacher", tmp_path / "no.keras", "--out", tmp_path / "a"),
                          2, "not found")
    bad = tmp_path / "corrupt.keras"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip")
    assert_one_line_error(invoke("teacher", "--teacher", bad, "--out", tmp_path / "b"), 2, "corrupt")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert_one_line_error(invoke("teacher", "--teacher", text, "--out", tmp_path / "c"), 2,
                          "not a Keras model file")
    assert not (tmp_path / "b" / "manifest.json").exists()  # nothing that looks complete


def _save(model, path):
    model.save(path)
    return path


def test_teacher_without_4d_feature_map(tmp_path):
    import keras

    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp)))
    path = _save(model, tmp_path / "mlp.keras")
    result = invoke("teacher", "--teacher", path, "--out", tmp_path / "r")
    assert_one_line_error(result, 2, "no 4-D feature map")


def test_shape_mismatch_between_teacher_and_dataset(tmp_path):
    import keras

    inp = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(4, 3)(inp)
    model = keras.Model(inp, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h)))
    path = _save(model, tmp_path / "c10.keras")
    result = invoke("teacher", "--teacher", path, "--out", tmp_path / "r")
    assert_one_line_error(result, 2, "takes inputs of shape (32, 32, 3)")


def test_dataset_not_found(tmp_path):
    result = invoke("teacher", "--dataset", "cifar10", "--data-dir", tmp_path / "none", "--out", tmp_path / "r")
    assert_one_line_error(result, 2, "cifar10: no train.npz")


def test_impossible_budget(tmp_path, tiny_teacher_path):
    run = tmp_path / "r"
    assert invoke("partition", run, "--teacher", tiny_teacher_path, "-q").exit_code == 0
    result = invoke("distill", run, "--flash-kb", "1", "--ram-kb", "1", "--epochs", "1")
    assert_one_line_error(result, 2, "no student fits device 0's budget")
    assert "try --flash-kb" in result.output
    assert not (run / "student_0.keras").exists()


def test_unknown_board_and_bad_option_values(tmp_path, tiny_teacher_path):
    run = tmp_path / "r"
    assert invoke("partition", run, "--teacher", tiny_teacher_path, "-q").exit_code == 0
    assert_one_line_error(invoke("distill", run, "--board", "uno"), 2, "unknown board 'uno'")
    assert_one_line_error(invoke("distill", run, "--student-dropout", "1.5"), 2, "--student-dropout")


def test_debug_shows_the_traceback(tmp_path):
    result = invoke("teacher", "--teacher", tmp_path / "no.keras", "--out", tmp_path / "a", "--debug")
    assert result.exit_code != 0 and result.exception is not None


def test_help_is_fast_and_has_examples():
    code = "import sys, time; t = time.time(); from nonn_tflite.cli import main; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # nothing heavy at import
    for cmd in ("run", "teacher", "partition", "distill", "info", "boards"):
        result = invoke(cmd, "--help")
        assert result.exit_code == 0 and "Example" in result.output, cmd


def test_boards_lists_the_catalogue():
    result = invoke("boards", "--json")
    data = json.loads(result.output)
    assert {"esp32", "nano33ble", "rp2040", "stm32f746", "rpi-zero-2"} <= set(data)


def test_distill_with_cached_teacher_outputs(tmp_path, tiny_teacher_path):
    run = tmp_path / "cached"
    assert invoke("partition", run, "--students", "2", "--teacher", tiny_teacher_path, "-q").exit_code == 0
    result = invoke("distill", run, "--cache-teacher", "--epochs", "2", "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["distill"]["cache_teacher"] is True
    import csv

    rows = list(csv.DictReader(open(run / "history_distill.csv")))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])  # it trains on the cached outputs


def test_library_api_is_importable_without_the_cli_and_light():
    code = ("import sys; import nonn_tflite as n; "
            "assert callable(n.run_teacher) and callable(n.partition_filters) and n.DataConfig; "
            "print('keras' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
