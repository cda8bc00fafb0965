"""Wire-format test vectors shared with the C implementation (tests/vectors/frames.json).

Python writes the file; both the Python and the C decoder must produce exactly these bytes
and exactly these rejection reasons. Regenerate with::

    python -m nonn_tflite.live.vectors tests/vectors/frames.json
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

from nonn_tflite.live.protocol import (
    HEADER_FORMAT,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    NO_STUDENT,
    REJECT_REASONS,
    VERSION,
    DType,
    FeatureIdentity,
    Frame,
    MsgType,
    deployment_id,
    encode,
)

DEPLOYMENT = "digits-k2"
F32 = lambda v: float(np.float32(v))
SESSION = 0x5E5510E1
MODELS = {0: 0x0A11CE00, 1: 0x0B0B0001}  # model hashes of the two students in the vectors
DECODER = {"deployment": DEPLOYMENT, "deployment_id": deployment_id(DEPLOYMENT),
           "feature_widths": {"0": 5, "1": 6}, "image_size": 64, "num_classes": 10,
           "max_payload": MAX_PAYLOAD,
           "identities": {"0": {"scale": F32(0.019545676), "zero_point": -128, "model": MODELS[0]},
                          "1": {"scale": F32(0.0123), "zero_point": -128, "model": MODELS[1]}}}
CHECK_ORDER = [
    f"too_short: fewer than {HEADER_SIZE} bytes",
    f"oversized: more than {HEADER_SIZE} + max_payload bytes",
    "bad_magic", "bad_version", "bad_type",
    "unexpected_type: the caller expected another msg_type",
    "wrong_deployment", "bad_dtype", "bad_scale: NaN, inf, 0 or negative",
    "oversized: declared length > max_payload",
    "bad_length: declared length != bytes after the header",
    ("unknown_student: feature with student 255 or not in feature_widths; "
     "image/prediction with student != 255"),
    "wrong_width / wrong_image_size / wrong_num_classes",
    ("stale_model: feature of a student in identities whose dtype is not int8, or whose "
     "scale, zero point or model hash differs"),
]

DEP = deployment_id(DEPLOYMENT)
TS = 1_700_000_000_123_456


def _frames() -> dict[str, Frame]:
    i8 = lambda vals: np.array(vals, np.int8).tobytes()
    return {
        "image_gradient": Frame(MsgType.IMAGE, DEP, 0, TS, bytes(range(0, 256, 4)),
                                dtype=DType.UINT8, scale=F32(1 / 255), zero_point=0,
                                session=SESSION),
        "image_saturated": Frame(MsgType.IMAGE, DEP, 1, TS + 50_000, bytes([255] * 64),
                                 dtype=DType.UINT8, scale=F32(1 / 255), zero_point=0),
        "feature_student0": Frame(MsgType.FEATURE, DEP, 0, TS, i8([-128, -1, 0, 1, 127]),
                                  student=0, scale=F32(0.019545676), zero_point=-128,
                                  session=SESSION, model=MODELS[0]),
        "feature_student1": Frame(MsgType.FEATURE, DEP, 0, TS, i8([-128, -100, -50, 0, 50, 100]),
                                  student=1, scale=F32(0.0123), zero_point=-128,
                                  session=SESSION, model=MODELS[1]),
        "feature_wrapping_seq": Frame(MsgType.FEATURE, DEP, 0xFFFFFFFF, 2**64 - 1,
                                      i8([0, 0, 0, 0, 0, 0]), student=1, scale=F32(0.0123),
                                      zero_point=-128, session=0xFFFFFFFF, model=MODELS[1]),
        "prediction": Frame(MsgType.PREDICTION, DEP, 7, TS, i8(list(range(-5, 5))),
                            scale=F32(0.1), zero_point=10, session=SESSION, model=0xF0510000),
        "prediction_second": Frame(MsgType.PREDICTION, DEP, 8, TS + 1, i8([127] + [-128] * 9),
                                   scale=F32(0.25), zero_point=-3),
    }


def _fields(f: Frame) -> dict:
    return {"msg_type": int(f.msg_type), "version": f.version, "student": f.student,
            "dtype": int(f.dtype), "deployment_id": f.deployment_id, "session": f.session,
            "seq": f.seq, "model": f.model,
            "timestamp_us": f.timestamp_us, "scale": f.scale, "zero_point": f.zero_point,
            "length": len(f.payload), "payload_hex": f.payload.hex()}


def _header(**kw) -> bytes:
    """A header with chosen fields (defaults: a valid 5-byte feature of student 0)."""
    d = dict(magic=MAGIC, version=VERSION, msg_type=2, student=0, dtype=1, dep=DEP,
             session=SESSION, seq=3, model=MODELS[0], ts=TS, scale=F32(0.019545676), zp=-128,
             length=5)
    d.update(kw)
    return struct.pack(HEADER_FORMAT, d["magic"], d["version"], d["msg_type"], d["student"],
                       d["dtype"], d["dep"], d["session"], d["seq"], d["model"], d["ts"],
                       d["scale"], d["zp"], d["length"])


def _malformed() -> list[dict]:
    p5 = bytes(5)
    cases = [
        ("empty", b"", "too_short", None, None),
        ("header_cut_short", _header()[:HEADER_SIZE - 1], "too_short", None, None),
        ("bad_magic", _header(magic=b"NONX") + p5, "bad_magic", None, None),
        ("bad_version_0", _header(version=0) + p5, "bad_version", None, None),
        ("bad_version_1", _header(version=1) + p5, "bad_version", None, None),
        ("bad_version_3", _header(version=3) + p5, "bad_version", None, None),
        ("bad_type_0", _header(msg_type=0) + p5, "bad_type", None, None),
        ("bad_type_4", _header(msg_type=4) + p5, "bad_type", None, None),
        ("feature_where_image_expected", _header() + p5, "unexpected_type", 1, None),
        ("wrong_deployment", _header(dep=deployment_id("other")) + p5, "wrong_deployment",
         None, None),
        ("bad_dtype", _header(dtype=3) + p5, "bad_dtype", None, None),
        ("scale_nan", _header(scale=float("nan")) + p5, "bad_scale", None, None),
        ("scale_inf", _header(scale=float("inf")) + p5, "bad_scale", None, None),
        ("scale_zero", _header(scale=0.0) + p5, "bad_scale", None, None),
        ("scale_negative", _header(scale=-0.5) + p5, "bad_scale", None, None),
        ("declared_length_too_big", _header(length=MAX_PAYLOAD + 1), "oversized", None, None),
        ("buffer_too_big", _header(msg_type=3, student=NO_STUDENT, length=10) + bytes(10),
         "oversized", None, {"max_payload": 8}),
        ("length_says_more", _header(length=5) + bytes(4), "bad_length", None, None),
        ("length_says_less", _header(length=5) + bytes(6), "bad_length", None, None),
        ("unknown_student_7", _header(student=7) + p5, "unknown_student", None, None),
        ("feature_without_student", _header(student=NO_STUDENT) + p5, "unknown_student",
         None, None),
        ("image_with_student", _header(msg_type=1, student=0, dtype=2, length=64) + bytes(64),
         "unknown_student", None, None),
        ("wrong_width", _header(length=4) + bytes(4), "wrong_width", None, None),
        ("wrong_image_size", _header(msg_type=1, student=NO_STUDENT, dtype=2, length=63)
         + bytes(63), "wrong_image_size", None, None),
        ("wrong_num_classes", _header(msg_type=3, student=NO_STUDENT, length=9) + bytes(9),
         "wrong_num_classes", None, None),
        ("stale_model_hash", _header(model=MODELS[0] ^ 1) + p5, "stale_model", None, None),
        ("stale_model_other_students_hash", _header(model=MODELS[1]) + p5, "stale_model",
         None, None),
        ("stale_model_scale", _header(scale=F32(0.02)) + p5, "stale_model", None, None),
        ("stale_model_zero_point", _header(zp=-127) + p5, "stale_model", None, None),
        ("stale_model_uint8_feature", _header(dtype=2) + p5, "stale_model", None, None),
    ]
    return [{"name": n, "hex": b.hex(), "reason": r, "expect": e,
             **({"decoder": o} if o else {})} for n, b, r, e, o in cases]


def build_vectors() -> dict:
    return {
        "description": f"NoNN wire format v{VERSION} test vectors; see docs/ARCHITECTURE.md. Generated "
                       "by `python -m nonn_tflite.live.vectors`; do not edit by hand.",
        "struct_format": HEADER_FORMAT, "header_bytes": HEADER_SIZE, "magic": MAGIC.decode(),
        "version": VERSION, "decoder": DECODER, "reasons": list(REJECT_REASONS),
        "check_order": CHECK_ORDER,
        "frames": [{"name": n, **_fields(f), "hex": encode(f).hex()}
                   for n, f in _frames().items()],
        "malformed": _malformed(),
    }


def dumps(vectors: dict) -> str:
    return json.dumps(vectors, indent=1) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/vectors/frames.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(build_vectors()))
    print(f"wrote {out}")


def decoder_from(cfg: dict):
    """The Python Decoder a vectors ``decoder`` entry describes (tests use it too)."""
    from nonn_tflite.live.protocol import Decoder

    ids = cfg.get("identities")
    return Decoder(cfg["deployment_id"], {int(k): w for k, w in cfg["feature_widths"].items()},
                   cfg["max_payload"], cfg["image_size"], cfg["num_classes"],
                   None if ids is None else {int(k): FeatureIdentity(**v) for k, v in ids.items()})
