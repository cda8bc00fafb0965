"""Hostile MQTT messages for the wire decoder and the nodes' message handlers.

:func:`build_message` turns fuzzer bytes into one (topic, payload) a broker could deliver to a
fusion or device node: a quarter of the time raw bytes, else a frame with chosen
fields (type, student, dtype, deployment id, session, seq, model hash, timestamp, scale, zero
point, length, payload; by default those of a real device of the deployment)
so the fuzzer gets past the magic and deep into the handlers. :class:`NodeProbe` feeds such
messages to a real :class:`~nonn_tflite.live.fusion.FusionNode` and
:class:`~nonn_tflite.live.device.DeviceNode` (real models, no broker: their handlers are called
as paho would call them) and checks the contract after every message:

* no exception escapes a handler;
* every message is accounted for exactly once: accepted by the decoder, or rejected under a
  named counter, or (status topics) applied, rejected as ``bad_status`` or left to its owner;
* memory stays bounded (frames being assembled <= ``max_pending``).

Used by tests/hostile/test_frame_fuzz.py (hypothesis) and fuzz/frames_atheris.py (atheris).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nonn_tflite.live.device import DeviceConfig, DeviceNode
from nonn_tflite.live.fusion import FusionConfig, FusionNode
from nonn_tflite.deployment import Deployment
from nonn_tflite.live.models import feature_identities
from nonn_tflite.live.mqtt import BrokerConfig
from nonn_tflite.live.protocol import HEADER, MAGIC, VERSION

_TOPIC_FORBIDDEN = str.maketrans("", "", "/+#\x00")


class ByteStream:
    """Reads typed values from fuzzer bytes; past the end every read is zero (never raises)."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk + bytes(n - len(chunk))

    def u8(self) -> int:
        return self.take(1)[0]

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def rest(self) -> bytes:
        chunk = self.data[self.pos:]
        self.pos = len(self.data)
        return chunk


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    kind: str  # "feature", "status" or "image"


def build_message(data: bytes, deployment: Deployment) -> Message:
    """One deliverable message from fuzzer bytes (see the module docstring)."""
    s = ByteStream(data)
    selector = s.u8()
    kind = ("feature", "feature", "status", "image")[selector & 3]
    level = _level(s, deployment, kind)
    topic = f"{deployment.topics.prefix}/{kind}" + ("" if kind == "image" else f"/{level}")
    if kind == "status":
        payload = (b"online", b"offline", s.take(s.u8() % 16))[s.u8() % 3]
    elif selector & 12 == 12:
        payload = s.rest()
    else:
        payload = _frame(s, deployment, 1 if kind == "image" else 2)
    return Message(topic, payload, kind)


def _level(s: ByteStream, deployment: Deployment, kind: str) -> str:
    """A topic level: usually meaningful (a student id, ``device-<k>``), sometimes any text."""
    choice = s.u8()
    ids = [spec.id for spec in deployment.students]
    k = ids[choice % len(ids)] if choice < 200 else choice
    if choice >= 240:
        return s.take(s.u8() % 24).decode("utf-8", "replace").translate(_TOPIC_FORBIDDEN) or "x"
    if kind == "status":
        return ("device-", "fusion", "source", "device-0")[choice & 3] + str(k)[: choice & 7]
    return str(k)


def _frame(s: ByteStream, deployment: Deployment, msg_type: int) -> bytes:
    """A header with fuzzer-chosen fields (each bent with odds 1/4) and a chosen payload."""
    flags = s.u8() & s.u8()
    msg_type = s.u8() % 5 if flags & 1 else msg_type
    ids = [spec.id for spec in deployment.students]
    student = s.u8() if flags & 2 else ids[s.u8() % len(ids)]
    widths = deployment.feature_widths
    length = s.u8() if flags & 4 else widths.get(student, deployment.image_size)
    if msg_type == 1 and not flags & 4:
        length, student = deployment.image_size, 255
    real = _identities(deployment).get(student)  # what a real device of the deployment sends
    dep = s.unpack("I") if flags & 8 else deployment.id
    scale = s.unpack("f") if flags & 16 else (real.scale if real else 0.02)
    zero_point = s.unpack("i") if flags & 32 else (real.zero_point if real else -128)
    session = s.unpack("I") if flags & 64 else s.u8() % 3  # a few sessions: restarts
    seq, ts = s.unpack("H"), s.unpack("Q") if flags & 64 else s.unpack("I")
    dtype = s.u8() % 4 if flags & 128 else 1
    model = s.unpack("I") if flags & 128 else (real.model or 0 if real else 0)
    payload = s.take(length)
    declared = len(payload) if not flags & 4 else s.unpack("H")
    header = HEADER.pack(MAGIC, VERSION, msg_type, student & 0xFF, dtype, dep, session, seq,
                         model, ts, scale, zero_point, declared)
    return header + payload


_IDENTITIES: dict[int, dict] = {}


def _identities(deployment: Deployment) -> dict:
    """feature_identities, read once per deployment (it may hash the student files)."""
    key = id(deployment)
    if key not in _IDENTITIES:
        _IDENTITIES[key] = feature_identities(deployment)
    return _IDENTITIES[key]


class NodeProbe:
    """A fusion node and a device node with real models and no broker, fed messages directly."""

    def __init__(self, deployment: Deployment, max_pending: int = 32,
                 reset_every: int = 2000) -> None:
        self.deployment = deployment
        broker = BrokerConfig()  # never connected: publish() just reports False
        self.fusion = FusionNode(deployment, broker, FusionConfig(deadline_ms=50,
                                                                  max_pending=max_pending))
        first = deployment.students[0].id
        self.device = DeviceNode(deployment, broker, DeviceConfig(student=first))
        self.clock = 1000.0
        self.seen = 0
        self.reset_every = reset_every

    def forget(self) -> None:
        """Drop what the nodes remember of past frames (counters stay): after one frame with a
        far-future timestamp every later one is stale, which would hide the fresh-state paths."""
        core = self.fusion.core
        core.pending.clear()
        core.done.clear()
        core.claims.clear()
        core.high.clear()
        self.device.guard.last = None

    def feed(self, message: Message) -> str:
        """Hand one message to the node(s) subscribed to its topic; returns the verdict."""
        self.clock += 0.003  # 3 ms per message: deadlines expire as the fuzzer runs
        self.seen += 1
        if self.seen % self.reset_every == 0:
            self.forget()
        if message.kind == "image":
            self._feed_device(message)
            return self._feed_fusion(message)
        return self._feed_fusion(message)

    def _feed_fusion(self, message: Message) -> str:
        node = self.fusion
        before = _tally(node.decoder), set(node.core.offline)
        node._publish(node._receive(message.topic, message.payload, self.clock))
        node._publish(node.core.expire(self.clock))
        verdict = _verdict(before[0], _tally(node.decoder), message)
        if message.kind == "status" and verdict == "none":
            verdict = _status_verdict(message, self.deployment)
        assert verdict != "none", f"{message} left no trace in the fusion node's counters"
        assert len(node.core.pending) <= node.config.max_pending
        return verdict

    def _feed_device(self, message: Message) -> None:
        node = self.device
        before = _tally(node.decoder)
        node._on_message(message.topic, message.payload, self.clock)
        frame = node.queue.get(timeout=0)
        if frame is not None:
            node._handle(frame)
        verdict = _verdict(before, _tally(node.decoder), message)
        assert verdict != "none", f"{message} left no trace in the device node's counters"


def _tally(decoder) -> tuple[int, dict]:
    return decoder.accepted, dict(decoder.counters)


def _verdict(before: tuple[int, dict], after: tuple[int, dict], message: Message) -> str:
    """'accepted', 'rejected:<reason>' or 'none'; anything else breaks the contract."""
    accepted = after[0] - before[0]
    grown = {r: n - before[1].get(r, 0) for r, n in after[1].items() if n != before[1].get(r, 0)}
    rejected = sum(grown.values())
    # a frame can be accepted by the decoder and then refused as a replay: both are counted
    if accepted == 1 and grown in ({}, {"replayed": 1}, {"topic_mismatch": 1}):
        return "accepted" if not grown else f"rejected:{next(iter(grown))}"
    assert accepted in (0, 1) and rejected <= 1, f"{message}: counted {accepted} + {grown}"
    return f"rejected:{next(iter(grown))}" if rejected else "none"


def _status_verdict(message: Message, deployment: Deployment) -> str:
    """A status that touched no counter must be a known device's ``online``/``offline``
    (applied) or another kind of node's (fusion, source: not the fusion node's business)."""
    node = message.topic.rsplit("/", 1)[-1]
    known = {f"device-{s.id}" for s in deployment.students}
    if node in known and message.payload in (b"online", b"offline"):
        return "status"
    return "not_a_device" if node.partition("-")[0] != "device" else "none"
