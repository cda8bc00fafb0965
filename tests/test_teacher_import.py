"""Teachers from elsewhere: the toolkit fits itself to a user's Keras teacher.

Stand-ins for what users bring, each a tiny CNN trained for seconds on the real digits data
with its own preprocessing: raw 0-255 inputs with an ``AveragePooling2D(full size)`` +
``Flatten`` head saved as legacy ``.h5``; a ``Rescaling`` layer inside; [-1, 1] inputs; a
nested sub-model with a 1x1 max-pool + reshape tail. For each, the chosen input convention and
feature layer are checked, and the imported accuracy must equal the model's own accuracy
under its own preprocessing. One goes end to end through int8 ``convert``.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner

from nonn_tflite.cli import main

pytestmark = pytest.mark.timeout(900)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, code: int, *matches: str) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for m in matches:
        assert m in lines[-1], lines[-1]
    return lines[-1]


# ---- stand-in teachers ---------------------------------------------------------------------

def _digits():
    from nonn_tflite.config import DataConfig
    from nonn_tflite.data import load_dataset

    return load_dataset(DataConfig())


def _body(keras, x, head: str):
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(x)
    x = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="c2")(x)
    if head == "avgpool-flatten":
        x = keras.layers.Flatten(name="flat")(keras.layers.AveragePooling2D(8, name="avg8")(x))
    else:
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.layers.Dense(10, name="logits")(x)


RAW = lambda x: x.astype(np.float32)  # noqa: E731
SYMMETRIC = lambda x: x.astype(np.float32) / 127.5 - 1  # noqa: E731
UNIT = lambda x: x.astype(np.float32) / 255  # noqa: E731


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """name -> (file, own preprocessing, expected convention, expected feature layer)."""
    import keras

    keras.utils.set_random_seed(0)
    ds = _digits()
    out = tmp_path_factory.mktemp("teachers")

    def fit(model, pre, name):
        model.compile(keras.optimizers.Adam(0.01),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(pre(ds.x_train), ds.y_train, epochs=8, batch_size=64, verbose=0)
        model.save(out / name)
        return out / name

    inp = keras.Input((8, 8, 1))
    raw = fit(keras.Model(inp, _body(keras, inp, "avgpool-flatten"), name="raw"), RAW, "raw.h5")
    inp = keras.Input((8, 8, 1))
    inside = keras.Model(inp, _body(keras, keras.layers.Rescaling(1 / 255, name="scale")(inp), "gap"),
                         name="rescaling_inside")
    rescaling = fit(inside, RAW, "rescaling.keras")
    inp = keras.Input((8, 8, 1))
    sym = fit(keras.Model(inp, _body(keras, inp, "gap"), name="symmetric"), SYMMETRIC, "symmetric.keras")
    b_in = keras.Input((8, 8, 1))
    b = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="b1")(b_in)
    b = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="inner_last")(b)
    nested = keras.Sequential([keras.Input((8, 8, 1)), keras.Model(b_in, b, name="backbone"),
                               keras.layers.MaxPooling2D(8, name="max8"),
                               keras.layers.Reshape((24,), name="squeeze"),
                               keras.layers.Dense(10, name="head")], name="nested")
    nest = fit(nested, UNIT, "nested.keras")
    return {"raw-h5": (raw, RAW, "raw", "c2"), "rescaling-inside": (rescaling, RAW, "raw", "c2"),
            "symmetric": (sym, SYMMETRIC, "symmetric", "c2"),
            "nested": (nest, UNIT, "unit", "inner_last")}


def own_accuracy(path, pre, x, y) -> float:
    import keras

    model = keras.models.load_model(path, compile=False)
    return float(np.mean(np.argmax(model.predict(pre(x), verbose=0), axis=1) == y))


# ---- each stand-in -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["raw-h5", "rescaling-inside", "symmetric", "nested"])
def test_import_finds_convention_and_feature_layer_and_keeps_accuracy(stand_ins, tmp_path, name, caplog):
    from nonn_tflite.config import DataConfig
    from nonn_tflite.pipeline import import_teacher, run_partition
    from nonn_tflite.config import PartitionConfig
    from nonn_tflite.rundir import RunDir

    path, pre, convention, layer = stand_ins[name]
    ds = _digits()
    with caplog.at_level(logging.INFO, logger="nonn_tflite"):
        run = import_teacher(tmp_path / "run", str(path), DataConfig())
    m = run.manifest
    assert m["config"]["teacher"]["input"] == convention
    assert m["teacher_import"]["input_chosen_by"] == "validation accuracy"
    assert m["feature_layer"] == layer == m["teacher_import"]["feature_layer"]
    assert m["metrics"]["teacher_accuracy"] == own_accuracy(path, pre, ds.x_test, ds.y_test)
    assert m["metrics"]["teacher_accuracy"] > 0.6
    text = caplog.text
    assert f"teacher input: {convention}" in text and f"feature layer: {layer}: the last spatial map" in text
    assert "8x8, 24 filters" in text
    doc = run_partition(RunDir(run.path), PartitionConfig(students=2, max_images=300))
    assert doc["feature_layer"] == layer and doc["num_filters"] == 24


@pytest.mark.parametrize("name", ["raw-h5", "nested"])
def test_imported_teacher_end_to_end_through_int8_convert(stand_ins, tmp_path, name):
    """raw-h5 is the issue's case: raw 0-255 pixels, AveragePooling2D(8)+Flatten head, legacy
    .h5; nested is a Sequential around a Functional backbone. The int8 teacher must keep the
    devices' input (x/255 quantised: int8 = uint8 - 128) and score what the user's model does."""
    from nonn_tflite.convert import ConvertOptions
    from nonn_tflite.commands.convert import convert_and_report

    path, pre, convention, _ = stand_ins[name]
    run = tmp_path / "raw"
    res = invoke("partition", run, "--students", "2", "--teacher", path, "--max-images", "300", "-q")
    assert res.exit_code == 0, res.output
    res = invoke("distill", run, "--epochs", "2", "--cache-teacher", "-q")
    assert res.exit_code == 0, res.output
    result = convert_and_report(run, ConvertOptions(calibration=100, boards=[], latency_runs=5,
                                                    parity_samples=4))
    report = result.report
    manifest = json.loads((run / "manifest.json").read_text())
    ds = _digits()
    own = own_accuracy(path, pre, ds.x_test, ds.y_test)
    assert report["system"]["teacher_accuracy_float"] == pytest.approx(own)
    assert report["system"]["teacher_accuracy_int8"] > own - 0.05
    teacher_in = report["teacher"]["input"]
    assert teacher_in["dtype"] == "int8" and teacher_in["zero_point"] == -128
    assert teacher_in["scale"] == pytest.approx(1 / 255, rel=1e-3)
    for s in report["students"]:  # students keep the device convention too
        assert s["input"]["zero_point"] == -128 and s["input"]["scale"] == pytest.approx(1 / 255, rel=1e-3)
    assert manifest["config"]["teacher"]["input"] == convention


def test_an_explicit_teacher_input_is_used_and_recorded(stand_ins, tmp_path):
    path, pre, _, _ = stand_ins["symmetric"]
    res = invoke("teacher", "--teacher", path, "--teacher-input", "symmetric", "--out", tmp_path / "r", "-q")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["teacher_import"]["input_chosen_by"] == "--teacher-input"
    assert list(m["teacher_import"]["input_val_accuracy"]) == ["symmetric"]
    res = invoke("teacher", "--teacher", path, "--teacher-input", "unit", "--out", tmp_path / "s")
    assert_one_line_error(res, 2, "near chance", "drop --teacher-input")
    res = invoke("teacher", "--teacher", path, "--teacher-input", "0-255", "--out", tmp_path / "t")
    assert_one_line_error(res, 2, "--teacher-input '0-255' is not understood", "mean-std:M,S")
    res = invoke("teacher", "--teacher-input", "raw", "--out", tmp_path / "u")
    assert_one_line_error(res, 2, "pass --teacher FILE too")


def test_feature_layer_override_and_its_error_lists_candidates(stand_ins, tmp_path):
    path, _, _, _ = stand_ins["nested"]
    run = tmp_path / "r"
    res = invoke("partition", run, "--teacher", path, "--feature-layer", "b1", "--max-images", "200", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads((run / "partition.json").read_text())["feature_layer"] == "b1"
    res = invoke("partition", tmp_path / "s", "--teacher", path, "--feature-layer", "nope")
    line = assert_one_line_error(res, 2, "'nope' is not a layer", "b1 (8, 8, 16)", "inner_last (8, 8, 24)")
    assert "max8" not in line  # a 1x1 pooled map is no candidate


def test_mean_std_per_channel_is_baked_in_exactly_and_survives_saving(tmp_path):
    import keras

    from nonn_tflite.teacher import imported_graph, load_keras_model, parse_teacher_input

    keras.utils.set_random_seed(1)
    inp = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(h)))
    conv = parse_teacher_input("mean-std:0.4/0.5/0.6,0.2/0.25/0.3")
    x01 = np.random.default_rng(0).random((5, 6, 6, 3), dtype=np.float32)
    want = model.predict((x01 - [0.4, 0.5, 0.6]) / np.float32([0.2, 0.25, 0.3]), verbose=0)
    wrapped = imported_graph(model, conv)
    wrapped.save(tmp_path / "t.keras")
    got = load_keras_model(tmp_path / "t.keras").predict(x01, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert parse_teacher_input("mean-std:cifar10").scale[0] == pytest.approx(1 / 0.2470)


# ---- refusals ------------------------------------------------------------------------------

def _save(model, path):
    model.save(path)
    return path


def test_a_teacher_at_chance_is_refused_in_one_line(tmp_path):
    import keras

    inp = keras.Input((8, 8, 1))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, padding="same")(inp))
    out = keras.layers.Dense(10, kernel_initializer="zeros")(h)  # constant logits: guessing
    path = _save(keras.Model(inp, out), tmp_path / "guess.keras")
    res = invoke("partition", tmp_path / "r", "--teacher", path)
    assert_one_line_error(res, 2, "near chance", "chance 0.100", "unit ", "raw ", "symmetric ",
                          "pass the --dataset it was trained on")
    assert not (tmp_path / "r" / "manifest.json").exists()


def test_wrong_class_count_and_wrong_input_shape_say_what_to_pass(tmp_path):
    import keras

    inp = keras.Input((8, 8, 1))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, padding="same")(inp))
    five = _save(keras.Model(inp, keras.layers.Dense(5)(h)), tmp_path / "five.h5")
    assert_one_line_error(invoke("teacher", "--teacher", five, "--out", tmp_path / "a"), 2,
                          "outputs 5 classes but dataset digits has 10", "pass the --dataset")
    inp = keras.Input((16, 16, 3))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, padding="same")(inp))
    big = _save(keras.Model(inp, keras.layers.Dense(10)(h)), tmp_path / "big.keras")
    assert_one_line_error(invoke("teacher", "--teacher", big, "--out", tmp_path / "b"), 2,
                          "takes inputs of shape (16, 16, 3)", "images of shape (8, 8, 1)",
                          "pass the --dataset")
