"""Soak and broker outage through real mosquitto and real node processes (benchmarks/soak.py).

CI sizes: 4 devices x 50 frames/s for 10 s (QoS 1: nothing may be lost), and a 3 s outage.
benchmarks/results/soak*.json hold the full runs (16 devices, 60 s; a 5 s outage).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
RECONNECT_MAX_S = 2.0  # ConnectionConfig.reconnect_max_s: paho's backoff ceiling


def soak(tmp_path: Path, run: Path, *args: str) -> tuple[int, dict, str]:
    """Run benchmarks/soak.py in a child; (exit code, result document, output)."""
    env = {**os.environ, "NONN_BENCH_RESULTS": str(tmp_path / "results")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--run", str(run),
                           "--workdir", str(tmp_path / "work"), *args],
                          check=False, capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env=env)
    docs = list((tmp_path / "results").glob("soak-*.json"))
    assert len(docs) == 1, done.stdout[-2000:] + done.stderr[-2000:]
    return done.returncode, json.loads(docs[0].read_text()), done.stdout


def _frames_add_up(f: dict) -> bool:
    return f["sent"] == (f["predicted"] + f["unsent"] + f["lost_in_outage_window"]
                         + f["dropped_no_vector"] + f["dropped_after_vectors"])


def test_quick_soak_qos1_loses_nothing_and_memory_is_flat(tmp_path, k4_run):
    code, doc, out = soak(tmp_path, k4_run, "--quick", "--qos", "1")
    a, f = doc["accounting"], doc["accounting"]["frames"]
    assert code == 0, out[-3000:]
    assert doc["config"]["devices"] == 4 and f["sent"] == 500 and _frames_add_up(f)
    assert f["predicted"] == 500 and f["complete"] == 500 and f["unsent"] == 0
    assert a["network"]["lost_messages"] == 0 and a["unaccounted_total"] == 0
    assert all(d["balanced"] and d["undelivered"] == 0 for d in a["devices"].values())
    assert a["fusion"]["balanced"] and a["fusion"]["predicted"] == 500
    assert 0 < doc["latency_ms"]["p50"] <= doc["latency_ms"]["p99"] < 5000
    nodes = {r["node"]: r for r in doc["rss"] if r["is_node"]}
    assert set(nodes) == {"fusion", "device-0", "device-1", "device-2", "device-3"}
    assert all(r["flat"] and r["rss_start_mib"] > 10 and r["rss_end_mib"] > 10
               for r in nodes.values())
    # every device runs a model on 50 frames/s: its CPU share is measured, positive, below 2 cores
    assert all(0 < r["cpu_pct"] < 200 for r in nodes.values()), nodes
    assert all(p == {"exit_code": 0, "died_during_run": False} for p in doc["processes"].values())
    assert "unaccounted" in out and "p99" in out.replace("p50 / p99", "p99")


def test_broker_outage_every_node_reconnects_and_every_frame_is_accounted(tmp_path, k4_run):
    code, doc, out = soak(tmp_path, k4_run, "--devices", "4", "--duration", "14", "--qos", "1",
                          "--outage", "3@4", "--profile", "outage")
    a, f = doc["accounting"], doc["accounting"]["frames"]
    assert code == 0, out[-3000:]
    assert doc["outage"]["t_up"] - doc["outage"]["t_down"] >= 3.0
    assert a["unaccounted_total"] == 0 and _frames_add_up(f), a["unaccounted"]
    assert f["unsent"] > 0  # the source saw the broker gone: counted, not queued
    assert f["predicted"] + f["unsent"] >= 0.95 * f["sent"]
    for node, r in doc["reconnects"].items():  # backoff brought everyone back, promptly
        assert r["reconnects"] >= 1, node
        assert r["seconds_after_broker_back"] is not None
        assert r["seconds_after_broker_back"] <= RECONNECT_MAX_S + 1.0, (node, r)
    after = f["complete_after_outage"]  # resubscribed: every device answers every new frame
    assert after["frames"] > 100 and after["predicted"] == after["frames"]
    assert after["vectors_per_device_min"] == after["frames"]
    assert all(not p["died_during_run"] and p["exit_code"] == 0
               for p in doc["processes"].values())


SOURCE_CHILD = r"""
import json, sys, threading, time
import psutil
from nonn_tflite.deployment import load_deployment
from nonn_tflite.live.mqtt import BrokerConfig
from nonn_tflite.live.source import SourceConfig, SourceNode, load_images

run, url, rate, frames, window = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
dep = load_deployment(run)
node = SourceNode(dep, BrokerConfig.from_url(url), load_images(dep, run),
                  SourceConfig(rate=rate, frames=frames, drain_s=5.0, window=window)).start()
me, samples, done = psutil.Process(), [], threading.Event()
def sample():
    while not done.wait(0.2):
        samples.append((node.score.frames, me.memory_info().rss, node.score.size))
threading.Thread(target=sample, daemon=True).start()
score = node.run()
done.set()
node.stop()
print(json.dumps({"frames": score.frames, "answered": score.answered, "expired": score.expired,
                  "size": score.size, "samples": samples}))
"""


def test_source_memory_is_flat_over_a_long_run(tmp_path, k4_run, k4_deployment, mosquitto):
    """Issue 14: the source kept three dicts with one entry per frame forever (4.3 M entries a
    day at 50 frames/s). A real SourceNode process sends 40x its scoreboard window through
    mosquitto, real devices and a real fusion node; its RSS is sampled (psutil) all along."""
    from nonn_tflite.live.device import DeviceConfig, DeviceNode
    from nonn_tflite.live.fusion import FusionConfig, FusionNode
    from nonn_tflite.live.mqtt import BrokerConfig

    broker = BrokerConfig.from_url(mosquitto.url)
    nodes = [DeviceNode(k4_deployment, broker, DeviceConfig(s.id, queue=64)).start()
             for s in k4_deployment.students]
    nodes.append(FusionNode(k4_deployment, broker, FusionConfig(deadline_ms=2000)).start())
    rate, frames, window = 150, 4000, 100
    try:
        done = subprocess.run([sys.executable, "-c", SOURCE_CHILD, str(k4_run), mosquitto.url,
                               str(rate), str(frames), str(window)], check=False,
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    finally:
        for node in nodes:
            node.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout.splitlines()[-1])
    assert doc["frames"] == frames and doc["answered"] >= 0.99 * frames
    assert doc["answered"] + doc["expired"] >= frames - window  # every frame has its fate
    samples = doc["samples"]
    assert max(size for _, _, size in samples) <= 3 * window  # the scoreboard is a window
    half = [rss for sent, rss, _ in samples if sent >= frames // 2]
    growth_mib = (max(half) - half[0]) / 2**20
    # unbounded, 2,000 more frames would add 6,000 dict entries (~0.7 MiB); a window adds none
    assert growth_mib < 0.5, f"source RSS grew {growth_mib:.2f} MiB over the second half"
