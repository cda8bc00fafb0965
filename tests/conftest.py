"""Fixtures shared by all tests: tiny real models on the embedded digits data, real brokers,
subprocess clean-up and the CLI as users run it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

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


# ---- brokers and processes (live, web and hostile tests) -----------------------------------

@pytest.fixture
def mosquitto(tmp_path):
    """A fresh mosquitto per test on a free loopback port, so retained status messages never
    leak between tests."""
    from nonn_tflite.live.broker import mosquitto_broker

    broker = mosquitto_broker(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


@pytest.fixture
def amqtt_broker(tmp_path):
    from nonn_tflite.live.broker import embedded_broker

    broker = embedded_broker(workdir=tmp_path).start()
    yield broker
    broker.stop()


@pytest.fixture
def procs():
    """Subprocesses a test starts; they and their children are killed on teardown."""
    import psutil

    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        try:
            kids = psutil.Process(p.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        if p.poll() is None:
            p.kill()
            p.wait(10)
        for kid in kids:
            with contextlib.suppress(psutil.NoSuchProcess):
                kid.kill()


@pytest.fixture(scope="session")
def cli():
    """argv for ``nonn-tflite ARGS...`` in a fresh interpreter (as users run it)."""
    return lambda *args: [sys.executable, "-m", "nonn_tflite.cli", *map(str, args)]
