"""Device node: image frame in, the student's pooled int8 feature vector out.

This is what a Raspberry Pi (or, in C, a microcontroller) runs: one student .tflite under
LiteRT, no TensorFlow. The vector it publishes (wire header + ``width`` bytes) is the whole
communication of a device per inference. It carries the image's session and seq, and the hash
of the student model that made it, so the fusion node can refuse a stale model.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from nonn_tflite.deployment import Deployment
from nonn_tflite.int8 import QParams
from nonn_tflite.live.models import StudentRunner
from nonn_tflite.live.mqtt import (
    BrokerConfig,
    Connection,
    ConnectionConfig,
    make_client_id,
)
from nonn_tflite.live.protocol import U32, Decoder, DType, Frame, MsgType, encode
from nonn_tflite.live.runtime import DropOldestQueue, Window, WorkerNode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceConfig:
    student: int
    queue: int = 4               # frames waiting for the model; older ones are dropped
    xnnpack: bool = False        # faster on a Pi, but may differ from TFLM by 1 LSB
    stats_interval_s: float = 0.5
    client_id: str | None = None

    @property
    def node(self) -> str:
        return f"device-{self.student}"


class ReplayGuard:
    """Rejects frames that are not newer than the last one (replays, duplicates, reordering).

    A frame with a lower sequence number but a later capture time is a restarted source,
    not a replay, and is accepted.
    """

    def __init__(self) -> None:
        self.last: tuple[int, int] | None = None

    def accept(self, seq: int, timestamp_us: int) -> bool:
        if self.last is not None:
            last_seq, last_ts = self.last
            seq_newer = seq != last_seq and ((seq - last_seq) & U32) < (1 << 31)
            if not seq_newer and timestamp_us <= last_ts:
                return False
        self.last = (seq, timestamp_us)
        return True


class DeviceCore:
    """Image frame -> feature frame, without MQTT (the offline reference uses it too)."""

    def __init__(self, deployment: Deployment, student: int, xnnpack: bool = False) -> None:
        self.deployment = deployment
        self.runner = StudentRunner(deployment, student, xnnpack)
        self.student = student

    def process(self, image: Frame) -> Frame:
        pixels = image.values()
        vector = self.runner.features(pixels, QParams(image.scale, image.zero_point))
        q = self.runner.output_q
        return Frame(MsgType.FEATURE, image.deployment_id, image.seq, image.timestamp_us,
                     vector.astype(np.int8).tobytes(), self.student, DType.INT8, q.scale,
                     q.zero_point, session=image.session, model=self.runner.model.hash)


class DeviceNode(WorkerNode):
    """Subscribes to images, runs the student on a worker thread, publishes features."""

    def __init__(self, deployment: Deployment, broker: BrokerConfig, config: DeviceConfig) -> None:
        self.deployment = deployment
        self.config = config
        self.core = DeviceCore(deployment, config.student, config.xnnpack)
        self.topics = deployment.topics
        self.decoder = Decoder(deployment.id, deployment.feature_widths,
                               image_size=deployment.image_size)
        self.guard = ReplayGuard()
        self.queue: DropOldestQueue[Frame] = DropOldestQueue(config.queue)
        self.infer_ms = Window()
        self.inferences = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.publish_failed = 0
        self._lock = threading.Lock()
        self._init_worker()
        self.conn = Connection(broker, ConnectionConfig(
            client_id=config.client_id or make_client_id(config.node),
            subscriptions=(self.topics.image,),
            status_topic=self.topics.status(config.node)), on_message=self._on_message)

    def _on_message(self, topic: str, payload: bytes, t: float) -> None:
        frame = self.decoder.decode(payload, expect=MsgType.IMAGE)
        if frame is None:
            return
        with self._lock:
            if not self.guard.accept(frame.seq, frame.timestamp_us):
                self.decoder.reject("replayed")
                return
        self.queue.put(frame)

    def _work(self) -> None:
        next_stats = time.monotonic()
        while not self._stop.is_set():
            frame = self.queue.get(timeout=0.1)
            if frame is not None:
                self._guarded(frame)
            if time.monotonic() >= next_stats:
                self._publish_stats()
                next_stats = time.monotonic() + self.config.stats_interval_s

    def _guarded(self, image: Frame) -> None:
        """_handle, except that a frame it cannot process is counted (``handler_error``) and
        logged instead of ending this worker thread (hostile-input hardening)."""
        try:
            self._handle(image)
        except Exception:  # the node must outlive any one frame
            self.decoder.reject("handler_error")
            log.exception("%s: frame %d could not be processed", self.config.node, image.seq)

    def _handle(self, image: Frame) -> None:
        t0 = time.perf_counter()
        feature = self.core.process(image)
        self.infer_ms.add((time.perf_counter() - t0) * 1e3)
        self.inferences += 1
        data = encode(feature)
        if self.conn.publish(self.topics.feature(self.config.student), data):
            self.frames_sent += 1
            self.bytes_sent += len(data)
        else:
            self.publish_failed += 1

    def stats(self) -> dict:
        """Counters for the dashboard, published as JSON on ``stats/device-<k>``."""
        return {
            "node": self.config.node, "kind": "device", "student": self.config.student,
            "inferences": self.inferences, "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "bytes_per_frame": self.bytes_sent / self.frames_sent if self.frames_sent else None,
            "infer_ms_p50": self.infer_ms.p(50), "infer_ms_p99": self.infer_ms.p(99),
            "queue_dropped": self.queue.dropped, "publish_failed": self.publish_failed,
            "rejected": dict(self.decoder.counters), "reconnects": self.conn.reconnects,
            "time": time.time(),
        }

    def _publish_stats(self) -> None:
        self.conn.publish(self.topics.stats(self.config.node), json.dumps(self.stats()).encode())
