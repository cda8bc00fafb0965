"""The C wire format (nonn_wire.c, compiled by gcc) against the Python one, byte for byte.

Three references: the shared vectors in tests/vectors/frames.json (written by the live nodes'
code), nonn_tflite.live.protocol itself on random frames, and the struct format of
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# module-scoped fixtures (compiled drivers) are safe to share between examples
FIXTURES_OK = [HealthCheck.function_scoped_fixture]

from nonn_tflite.live import protocol

VECTORS = Path(__file__).parents[1] / "vectors" / "frames.json"
FMT = "<4sBBBBIIIIQfiI"  # docs/ARCHITECTURE.md, wire v2
OFF = protocol.OFFSETS


class WireDriver:
    """The compiled wire_driver: one process per batch of command lines."""

    def __init__(self, cc, exe: Path) -> None:
        self.cc, self.exe = cc, exe

    def lines(self, commands: list[str]) -> list[str]:
        return self.cc.run(self.exe, commands).stdout.splitlines()


@pytest.fixture(scope="module")
def wire(cc, c_drivers, esp32_fw) -> WireDriver:
    src = esp32_fw.project("device_0").path / "src"
    exe = cc.program("wire", [c_drivers / "wire_driver.c", src / "nonn_wire.c"],
                     includes=[src, c_drivers])
    return WireDriver(cc, exe)


def _bits(scale: float) -> str:
    return struct.pack("<f", scale)[::-1].hex()  # big-endian hex of the float32 bits


def _encode_cmd(f: dict) -> str:
    return (f"E {f['msg_type']} {f['student']} {f['dtype']} {f['deployment_id']} "
            f"{f.get('session', 0)} {f['seq']} {f.get('model', 0)} "
            f"{f['timestamp_us']} {_bits(f['scale'])} {f['zero_point']} "
            f"{f['payload_hex'] or '-'}")


def _decoder_cmd(cfg: dict) -> str:
    widths = cfg.get("feature_widths") or {}
    ordered = [widths[str(k)] for k in range(len(widths))]
    lines = [f"C {cfg['deployment_id']} {cfg.get('image_size') or 0} "
             f"{cfg.get('num_classes') or 0} {cfg.get('max_payload', 65536)} {len(ordered)} "
             f"{' '.join(map(str, ordered))}"]
    for k, ident in sorted((cfg.get("identities") or {}).items()):
        model = ident.get("model")
        lines.append(f"I {k} {_bits(ident['scale'])} {ident['zero_point']} {model or 0} "
                     f"{int(model is not None)}")
    return "\n".join(lines)  # identity lines print nothing


def _parse_ok(line: str) -> dict:
    _, ver, mt, student, dtype, dep, session, seq, model, ts, bits, zp, length, payload = \
        line.split()
    return {"version": int(ver), "msg_type": int(mt), "student": int(student),
            "dtype": int(dtype), "deployment_id": int(dep), "session": int(session),
            "seq": int(seq), "model": int(model),
            "timestamp_us": int(ts), "scale": struct.unpack(">f", bytes.fromhex(bits))[0],
            "zero_point": int(zp), "length": int(length),
            "payload_hex": "" if payload == "-" else payload}


@pytest.fixture(scope="module")
def vectors() -> dict:
    if not VECTORS.is_file():
        pytest.skip("tests/vectors/frames.json not generated yet")
    return json.loads(VECTORS.read_text())


# ---- shared vectors -----------------------------------------------------------------------

def test_c_encodes_every_vector_byte_identically(wire, vectors):
    frames = vectors["frames"]
    out = wire.lines([_encode_cmd(f) for f in frames])
    assert out == [f["hex"] for f in frames]


def test_c_decodes_every_vector_to_its_fields(wire, vectors):
    frames = vectors["frames"]
    out = wire.lines([_decoder_cmd(vectors["decoder"])] + [f"D 0 {f['hex']}" for f in frames])
    for frame, line in zip(frames, out, strict=True):
        assert line.startswith("OK"), (frame["name"], line)
        decoded = _parse_ok(line)
        assert decoded == {k: frame[k] for k in decoded}, frame["name"]


def test_c_rejects_every_malformed_vector_for_the_same_reason(wire, vectors):
    cmds = []
    for case in vectors["malformed"]:
        cfg = {**vectors["decoder"], **case.get("decoder", {})}
        cmds += [_decoder_cmd(cfg), f"D {case['expect'] or 0} {case['hex'] or '-'}"]
    out = wire.lines(cmds)
    got = {case["name"]: line for case, line in zip(vectors["malformed"], out, strict=True)}
    assert got == {case["name"]: f"ERR {case['reason']}" for case in vectors["malformed"]}


# ---- random frames against protocol.py ----------------------------------------------------

frames = st.builds(
    lambda mt, student, dtype, dep, seq, ts, scale, zp, payload, session, model: protocol.Frame(
        protocol.MsgType(mt), dep, seq, ts, payload, student, protocol.DType(dtype), scale, zp,
        session=session, model=model),
    st.integers(1, 3), st.integers(0, 255), st.integers(1, 2),
    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
    st.floats(min_value=2.0**-100, max_value=2.0**100, width=32), st.integers(-2**31, 2**31 - 1),
    st.binary(max_size=80), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURES_OK)
@given(batch=st.lists(frames, min_size=1, max_size=20))
def test_c_encode_matches_protocol_encode(wire, batch):
    fields = [{"msg_type": int(f.msg_type), "student": f.student, "dtype": int(f.dtype),
               "deployment_id": f.deployment_id, "seq": f.seq, "timestamp_us": f.timestamp_us,
               "scale": f.scale, "zero_point": f.zero_point, "payload_hex": f.payload.hex(),
               "session": f.session, "model": f.model}
              for f in batch]
    assert wire.lines([_encode_cmd(f) for f in fields]) == [protocol.encode(f).hex()
                                                            for f in batch]


def _mutate(data: bytes, draw) -> bytes:
    """Corrupt one thing a buggy or hostile publisher might get wrong."""
    kind = draw(st.sampled_from(["truncate", "extend", "byte", "scale", "length"]))
    buf = bytearray(data)
    if kind == "truncate":
        return bytes(buf[:draw(st.integers(0, len(buf) - 1))])
    if kind == "extend":
        return bytes(buf) + draw(st.binary(min_size=1, max_size=8))
    if kind == "byte":
        i = draw(st.integers(0, min(len(buf), protocol.HEADER_SIZE) - 1))
        buf[i] = draw(st.integers(0, 255))
    elif kind == "scale":
        bad = draw(st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e-40]))
        buf[OFF["scale"]:OFF["scale"] + 4] = struct.pack("<f", bad)
    else:
        buf[OFF["length"]:OFF["length"] + 4] = struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
    return bytes(buf)


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURES_OK)
@given(data=st.data())
def test_c_accepts_and_rejects_exactly_like_protocol_decoder(wire, data):
    """Random valid and corrupted frames: same verdict, same reason, same fields."""
    dep = protocol.deployment_id("digits-k2")
    widths = {0: 5, 1: 6}
    decoder = protocol.Decoder(dep, widths, image_size=64, num_classes=10)
    cmds = [_decoder_cmd({"deployment_id": dep, "feature_widths": {"0": 5, "1": 6},
                          "image_size": 64, "num_classes": 10})]
    expected = []
    for _ in range(12):
        kind = data.draw(st.sampled_from([1, 2, 3]))
        student = data.draw(st.integers(0, 1)) if kind == 2 else protocol.NO_STUDENT
        size = {1: 64, 2: widths.get(student, 5), 3: 10}[kind]
        frame = protocol.Frame(protocol.MsgType(kind), dep, data.draw(st.integers(0, 2**32 - 1)),
                               data.draw(st.integers(0, 2**64 - 1)), bytes(size), student,
                               protocol.DType(data.draw(st.integers(1, 2))),
                               data.draw(st.floats(2.0**-20, 8.0, width=32)), -128)
        raw = protocol.encode(frame)
        if data.draw(st.booleans()):
            raw = _mutate(raw, data.draw)
        expect = data.draw(st.sampled_from([0, 0, 1, 2, 3]))
        before = dict(decoder.counters)
        got = decoder.decode(raw, protocol.MsgType(expect) if expect else None)
        if got is None:
            reason = next(k for k, v in decoder.counters.items() if v != before.get(k, 0))
            expected.append(f"ERR {reason}")
        else:
            expected.append(("OK", got.session, got.seq, got.model, got.timestamp_us,
                             got.payload.hex() or "-"))
        cmds.append(f"D {expect} {raw.hex() or '-'}")
    out = wire.lines(cmds)
    for want, line in zip(expected, out, strict=True):
        if isinstance(want, str):
            assert line == want
        else:
            parts = line.split()
            assert (parts[0], *map(int, parts[6:10]), parts[13]) == want


DEFECTS = {  # one way to break each check, on a valid 5-byte feature frame of student 0
    "magic": lambda b: b[:3] + b"X" + b[4:],
    "version": lambda b: b[:4] + b"\x02" + b[5:],
    "type": lambda b: b[:5] + b"\x07" + b[6:],
    "deployment": lambda b: b[:8] + b"\x00\x00\x00\x00" + b[12:],
    "dtype": lambda b: b[:7] + b"\x03" + b[8:],
    "scale": lambda b: b[:32] + struct.pack("<f", -1.0) + b[36:],
    "length": lambda b: b[:-1],
    "student": lambda b: b[:6] + b"\x07" + b[7:],
    "width": lambda b: b[:40] + struct.pack("<I", 4) + b[44:48],
    "model": lambda b: b[:20] + struct.pack("<I", 78) + b[24:],         # stale_model
    "zero_point": lambda b: b[:36] + struct.pack("<i", 1) + b[40:],     # stale_model
}


def test_c_checks_in_the_same_order_as_protocol_on_every_pair_of_defects(wire):
    """Two things wrong at once: both decoders must name the same one first."""
    import itertools

    dep = protocol.deployment_id("digits-k2")
    good = protocol.encode(protocol.Frame(protocol.MsgType.FEATURE, dep, 1, 2, bytes(5), 0,
                                          scale=0.5, session=9, model=77))
    ids = {0: protocol.FeatureIdentity(0.5, 0, 77), 1: protocol.FeatureIdentity(0.25, 0, 88)}
    cmds = [_decoder_cmd({"deployment_id": dep, "feature_widths": {"0": 5, "1": 6},
                          "image_size": 64, "num_classes": 10,
                          "identities": {k: vars(v) for k, v in ids.items()}})]
    expected = []
    for (_, first), (_, second) in itertools.permutations(DEFECTS.items(), 2):
        raw = second(first(good))
        for expect in (None, protocol.MsgType.IMAGE):
            decoder = protocol.Decoder(dep, {0: 5, 1: 6}, image_size=64, num_classes=10,
                                       identities=ids)
            assert decoder.decode(raw, expect) is None
            expected.append(f"ERR {next(iter(decoder.counters))}")
            cmds.append(f"D {int(expect or 0)} {raw.hex()}")
    assert wire.lines(cmds) == expected


# ---- the spec itself, independent of protocol.py ------------------------------------------

def test_encoding_is_the_architecture_struct_layout(wire):
    """Fields at the offsets of `<4sBBBBIIIIQfiI`, little-endian, payload after 44 bytes."""
    cmd = ("E 2 1 1 305419896 2864434397 4294967295 3735928559 18446744073709551615 3c23d70a "
           "-2147483648 80ff007f")
    frame = bytes.fromhex(wire.lines([cmd])[0])
    assert struct.calcsize(FMT) == 44 == protocol.HEADER_SIZE
    assert struct.unpack_from(FMT, frame) == (b"NONN", 2, 2, 1, 1, 305419896, 0xAABBCCDD,
                                              4294967295, 0xDEADBEEF, 2**64 - 1,
                                              struct.unpack(">f", bytes.fromhex("3c23d70a"))[0],
                                              -2**31, 4)
    assert frame[44:] == bytes([0x80, 0xFF, 0x00, 0x7F])


def test_c_header_size_is_the_python_one(esp32_fw):
    header = (esp32_fw.project("fusion").path / "src" / "nonn_wire.h").read_text()
    assert f"#define NONN_HEADER_SIZE {protocol.HEADER_SIZE}u" in header
    assert f"#define NONN_WIRE_VERSION {protocol.VERSION}u" in header


@pytest.mark.parametrize("cmd, reason", [
    ("E 2 0 1 1 0 0 0 0 00000000 0 00", "bad_scale"),        # scale 0
    ("E 2 0 1 1 0 0 0 0 7fc00000 0 00", "bad_scale"),        # NaN
    ("E 2 0 1 1 0 0 0 0 bf800000 0 00", "bad_scale"),        # -1
    ("E 4 0 1 1 0 0 0 0 3f800000 0 00", "bad_argument"),     # msg_type 4
    ("E 2 0 3 1 0 0 0 0 3f800000 0 00", "bad_argument"),     # dtype 3
])
def test_encoder_refuses_frames_no_decoder_accepts(wire, cmd, reason):
    assert wire.lines([cmd]) == [f"ERR {reason}"]


def test_encoder_refuses_oversized_payload_and_accepts_the_maximum(wire):
    base = "E 1 255 2 1 0 0 0 0 3f800000 0 "
    ok, too_big = wire.lines([base + "00" * 65536, base + "00" * 65537])
    assert len(bytes.fromhex(ok)) == protocol.HEADER_SIZE + 65536
    assert too_big == "ERR oversized"


def test_structure_only_decoding_skips_deployment_checks(wire):
    frame = protocol.encode(protocol.Frame(protocol.MsgType.FEATURE, 123, 1, 2, bytes(3), 9))
    out = wire.lines(["N", f"D 0 {frame.hex()}", f"D 3 {frame.hex()}"])
    assert out[0].startswith("OK 2 2 9 1 123 ")
    assert out[1] == "ERR unexpected_type"
