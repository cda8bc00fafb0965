"""Hostile frames: the wire decoder and the nodes' message handlers never raise, count every
rejection by name, and keep working (property tests here; fuzz/frames_atheris.py runs 10^6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.frames import Message, NodeProbe, build_message
from nonn_tflite.live.models import feature_identities
from nonn_tflite.live.protocol import (
    OFFSETS,
    REJECT_REASONS,
    Decoder,
    DType,
    Frame,
    MsgType,
    encode,
)

pytestmark = pytest.mark.timeout(300)

EXAMPLES = int(os.environ.get("NONN_FUZZ_FRAMES", "1500"))
FUSION_ONLY_REASONS = {"topic_mismatch", "bad_status"}  # decided by the node, not the decoder
PROBE_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])


@pytest.fixture(scope="module")
def probe(k4_deployment) -> NodeProbe:
    """One fusion node and one device node (real models, no broker) for all examples."""
    return NodeProbe(k4_deployment)


@PROBE_SETTINGS
@given(data=st.binary(max_size=400))
def test_any_bytes_as_any_message_are_counted_once(probe, data):
    """Fuzzer bytes become a feature/status/image message (often a well-formed frame with bent
    fields); the probe asserts that nothing escaped and exactly one verdict was counted."""
    verdict = probe.feed(build_message(data, probe.deployment))
    reason = verdict.partition(":")[2]
    assert verdict in ("accepted", "status", "not_a_device") or (
        verdict.startswith("rejected:") and reason in set(REJECT_REASONS) | FUSION_ONLY_REASONS
        | {"replayed"})


level = st.text(st.characters(exclude_characters="/+#\x00", exclude_categories=("Cs",)),
                max_size=12)


@PROBE_SETTINGS
@given(node=st.one_of(level, st.builds("device-{}".format, level),
                      st.sampled_from(["device-0", "device-3", "device-²", "device-٣",
                                       "device-00", "device-99", "fusion", "source"])),
       payload=st.one_of(st.sampled_from([b"online", b"offline"]), st.binary(max_size=16)))
def test_status_from_any_node_name_is_applied_or_counted(probe, node, payload):
    """Unicode digits (``device-²``) once raised inside the fusion worker thread and ended all
    fusion; any other payload than ``online`` meant offline."""
    before = set(probe.fusion.core.offline)
    verdict = probe.feed(Message(f"{probe.deployment.topics.prefix}/status/{node}", payload,
                                 "status"))
    known = node in {f"device-{s.id}" for s in probe.deployment.students}
    if known and payload in (b"online", b"offline"):
        assert verdict == "status"
        assert (int(node[7:]) in probe.fusion.core.offline) == (payload == b"offline")
    else:
        assert probe.fusion.core.offline == before  # nothing hostile changes the wait set
        assert verdict in ("rejected:bad_status", "not_a_device")
        assert verdict == "not_a_device" or node.startswith("device-")


@PROBE_SETTINGS
@given(student=st.integers(0, 255), seq=st.integers(0, 2**32 - 1),
       ts=st.integers(0, 2**64 - 1), scale=st.floats(width=32),
       zp=st.integers(-2**31, 2**31 - 1), dtype=st.sampled_from(list(DType)),
       width=st.integers(0, 40), fill=st.integers(0, 255), topic_student=st.integers(0, 5),
       session=st.integers(0, 2**32 - 1), real=st.booleans())
def test_feature_frames_with_any_field_values(probe, student, seq, ts, scale, zp, dtype, width,
                                              fill, topic_student, session, real):
    """Well-formed headers with extreme values (NaN/inf/denormal scales, huge zero points,
    wrapping sequence and session numbers) are refused by name, or, with the identity of a real
    student (``real``), reach the fusion's assembly and requantisation."""
    ids = feature_identities(probe.deployment)
    model = 0
    if real and student in ids and np.isfinite(scale) and scale > 0:
        scale, zp, model, dtype = ids[student].scale, ids[student].zero_point, \
            ids[student].model, DType.INT8
    header_scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    frame = Frame(MsgType.FEATURE, probe.deployment.id, seq, ts, bytes([fill]) * width,
                  student, dtype, header_scale, zp, session=session, model=model)
    data = bytearray(encode(frame))
    at = OFFSETS["scale"]
    data[at:at + 4] = np.float32(scale).tobytes()  # the raw scale, NaN included
    verdict = probe.feed(Message(f"{probe.deployment.topics.prefix}/feature/{topic_student}",
                                 bytes(data), "feature"))
    if not (np.isfinite(scale) and scale > 0):
        assert verdict == "rejected:bad_scale"
    elif verdict == "accepted":
        assert student == topic_student and width == probe.deployment.feature_widths[student]
        assert ids[student].matches(dtype, np.float32(scale), zp, model)
    elif student in ids and width == probe.deployment.feature_widths[student]:
        assert verdict == ("rejected:topic_mismatch" if ids[student].matches(
            dtype, float(np.float32(scale)), zp, model) else "rejected:stale_model")


def test_probe_state_stays_bounded(probe):
    """After thousands of examples the fusion node still holds at most max_pending frames."""
    for i in range(3000):
        probe.feed(build_message(i.to_bytes(4, "little") * 20, probe.deployment))
    assert len(probe.fusion.core.pending) <= probe.fusion.config.max_pending
    assert len(probe.fusion.core.done) <= 4096


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(list(MsgType)))
def test_raw_decoder_counts_every_rejection_by_name(buf, expect):
    d = Decoder(0x1234, {0: 4, 1: 4}, image_size=64, num_classes=10)
    frame = d.decode(buf, expect=expect)
    assert (frame is None) == (d.rejected == 1) and d.accepted + d.rejected == 1
    assert set(d.counters) <= set(REJECT_REASONS)


# ---- over real MQTT: a hostile status does not stop the fusion ---------------------------------

def test_hostile_status_messages_do_not_stop_fusion(mosquitto, k4_deployment, k4_run):
    """Regression, end to end: before the fix, the first message below raised in the fusion
    worker thread, and the node stayed online but never fused again."""
    from nonn_tflite.live.device import DeviceConfig, DeviceNode
    from nonn_tflite.live.fusion import FusionConfig, FusionNode
    from nonn_tflite.live.mqtt import BrokerConfig, Connection, ConnectionConfig
    from nonn_tflite.live.source import SourceConfig, SourceNode, load_images

    broker = BrokerConfig.from_url(mosquitto.url)
    dep = k4_deployment
    nodes = [DeviceNode(dep, broker, DeviceConfig(s.id, queue=64)) for s in dep.students]
    fusion = FusionNode(dep, broker, FusionConfig(deadline_ms=2000))
    source = SourceNode(dep, broker, load_images(dep, k4_run),
                        SourceConfig(rate=40, frames=40, drain_s=5.0))
    started = []
    try:
        for node in [*nodes, fusion, source]:
            node.start()
            started.append(node)
        evil = Connection(broker, ConnectionConfig("nonn-test-evil")).start()
        t = dep.topics
        for node, payload in [("device-²", b"online"), ("device-0", b"garbage"),
                              ("device-٣", b"offline"), ("device-99", b"offline")]:
            assert evil.publish(t.status(node), payload, qos=1)
        deadline = time.monotonic() + 10
        while fusion.decoder.counters["bad_status"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fusion.decoder.counters["bad_status"] == 4
        assert fusion.core.offline == set()  # garbage did not mark device 0 offline
        score = source.run()
        evil.stop()
    finally:
        for node in reversed(started):
            node.stop()
    assert fusion._worker is not None and not fusion.decoder.counters["handler_error"]
    assert len(score.predictions) == 40 and fusion.core.counters["complete"] == 40


# ---- the atheris harness itself --------------------------------------------------------------

def test_atheris_harness_runs_clean(k4_run, tmp_path):
    """A short run of the coverage-guided harness (the documented command runs 10^6)."""
    pytest.importorskip("atheris")
    summary = tmp_path / "frames.json"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(root / "fuzz" / "frames_atheris.py"),
                           "-runs=20000", "-seed=1", "--run", str(k4_run),
                           "--summary", str(summary)],
                          check=False, capture_output=True, text=True, timeout=240, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(summary.read_text())
    assert doc["inputs"] == 20000 and doc["handler_errors"] == 0
    assert doc["verdicts"].get("accepted", 0) > 0 and len(doc["fusion_rejected"]) >= 8
