"""Wire format: round trip, the byte layout fixed by shared vectors, and every rejection reason."""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonn_tflite.live.protocol import (
    HEADER_FORMAT,
    HEADER_SIZE,
    OFFSETS,
    MAX_PAYLOAD,
    NO_STUDENT,
    REJECT_REASONS,
    Decoder,
    DType,
    FeatureIdentity,
    Frame,
    MsgType,
    Topics,
    deployment_id,
    encode,
)
from nonn_tflite.live.vectors import build_vectors, decoder_from, dumps

pytestmark = pytest.mark.timeout(60)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "frames.json"
DEP = deployment_id("digits-k2")

f32 = st.floats(min_value=2.0**-100, max_value=2.0**100, allow_nan=False, allow_infinity=False,
                width=32)


@st.composite
def frames(draw) -> Frame:
    msg_type = draw(st.sampled_from(list(MsgType)))
    student = draw(st.integers(0, 254)) if msg_type == MsgType.FEATURE else NO_STUDENT
    return Frame(msg_type=msg_type, deployment_id=draw(st.integers(0, 2**32 - 1)),
                 seq=draw(st.integers(0, 2**32 - 1)),
                 timestamp_us=draw(st.integers(0, 2**64 - 1)),
                 payload=draw(st.binary(max_size=300)), student=student,
                 dtype=draw(st.sampled_from(list(DType))), scale=draw(f32),
                 zero_point=draw(st.integers(-2**31, 2**31 - 1)),
                 session=draw(st.integers(0, 2**32 - 1)), model=draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=300, deadline=None)
@given(frames())
def test_round_trip(frame: Frame) -> None:
    data = encode(frame)
    assert len(data) == HEADER_SIZE + len(frame.payload)
    assert Decoder(frame.deployment_id).decode(data) == frame


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_never_raises_on_garbage(buf: bytes) -> None:
    d = Decoder(DEP, {0: 5}, image_size=64, num_classes=10)
    result = d.decode(buf)
    assert (result is None) == (d.rejected == 1)
    assert set(d.counters) <= set(REJECT_REASONS)


@settings(max_examples=200, deadline=None)
@given(frames(), st.integers(0, 400), st.integers(0, 255))
def test_decoder_survives_any_corruption(frame: Frame, pos: int, byte: int) -> None:
    data = bytearray(encode(frame))
    data[pos % len(data)] = byte
    d = Decoder(frame.deployment_id)
    d.decode(bytes(data))  # any verdict, but no exception
    assert d.accepted + d.rejected == 1


def test_header_layout_matches_architecture_doc() -> None:
    f = Frame(MsgType.FEATURE, 0x01020304, 5, 6, b"\x80\x7f", student=3, scale=0.5,
              zero_point=-128, session=0xA1B2C3D4, model=0x0BADF00D)
    data = encode(f)
    assert HEADER_SIZE == 44 and HEADER_FORMAT == "<4sBBBBIIIIQfiI"
    assert data[:4] == b"NONN" and data[4:8] == bytes([2, 2, 3, 1])
    assert struct.unpack_from("<IIIIQfiI", data, 8) == (0x01020304, 0xA1B2C3D4, 5, 0x0BADF00D,
                                                         6, 0.5, -128, 2)
    assert data[44:] == b"\x80\x7f"
    assert OFFSETS["session"] == 12 and OFFSETS["model"] == 20 and OFFSETS["scale"] == 32


def test_old_import_path_is_the_wire_module() -> None:
    from nonn_tflite import wire
    from nonn_tflite.live import protocol

    assert protocol.Decoder is wire.Decoder and protocol.HEADER_SIZE is wire.HEADER_SIZE


def test_deployment_reader_does_not_import_the_live_package() -> None:
    """deployment.py <-> live/ was an import cycle; the wire format now sits below both."""
    import subprocess
    import sys

    code = ("import sys, nonn_tflite.deployment; "
            "print(sorted(m for m in sys.modules if m.startswith('nonn_tflite.live')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_stale_model_is_refused_by_name() -> None:
    ident = {0: FeatureIdentity(0.02, -128, 0xABCD)}
    d = Decoder(DEP, {0: 3}, identities=ident)
    scale = struct.unpack("<f", struct.pack("<f", 0.02))[0]  # as the wire carries it
    ok = Frame(MsgType.FEATURE, DEP, 1, 2, bytes(3), 0, DType.INT8, scale, -128, model=0xABCD)
    assert d.decode(encode(ok)) == ok
    for bad in (dict(model=0xABCE), dict(scale=0.021), dict(zero_point=-127),
                dict(dtype=DType.UINT8)):
        assert d.decode(encode(replace(ok, **bad))) is None and d.last_reason == "stale_model"
    assert d.counters == {"stale_model": 4}
    unchecked = Decoder(DEP, {0: 3}, identities={0: FeatureIdentity(0.02, -128, None)})
    assert unchecked.decode(encode(replace(ok, model=7))) is not None  # old JSON: no hash


def test_deployment_id_is_crc32_of_utf8_name() -> None:
    assert deployment_id("digits-k2") == zlib.crc32(b"digits-k2")
    assert deployment_id("ç10") == zlib.crc32("ç10".encode())


def test_encode_refuses_frames_no_decoder_accepts() -> None:
    base = dict(msg_type=MsgType.IMAGE, deployment_id=1, seq=0, timestamp_us=0)
    with pytest.raises(ValueError, match="exceeds"):
        encode(Frame(payload=bytes(MAX_PAYLOAD + 1), **base))
    for bad in (math.nan, math.inf, 0.0, -1.0):
        with pytest.raises(ValueError, match="scale"):
            encode(Frame(payload=b"", scale=bad, **base))
    with pytest.raises(ValueError, match="out of range"):
        encode(Frame(payload=b"", zero_point=2**31, **base))


# ---- the shared vectors ----------------------------------------------------------------------

def _vectors() -> dict:
    return json.loads(VECTORS.read_text())


def _decoder(v: dict, override: dict | None = None) -> Decoder:
    return decoder_from({**v["decoder"], **(override or {})})


def test_vector_file_is_up_to_date() -> None:
    assert VECTORS.read_text() == dumps(build_vectors()), \
        "regenerate: python -m nonn_tflite.live.vectors tests/vectors/frames.json"


def test_vectors_cover_every_type_and_reason() -> None:
    v = _vectors()
    types = [f["msg_type"] for f in v["frames"]]
    assert all(types.count(t) >= 2 for t in (1, 2, 3))
    assert {m["reason"] for m in v["malformed"]} == set(REJECT_REASONS)
    assert v["reasons"] == list(REJECT_REASONS)


@pytest.mark.parametrize("case", _vectors()["frames"], ids=lambda c: c["name"])
def test_valid_vector_bytes(case: dict) -> None:
    frame = Frame(MsgType(case["msg_type"]), case["deployment_id"], case["seq"],
                  case["timestamp_us"], bytes.fromhex(case["payload_hex"]), case["student"],
                  DType(case["dtype"]), case["scale"], case["zero_point"], case["version"],
                  case["session"], case["model"])
    assert encode(frame).hex() == case["hex"]
    assert _decoder(_vectors()).decode(bytes.fromhex(case["hex"])) == frame


@pytest.mark.parametrize("case", _vectors()["malformed"], ids=lambda c: c["name"])
def test_malformed_vector_rejected_with_reason(case: dict) -> None:
    d = _decoder(_vectors(), case.get("decoder"))
    expect = None if case["expect"] is None else MsgType(case["expect"])
    assert d.decode(bytes.fromhex(case["hex"]), expect=expect) is None
    assert d.counters == {case["reason"]: 1}
    assert d.accepted == 0


# ---- topics ---------------------------------------------------------------------------------

def test_topic_scheme() -> None:
    t = Topics("digits-k2")
    assert t.image == "nonn/digits-k2/image"
    assert t.feature(3) == "nonn/digits-k2/feature/3"
    assert t.features == "nonn/digits-k2/feature/+"
    assert t.prediction == "nonn/digits-k2/prediction"
    assert t.status("device-1") == "nonn/digits-k2/status/device-1"
    assert Topics.shared("g", t.image) == "$share/g/nonn/digits-k2/image"
    for bad in ("", "a/b", "a+", "#"):
        with pytest.raises(ValueError):
            Topics(bad)
