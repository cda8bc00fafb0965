"""The dashboard's HTTP server: static page + a Server-Sent Events stream, standard library only.

One pusher thread turns state changes into at most ``MAX_HZ`` JSON snapshots (plus a heartbeat
each second, so "last seen" ages tick) and hands each to a :class:`Broadcaster`. Every browser
has one thread that waits for the next snapshot and writes it; a slow client simply skips to
the newest one, so no queue grows and the MQTT side never waits for a browser.

Routes: ``/`` (the page), ``/static/<file>``, ``/events`` (SSE: ``event: state`` with the
snapshot as JSON, ``event: end`` when the run is over), ``/state.json`` (one snapshot).
"""

from __future__ import annotations

import errno
import json
import logging
import mimetypes
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

from nonn_tflite.errors import NonnError, UsageError

if TYPE_CHECKING:
    from nonn_tflite.web.state import LiveState

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MAX_HZ = 10.0          # snapshots per second at most, however busy the broker is
HEARTBEAT_S = 1.0      # a snapshot at least this often (ages, "connected")
KEEPALIVE_S = 15.0     # SSE comment line while nothing at all happens
RETRY_MS = 1000        # how soon a browser reconnects after losing the stream
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'",
}


class WebServerError(NonnError):
    """The dashboard could not listen (port taken, address not ours)."""


class Broadcaster:
    """Holds the newest snapshot; any number of readers wait for a newer one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.version = 0
        self.data = b""
        self.closed = False
        self.clients = 0

    def publish(self, data: bytes) -> None:
        with self._cond:
            self.version += 1
            self.data = data
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait(self, after: int, timeout: float) -> tuple[int, bytes, bool]:
        """(version, data, closed) once a version newer than ``after`` exists, or at timeout."""
        with self._cond:
            if self.version == after and not self.closed:
                self._cond.wait(timeout)
            return self.version, self.data, self.closed

    def wait_idle(self, timeout: float) -> bool:
        """After :meth:`close`: until every stream has said goodbye (or ``timeout``)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self.clients and time.monotonic() < end:
                self._cond.wait(0.05)
            return self.clients == 0

    def attach(self, delta: int) -> None:
        with self._cond:
            self.clients += delta
            self._cond.notify_all()


class Pusher:
    """State changes -> snapshots for the broadcaster, throttled to ``max_hz``."""

    def __init__(self, state: LiveState, broadcaster: Broadcaster, max_hz: float = MAX_HZ
                 ) -> None:
        self.state = state
        self.broadcaster = broadcaster
        self.min_gap = 1.0 / max_hz
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="web-pusher", daemon=True)

    def start(self) -> Pusher:
        self.push()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and push the final state once more (it may have changed since)."""
        self._stop.set()
        self.state.wake()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self.push()

    def push(self) -> None:
        data = json.dumps(self.state.snapshot(), separators=(",", ":"), allow_nan=False)
        self.broadcaster.publish(data.encode("utf-8"))

    def _loop(self) -> None:
        seen = self.state.version
        while not self._stop.is_set():
            seen = self.state.wait_changed(seen, HEARTBEAT_S)
            if self._stop.is_set():
                return
            self.push()
            self._stop.wait(self.min_gap)  # coalesce bursts (K vectors + image + prediction)


def _handler(broadcaster: Broadcaster, snapshot: Callable[[], dict]) -> type:
    """A request handler class bound to this server's broadcaster and state."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "nonn-tflite-web"
        protocol_version = "HTTP/1.0"  # one request per connection; SSE ends with the socket

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._file(STATIC / "index.html")
            elif path.startswith("/static/") and path[8:] in _static_names():
                self._file(STATIC / path[8:])
            elif path == "/events":
                self._events()
            elif path == "/state.json":
                self._send(200, "application/json",
                           json.dumps(snapshot(), allow_nan=False).encode("utf-8"))
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in SECURITY_HEADERS.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _file(self, path: Path) -> None:
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype.endswith("javascript"):
                ctype += "; charset=utf-8"
            self._send(200, ctype, path.read_bytes())

        def _events(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            broadcaster.attach(+1)
            try:
                self._stream()
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # the browser went away
            finally:
                broadcaster.attach(-1)

        def _stream(self) -> None:
            self._write(f"retry: {RETRY_MS}\n\n".encode())
            last = 0
            while True:
                version, data, closed = broadcaster.wait(last, KEEPALIVE_S)
                if version != last:
                    self._write(b"id: %d\nevent: state\ndata: %s\n\n" % (version, data))
                    last = version
                elif not closed:
                    self._write(b": keep-alive\n\n")
                if closed:
                    self._write(b"event: end\ndata: {}\n\n")
                    return

        def _write(self, chunk: bytes) -> None:
            self.wfile.write(chunk)
            self.wfile.flush()

        def log_message(self, fmt: str, *args) -> None:
            log.debug("web %s - " + fmt, self.address_string(), *args)

    return Handler


def _static_names() -> set[str]:
    return {p.name for p in STATIC.iterdir() if p.is_file()}


class DashboardServer:
    """Serves the page and the SSE stream for one :class:`~nonn_tflite.web.state.LiveState`."""

    def __init__(self, state: LiveState, host: str = "127.0.0.1", port: int = 8080,
                 max_hz: float = MAX_HZ) -> None:
        self.state = state
        self.broadcaster = Broadcaster()
        self.pusher = Pusher(state, self.broadcaster, max_hz)
        self.httpd = _bind(host, port, _handler(self.broadcaster, state.snapshot))
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="web-http",
                                        kwargs={"poll_interval": 0.2}, daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.httpd.server_address[0]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        return f"http://{shown}:{self.port}/"

    def start(self) -> DashboardServer:
        self.pusher.start()
        self._thread.start()
        return self

    def stop(self, grace_s: float = 1.0) -> None:
        """Push the final state, tell every browser the stream ended, then close the socket."""
        if self.broadcaster.closed:
            return
        self.pusher.stop()
        self.broadcaster.close()
        self.broadcaster.wait_idle(grace_s)
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=2.0)


def _bind(host: str, port: int, handler: type) -> ThreadingHTTPServer:
    """Listen on host:port, or say in one line why not."""
    server_class = ThreadingHTTPServer
    if ":" in host:
        class V6(ThreadingHTTPServer):
            address_family = socket.AF_INET6
        server_class = V6
    try:
        return server_class((host, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise WebServerError(f"port {port} on {host} is in use: pass --port N "
                                 "(0 picks a free port)") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES) or isinstance(exc, socket.gaierror):
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        raise WebServerError(f"cannot listen on {host}:{port}: {exc}") from None
