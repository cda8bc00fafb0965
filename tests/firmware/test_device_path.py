"""A student device's frame handling in C (nonn_node.c with its generated nonn_config.h)
against the Python device node: image frame in -> model input -> feature frame out."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# module-scoped fixtures (compiled drivers) are safe to share between examples
FIXTURES_OK = [HealthCheck.function_scoped_fixture]

from nonn_tflite.live import protocol
from nonn_tflite.live.device import ReplayGuard
from nonn_tflite.int8 import QParams
from nonn_tflite.live.models import image_to_input
from nonn_tflite.profile import qparams
from nonn_tflite.tflite_model import parse_tflite

DEP = protocol.deployment_id("digits-k2")


@pytest.fixture(scope="module", params=["esp32-platformio", "linux"])
def device(request, cc, c_drivers, esp32_fw, linux_fw):
    """device_1's C frame handling, built from each target's generated sources."""
    fw = {"esp32-platformio": esp32_fw, "linux": linux_fw}[request.param]
    src = fw.project("device_1").path / "src"
    sources = [c_drivers / "device_driver.c"] + [src / n for n in (
        "nonn_node.c", "nonn_wire.c", "nonn_quant.c", "nonn_crc32.c")]
    exe = cc.program(f"device_{request.param}", sources, includes=[src, c_drivers])
    return lambda lines: cc.run(exe, lines).stdout.splitlines()


@pytest.fixture(scope="module")
def student(run):
    from tflite_micro import runtime

    info = parse_tflite(run.model("student_1"))
    interp = runtime.Interpreter.from_bytes(run.model("student_1"), arena_size=64 * 1024)

    def infer(x: np.ndarray) -> np.ndarray:
        interp.set_input(x.reshape(1, 8, 8, 1), 0)
        interp.invoke()
        return interp.get_output(0).reshape(-1)

    q_in = QParams(*qparams(info.input_tensors()[0]))
    q_out = QParams(*qparams(info.output_tensors()[0]))
    return infer, q_in, q_out


def _image(seq: int, pixels: bytes, *, scale: float = float(np.float32(1 / 255)), zp: int = 0,
           dtype=protocol.DType.UINT8, dep: int = DEP) -> protocol.Frame:
    return protocol.Frame(protocol.MsgType.IMAGE, dep, seq, 1_700_000_000_000_000 + seq, pixels,
                          dtype=dtype, scale=scale, zero_point=zp)


def test_identity_constants_agree_with_the_name(device):
    dep_id, crc_of_name, node, image, feature, status = device(["Q"])[0].split()
    assert int(dep_id) == int(crc_of_name) == DEP
    assert node == "device-1"
    assert (image, feature, status) == ("nonn/digits-k2/image", "nonn/digits-k2/feature/1",
                                        "nonn/digits-k2/status/device-1")


def test_image_frames_become_the_python_input_and_the_python_feature_frame(device, run, student):
    infer, q_in, q_out = student
    images = [_image(i, run.images[i].tobytes()) for i in range(24)]
    out = device([f"I {protocol.encode(f).hex()}" for f in images])
    lines = []
    for frame, line in zip(images, out, strict=True):
        status, seq, ts, hex_input = line.split()
        x = np.frombuffer(bytes.fromhex(hex_input), np.int8)
        want = image_to_input(frame.values(), QParams(frame.scale, frame.zero_point), q_in)
        assert status == "OK" and (int(seq), int(ts)) == (frame.seq, frame.timestamp_us)
        assert np.array_equal(x, want)
        assert np.array_equal(x, (run.images[frame.seq].reshape(-1).astype(int) - 128))
        lines.append(f"F {seq} {ts} {infer(x).tobytes().hex()}")
    features = device(lines)
    for frame, got in zip(images, features, strict=True):
        vec = infer(image_to_input(frame.values(), QParams(frame.scale, frame.zero_point), q_in))
        want = protocol.Frame(protocol.MsgType.FEATURE, DEP, frame.seq, frame.timestamp_us,
                              vec.tobytes(), 1, protocol.DType.INT8, q_out.scale, q_out.zero_point)
        assert got == protocol.encode(want).hex()


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES_OK)
@given(pixels=st.binary(min_size=64, max_size=64), zp=st.integers(-128, 255),
       scale=st.floats(2.0**-12, 2.0**-4, width=32), signed=st.booleans())
def test_any_image_quantisation_is_requantised_like_python(device, student, pixels, zp, scale,
                                                            signed):
    _, q_in, _ = student
    dtype = protocol.DType.INT8 if signed else protocol.DType.UINT8
    frame = _image(1, pixels, scale=scale, zp=zp, dtype=dtype)
    line = device([f"I {protocol.encode(frame).hex()}"])[0]
    want = image_to_input(frame.values(), QParams(frame.scale, frame.zero_point), q_in)
    assert line.split()[3] == want.tobytes().hex()


def test_exact_ties_round_half_away_from_zero_like_python(device, student):
    """A frame at half the input scale puts every odd value on a .5 tie."""
    _, q_in, _ = student
    pixels = bytes(range(1, 128, 2))  # 64 odd values: (v - 0) * 0.5 is always a tie
    frame = _image(2, pixels, scale=q_in.scale / 2, zp=0, dtype=protocol.DType.INT8)
    got = bytes.fromhex(device([f"I {protocol.encode(frame).hex()}"])[0].split()[3])
    want = image_to_input(frame.values(), QParams(frame.scale, frame.zero_point), q_in)
    assert np.frombuffer(got, np.int8).tolist() == want.tolist()


def test_camera_pixels_use_the_model_input_convention(device, run):
    pixels = run.images[3].tobytes()
    got = np.frombuffer(bytes.fromhex(device([f"P {pixels.hex()}"])[0]), np.int8)
    assert np.array_equal(got, np.frombuffer(pixels, np.uint8).astype(int) - 128)


@pytest.mark.parametrize("frame, reason", [
    (_image(0, bytes(64), dep=DEP ^ 0xFF), "wrong_deployment"),
    (_image(0, bytes(63)), "wrong_image_size"),
    (protocol.Frame(protocol.MsgType.FEATURE, DEP, 0, 0, bytes(6), 1), "unexpected_type"),
])
def test_device_rejects_frames_it_cannot_use(device, frame, reason):
    assert device([f"I {protocol.encode(frame).hex()}"]) == [f"ERR {reason}"]


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES_OK)
@given(events=st.lists(st.tuples(
    st.one_of(st.integers(0, 6), st.integers(2**32 - 4, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.integers(0, 8)), min_size=1, max_size=30))
def test_replay_guard_matches_the_python_device(device, events):
    guard = ReplayGuard()
    want = [str(int(guard.accept(seq, ts))) for seq, ts in events]
    assert device([f"R {seq} {ts}" for seq, ts in events]) == want
