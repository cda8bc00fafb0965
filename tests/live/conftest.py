"""Fixtures for the live tests: a tiny real int8 deployment and real brokers (no mocks).

The deployment is built here, not by the pipeline, so these tests stand on their own: two
small CNN students (8x8x1 -> 5 and 6 pooled channels) and a Dense fusion (11 -> 10), fitted for
a few seconds on scikit-learn's digits and converted to full-integer int8 .tflite files, laid
out as a run directory exactly as docs/ARCHITECTURE.md specifies.

Run ``python tests/live/conftest.py OUT`` to write the same run directory for manual demos.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WIDTHS = (5, 6)
NAME = "digits-k2"
REPO = Path(__file__).resolve().parents[2]


# ---- the tiny deployment ----------------------------------------------------------------

def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.data * 255.0 / 16.0).astype(np.uint8).reshape(-1, 8, 8, 1)
    return x, d.target.astype(np.int64)


def _models(widths: tuple[int, ...]):
    import keras

    inp = keras.Input((8, 8, 1))
    students = []
    for k, w in enumerate(widths):
        h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
        h = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu")(h)
        h = keras.layers.Conv2D(w, 1, activation="relu")(h)  # the partition's width
        students.append(keras.Model(inp, keras.layers.GlobalAveragePooling2D()(h), name=f"s{k}"))
    dense = keras.layers.Dense(10, name="fusion")
    vec = keras.Input((sum(widths),))
    fusion = keras.Model(vec, dense(vec))
    joint = keras.Model(inp, dense(keras.layers.Concatenate()([s(inp) for s in students])))
    return students, fusion, joint


def _to_int8(model, samples: np.ndarray) -> bytes:
    import tensorflow as tf

    def representative():
        for s in samples:
            yield [s[None].astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def _qparams(path: Path) -> tuple[dict, dict]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    q = [d["quantization"] for d in (it.get_input_details()[0], it.get_output_details()[0])]
    return tuple({"scale": float(s), "zero_point": int(z)} for s, z in q)


def build_tiny_run(out: Path, epochs: int = 8, test_size: int = 300) -> Path:
    """Write ``out/tflite/{student_k,fusion}.tflite, deployment.json, test_sample.npz``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    x, y = _digits()
    xtr, ytr, xte, yte = x[:-test_size], y[:-test_size], x[-test_size:], y[-test_size:]
    students, fusion, joint = _models(WIDTHS)
    joint.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    joint.fit(xtr / 255.0, ytr, epochs=epochs, batch_size=32, verbose=0)  # ~5 s, ~90 %
    tfl = out / "tflite"
    tfl.mkdir(parents=True, exist_ok=True)
    calib = xtr[:128] / 255.0
    entries = []
    for k, (s, w) in enumerate(zip(students, WIDTHS)):
        (tfl / f"student_{k}.tflite").write_bytes(_to_int8(s, calib))
        qin, qout = _qparams(tfl / f"student_{k}.tflite")
        entries.append({"id": k, "file": f"student_{k}.tflite", "filters": list(range(w)),
                        "width": w, "input": qin, "output": qout, "arena_bytes": 0,
                        "board": "host"})
    vectors = np.concatenate([s.predict(calib, verbose=0) for s in students], axis=1)
    (tfl / "fusion.tflite").write_bytes(_to_int8(fusion, vectors))
    fin, fout = _qparams(tfl / "fusion.tflite")
    deployment = {
        "schema": 1, "deployment": NAME, "num_classes": 10,
        "class_names": [str(i) for i in range(10)], "input_shape": [8, 8, 1],
        "students": entries,
        "fusion": {"file": "fusion.tflite", "input_width": sum(WIDTHS), "input": fin,
                   "output": fout},
        "fusion_input": "requantise",
    }
    (tfl / "deployment.json").write_text(json.dumps(deployment, indent=2))
    np.savez(tfl / "test_sample.npz", x=xte, y=yte)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The run directory, built once per session (about 15 s with TensorFlow on 2 cores).

    Built in a subprocess so that the pytest process itself never imports TensorFlow.
    """
    out = tmp_path_factory.mktemp("runs") / NAME
    done = subprocess.run([sys.executable, __file__, str(out)], capture_output=True, text=True,
                          timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def deployment(tiny_run):
    from nonn_tflite.live.models import load_deployment

    return load_deployment(tiny_run)


# ---- brokers ----------------------------------------------------------------------------

@pytest.fixture
def mosquitto(tmp_path):
    """A fresh mosquitto per test (retained status messages must not leak between tests)."""
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
    """Subprocesses a test starts; all of them (and their children) are killed on teardown."""
    import psutil

    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            try:
                kids = psutil.Process(p.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                kids = []
            p.kill()
            p.wait(10)
            for kid in kids:
                try:
                    kid.kill()
                except psutil.NoSuchProcess:
                    pass


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nonn_tflite.cli", *args]


@pytest.fixture(scope="session")
def cli():
    """argv for ``nonn-tflite ARGS...`` in a fresh interpreter (as users run it)."""
    return _cli



# ---- in-process nodes -----------------------------------------------------------------------

class LiveNodes:
    """Devices, fusion worker(s) and a source as threads of the test process (real MQTT)."""

    def __init__(self, deployment, url: str, images, *, fusions=None, device_queue: int = 64,
                 rate: float = 50.0, frames: int = 100, drain_s: float = 3.0,
                 protocol: str = "auto") -> None:
        from nonn_tflite.live.device import DeviceConfig, DeviceNode
        from nonn_tflite.live.fusion import FusionConfig, FusionNode
        from nonn_tflite.live.mqtt import BrokerConfig
        from nonn_tflite.live.source import SourceConfig, SourceNode

        broker = BrokerConfig.from_url(url, protocol=protocol)
        self.started: list = []
        self.devices = [self._start(DeviceNode(deployment, broker, DeviceConfig(
            s.id, queue=device_queue))) for s in deployment.students]
        self.fusions = [self._start(FusionNode(deployment, broker, cfg))
                        for cfg in (fusions or [FusionConfig(deadline_ms=2000)])]
        self.source = self._start(SourceNode(deployment, broker, images, SourceConfig(
            rate=rate, frames=frames, drain_s=drain_s)))

    def _start(self, node):
        node.start()
        self.started.append(node)
        return node

    def stop(self) -> None:
        for node in reversed(self.started):
            node.stop()
        self.started.clear()


@pytest.fixture
def live_nodes(deployment, tiny_run):
    """Factory: ``live_nodes(url, **options) -> LiveNodes``; everything is stopped afterwards."""
    from nonn_tflite.live.source import load_images

    images = load_images(deployment, tiny_run)
    made: list[LiveNodes] = []

    def make(url: str, **kw) -> LiveNodes:
        made.append(LiveNodes(deployment, url, images, **kw))
        return made[-1]

    yield make
    for nodes in made:
        nodes.stop()


@pytest.fixture(scope="session")
def offline_classes(deployment, tiny_run):
    """Offline int8 prediction per test-sample index."""
    from nonn_tflite.live.offline import OfflineSystem
    from nonn_tflite.live.source import load_images

    return OfflineSystem(deployment).classify(load_images(deployment, tiny_run).x)


if __name__ == "__main__":
    build_tiny_run(Path(sys.argv[1]))
    print(sys.argv[1])
