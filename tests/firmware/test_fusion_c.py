"""The C fusion node, compiled by gcc, against TFLM and the Python fusion node's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge.cfusion import fc_layers, params_crc32, quantize_multiplier
from nonn_tflite.errors import ModelFileError
from nonn_tflite.live import protocol
from nonn_tflite.tflite_model import parse_tflite

DEP = protocol.deployment_id("digits-k2")
TIMEOUT_MS = 500


@pytest.fixture(scope="module")
def fusion(cc, c_drivers, esp32_fw):
    src = esp32_fw.project("fusion").path / "src"
    sources = [c_drivers / "fusion_driver.c"] + [src / n for n in (
        "fusion_model.c", "fusion_runner.c", "nonn_wire.c", "nonn_crc32.c", "nonn_quant.c",
        "nonn_node.c")]
    exe = cc.program("fusion", sources, includes=[src, c_drivers])
    return lambda lines: cc.run(exe, lines).stdout.splitlines()


def test_c_fusion_layer_equals_tflm_bit_for_bit(fusion, reference):
    rng = np.random.default_rng(0)
    inputs = rng.integers(-128, 128, size=(300, 11), dtype=np.int8)
    inputs[:3] = [[-128] * 11, [127] * 11, [0] * 11]  # saturating corners
    out = fusion([f"V {x.tobytes().hex()}" for x in inputs])
    assert out[0].startswith("INIT 0 ")
    got = np.array([np.frombuffer(bytes.fromhex(line), np.int8) for line in out[1:]])
    want = np.array([reference.run("fusion", x[None]) for x in inputs])
    assert np.array_equal(got, want)
    assert len(np.unique(want)) > 50  # the comparison spans the int8 range, not one value


def test_c_fusion_node_predicts_what_the_python_node_would(fusion, reference):
    """Real student vectors in as wire frames; prediction frames out, byte-identical."""
    lines, expected = [], []
    for seq, (v0, v1) in enumerate(reference.vectors(40)):
        ts = 1_700_000_000_000_000 + seq
        lines += [f"F {seq * 10} {reference.feature(1, seq, ts, v1).hex()}",
                  f"F {seq * 10 + 1} {reference.feature(0, seq, ts, v0).hex()}"]
        expected += ["N 0", f"N 1 {reference.prediction(seq, ts, {0: v0, 1: v1}).hex()}"]
    out = fusion(lines + ["S"])
    assert out[1:-1] == expected
    assert "complete=40 partial=0" in out[-1]


def test_missing_student_is_zero_filled_after_the_deadline(fusion, reference):
    (v0, _), = reference.vectors(1)
    ts = 1_700_000_000_000_000
    out = fusion([f"F 1000 {reference.feature(0, 5, ts, v0).hex()}",
                  f"T {1000 + TIMEOUT_MS - 1}", f"T {1000 + TIMEOUT_MS}", "S"])
    assert out[1:3] == ["N 0", "N 0"]
    assert out[3] == f"N 1 {reference.prediction(5, ts, {0: v0}).hex()}"
    assert "partial=1" in out[4]


def test_duplicates_late_and_stale_frames_are_dropped(fusion, reference):
    (v0, v1), = reference.vectors(1)
    ts = 2_000_000
    f0, f1 = reference.feature(0, 9, ts, v0).hex(), reference.feature(1, 9, ts, v1).hex()
    out = fusion([f"F 0 {f0}", f"F 1 {f0}",                            # duplicate while pending
                  f"F 2 {f1}",                                         # completes seq 9
                  f"F 3 {f1}",                                         # duplicate afterwards
                  f"F 4 {reference.feature(0, 8, ts - 1, v0).hex()}",  # older seq and capture
                  f"F 5 {reference.feature(0, 3, ts + 1, v0).hex()}",  # later capture: restart
                  "S"])
    assert out[1:5] == ["N 0", "N 0", f"N 1 {reference.prediction(9, ts, {0: v0, 1: v1}).hex()}",
                        "N 0"]
    assert out[5:7] == ["N 0", "N 0"]
    assert "duplicate=2" in out[7] and "out_of_order=1" in out[7]


def test_restarted_source_is_answered_from_its_first_frame(fusion, reference):
    """Issue 14: keyed by seq alone, a restarted source's seq 0, 1, ... met the done-cache and
    were dropped as duplicates. Keyed by (session, seq), the new run is fused from frame 0."""
    vecs = reference.vectors(6)
    lines, expected = [], []
    for session, ts0 in ((0x1111, 5_000_000), (0x2222, 1_000)):  # clock even went back
        for seq, (v0, v1) in enumerate(vecs):
            ts = ts0 + seq
            lines += [f"F {seq} {reference.feature(0, seq, ts, v0, session).hex()}",
                      f"F {seq} {reference.feature(1, seq, ts, v1, session).hex()}"]
            expected += ["N 0", "N 1 " + reference.prediction(seq, ts, {0: v0, 1: v1},
                                                              session).hex()]
    out = fusion(lines + ["S"])
    assert out[1:-1] == expected
    assert "duplicate=0 late=0 out_of_order=0 complete=12" in out[-1]


def test_frames_of_another_model_are_refused_as_stale(fusion, reference):
    (v0, v1), = reference.vectors(1)
    stale = reference.feature(0, 1, 5, v0, model=reference.model_hash("student_0") ^ 1)
    bad_scale = bytearray(reference.feature(1, 1, 5, v1))
    bad_scale[32:36] = bytes(reversed(bytes.fromhex("3f800000")))  # scale 1.0
    uint8 = bytearray(reference.feature(0, 1, 5, v0))
    uint8[7] = protocol.DType.UINT8
    out = fusion([f"F 0 {stale.hex()}", f"F 0 {bytes(bad_scale).hex()}",
                  f"F 0 {bytes(uint8).hex()}", "S"])
    assert out[1:4] == ["ERR stale_model"] * 3
    assert "rejected=3" in out[4] and "stale_model=3" in out[4]


def test_offline_device_is_not_waited_for(fusion, reference):
    """A device's last will (status offline) ends the wait for its slice at once, as in the
    Python node: the frame is fused zero-filled now, not after NONN_FUSION_TIMEOUT_MS."""
    (v0, _), (w0, _) = reference.vectors(2)
    out = fusion([f"F 0 {reference.feature(0, 1, 10, v0).hex()}",  # waits for student 1
                  "U 5 device-1 offline",                            # ... until its last will
                  f"F 6 {reference.feature(0, 2, 11, w0).hex()}",  # complete at once now
                  "U 7 device-1 online",
                  f"F 8 {reference.feature(0, 3, 12, w0).hex()}",  # waits again
                  "U 9 fusion offline", "U 9 source offline",       # other nodes: ignored
                  "U 9 device-7 offline", "U 9 device-01 offline",  # no such device
                  "U 9 device-0 gone", "U 9 device-0 -",            # not online/offline
                  "S"])
    assert out[1:3] == ["N 0", f"N 1 {reference.prediction(1, 10, {0: v0}).hex()}"]
    assert out[3] == f"N 1 {reference.prediction(2, 11, {0: w0}).hex()}"
    assert out[4:6] == ["N 0", "N 0"]
    assert out[6:12] == ["N 0"] * 6
    assert "partial=2" in out[12] and "bad_status=4" in out[12] and "offline=0" in out[12]


def test_a_fifth_pending_frame_evicts_the_oldest(fusion, reference):
    vecs = reference.vectors(5)
    lines = [f"F {i} {reference.feature(0, i, 100 + i, v0).hex()}"
             for i, (v0, _) in enumerate(vecs)]
    out = fusion(lines + ["S"])
    assert out[1:5] == ["N 0"] * 4
    assert out[5] == f"N 1 {reference.prediction(0, 100, {0: vecs[0][0]}).hex()}"
    assert "evicted=1" in out[6]


@pytest.mark.parametrize("frame, reason", [
    (protocol.Frame(protocol.MsgType.FEATURE, DEP ^ 1, 0, 0, bytes(5), 0), "wrong_deployment"),
    (protocol.Frame(protocol.MsgType.FEATURE, DEP, 0, 0, bytes(6), 0), "wrong_width"),
    (protocol.Frame(protocol.MsgType.FEATURE, DEP, 0, 0, bytes(5), 2), "unknown_student"),
    (protocol.Frame(protocol.MsgType.IMAGE, DEP, 0, 0, bytes(64)), "unexpected_type"),
])
def test_fusion_node_rejects_frames_it_cannot_use(fusion, frame, reason):
    assert fusion([f"F 0 {protocol.encode(frame).hex()}"])[1] == f"ERR {reason}"


def test_params_crc_in_c_matches_python(esp32_fw, run):
    header = (esp32_fw.project("fusion").path / "src" / "fusion_model.h").read_text()
    crc = params_crc32(fc_layers(parse_tflite(run.model("fusion"))))
    assert f"NONN_FUSION_PARAMS_CRC32 0x{crc:08X}u" in header


def test_corrupted_fusion_weights_are_refused_at_boot(cc, c_drivers, esp32_fw, tmp_path):
    src = esp32_fw.project("fusion").path / "src"
    model_c = (src / "fusion_model.c").read_text()
    first_row = model_c.index("{ ", model_c.index("kWeights0"))
    bad = tmp_path / "fusion_model.c"
    bad.write_text(model_c[:first_row + 2] + "1" + model_c[first_row + 2:])  # 13 -> 113 etc.
    sources = [c_drivers / "fusion_driver.c", bad] + [src / n for n in (
        "fusion_runner.c", "nonn_wire.c", "nonn_crc32.c", "nonn_quant.c", "nonn_node.c")]
    exe = cc.program("fusion_corrupt", sources, includes=[src, c_drivers])
    first = cc.run(exe, []).stdout.splitlines()[0]
    assert first.startswith("INIT -1 ") and "refusing to run a corrupted model" in first


@pytest.mark.parametrize("real, expected", [
    (0.5, (1 << 30, 0)), (1.0, (1 << 30, 1)), (0.25, (1 << 30, -1)), (0.0, (0, 0)),
    (1 - 2**-33, (1 << 30, 1)),  # rounds up to 2^31, renormalised
])
def test_quantize_multiplier_follows_tflm(real, expected):
    assert quantize_multiplier(real) == expected


def test_a_fusion_with_other_ops_is_refused_for_c(run):
    with pytest.raises(ModelFileError, match="CONV_2D"):
        fc_layers(parse_tflite(run.model("student_0")))


# ---- the ESP32 fusion's own glue (main.cpp), run on the host -------------------------------

@pytest.fixture(scope="module")
def esp32_fusion_glue(cc, c_drivers, esp32_fw):
    """The generated ESP32 fusion main.cpp linked with its real C sources and host definitions
    of the Arduino/WiFi/PubSubClient stubs (c/esp32_glue.cpp): MQTT in on stdin, out on
    stdout. Only the glue's logic is exercised; the ESP32 toolchain cannot be installed here."""
    from pathlib import Path

    src = esp32_fw.project("fusion").path / "src"
    stubs = Path(__file__).parent / "stubs"
    sources = [c_drivers / "esp32_glue.cpp", src / "main.cpp"] + [src / n for n in (
        "fusion_model.c", "fusion_runner.c", "nonn_wire.c", "nonn_crc32.c", "nonn_quant.c",
        "nonn_node.c")]
    exe = cc.program("esp32_fusion_glue", sources, includes=[src, stubs, c_drivers])
    return lambda lines: cc.run(exe, lines).stdout.splitlines()


def test_esp32_fusion_follows_status_and_last_wills(esp32_fusion_glue, reference):
    """As the Linux fusion (issue 14): the ESP32 gateway subscribes to status/+ and hands each
    status to nonn_fusion_node_status, so a frame waiting only for a device whose last will
    says offline is fused at once. Before, it subscribed to features only and a status message
    would have been fed to the frame decoder."""
    topics = protocol.Topics("digits-k2")
    (v0, _), (w0, _) = reference.vectors(2)
    out = esp32_fusion_glue([
        f"M 0 {topics.features.replace('+', '0')} {reference.feature(0, 1, 10, v0).hex()}",
        "L 1",                                                    # still waiting for student 1
        f"M 5 {topics.status('device-1')} {b'offline'.hex()}",    # its last will
        f"M 6 {topics.features.replace('+', '0')} {reference.feature(0, 2, 11, w0).hex()}"])
    assert f"SUB {topics.features} 0" in out and f"SUB {topics.status_all} 1" in out
    published = [line.split()[1:] for line in out if line.startswith("PUB ")]
    predictions = [bytes.fromhex(p) for t, p in published if t == topics.prediction]
    assert predictions == [reference.prediction(1, 10, {0: v0}),
                           reference.prediction(2, 11, {0: w0})]
    assert not any("rejected" in line for line in out), out
