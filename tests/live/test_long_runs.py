"""Runs longer than the source's scoreboard window report whole-run counts (issue 14 follow-up).

The scoreboard keeps per-frame records for its latest ``window`` frames only; every figure the
commands print or publish (frames, predicted, accuracy, agreement with offline) must come from
the run counters. Before this fix `source`, `demo` and ``stats/source`` counted the window's
dicts: a 60-frame run with a 16-frame window reported 16 predicted.
"""

from __future__ import annotations

import json
import queue
import subprocess

import pytest

from nonn_tflite.live.mqtt import BrokerConfig, Connection, ConnectionConfig
from nonn_tflite.live.protocol import Topics

pytestmark = pytest.mark.timeout(120)

FRAMES, WINDOW = 60, 16


@pytest.fixture
def edge_nodes(mosquitto, deployment):
    """Both devices and a fusion worker, real nodes in this process (the source is the CLI)."""
    from nonn_tflite.live.device import DeviceConfig, DeviceNode
    from nonn_tflite.live.fusion import FusionConfig, FusionNode

    broker = BrokerConfig.from_url(mosquitto.url)
    nodes = [DeviceNode(deployment, broker, DeviceConfig(s.id, queue=64)).start()
             for s in deployment.students]
    nodes.append(FusionNode(deployment, broker, FusionConfig(deadline_ms=2000)).start())
    for node in nodes:
        assert node.conn.connected.wait(10), "node did not connect"
    yield nodes
    for node in reversed(nodes):
        node.stop()


def test_source_longer_than_its_window_counts_every_frame(mosquitto, edge_nodes, deployment,
                                                          tiny_run, tmp_path, cli):
    stats: queue.Queue[dict] = queue.Queue()
    topic = Topics(deployment.name).stats("source")
    tap = Connection(BrokerConfig.from_url(mosquitto.url), ConnectionConfig(
        "nonn-test-stats", subscriptions=(topic,)),
        on_message=lambda t, payload, _: stats.put(json.loads(payload))).start()
    try:
        assert tap.connected.wait(10)
        summary = tmp_path / "source.json"
        src = subprocess.run(cli("source", tiny_run, "--broker", mosquitto.url, "--rate", 60,
                                 "--frames", FRAMES, "--window", WINDOW, "--summary", summary,
                                 "-q"), capture_output=True, text=True, timeout=90)
        assert src.returncode == 0, src.stderr[-2000:]
        s = json.loads(summary.read_text())
        assert (s["frames"], s["predicted"], s["expired"]) == (FRAMES, FRAMES, 0)
        assert f"frames {FRAMES} predicted {FRAMES} " in src.stdout
        final = None
        while final is None or final["sent"] < FRAMES:
            final = stats.get(timeout=10)
        assert (final["sent"], final["predicted"], final["expired"]) == (FRAMES, FRAMES, 0)
        assert final["scored"] == FRAMES and final["accuracy"] == pytest.approx(s["accuracy"])
        assert len(final["truth"]) <= WINDOW  # recent labels: from the window, as before
    finally:
        tap.stop()


def test_demo_longer_than_its_window_summarises_the_whole_run(tiny_run, tmp_path, cli, procs):
    out = tmp_path / "summary.json"
    p = subprocess.Popen(cli("demo", tiny_run, "--frames", FRAMES, "--rate", 30, "--window",
                             WINDOW, "--deadline-ms", 2000, "--no-dashboard", "--summary", out),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(p)
    _, stderr = p.communicate(timeout=100)
    assert p.returncode == 0, stderr[-2000:]
    s = json.loads(out.read_text())
    assert (s["frames"], s["predicted"], s["complete_frames"]) == (FRAMES, FRAMES, FRAMES)
    assert s["dropped"]["unanswered"] == 0
    # offline accuracy and agreement on every answered frame, not the last WINDOW of them
    assert s["accuracy"] == s["offline_accuracy"] and s["agreement_with_offline"] == 1.0


def test_window_option_default_is_the_sources():
    from click.testing import CliRunner

    from nonn_tflite.cli import main
    from nonn_tflite.live.source import WINDOW as DEFAULT

    for command in ("source", "demo"):
        text = CliRunner().invoke(main, [command, "--help"], terminal_width=200).output
        assert "--window" in text and f"{DEFAULT:,}" in text
