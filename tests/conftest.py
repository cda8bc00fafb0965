"""Fixtures shared by the core tests: tiny real models on the embedded digits data."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


def _digits_xy():
    from nonn_tflite.config import DataConfig
    from nonn_tflite.data import load_dataset, to_float

    ds = load_dataset(DataConfig())
    return ds, to_float(ds.x_train), ds.y_train


@pytest.fixture(scope="session")
def tiny_teacher_path(tmp_path_factory):
    """A small convolutional teacher for digits (8x8x1 -> 10 logits), trained for seconds."""
    import keras

    keras.utils.set_random_seed(0)
    ds, x, y = _digits_xy()
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(24, 3, padding="same", name="features", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(10)(h)
    model = keras.Model(inp, out)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    path = tmp_path_factory.mktemp("teacher") / "tiny_teacher.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A whole `nonn-tflite run` on digits through the CLI, with few epochs (shared, read-only)."""
    from click.testing import CliRunner

    from nonn_tflite.cli import main

    out = tmp_path_factory.mktemp("runs") / "digits-k2"
    result = CliRunner().invoke(main, ["run", "--students", "2", "--out", str(out),
                                       "--teacher-epochs", "4", "--epochs", "4", "--no-convert", "-q"])
    assert result.exit_code == 0, result.output
    return out
