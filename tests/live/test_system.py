"""The live system end to end over real brokers: accuracy, faults, hostile frames, load sharing."""

from __future__ import annotations

import json
import math
import struct
import threading
import time

import numpy as np
import pytest

from nonn_tflite.live.fusion import FusionConfig
from nonn_tflite.live.models import feature_identities
from nonn_tflite.live.mqtt import BrokerConfig, Connection, ConnectionConfig
from nonn_tflite.live.protocol import (
    HEADER_SIZE,
    OFFSETS,
    DType,
    Frame,
    MsgType,
    deployment_id,
    encode,
)
from nonn_tflite.live.runtime import now_us
from nonn_tflite.live.source import image_frame

pytestmark = pytest.mark.timeout(90)


def _wait(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def _assert_matches_offline(score, offline) -> None:
    """Every predicted frame carries exactly the offline int8 system's class."""
    for seq, cls in score.predictions.items():
        assert cls == offline[score.indices[seq]], f"frame {seq}"
    labels = np.array([score.labels[s] for s in score.predictions])
    expected = np.array([offline[score.indices[s]] for s in score.predictions])
    assert score.accuracy == pytest.approx(float((expected == labels).mean()))


def test_end_to_end_over_mosquitto_equals_offline(mosquitto, live_nodes, offline_classes):
    nodes = live_nodes(mosquitto.url, rate=60, frames=150)
    score = nodes.source.run()
    fusion = nodes.fusions[0].core.counters
    assert score.frames == 150 and len(score.predictions) == 150
    assert fusion["complete"] == 150 and fusion["partial"] == 0
    _assert_matches_offline(score, offline_classes)
    assert score.duplicates == 0 and score.latency_ms.p(99) < 1000
    assert all(d.conn.protocol == "5" for d in nodes.devices)


def test_restarted_source_is_answered_from_its_first_frame(mosquitto, live_nodes, deployment,
                                                          tiny_run, offline_classes):
    """Issue 14: the fusion's done-cache was keyed by seq alone, so a restarted source's frames
    0, 1, 2, ... were all dropped as duplicates (main before the fix: 0 predictions and 20
    duplicate counts for 10 frames). Now each run is its own session."""
    from nonn_tflite.live.source import SourceConfig, SourceNode, load_images

    nodes = live_nodes(mosquitto.url, rate=50, frames=40)
    first = nodes.source.run()
    assert first.answered == 40
    nodes.source.stop()                   # the camera restarts mid-run: seq starts at 0 again
    fusion = nodes.fusions[0].core.counters
    before = dict(fusion)
    second = nodes._start(SourceNode(deployment, BrokerConfig.from_url(mosquitto.url),
                                     load_images(deployment, tiny_run),
                                     SourceConfig(rate=50, frames=10, drain_s=3.0)))
    assert second.session != nodes.source.session
    score = second.run()
    assert score.frames == 10 and score.answered == 10 and sorted(score.predictions) == \
        list(range(10)), "every frame after the restart is predicted"
    assert fusion["predicted"] - before["predicted"] == 10
    assert (fusion["duplicate"], fusion["late"], fusion["out_of_order"]) == (0, 0, 0)
    assert score.unknown == 0 and score.duplicates == 0
    _assert_matches_offline(score, offline_classes)


def test_end_to_end_over_embedded_amqtt_via_demo(tiny_run, tmp_path, cli, procs):
    import subprocess

    out = tmp_path / "summary.json"
    p = subprocess.Popen(cli("demo", str(tiny_run), "--frames", "100", "--rate", "25",
                             "--deadline-ms", "2000", "--no-dashboard", "--summary", str(out)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(p)
    stdout, stderr = p.communicate(timeout=80)
    assert p.returncode == 0, stderr[-2000:]
    s = json.loads(out.read_text())
    assert s["embedded_broker"] and s["frames"] == 100 and s["predicted"] == 100
    assert s["partial_frames"] == 0 and s["complete_frames"] == 100
    assert s["accuracy"] == s["offline_accuracy"] and s["agreement_with_offline"] == 1.0
    assert s["bytes_per_frame"] == {"device_0": 44 + 5, "device_1": 44 + 6}
    assert set(s["latency_ms"]) == {"p50", "p99"} and 0 < s["latency_ms"]["p50"] < 1000
    assert s["rejected"] == 0
    assert "accuracy (MQTT)" in stdout and "predicted" in stdout


def test_broker_restart_nodes_reconnect(mosquitto, live_nodes):
    nodes = live_nodes(mosquitto.url, rate=30, frames=150, drain_s=3.0)
    result = {}
    runner = threading.Thread(target=lambda: result.update(score=nodes.source.run()))
    runner.start()
    time.sleep(2.0)
    mosquitto.stop()                      # the broker goes away mid-run ...
    down_at = nodes.source.score.frames
    time.sleep(1.0)
    mosquitto.start()                     # ... and comes back on the same port
    runner.join(timeout=30)
    score = result["score"]
    for node in nodes.started:
        assert node.conn.reconnects >= 1 and node.conn.connected.is_set()
    after = [s for s in score.predictions if s > down_at + 40]
    assert len(after) >= 0.8 * (score.frames - down_at - 40), "no predictions after restart"
    assert nodes.source.send_failed > 0   # frames sent while down were dropped, not queued
    assert all(n._worker.is_alive() for n in nodes.devices + nodes.fusions)


def _injector(url: str) -> Connection:
    return Connection(BrokerConfig.from_url(url), ConnectionConfig("nonn-test-injector")).start()


def test_hostile_frames_are_rejected_and_counted(mosquitto, live_nodes, deployment,
                                                 offline_classes):
    nodes = live_nodes(mosquitto.url, rate=50, frames=30)
    t, inj = deployment.topics, _injector(mosquitto.url)
    dev = deployment.id
    img = image_frame(deployment, 1000, now_us(), np.zeros((8, 8, 1), np.uint8))
    ids = feature_identities(deployment)  # what a device of this deployment really sends
    real = ids[0]
    feat = lambda k, n, **kw: Frame(MsgType.FEATURE, kw.pop("dep", dev), kw.pop("seq", 2000),
                                    now_us(), bytes(n), k, DType.INT8,
                                    kw.pop("scale", real.scale), real.zero_point,
                                    model=kw.pop("model", real.model))
    at = OFFSETS["scale"]
    nan_scale = lambda data: data[:at] + struct.pack("<f", math.nan) + data[at + 4:]
    other = deployment_id("other").to_bytes(4, "little")
    sends = [  # topic, bytes                                  -> expected verdict
        (t.image, b"garbage"),                                 # too_short (devices)
        (t.image, encode(img)[:HEADER_SIZE] + bytes(70_000)),  # oversized (devices)
        (t.image, encode(img)[:8] + other + encode(img)[12:]),  # wrong_deployment (devices)
        (t.image, encode(img)), (t.image, encode(img)),        # ok, then replayed (devices)
        (t.feature(0), encode(feat(0, 4))),                    # wrong_width (fusion)
        (t.feature(7), encode(feat(7, 5))),                    # unknown_student (fusion)
        (t.feature(0), encode(feat(0, 5, dep=deployment_id("other")))),  # wrong_deployment
        (t.feature(0), nan_scale(encode(feat(0, 5)))),         # bad_scale (fusion)
        (t.feature(1), encode(feat(0, 5))),                    # topic_mismatch (fusion)
        (t.feature(0), encode(feat(0, 5, model=real.model ^ 1))),  # stale_model (fusion)
        (t.feature(0), encode(feat(0, 5, seq=3000))),          # ok ...
        (t.feature(0), encode(feat(0, 5, seq=3000))),          # ... replayed: duplicate
    ]
    for topic, payload in sends:
        assert inj.publish(topic, payload)
    d0, d1, fusion = nodes.devices[0].decoder, nodes.devices[1].decoder, nodes.fusions[0]
    _wait(lambda: fusion.core.counters["duplicate"] == 1 and d0.counters["replayed"] == 1
          and d1.counters["replayed"] == 1)
    for d in (d0, d1):
        assert d.counters == {"too_short": 1, "oversized": 1, "wrong_deployment": 1,
                              "replayed": 1}
    assert fusion.decoder.counters == {"wrong_width": 1, "unknown_student": 1,
                                       "wrong_deployment": 1, "bad_scale": 1,
                                       "topic_mismatch": 1, "stale_model": 1}
    # ... and the system still works: every real frame is predicted, exactly as offline
    score = nodes.source.run()
    assert len(score.predictions) == 30
    _assert_matches_offline(score, offline_classes)
    inj.stop()


def test_fusion_workers_share_the_load(mosquitto, live_nodes, offline_classes):
    group = [FusionConfig(deadline_ms=2000, group="g", node=f"fusion-{i}") for i in range(2)]
    nodes = live_nodes(mosquitto.url, rate=50, frames=120, fusions=group)
    score = nodes.source.run()
    counts = [f.core.counters["predicted"] for f in nodes.fusions]
    assert len(score.predictions) == 120 and score.duplicates == 0  # each frame exactly once
    assert sum(counts) == 120 and min(counts) > 20                  # and both workers fused
    _assert_matches_offline(score, offline_classes)
