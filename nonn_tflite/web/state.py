"""What the web dashboard shows, learned from MQTT alone, like an operator on another machine.

:class:`LiveState` subscribes to one deployment's image, feature, prediction, status and stats
topics and folds them into one JSON-ready snapshot. The per-frame ground truth is not on the
wire: the source keeps its labels and publishes only its running score and the labels of the
frames it just sent on ``stats/source`` (see :mod:`nonn_tflite.web.source_stats`), so no
device or fusion node can see a label before it predicts.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from nonn_tflite.live.dashboard import fusion_totals
from nonn_tflite.deployment import Deployment
from nonn_tflite.live.mqtt import BrokerConfig, Connection, ConnectionConfig, make_client_id
from nonn_tflite.live.protocol import Decoder, Frame, MsgType, Topics, deployment_id
from nonn_tflite.live.runtime import percentile

SCHEMA = 1
RECENT_FRAMES = 256      # frames remembered for matching image, vectors, prediction and truth
RECENT_TRUTH = 1024      # seq -> label pairs remembered from the source's stats
CHART_S = 60             # seconds of latency history in the chart
LATENCY_SAMPLES = 20_000
EVENTS = 12              # status changes listed on the page
SOURCE_FRESH_S = 3.0     # source stats older than this: do not wait for ground truth


@dataclass(frozen=True)
class DeploymentInfo:
    """What the dashboard knows before any message: from a run directory, or just a name."""

    name: str
    device_ids: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()
    input_shape: tuple[int, ...] | None = None
    feature_widths: dict[int, int] | None = None
    reference_accuracy: float | None = None  # offline int8 system accuracy, tflite/report.json

    @classmethod
    def from_deployment(cls, dep: Deployment) -> DeploymentInfo:
        return cls(dep.name, tuple(sorted(dep.feature_widths)), tuple(dep.class_names),
                   tuple(dep.input_shape), dict(dep.feature_widths),
                   reference_accuracy(dep.directory / "report.json"))

    @classmethod
    def from_name(cls, name: str) -> DeploymentInfo:
        """Only the name: devices, classes and image shape are learned from the traffic."""
        Topics(name)  # raises ValueError for a name that cannot be a topic level
        return cls(name)

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) or None

    @property
    def image_size(self) -> int | None:
        return int(np.prod(self.input_shape)) if self.input_shape else None


@dataclass
class FrameRecord:
    """One frame as seen from the broker: its image, which vectors came when, the answer."""

    seq: int
    timestamp_us: int
    image: bytes | None = None
    vectors: dict[int, float] = field(default_factory=dict)  # student -> receive time (epoch s)
    logits: np.ndarray | None = None                         # dequantised fusion output
    latency_ms: float | None = None


@dataclass
class NodeRecord:
    """A device, fusion worker or source, from its status and stats topics (and its vectors)."""

    node: str
    status: str = "waiting"
    stats: dict = field(default_factory=dict)
    last_seen: float | None = None
    last_seq: int | None = None
    offset_ms: float | None = None   # vector received this long after the image was captured
    frame_bytes: int | None = None
    vector: list[float] = field(default_factory=list)


def reference_accuracy(report_json) -> float | None:
    """The int8 system accuracy `convert` measured offline: what the live figure should hold."""
    try:
        value = json.loads(report_json.read_text())["system"]["accuracy_int8"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def device_id(node: str) -> int | None:
    """``device-3`` -> 3; None for other nodes."""
    prefix, _, k = node.partition("-")
    return int(k) if prefix == "device" and k.isdigit() else None


def guess_shape(size: int) -> tuple[int, int, int]:
    """Image shape from the byte count when no deployment.json is at hand (square, grey or RGB)."""
    for c in (1, 3):
        side = math.isqrt(size // c)
        if size % c == 0 and side * side * c == size:
            return side, side, c
    return 1, size, 1


def softmax_top(logits: np.ndarray, names: tuple[str, ...], k: int = 3) -> list[dict]:
    """The k most likely classes with softmax probabilities (the fusion publishes logits)."""
    z = logits.astype(np.float64) - float(np.max(logits))
    p = np.exp(z) / float(np.sum(np.exp(z)))
    order = np.argsort(-p, kind="stable")[:k]
    return [{"class": int(i), "name": names[i] if i < len(names) else str(int(i)),
             "p": round(float(p[i]), 4)} for i in order]


class LiveState:
    """Thread-safe aggregate of one deployment's traffic; ``snapshot()`` is what browsers get."""

    def __init__(self, info: DeploymentInfo, clock: Callable[[], float] = time.time) -> None:
        self.info = info
        self.topics = Topics(info.name)
        self.clock = clock
        self.decoder = Decoder(deployment_id(info.name), info.feature_widths,
                               image_size=info.image_size, num_classes=info.num_classes)
        self.broker_url: str | None = None
        self.connection: Connection | None = None
        self.finished: str | None = None
        self.version = 0
        self.images_seen = 0
        self.first_image: float | None = None
        self.frames: OrderedDict[int, FrameRecord] = OrderedDict()
        self.truth: OrderedDict[int, int] = OrderedDict()
        self.nodes: dict[str, NodeRecord] = {f"device-{k}": NodeRecord(f"device-{k}")
                                             for k in info.device_ids}
        self.source: dict = {}
        self.source_seen: float | None = None
        self.latency: deque[tuple[float, float]] = deque(maxlen=LATENCY_SAMPLES)
        self.accuracy: deque[tuple[float, float]] = deque(maxlen=4 * CHART_S)
        self.events: deque[str] = deque(maxlen=EVENTS)
        self._cond = threading.Condition(threading.RLock())

    # ---- MQTT -------------------------------------------------------------------------------
    def connect(self, broker: BrokerConfig) -> LiveState:
        """Subscribe to everything of the deployment; raises BrokerError if unreachable."""
        t = self.topics
        self.connection = Connection(broker, ConnectionConfig(
            client_id=make_client_id("web"),
            subscriptions=(t.image, t.features, t.prediction, t.status_all, t.stats_all)),
            on_message=self.on_message)
        self.connection.start()
        with self._cond:
            self.broker_url = broker.url
            self._touch()
        return self

    @property
    def connected(self) -> bool:
        return bool(self.connection and self.connection.connected.is_set())

    def disconnect(self) -> None:
        conn, self.connection = self.connection, None
        if conn is not None:
            conn.stop()
        with self._cond:
            self._touch()

    def finish(self, reason: str = "finished") -> None:
        """The run is over: the page says so and keeps the final numbers."""
        with self._cond:
            self.finished = reason
            self._touch()

    def on_message(self, topic: str, payload: bytes, t: float = 0.0) -> None:
        """One MQTT message (paho's thread); bad input is counted by the decoder, never raised."""
        head, _, rest = topic.partition(self.topics.prefix + "/")
        kind, _, name = rest.partition("/") if not head else ("", "", "")
        handler = {"image": self._on_image, "feature": self._on_feature,
                   "prediction": self._on_prediction, "status": self._on_status,
                   "stats": self._on_stats}.get(kind)
        if handler is None:
            return
        now = self.clock()
        with self._cond:
            handler(name, payload, now)
            self._touch()

    def wait_changed(self, version: int, timeout: float) -> int:
        """Block until the state moves past ``version`` (or ``timeout``); the current version."""
        with self._cond:
            if self.version == version:
                self._cond.wait(timeout)
            return self.version

    def wake(self) -> None:
        """Release every :meth:`wait_changed` at once (shutting down), version unchanged."""
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[LiveState], bool], timeout: float) -> bool:
        """Until ``predicate(self)`` holds (checked on every change, and every 50 ms for
        things that do not change the state, such as a lost connection) or ``timeout``."""
        end = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def _touch(self) -> None:
        self.version += 1
        self._cond.notify_all()

    # ---- handlers (called with the lock held) ----------------------------------------------
    def _frame(self, f: Frame) -> FrameRecord:
        rec = self.frames.get(f.seq)
        if rec is None or rec.timestamp_us != f.timestamp_us:  # new, or a restarted source
            rec = self.frames[f.seq] = FrameRecord(f.seq, f.timestamp_us)
            while len(self.frames) > RECENT_FRAMES:
                self.frames.popitem(last=False)
        self.frames.move_to_end(f.seq)
        return rec

    def _on_image(self, _: str, payload: bytes, now: float) -> None:
        f = self.decoder.decode(payload, expect=MsgType.IMAGE)
        if f is None:
            return
        self._frame(f).image = f.payload
        self.images_seen += 1
        self.first_image = self.first_image or now

    def _on_feature(self, name: str, payload: bytes, now: float) -> None:
        f = self.decoder.decode(payload, expect=MsgType.FEATURE)
        if f is None or name != str(f.student):
            return
        self._frame(f).vectors[f.student] = now
        node = self._node(f"device-{f.student}")
        node.last_seen, node.last_seq, node.frame_bytes = now, f.seq, f.size
        node.offset_ms = round((now * 1e6 - f.timestamp_us) / 1e3, 2)
        node.vector = [round(float(v), 4) for v in f.dequantised()]

    def _on_prediction(self, _: str, payload: bytes, now: float) -> None:
        f = self.decoder.decode(payload, expect=MsgType.PREDICTION)
        if f is None:
            return
        rec = self._frame(f)
        rec.logits = f.dequantised()
        rec.latency_ms = (now * 1e6 - f.timestamp_us) / 1e3
        self.latency.append((now, rec.latency_ms))

    def _on_status(self, node: str, payload: bytes, now: float) -> None:
        status = payload.decode("utf-8", "replace").strip()[:16] or "?"
        rec = self._node(node)
        if rec.status != status:
            self.events.append(f"{time.strftime('%H:%M:%S', time.localtime(now))} "
                               f"{node} {status}")
        rec.status = status

    def _on_stats(self, node: str, payload: bytes, now: float) -> None:
        try:
            stats = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(stats, dict):
            return
        if stats.get("kind") == "source":
            self._on_source(stats, now)
        rec = self._node(node)
        rec.stats, rec.last_seen = stats, now

    def _on_source(self, stats: dict, now: float) -> None:
        self.source, self.source_seen = stats, now
        if isinstance(stats.get("accuracy"), (int, float)):
            self.accuracy.append((now, float(stats["accuracy"])))
        for pair in stats.get("truth") or ():
            if isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) for v in pair):
                self.truth[pair[0]] = pair[1]
                self.truth.move_to_end(pair[0])
        while len(self.truth) > RECENT_TRUTH:
            self.truth.popitem(last=False)

    def _node(self, name: str) -> NodeRecord:
        rec = self.nodes.get(name)
        if rec is None:
            rec = self.nodes[name] = NodeRecord(name)
        return rec

    # ---- the snapshot ------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Everything the page shows, as plain JSON types (the SSE payload)."""
        with self._cond:
            now = self.clock()
            devices = sorted((n for n in self.nodes.values() if device_id(n.node) is not None),
                             key=lambda n: device_id(n.node))
            others = sorted((n for n in self.nodes.values() if device_id(n.node) is None),
                            key=lambda n: n.node)
            return {
                "schema": SCHEMA, "deployment": self.info.name, "broker": self.broker_url,
                "connected": self.connected,
                "finished": self.finished, "version": self.version, "time": round(now, 3),
                "elapsed_s": round(now - self.first_image, 1) if self.first_image else None,
                "classes": list(self.info.class_names),
                "reference_accuracy": self.info.reference_accuracy,
                "progress": self._progress(now),
                "frame": self._current_frame(now, len(devices)),
                "devices": [self._device_json(n, now) for n in devices],
                "nodes": [self._node_json(n, now) for n in others],
                "fusion": fusion_totals({n.node: n.stats for n in others}),
                "latency": self._latency_json(now),
                "events": list(self.events),
                "rejected": sum(self.decoder.counters.values()),
            }

    def _progress(self, now: float) -> dict:
        s = self.source
        return {"sent": s.get("sent", self.images_seen), "total": s.get("total"),
                "images_seen": self.images_seen,
                "predicted": s.get("predicted", sum(r.logits is not None
                                                    for r in self.frames.values())),
                "accuracy": s.get("accuracy"), "scored": s.get("scored"),
                "correct": s.get("correct"),
                "chart": [{"t": round(t - now, 1), "accuracy": round(a, 4)}
                          for t, a in self.accuracy if now - t <= CHART_S]}

    def _current_frame(self, now: float, k: int) -> dict | None:
        """The newest answered frame; with a live source, the newest whose truth is known."""
        answered = [r for r in reversed(self.frames.values())
                    if r.logits is not None and r.image is not None]
        if not answered:
            return None
        fresh = self.source_seen is not None and now - self.source_seen < SOURCE_FRESH_S
        rec = next((r for r in answered if r.seq in self.truth), None) if fresh else None
        return self._frame_json(rec or answered[0], k)

    def _frame_json(self, rec: FrameRecord, k: int) -> dict:
        names = self.info.class_names or tuple(str(i) for i in range(len(rec.logits)))
        top = softmax_top(rec.logits, names)
        truth = self.truth.get(rec.seq)
        h, w, c = self.info.input_shape or guess_shape(len(rec.image))
        return {
            "seq": rec.seq, "top3": top, "truth": truth,
            "truth_name": None if truth is None or truth < 0 else
            (names[truth] if truth < len(names) else str(truth)),
            "correct": None if truth is None or truth < 0 else top[0]["class"] == truth,
            "latency_ms": None if rec.latency_ms is None else round(rec.latency_ms, 2),
            "vectors": sorted(rec.vectors), "partial": bool(k) and len(rec.vectors) < k,
            "image": {"w": w, "h": h, "c": c,
                      "b64": base64.b64encode(rec.image).decode("ascii")},
        }

    @staticmethod
    def _age(rec: NodeRecord, now: float) -> float | None:
        return None if rec.last_seen is None else round(max(0.0, now - rec.last_seen), 1)

    def _device_json(self, rec: NodeRecord, now: float) -> dict:
        s = rec.stats
        return {"node": rec.node, "id": device_id(rec.node), "status": rec.status,
                "last_seen_s": self._age(rec, now), "last_seq": rec.last_seq,
                "offset_ms": rec.offset_ms, "frame_bytes": rec.frame_bytes,
                "bytes_per_frame": s.get("bytes_per_frame"), "infer_ms_p50": s.get("infer_ms_p50"),
                "infer_ms_p99": s.get("infer_ms_p99"), "inferences": s.get("inferences"),
                "queue_dropped": s.get("queue_dropped"), "vector": rec.vector}

    def _node_json(self, rec: NodeRecord, now: float) -> dict:
        return {"node": rec.node, "kind": rec.stats.get("kind"), "status": rec.status,
                "last_seen_s": self._age(rec, now)}

    def _latency_json(self, now: float) -> dict:
        """Headline p50/p99 from the source (the summary's figures), a per-second chart here."""
        buckets: dict[int, list[float]] = {}
        for t, ms in self.latency:
            if now - t <= CHART_S:
                buckets.setdefault(int(t), []).append(ms)
        chart = [{"t": round(sec - now, 1), "p50": round(percentile(v, 50), 2),
                  "p99": round(percentile(v, 99), 2)} for sec, v in sorted(buckets.items())]
        recent = [ms for t, ms in self.latency if now - t <= 10.0]
        p50, p99 = self.source.get("latency_ms_p50"), self.source.get("latency_ms_p99")
        origin = "source"
        if p50 is None and recent:
            p50, p99, origin = percentile(recent, 50), percentile(recent, 99), "dashboard"
        return {"p50": None if p50 is None else round(p50, 2),
                "p99": None if p99 is None else round(p99, 2), "origin": origin, "chart": chart}
