"""A tiny distilled run on the real digits data, built once per session (about 15 s).

The stages are written with :meth:`RunDir.stage` exactly as the pipeline does, but the models
are small hand-made Keras networks trained for a few epochs, so convert can be tested without
waiting for teacher training, partitioning or distillation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from nonn_tflite.config import DataConfig, DistillConfig, to_dict  # noqa: E402
from nonn_tflite.data import load_dataset, to_float  # noqa: E402
from nonn_tflite.rundir import RunDir, write_json  # noqa: E402

WIDTHS = (5, 6)
TEST_LATENCY_RUNS = 20  # the CLI insists on >= 200; tests only need the code path


def _teacher(keras, shape, classes):
    inp = keras.Input(shape, name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="t_conv1")(inp)
    x = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu", name="t_conv2")(x)
    x = keras.layers.Conv2D(11, 1, activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inp, keras.layers.Dense(classes, name="logits")(x), name="teacher")


def _student(keras, shape, k, width):
    inp = keras.Input(shape, name=f"s{k}_image")
    x = keras.layers.Conv2D(16, 5, strides=2, padding="same", activation="relu", name=f"s{k}_conv")(inp)
    x = keras.layers.Conv2D(width, 1, activation="relu", name=f"s{k}_proj")(x)
    x = keras.layers.GlobalAveragePooling2D(name=f"s{k}_vector")(x)
    return keras.Model(inp, x, name=f"student_{k}")


def build_run(path: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    data = DataConfig(dataset="digits")
    ds = load_dataset(data)
    xf, shape = to_float(ds.x_train), ds.input_shape
    run = RunDir(path)

    teacher = _teacher(keras, shape, ds.num_classes)
    teacher.compile(keras.optimizers.Adam(0.01),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(xf, ds.y_train, epochs=20, batch_size=64, verbose=0)
    with run.stage("teacher") as st:
        teacher.save(st.dir / "teacher.keras")
        st.config = {"arch": "tiny-test"}
        st.extra = {"data": to_dict(data), "dataset": ds.describe(), "feature_layer": "features"}

    parts = [list(range(0, WIDTHS[0])), list(range(WIDTHS[0], sum(WIDTHS)))]
    with run.stage("partition") as st:
        write_json(st.dir / "partition.json", {"num_filters": sum(WIDTHS), "partitions": parts,
                                               "modularity": 0.0, "rule": "test", "seed": 0})
        st.config = {"students": len(WIDTHS)}

    students = [_student(keras, shape, k, w) for k, w in enumerate(WIDTHS)]
    inp = keras.Input(shape, name="image")
    concat = keras.layers.Concatenate(name="concat")([s(inp) for s in students])
    fusion = keras.Sequential([keras.Input((sum(WIDTHS),), name="features"),
                               keras.layers.Dense(ds.num_classes, name="fusion_logits")], name="fusion")
    ensemble = keras.Model(inp, fusion(concat), name="nonn")
    ensemble.compile(keras.optimizers.Adam(0.01),
                     keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ensemble.fit(xf, ds.y_train, epochs=30, batch_size=64, verbose=0)
    with run.stage("distill") as st:
        for k, s in enumerate(students):
            s.save(st.dir / f"student_{k}.keras")
        fusion.save(st.dir / "fusion.keras")
        st.config = to_dict(DistillConfig())
    return run.path


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory) -> Path:
    """A distilled (not converted) run directory; do not convert it in place."""
    return build_run(tmp_path_factory.mktemp("runs") / "digits-k2")


@pytest.fixture(scope="session")
def converted(synthetic_run, tmp_path_factory):
    """A converted copy of the synthetic run (its ConvertResult); few latency runs."""
    import shutil

    from nonn_tflite.convert import ConvertOptions, convert_run

    path = tmp_path_factory.mktemp("converted") / "digits-k2"
    shutil.copytree(synthetic_run, path)
    result = convert_run(path, ConvertOptions(calibration=200, seed=3, boards=[],
                                              latency_runs=TEST_LATENCY_RUNS, parity_samples=16))
    return result


@pytest.fixture(scope="session")
def digits():
    return load_dataset(DataConfig(dataset="digits"))


@pytest.fixture(scope="session")
def float_images() -> np.ndarray:
    """Calibration-like float images in [0, 1] for hand-built 8x8x1 models."""
    return np.random.default_rng(0).random((50, 8, 8, 1)).astype(np.float32)
