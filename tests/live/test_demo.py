"""The commands as users run them: demo with a killed device, Ctrl-C, help, light imports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from click.testing import CliRunner

from nonn_tflite.cli import main
from nonn_tflite.errors import UsageError
from nonn_tflite.live.demo import KillSpec, parse_kill

pytestmark = pytest.mark.timeout(90)

SUMMARY_KEYS = {"frames", "predicted", "accuracy", "offline_accuracy", "partial_frames",
                "rejected", "latency_ms", "bytes_per_frame"}


def test_kill_device_mid_run_degrades_gracefully(mosquitto, tiny_run, tmp_path, cli, procs):
    out = tmp_path / "out.json"
    p = subprocess.Popen(cli("demo", str(tiny_run), "--broker", mosquitto.url, "--rate", "50",
                             "--frames", "200", "--kill-device", "1@1.5s", "--summary", str(out),
                             "--no-dashboard"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(p)
    stdout, stderr = p.communicate(timeout=80)
    assert p.returncode == 0, stderr[-2000:]
    s = json.loads(out.read_text())
    assert SUMMARY_KEYS <= set(s) and set(s["latency_ms"]) == {"p50", "p99"}
    assert s["killed"] and s["killed"][0]["device"] == 1
    assert s["frames"] == 200 and s["predicted"] >= 190     # fusion kept predicting
    assert 100 <= s["partial_frames"] <= 140                # every frame after the kill
    assert s["complete_frames"] + s["partial_frames"] == s["predicted"]
    assert s["accuracy"] < s["offline_accuracy"]            # degraded, not dead
    assert "device-1=killed" in stdout


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_ctrl_c_stops_everything(tiny_run, cli, procs):
    """Ctrl-C in a terminal signals the whole foreground process group, children included."""
    p = subprocess.Popen(cli("demo", str(tiny_run), "--rate", "20", "--frames", "2000",
                             "--no-dashboard"), start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(p)
    end = time.monotonic() + 40
    line = ""
    while "frames" not in line:  # the demo is running (broker, 2 devices, fusion up)
        assert time.monotonic() < end and p.poll() is None, p.stderr.read()[-2000:]
        line = p.stdout.readline()
    children = _descendants(p.pid)
    assert len(children) >= 4
    os.killpg(p.pid, signal.SIGINT)
    _, stderr = p.communicate(timeout=30)
    assert p.returncode == 130 and "Interrupted" in stderr
    assert "Traceback" not in stderr
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"orphans: {[c.pid for c in alive]}"


def test_a_second_ctrl_c_kills_hung_nodes_and_exits_at_once(tiny_run, cli, procs):
    """Nodes and broker frozen (SIGSTOP: a hung board, a wedged broker), so a clean stop would
    take 10 s of timeouts; a second Ctrl-C must end the demo at once with nothing left behind."""
    p = subprocess.Popen(cli("demo", str(tiny_run), "--rate", "20", "--frames", "2000",
                             "--no-dashboard"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(p)
    end = time.monotonic() + 40
    while "frames" not in p.stdout.readline():
        assert time.monotonic() < end and p.poll() is None, p.stderr.read()[-2000:]
    children = _descendants(p.pid)
    assert len(children) >= 4
    for c in children:
        c.suspend()
    p.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert p.poll() is None  # still waiting for its frozen children
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=20)
    assert time.monotonic() - t0 < 5
    assert p.returncode == 130 and "demo: second SIGINT; forced exit" in stderr
    assert "Traceback" not in stderr
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"orphans: {[c.pid for c in alive]}"


def test_demo_sigterm_stops_children(tiny_run, cli, procs):
    """Only the demo is signalled (e.g. by a service manager): it must take its children down."""
    p = subprocess.Popen(cli("demo", str(tiny_run), "--rate", "20", "--frames", "2000",
                             "--no-dashboard"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(p)
    end = time.monotonic() + 40
    while len(_descendants(p.pid)) < 4 or not p.stdout.readline():
        assert time.monotonic() < end and p.poll() is None, p.stderr.read()[-2000:]
    children = _descendants(p.pid)
    p.terminate()
    p.communicate(timeout=30)
    assert p.returncode == 130
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"orphans: {[c.pid for c in alive]}"


def test_help_has_examples():
    runner = CliRunner()
    for name in ("demo", "device", "fusion", "source", "broker-config"):
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "Example" in result.output, name
        assert "nonn-tflite " + name in result.output
    demo_help = runner.invoke(main, ["demo", "--help"]).output
    for option in ("--broker", "--rate", "--frames", "--kill-device", "--summary",
                   "--no-dashboard", "--cafile", "--certfile", "--keyfile", "--secure"):
        assert option in demo_help
    for name in ("device", "fusion", "source"):
        assert "--credentials" in runner.invoke(main, [name, "--help"]).output


def test_parse_kill():
    assert parse_kill("1@10s") == KillSpec(1, 10.0)
    assert parse_kill("0@500ms") == KillSpec(0, 0.5)
    assert parse_kill("2@1.5") == KillSpec(2, 1.5)
    for bad in ("1", "x@1s", "1@", "1@2h"):
        with pytest.raises(UsageError):
            parse_kill(bad)


def test_demo_rejects_unknown_kill_device(tiny_run):
    result = CliRunner().invoke(main, ["demo", str(tiny_run), "--kill-device", "5@1s"])
    assert result.exit_code == 2 and "no such device" in result.output


# ---- the edge install: no TensorFlow, no Keras ---------------------------------------------

WRAPPER = """
import atexit, json, sys
out = sys.argv[1]
def report():
    mods = sorted({m.split('.')[0] for m in sys.modules})
    with open(out, 'w') as f:
        json.dump(mods, f)
atexit.register(report)
sys.argv = ['nonn-tflite'] + sys.argv[2:]
from nonn_tflite.cli import main
main()
"""


def _node(tmp_path, name: str, *args: str) -> tuple[subprocess.Popen, object]:
    report = tmp_path / f"{name}.json"
    p = subprocess.Popen([sys.executable, "-c", WRAPPER, str(report), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return p, report


def test_edge_nodes_run_without_tensorflow(mosquitto, tiny_run, tmp_path, procs):
    """device, fusion and source, started as commands, serve frames with no TF/Keras loaded."""
    run, url = str(tiny_run), mosquitto.url
    nodes = [_node(tmp_path, "device0", "device", run, "--student", "0", "--broker", url),
             _node(tmp_path, "device1", "device", run, "--student", "1", "--broker", url),
             _node(tmp_path, "fusion", "fusion", run, "--broker", url, "--deadline-ms", "2000")]
    procs.extend(p for p, _ in nodes)
    time.sleep(2.0)  # let them connect and subscribe
    summary = tmp_path / "source-summary.json"
    src, src_report = _node(tmp_path, "source", "source", run, "--broker", url, "--rate", "50",
                            "--frames", "40", "--summary", str(summary))
    procs.append(src)
    _, err = src.communicate(timeout=40)
    assert src.returncode == 0, err[-2000:]
    result = json.loads(summary.read_text())
    assert result["frames"] == 40 and result["predicted"] == 40
    for p, _ in nodes:
        p.terminate()  # SIGTERM: a clean stop, exit code 0
    outputs = []
    for p, report in nodes + [(src, src_report)]:
        outputs.append(p.communicate(timeout=20)[0])
        assert p.returncode == 0
        modules = set(json.loads(report.read_text()))
        assert not modules & {"tensorflow", "keras", "tf_keras", "tensorboard"}
        assert {"paho", "numpy", "nonn_tflite"} <= modules   # the check can see imports
    assert "ai_edge_litert" in set(json.loads(nodes[0][1].read_text()))
    assert "stopped (SIGTERM): 40 inferences" in outputs[0]
    assert "predicted 40 (complete 40, partial 0)" in outputs[2]


def test_dashboard_renders_every_node():
    from rich.console import Console

    from nonn_tflite.live.dashboard import View, fusion_totals, plain_line, render

    stats = {"fusion": {"kind": "fusion", "predicted": 9, "complete": 7, "partial": 2,
                        "deadline_ms": 40.0, "rejected": {"bad_magic": 1}}}
    view = View("digits-k2", "mqtt://127.0.0.1:1883", 3.0, 10, 20, 9, 0.9, 0.95, 1.5, 4.0,
                devices=[{"node": "device-0", "status": "online", "inferences": 10,
                          "bytes_sent": 410, "bytes_per_frame": 41.0, "infer_ms_p50": 0.2},
                         {"node": "device-1", "status": "killed"}],
                fusion=fusion_totals(stats), rejected=1, events=["t=1.0s killed device-1"])
    console = Console(record=True, width=120)
    console.print(render(view))
    text = console.export_text()
    for needle in ("device-0", "online", "device-1", "killed", "partial 2", "p99 4.0 ms",
                   "offline int8 0.950", "killed device-1"):
        assert needle in text
    assert "device-1=killed" in plain_line(view) and "partial 2" in plain_line(view)
