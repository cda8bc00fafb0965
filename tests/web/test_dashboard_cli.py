"""`nonn-tflite dashboard` watching real nodes (separate processes) through mosquitto."""

from __future__ import annotations

import json
import signal

import pytest
from click.testing import CliRunner

from nonn_tflite.cli import main
from nonn_tflite.live.broker import free_port
from nonn_tflite.live.protocol import HEADER_SIZE

pytestmark = pytest.mark.timeout(120)


def test_dashboard_streams_a_deployment_whose_nodes_run_elsewhere(
        mosquitto, web_run, tmp_path, cli, procs, helpers):
    """Only --deployment NAME: devices, classes and image size are learned from the traffic,
    ground truth and accuracy from the source command's stats/source."""
    import subprocess

    port, url, run = free_port(), mosquitto.url, web_run
    dash = subprocess.Popen(cli("dashboard", "--deployment", "digits-k2", "--broker", url,
                                "--port", port), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    procs.append(dash)
    helpers.wait_for_http(port, proc=dash)
    reader = helpers.SSEReader(port, timeout=30)
    nodes = [subprocess.Popen(cli(*args, "--broker", url, "-q"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
             for args in (("device", run, "--student", 0), ("device", run, "--student", 1),
                          ("fusion", run, "--deadline-ms", 2000))]
    procs.extend(nodes)
    reader.wait_for(lambda s: [d["status"] for d in s["devices"]] == ["online", "online"],
                    30, "device-0 and device-1 online")
    summary = tmp_path / "source.json"
    src = subprocess.run(cli("source", run, "--broker", url, "--rate", 40, "--frames", 60,
                             "--summary", summary, "-q"), capture_output=True, text=True,
                         timeout=60)
    assert src.returncode == 0, src.stderr[-2000:]
    expected = json.loads(summary.read_text())
    final = reader.wait_for(lambda s: s["progress"]["sent"] == 60 and
                            s["progress"]["predicted"] == expected["predicted"], 10,
                            "the source's final score")
    assert final["progress"]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert final["latency"]["p50"] == pytest.approx(expected["latency_ms"]["p50"], abs=0.01)
    frame = final["frame"]
    assert frame["image"]["w"] == frame["image"]["h"] == 8 and len(frame["top3"]) == 3
    assert frame["truth"] is not None and frame["correct"] == (frame["top3"][0]["class"] ==
                                                               frame["truth"])
    assert final["classes"] == [] and frame["top3"][0]["name"] == str(frame["top3"][0]["class"])
    sizes = (HEADER_SIZE + 5, HEADER_SIZE + 6)  # the two students' 5 and 6 pooled channels
    for d in final["devices"]:  # counters come every 0.5 s; vectors as they are sent
        assert d["inferences"] > 0 and d["bytes_per_frame"] in sizes
        assert d["last_seq"] == 59 and d["frame_bytes"] in sizes and d["vector"]
    assert final["fusion"]["predicted"] > 0 and final["rejected"] == 0
    assert final["connected"] is True
    reader.close()
    dash.send_signal(signal.SIGINT)  # Ctrl-C is how a server stops: exit 0, no traceback
    out, err = dash.communicate(timeout=15)
    assert dash.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert f"http://127.0.0.1:{port}/" in out and "dashboard stopped" in out


def test_dashboard_needs_a_run_or_a_deployment_name(web_run):
    runner = CliRunner()
    for args in ([], [str(web_run), "--deployment", "x"]):
        result = runner.invoke(main, ["dashboard", *args])
        assert result.exit_code == 2 and "RUN directory or --deployment NAME" in result.output
    result = runner.invoke(main, ["dashboard", "--deployment", "a/b"])
    assert result.exit_code == 2 and "cannot be used in an MQTT topic" in result.output


def test_help_names_every_option():
    runner = CliRunner()
    dash = runner.invoke(main, ["dashboard", "--help"]).output
    for option in ("--deployment", "--broker", "--host", "--port", "--duration", "--credentials",
                   "Example"):
        assert option in dash
    demo = runner.invoke(main, ["demo", "--help"]).output
    for option in ("--web", "--port", "--host", "--kill-device", "--no-dashboard"):
        assert option in demo
    report = runner.invoke(main, ["report", "--help"]).output
    assert "--html" in report and "--out" in report


def test_demo_web_options_are_checked_before_anything_starts(web_run):
    import socket

    runner = CliRunner()
    result = runner.invoke(main, ["demo", str(web_run), "--port", "9000"])
    assert result.exit_code == 2 and "--host and --port are options of --web" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(main, ["demo", str(web_run), "--web", "--port", str(port)])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.output


def test_dashboard_connects_as_the_read_only_user_of_broker_config(web_run, tmp_path, cli,
                                                                   procs, helpers):
    """`--credentials` as on every other live command: against a broker-config mosquitto
    (anonymous refused) the page connects as the ACL's read-only dashboard user and sees a
    device that connected as itself."""
    import shutil
    import subprocess

    from nonn_tflite.deployment import load_deployment
    from nonn_tflite.live.secure import SecureConfig, write_broker_config

    if not shutil.which("mosquitto") and not shutil.which("/usr/sbin/mosquitto"):
        pytest.fail("mosquitto is required for this test (apt-get install mosquitto)")
    setup = write_broker_config(load_deployment(web_run), tmp_path / "cfg",
                                SecureConfig(port=free_port()))
    broker = setup.broker_process(tmp_path / "mosquitto").start()
    try:
        anonymous = subprocess.run(cli("dashboard", web_run, "--broker", setup.config.url,
                                       "--port", 0, "--duration", 1), capture_output=True,
                                   text=True, timeout=60)
        assert anonymous.returncode == 1, anonymous.stdout + anonymous.stderr
        assert anonymous.stderr.count("\n") == 1 and "Traceback" not in anonymous.stderr

        port = free_port()
        dash = subprocess.Popen(cli("dashboard", web_run, "--port", port, "--credentials",
                                    setup.credentials_path("dashboard")),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(dash)
        helpers.wait_for_http(port, proc=dash)
        reader = helpers.SSEReader(port, timeout=30)
        reader.wait_for(lambda s: s["connected"] is True, 15, "the dashboard user connected")
        device = subprocess.Popen(cli("device", web_run, "--student", 0, "--credentials",
                                      setup.credentials_path("device-0"), "-q"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(device)
        state = reader.wait_for(lambda s: s["devices"] and s["devices"][0]["status"] ==
                                "online", 30, "device-0 online, read by the dashboard user")
        assert state["rejected"] == 0
        reader.close()
        dash.send_signal(signal.SIGINT)
        out, err = dash.communicate(timeout=15)
        assert dash.returncode == 0 and "Traceback" not in err, err[-2000:]
        assert f"from mqtt://dashboard:***@127.0.0.1:{setup.config.listen_port}" in out
        assert setup.credentials("dashboard").password not in out + err
        assert "dashboard stopped" in out
    finally:
        broker.stop()
