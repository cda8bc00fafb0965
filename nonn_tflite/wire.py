"""NoNN wire format: one fixed 44-byte header plus an int8/uint8 payload per MQTT message.

The layout is the contract in docs/ARCHITECTURE.md and is mirrored in C by firmware_bridge, so
it is built with :mod:`struct` only (no pickling, no JSON): a microcontroller can parse it with
a memcpy. The :class:`Decoder` never raises on bad input: a node facing a hostile or buggy
publisher must keep running, so every rejection is a named counter instead of an exception.

This module sits below both ``deployment.py`` and ``live/`` (which re-exports it as
``nonn_tflite.live.protocol``): the header size and layout are defined here once.

Version 2 added ``session`` (a random id per source run or device boot: the fusion keys its
caches by (session, seq), so a restarted source is answered from its first frame) and
``model`` (CRC-32 of the .tflite that made the payload: a device running a stale student is
refused under ``stale_model``).
"""

from __future__ import annotations

import enum
import math
import struct
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "MAGIC", "VERSION", "HEADER_FIELDS", "HEADER_FORMAT", "HEADER", "HEADER_SIZE", "OFFSETS",
    "MAX_PAYLOAD", "NO_STUDENT", "U32", "MsgType", "DType", "REJECT_REASONS", "deployment_id",
    "model_hash", "Frame", "FeatureIdentity", "encode", "Decoder", "Topics",
]

MAGIC = b"NONN"
VERSION = 2
# (name, struct code) in wire order; every field naturally aligned, little-endian, no padding.
HEADER_FIELDS = (
    ("magic", "4s"), ("version", "B"), ("msg_type", "B"), ("student", "B"), ("dtype", "B"),
    ("deployment_id", "I"), ("session", "I"), ("seq", "I"), ("model", "I"),
    ("timestamp_us", "Q"), ("scale", "f"), ("zero_point", "i"), ("length", "I"),
)
HEADER_FORMAT = "<" + "".join(code for _, code in HEADER_FIELDS)  # "<4sBBBBIIIIQfiI"
HEADER = struct.Struct(HEADER_FORMAT)
HEADER_SIZE = HEADER.size  # 44: the one definition (links, profile and C take it from here)
OFFSETS = {name: struct.calcsize("<" + "".join(c for _, c in HEADER_FIELDS[:i]))
           for i, (name, _) in enumerate(HEADER_FIELDS)}  # byte offset of each field
MAX_PAYLOAD = 65536
NO_STUDENT = 255
U32 = 0xFFFFFFFF


class MsgType(enum.IntEnum):
    IMAGE = 1
    FEATURE = 2
    PREDICTION = 3


class DType(enum.IntEnum):
    INT8 = 1
    UINT8 = 2


# Every reason a Decoder can give; a C decoder uses the same names in tests/vectors/frames.json.
REJECT_REASONS = (
    "too_short",        # fewer bytes than a header
    "oversized",        # buffer or declared length beyond max_payload
    "bad_magic",
    "bad_version",
    "bad_type",         # msg_type not 1, 2 or 3
    "unexpected_type",  # a valid type, but not the one this topic carries
    "wrong_deployment",
    "bad_dtype",
    "bad_scale",        # not finite or <= 0
    "bad_length",       # declared length differs from the bytes that follow the header
    "unknown_student",  # feature from a student the deployment lacks, or 255 missing/misused
    "wrong_width",      # feature payload size differs from the student's width
    "wrong_image_size",
    "wrong_num_classes",
    "stale_model",      # feature not int8, or scale, zero point or model hash != deployment.json
)


def deployment_id(name: str) -> int:
    """CRC-32 of the deployment name: a 4-byte tag that stops cross-talk between deployments."""
    return zlib.crc32(name.encode("utf-8")) & U32


def model_hash(data: bytes) -> int:
    """CRC-32 (zlib) of a .tflite file's bytes: the ``model`` field of the frames it makes.

    The same figure the firmware checks at boot (``<model>_crc32``), so a device can put it
    on the wire without hashing anything at run time."""
    return zlib.crc32(data) & U32


@dataclass(frozen=True)
class FeatureIdentity:
    """What deployment.json says a student's feature frames carry; ``model`` None: unchecked."""

    scale: float
    zero_point: int
    model: int | None = None

    def matches(self, dtype: int, scale: float, zero_point: int, model: int) -> bool:
        """int8, and the same float32 scale, zero point and model hash."""
        return (dtype == DType.INT8 and scale == _f32(self.scale)
                and zero_point == self.zero_point
                and (self.model is None or model == self.model))


def _f32(value: float) -> float:
    """``value`` as the wire carries it (float32)."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


@dataclass(frozen=True)
class Frame:
    """One decoded message. ``payload`` holds raw int8/uint8 bytes (see ``dtype``).

    ``session`` identifies the source run (or device boot) the seq numbers belong to; ``model``
    is the :func:`model_hash` of the model that made the payload (0 for camera images)."""

    msg_type: MsgType
    deployment_id: int
    seq: int
    timestamp_us: int
    payload: bytes
    student: int = NO_STUDENT
    dtype: DType = DType.INT8
    scale: float = 1.0
    zero_point: int = 0
    version: int = VERSION
    session: int = 0
    model: int = 0

    def values(self):  # -> numpy.ndarray
        """The payload as a numpy array of its dtype (int8 or uint8), zero-copy."""
        import numpy as np

        return np.frombuffer(self.payload, dtype=np.int8 if self.dtype == DType.INT8 else np.uint8)

    def dequantised(self):  # -> numpy.ndarray
        """Real values ``(q - zero_point) * scale`` as float32."""
        import numpy as np

        return ((self.values().astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)

    @property
    def size(self) -> int:
        """Bytes on the wire (header + payload)."""
        return HEADER_SIZE + len(self.payload)


def encode(frame: Frame) -> bytes:
    """Pack a frame; raises ValueError for a frame no conforming decoder would accept."""
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    if not (math.isfinite(frame.scale) and frame.scale > 0):
        raise ValueError(f"scale must be finite and > 0, got {frame.scale!r}")
    try:
        header = HEADER.pack(MAGIC, frame.version, int(frame.msg_type), frame.student,
                             int(frame.dtype), frame.deployment_id & U32, frame.session & U32,
                             frame.seq & U32, frame.model & U32, frame.timestamp_us,
                             frame.scale, frame.zero_point, len(frame.payload))
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"frame field out of range: {exc}") from None
    return header + bytes(frame.payload)


class Decoder:
    """Validates and decodes frames for one deployment, counting every rejection by reason.

    ``feature_widths`` maps student id -> vector width (feature frames); ``image_size`` is the
    number of pixel bytes an image frame must carry and ``num_classes`` the prediction length.
    ``identities`` maps student id -> what its feature frames must carry (int8, scale, zero
    point, model hash); a frame that differs is ``stale_model``. Checks whose parameter is None
    are skipped. ``last_reason`` is the verdict of the latest :meth:`decode` (None: accepted).
    """

    def __init__(self, deployment_id: int, feature_widths: Mapping[int, int] | None = None,
                 max_payload: int = MAX_PAYLOAD, image_size: int | None = None,
                 num_classes: int | None = None,
                 identities: Mapping[int, FeatureIdentity] | None = None) -> None:
        self.deployment_id = deployment_id & U32
        self.feature_widths = dict(feature_widths) if feature_widths is not None else None
        self.max_payload = max_payload
        self.image_size = image_size
        self.num_classes = num_classes
        self.identities = dict(identities) if identities is not None else None
        self.last_reason: str | None = None
        self.counters: Counter[str] = Counter()
        self.accepted = 0

    @property
    def rejected(self) -> int:
        return sum(self.counters.values())

    def reject(self, reason: str) -> None:
        """Count a rejection decided outside the decoder (e.g. topic/student mismatch)."""
        self.counters[reason] += 1

    def decode(self, buf: bytes | bytearray | memoryview, expect: MsgType | None = None
               ) -> Frame | None:
        """Return the frame, or None after counting why it was rejected. Never raises."""
        try:
            reason, frame = self._check(bytes(buf), expect)
        except Exception:  # noqa: BLE001 - a decoder must not take its node down
            reason, frame = "bad_length", None
        self.last_reason = reason
        if reason is not None:
            self.counters[reason] += 1
            return None
        self.accepted += 1
        return frame

    def _check(self, buf: bytes, expect: MsgType | None) -> tuple[str | None, Frame | None]:
        if len(buf) < HEADER_SIZE:
            return "too_short", None
        if len(buf) > HEADER_SIZE + self.max_payload:
            return "oversized", None
        (magic, version, msg_type, student, dtype, dep, session, seq, model, ts, scale, zp,
         length) = HEADER.unpack_from(buf)
        if magic != MAGIC:
            return "bad_magic", None
        if version != VERSION:
            return "bad_version", None
        if msg_type not in MsgType._value2member_map_:
            return "bad_type", None
        if expect is not None and msg_type != expect:
            return "unexpected_type", None
        if dep != self.deployment_id:
            return "wrong_deployment", None
        if dtype not in DType._value2member_map_:
            return "bad_dtype", None
        if not (math.isfinite(scale) and scale > 0):
            return "bad_scale", None
        if length > self.max_payload:
            return "oversized", None
        if length != len(buf) - HEADER_SIZE:
            return "bad_length", None
        reason = self._check_shape(MsgType(msg_type), student, length)
        if reason is not None:
            return reason, None
        if (msg_type == MsgType.FEATURE and self.identities is not None
                and student in self.identities
                and not self.identities[student].matches(dtype, scale, zp, model)):
            return "stale_model", None
        return None, Frame(MsgType(msg_type), dep, seq, ts, buf[HEADER_SIZE:], student,
                           DType(dtype), scale, zp, version, session, model)

    def _check_shape(self, msg_type: MsgType, student: int, length: int) -> str | None:
        if msg_type == MsgType.FEATURE:
            if student == NO_STUDENT:
                return "unknown_student"
            if self.feature_widths is not None:
                if student not in self.feature_widths:
                    return "unknown_student"
                if length != self.feature_widths[student]:
                    return "wrong_width"
            return None
        if student != NO_STUDENT:
            return "unknown_student"
        if msg_type == MsgType.IMAGE and self.image_size is not None and length != self.image_size:
            return "wrong_image_size"
        if (msg_type == MsgType.PREDICTION and self.num_classes is not None
                and length != self.num_classes):
            return "wrong_num_classes"
        return None


_TOPIC_FORBIDDEN = set("/+#\x00")


class Topics:
    """The topic scheme: everything of one deployment lives under ``nonn/<deployment>/``."""

    def __init__(self, deployment: str) -> None:
        if not deployment or _TOPIC_FORBIDDEN & set(deployment):
            raise ValueError(f"deployment name {deployment!r} cannot be used in an MQTT topic")
        self.deployment = deployment
        self.prefix = f"nonn/{deployment}"
        self.image = f"{self.prefix}/image"
        self.prediction = f"{self.prefix}/prediction"
        self.features = f"{self.prefix}/feature/+"
        self.status_all = f"{self.prefix}/status/+"
        self.stats_all = f"{self.prefix}/stats/+"

    def feature(self, student: int) -> str:
        return f"{self.prefix}/feature/{student}"

    def status(self, node: str) -> str:
        """Retained ``online``/``offline`` (the latter doubles as the MQTT last will)."""
        return f"{self.prefix}/status/{node}"

    def stats(self, node: str) -> str:
        """Periodic JSON counters of a node (an addition to the contract, for dashboards)."""
        return f"{self.prefix}/stats/{node}"

    @staticmethod
    def shared(group: str, topic: str) -> str:
        """MQTT 5 shared subscription: the broker hands each message to one group member."""
        return f"$share/{group}/{topic}"

    @staticmethod
    def last_level(topic: str) -> str:
        return topic.rsplit("/", 1)[-1]
