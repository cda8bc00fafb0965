"""Untrusted dataset and model files: pickle-bearing inputs are refused, in one line, exit 2.

The hostile files are made in a child process (TensorFlow stays out of pytest). The Lambda
layer's code writes a marker file when it runs: after the CLI refuses the model, the marker
must not exist, i.e. nothing from the file was executed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]

MAKE_EVIL = r'''
import os, sys
from pathlib import Path
import numpy as np
out, marker = Path(sys.argv[1]), sys.argv[2]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
inp = keras.Input((8, 8, 1))
h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="features")(inp)
h = keras.layers.Lambda(lambda t, m=marker: (open(m, "w").write("ran"), t)[1], name="evil")(h)
model = keras.Model(inp, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h)))
model.save(out / "evil.keras")
os.remove(marker)  # building the model ran the lambda once, here: start clean
data = out / "data"
data.mkdir()
objects = np.empty(4, dtype=object)
objects[:] = [{"evil": i} for i in range(4)]
np.savez(data / "train.npz", x=objects, y=np.zeros(4, np.int64))
np.savez(data / "test.npz", x=np.zeros((4, 8, 8, 1), np.uint8), y=np.zeros(4, np.int64))
np.savez(out / "images.npz", x=objects, y=np.zeros(4, np.int64))
'''


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("evil")
    marker = out / "lambda-ran"
    done = subprocess.run([sys.executable, "-c", MAKE_EVIL, str(out), str(marker)],
                          check=False, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "evil.keras").is_file() and not marker.exists()
    return out, marker


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "nonn_tflite.cli", *args], check=False,
                          capture_output=True, text=True, timeout=240, cwd=cwd, env=env)


def one_error_line(stderr: str) -> str:
    lines = [s for s in stderr.strip().splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr[-2000:]
    return lines[0]


def test_keras_model_with_a_lambda_is_refused_and_never_runs(evil, tmp_path):
    out, marker = evil
    done = cli("teacher", "--teacher", str(out / "evil.keras"), "--out", str(tmp_path / "run"),
               cwd=tmp_path)
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "evil.keras could not be loaded" in line and "Lambda" in line, line
    assert not marker.exists()  # safe_mode refused the bytecode: nothing of it ran
    assert not (tmp_path / "run" / "teacher.keras").exists()


def test_dataset_npz_with_object_arrays_is_refused(evil, tmp_path):
    out, _ = evil
    done = cli("teacher", "--dataset", str(out / "data"), "--out", str(tmp_path / "run"),
               "--epochs", "1", cwd=tmp_path)
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "train.npz holds pickled objects, which are refused for safety" in line, line


def test_live_image_npz_with_object_arrays_is_refused(evil, k4_run, tmp_path):
    """The camera's --npz (source and demo) goes through its own loader: refused too."""
    out, _ = evil
    done = cli("source", str(k4_run), "--npz", str(out / "images.npz"), "--broker",
               "mqtt://127.0.0.1:9", cwd=tmp_path)
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "images.npz" in line and "pickled objects" in line, line
