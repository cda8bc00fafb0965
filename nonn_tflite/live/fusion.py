"""Fusion node: gathers the K feature vectors of a frame and classifies them.

A frame is fused as soon as every student reported (every student not known to be offline:
a device's last will takes it out of the wait at once), or at a deadline after its first vector
arrived; missing students are zero-filled (the quantised value of 0.0), the degradation the
students were trained for with student dropout. The decisions (complete, partial, late,
duplicate, out of order) live in :class:`FusionCore`, which takes time as an argument so it can
be tested without sleeping.

Several workers can share the load with ``--group``: every worker sees every (small) feature
vector, but the broker hands each *image* to exactly one member of the MQTT shared subscription
``$share/<group>/nonn/<dep>/image``, and only that worker fuses and publishes the frame. (A shared
subscription on the feature topics would split one frame's K vectors across workers.)
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import numpy as np

from nonn_tflite.deployment import Deployment
from nonn_tflite.int8 import QParams
from nonn_tflite.live.models import FusionRunner, feature_identities
from nonn_tflite.live.mqtt import (
    BrokerConfig,
    Connection,
    ConnectionConfig,
    make_client_id,
)
from nonn_tflite.live.protocol import (
    OFFSETS,
    U32,
    Decoder,
    DType,
    Frame,
    MsgType,
    Topics,
    encode,
)
from nonn_tflite.live.runtime import DropOldestQueue, Window, WorkerNode

log = logging.getLogger(__name__)

RECENT = 4096  # remembered finished/claimed (session, seq) keys (bounded memory)
SESSIONS = 64  # sources whose newest finished seq is remembered (out-of-order checks)


@dataclass(frozen=True)
class FusionConfig:
    deadline_ms: float | None = None   # None: adapt to the observed spread of device arrivals
    group: str | None = None           # shared-subscription group of fusion workers
    queue: int = 1024                  # received messages waiting for the fusion thread
    max_pending: int = 256             # frames being assembled at once
    stats_interval_s: float = 0.5
    xnnpack: bool = False
    client_id: str | None = None
    node: str = "fusion"


class AdaptiveDeadline:
    """How long to wait for stragglers: 3 x p99 of the first-to-last arrival spread + 20 ms.

    Derived from complete frames only, clamped to [250 ms, 2 s]; 500 ms until 10 are seen. The
    floor is generous on purpose: a device that went away is dropped from the wait at once by
    its last will, so the deadline only bites for a live device that is slow (a loaded broker
    on a small host easily spikes past 30 ms), and a needless partial frame costs accuracy.
    """

    def __init__(self, fixed_ms: float | None = None) -> None:
        self.fixed = None if fixed_ms is None else fixed_ms / 1e3
        self.spreads = Window(200)
        self._value = 0.5 if self.fixed is None else self.fixed
        self._since = 0

    def observe(self, spread_s: float) -> None:
        self.spreads.add(spread_s)
        self._since += 1
        if self.fixed is None and len(self.spreads) >= 10 and self._since >= 10:
            self._since = 0
            p99 = self.spreads.p(99) or 0.0
            self._value = min(2.0, max(0.25, 3.0 * p99 + 0.02))

    @property
    def seconds(self) -> float:
        return self._value


@dataclass
class Pending:
    first_arrival: float
    timestamp_us: int
    parts: dict[int, Frame] = field(default_factory=dict)
    last_arrival: float = 0.0


Key = tuple[int, int]  # (source session, seq): seq numbers restart with every source run


def _seq_newer(a: int, b: int) -> bool:
    """a after b in 32-bit serial-number arithmetic (RFC 1982)."""
    return a != b and ((a - b) & U32) < (1 << 31)


class FusionCore:
    """Assembles frames and fuses them; no MQTT, no clock (callers pass ``now``).

    Every cache is keyed by (session, seq), so a restarted source (a new session) is answered
    from its first frame instead of meeting the previous run's finished sequence numbers."""

    def __init__(self, deployment: Deployment, config: FusionConfig = FusionConfig()) -> None:
        self.deployment = deployment
        self.config = config
        self.runner = FusionRunner(deployment, config.xnnpack)
        self.k = len(deployment.students)
        self.deadline = AdaptiveDeadline(config.deadline_ms)
        self.counters: Counter[str] = Counter()
        self.fuse_ms = Window()
        self.pending: dict[Key, Pending] = {}
        self.done: OrderedDict[Key, frozenset[int]] = OrderedDict()
        self.claims: OrderedDict[Key, None] = OrderedDict()
        # per session, (seq, timestamp) of its newest finished frame (the last SESSIONS seen)
        self.high: OrderedDict[int, tuple[int, int]] = OrderedDict()
        self.offline: set[int] = set()  # students whose status says offline: not waited for

    # ---- inputs ---------------------------------------------------------------------
    def add_feature(self, frame: Frame, now: float) -> list[Frame]:
        """Take one device vector; returns the predictions it completes (0 or more)."""
        key, k = (frame.session, frame.seq), frame.student
        if key in self.done:
            self.counters["duplicate" if k in self.done[key] else "late"] += 1
            return []
        entry = self.pending.get(key)
        if entry is None:
            if self._is_stale(frame):
                self.counters["out_of_order"] += 1
                return []
            entry = self.pending[key] = Pending(now, frame.timestamp_us)
        if k in entry.parts:
            self.counters["duplicate"] += 1
            return []
        entry.parts[k] = frame
        entry.last_arrival = now
        out = self._evict(now)
        if key in self.pending and self._ready(entry) and self._owned(key):
            out += self._finish(key, now)
        return out

    def set_online(self, student: int, online: bool, now: float) -> list[Frame]:
        """From a device's status topic; going offline completes frames waiting only for it."""
        if student not in self.runner.slices:
            return []
        (self.offline.discard if online else self.offline.add)(student)
        if online:
            return []
        ready = [key for key, e in self.pending.items() if self._ready(e) and self._owned(key)]
        return [p for key in ready for p in self._finish(key, now)]

    def add_claim(self, seq: int, now: float, session: int = 0) -> list[Frame]:
        """Group mode: the broker gave us this frame's image, so this worker fuses it."""
        key = (session, seq)
        self.claims[key] = None
        while len(self.claims) > RECENT:
            self.claims.popitem(last=False)
        entry = self.pending.get(key)
        if entry is not None and self._ready(entry):
            return self._finish(key, now)
        return []

    def expire(self, now: float) -> list[Frame]:
        """Finish every frame whose deadline has passed (partial frames)."""
        limit = self.deadline.seconds
        due = [key for key, e in self.pending.items() if now - e.first_arrival >= limit]
        out: list[Frame] = []
        for key in due:
            out += self._finish(key, now)
        return out

    def next_due(self) -> float | None:
        """Monotonic time of the earliest deadline, None when nothing is pending."""
        if not self.pending:
            return None
        return min(e.first_arrival for e in self.pending.values()) + self.deadline.seconds

    # ---- fusion -------------------------------------------------------------------------
    def fuse(self, parts: dict[int, Frame]) -> np.ndarray:
        """int8 logits from the students present; missing slices are zero-filled."""
        return self.runner.logits({k: (f.values(), QParams(f.scale, f.zero_point))
                                   for k, f in parts.items()})

    def prediction(self, seq: int, timestamp_us: int, logits: np.ndarray,
                   session: int = 0) -> Frame:
        q = self.runner.output_q
        return Frame(MsgType.PREDICTION, self.deployment.id, seq, timestamp_us,
                     logits.astype(np.int8).tobytes(), dtype=DType.INT8, scale=q.scale,
                     zero_point=q.zero_point, session=session, model=self.runner.model.hash)

    # ---- internals ----------------------------------------------------------------------
    def _ready(self, entry: Pending) -> bool:
        """Every student that is not known to be offline has reported."""
        return len(entry.parts) == self.k or all(
            k in entry.parts for k in self.runner.slices if k not in self.offline)

    def _owned(self, key: Key) -> bool:
        return self.config.group is None or key in self.claims

    def _is_stale(self, frame: Frame) -> bool:
        """Older than a finished frame of the same session, and not captured later (a source
        without sessions that restarted)."""
        high = self.high.get(frame.session)
        if high is None:
            return False
        high_seq, high_ts = high
        return not _seq_newer(frame.seq, high_seq) and frame.timestamp_us <= high_ts

    def _evict(self, now: float) -> list[Frame]:
        out: list[Frame] = []
        while len(self.pending) > self.config.max_pending:
            oldest = min(self.pending, key=lambda key: self.pending[key].first_arrival)
            self.counters["evicted"] += 1
            out += self._finish(oldest, now)
        return out

    def _finish(self, key: Key, now: float) -> list[Frame]:
        entry = self.pending.pop(key)
        self.done[key] = frozenset(entry.parts)
        while len(self.done) > RECENT:
            self.done.popitem(last=False)
        self._raise_high(key, entry.timestamp_us)
        if not self._owned(key):
            self.counters["not_owned"] += 1
            return []
        complete = len(entry.parts) == self.k
        self.counters["complete" if complete else "partial"] += 1
        if complete:
            self.deadline.observe(entry.last_arrival - entry.first_arrival)
        t0 = time.perf_counter()
        logits = self.fuse(entry.parts)
        self.fuse_ms.add((time.perf_counter() - t0) * 1e3)
        self.counters["predicted"] += 1
        return [self.prediction(key[1], entry.timestamp_us, logits, session=key[0])]

    def _raise_high(self, key: Key, timestamp_us: int) -> None:
        session, seq = key
        high = self.high.get(session)
        if high is None or timestamp_us >= high[1]:
            self.high[session] = (seq, timestamp_us)
        self.high.move_to_end(session)
        while len(self.high) > SESSIONS:
            self.high.popitem(last=False)


class FusionNode(WorkerNode):
    """MQTT around a FusionCore: one receive queue, one thread that owns all state."""

    def __init__(self, deployment: Deployment, broker: BrokerConfig,
                 config: FusionConfig = FusionConfig()) -> None:
        self.deployment = deployment
        self.config = config
        self.core = FusionCore(deployment, config)
        self.topics = deployment.topics
        self.decoder = Decoder(deployment.id, deployment.feature_widths,
                               image_size=deployment.image_size,
                               num_classes=deployment.num_classes,
                               identities=feature_identities(deployment))
        self._stale_logged: set[int] = set()  # students already reported as stale_model
        self._device_ids = {f"device-{s.id}": s.id for s in deployment.students}
        self.inbox: DropOldestQueue[tuple[str, bytes, float]] = DropOldestQueue(config.queue)
        self.bytes_in = 0
        self.predictions_sent = 0
        self._warned = False
        self._init_worker()
        subs = [self.topics.features, self.topics.status_all]
        if config.group:
            subs.append(Topics.shared(config.group, self.topics.image))
        self.conn = Connection(broker, ConnectionConfig(
            client_id=config.client_id or make_client_id(config.node),
            subscriptions=tuple(subs), status_topic=self.topics.status(config.node)),
            on_message=lambda topic, payload, t: self.inbox.put((topic, payload, t)))

    def _work(self) -> None:
        next_stats = time.monotonic()
        while not self._stop.is_set():
            due = self.core.next_due()
            wait = 0.1 if due is None else min(0.1, max(0.0, due - time.monotonic()))
            item = self.inbox.get(timeout=wait)
            if item is not None:
                self._publish(self._guarded(*item))
            self._publish(self.core.expire(time.monotonic()))
            if time.monotonic() >= next_stats:
                self._warn_if_no_claims()
                self._publish_stats()
                next_stats = time.monotonic() + self.config.stats_interval_s

    def _warn_if_no_claims(self) -> None:
        if (self.config.group and not self._warned and not self.core.claims
                and self.core.counters["not_owned"] >= 20):
            self._warned = True
            log.warning("%s: group %s never received an image via $share: does the broker "
                        "support shared subscriptions (amqtt does not)?", self.config.node,
                        self.config.group)

    def _guarded(self, topic: str, payload: bytes, t: float) -> list[Frame]:
        """_receive, except that a message it cannot handle is counted (``handler_error``) and
        logged instead of ending this worker thread, and with it all fusion (hostile input)."""
        try:
            return self._receive(topic, payload, t)
        except Exception:  # the node must outlive any one message
            self.decoder.reject("handler_error")
            log.exception("%s: message on %s could not be handled", self.config.node, topic)
            return []

    def _receive(self, topic: str, payload: bytes, t: float) -> list[Frame]:
        self.bytes_in += len(payload)
        if "/status/" in topic:
            return self._status(Topics.last_level(topic), payload, t)
        if topic.endswith("/image"):  # a claim in group mode
            frame = self.decoder.decode(payload, expect=MsgType.IMAGE)
            return [] if frame is None else self.core.add_claim(frame.seq, t, frame.session)
        frame = self.decoder.decode(payload, expect=MsgType.FEATURE)
        if frame is None:
            if self.decoder.last_reason == "stale_model":
                self._log_stale(payload)
            return []
        if Topics.last_level(topic) != str(frame.student):
            self.decoder.reject("topic_mismatch")
            return []
        return self.core.add_feature(frame, t)

    def _log_stale(self, payload: bytes) -> None:
        """Once per device: it runs another model than deployment.json names (frames refused)."""
        student = payload[OFFSETS["student"]]
        if student in self._stale_logged:
            return
        self._stale_logged.add(student)
        model = int.from_bytes(payload[OFFSETS["model"]:OFFSETS["model"] + 4], "little")
        want = self.decoder.identities[student]
        log.warning("%s: device-%d sends features of another model (hash %08x, expected %s, "
                    "scale %.9g zero point %d, int8): refused as stale_model until it runs the "
                    "student in %s", self.config.node, student, model,
                    "unchecked" if want.model is None else f"{want.model:08x}", want.scale,
                    want.zero_point, self.deployment.path("deployment.json"))

    def _status(self, node: str, payload: bytes, t: float) -> list[Frame]:
        # ---- hostile-input fix: "device-²" passed isdigit() and int() then raised in this
        # worker thread, ending all fusion; any payload but "online" meant offline. Only a
        # known device's exact name and payload count now; the rest is counted as bad_status.
        if node.partition("-")[0] != "device":
            return []  # another kind of node (fusion, source): not ours to act on
        student = self._device_ids.get(node)
        if student is None or payload not in (b"online", b"offline"):
            self.decoder.reject("bad_status")
            return []
        return self.core.set_online(student, payload == b"online", t)
        # ---- end of hostile-input fix

    def _publish(self, predictions: list[Frame]) -> None:
        for frame in predictions:
            if self.conn.publish(self.topics.prediction, encode(frame)):
                self.predictions_sent += 1

    def stats(self) -> dict:
        c = self.core.counters
        return {
            "node": self.config.node, "kind": "fusion", "group": self.config.group,
            "predicted": c["predicted"], "complete": c["complete"], "partial": c["partial"],
            "late": c["late"], "duplicate": c["duplicate"], "out_of_order": c["out_of_order"],
            "evicted": c["evicted"], "not_owned": c["not_owned"],
            "stale_model": self.decoder.counters["stale_model"],
            "pending": len(self.core.pending), "deadline_ms": self.core.deadline.seconds * 1e3,
            "fuse_ms_p50": self.core.fuse_ms.p(50), "queue_dropped": self.inbox.dropped,
            "bytes_in": self.bytes_in, "predictions_sent": self.predictions_sent,
            "rejected": dict(self.decoder.counters), "reconnects": self.conn.reconnects,
            "time": time.time(),
        }

    def _publish_stats(self) -> None:
        self.conn.publish(self.topics.stats(self.config.node), json.dumps(self.stats()).encode())
