"""The HTTP/SSE server with a real LiveState, read with http.client (no browser)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from nonn_tflite.live.protocol import Topics
from nonn_tflite.web.server import Broadcaster, DashboardServer, WebServerError
from nonn_tflite.web.state import DeploymentInfo, LiveState

pytestmark = pytest.mark.timeout(60)
NAME = "digits-k2"
SNAPSHOT_KEYS = {"schema", "deployment", "broker", "connected", "finished", "version", "time",
                 "elapsed_s", "classes", "reference_accuracy", "progress", "frame", "devices",
                 "nodes", "fusion", "latency", "events", "rejected"}


@pytest.fixture
def served():
    state = LiveState(DeploymentInfo(NAME, (0, 1), tuple("0123456789"), (8, 8, 1)))
    server = DashboardServer(state, "127.0.0.1", 0).start()
    yield state, server
    server.stop(grace_s=0.2)


def _get(port: int, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    return conn.getresponse()


def test_sse_pushes_json_snapshots_and_an_end_event(served, helpers):
    state, server = served
    reader = helpers.SSEReader(server.port)
    assert reader.response.status == 200
    assert reader.response.getheader("Content-Type").startswith("text/event-stream")
    assert reader.response.getheader("Cache-Control") == "no-store"
    events = reader.events()
    event, data, ident = next(events)
    first = json.loads(data)
    assert event == "state" and int(ident) >= 1
    assert SNAPSHOT_KEYS <= set(first) and first["deployment"] == NAME
    assert [d["status"] for d in first["devices"]] == ["waiting", "waiting"]

    state.on_message(Topics(NAME).status("device-1"), b"online")  # pushed, not polled
    t0 = time.monotonic()
    for _, data, _ in events:
        if json.loads(data)["devices"][1]["status"] == "online":
            break
    assert time.monotonic() - t0 < 1.0

    threading.Timer(0.1, server.stop).start()
    rest = [(event, data) for event, data, _ in events]
    assert rest and rest[-1] == ("end", "{}")  # and then the stream closes
    reader.close()


def test_static_files_and_404s(served):
    _, server = served
    page = _get(server.port, "/")
    body = page.read().decode()
    assert page.status == 200 and page.getheader("Content-Type").startswith("text/html")
    assert "/static/app.js" in body and "http://" not in body and "https://" not in body
    assert "script-src 'self'" in page.getheader("Content-Security-Policy")
    for name, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        r = _get(server.port, f"/static/{name}")
        assert r.status == 200 and ctype in r.getheader("Content-Type")
        assert b"http://" not in r.read().replace(b"http://127.0.0.1", b"")
    for bad in ("/static/../server.py", "/static/", "/nope", "/static/%2e%2e/state.py"):
        assert _get(server.port, bad).status == 404, bad
    snap = json.loads(_get(server.port, "/state.json").read())
    assert SNAPSHOT_KEYS <= set(snap)


def test_pushes_are_throttled_however_busy_the_broker(served):
    state, server = served
    start = server.broadcaster.version
    t0 = time.monotonic()
    topic = Topics(NAME).status("device-0")
    while time.monotonic() - t0 < 1.0:  # thousands of state changes in one second
        state.on_message(topic, b"online")
    pushes = server.broadcaster.version - start
    assert 3 <= pushes <= 14  # MAX_HZ = 10 (+ the first and a heartbeat)


def test_a_slow_reader_skips_to_the_newest_snapshot():
    b = Broadcaster()
    for i in range(5):
        b.publish(f"{i}".encode())
    assert b.wait(0, timeout=0.01) == (5, b"4", False)
    t0 = time.monotonic()
    assert b.wait(5, timeout=0.2)[0] == 5  # nothing newer: waits, then says so
    assert time.monotonic() - t0 >= 0.15
    b.close()
    assert b.wait(5, timeout=5)[2] is True


def test_port_in_use_is_one_clear_error():
    state = LiveState(DeploymentInfo(NAME))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(WebServerError, match=r"port \d+ on 127.0.0.1 is in use"):
            DashboardServer(state, "127.0.0.1", s.getsockname()[1])


def test_default_binding_is_loopback(served):
    _, server = served
    assert server.httpd.server_address[0] == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}/"
