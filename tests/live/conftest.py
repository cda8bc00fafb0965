"""Fixtures for the live tests: a tiny real int8 deployment and real nodes (no mocks).

The deployment is :mod:`nonn_tflite.synthetic` (not the pipeline, so these tests stand on their
own): ``DIGITS_K2``, two small CNN students (8x8x1 -> 5 and 6 pooled channels) and a Dense fusion (11 -> 10),
fitted for a few seconds on the bundled digits and converted to full-integer int8, laid out as a
run directory exactly as docs/ARCHITECTURE.md specifies. Brokers, ``procs`` and ``cli`` come
from tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The run directory, built once per session in a subprocess (about 15 s), so the pytest
    process itself never imports TensorFlow."""
    from nonn_tflite.synthetic import DIGITS_K2, build_in_subprocess

    return build_in_subprocess(tmp_path_factory.mktemp("runs") / DIGITS_K2.name, DIGITS_K2)


@pytest.fixture(scope="session")
def deployment(tiny_run):
    from nonn_tflite.deployment import load_deployment

    return load_deployment(tiny_run)


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

