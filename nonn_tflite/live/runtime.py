"""Small pieces every node needs: a bounded drop-oldest queue, percentiles, a stop switch.

Real-time inference prefers a fresh frame to a complete backlog: when a node falls behind it
drops the oldest work and counts it, so memory stays bounded and latency does not grow.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, NoReturn, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """Thread-safe FIFO of at most ``maxlen`` items; a put on a full queue evicts the oldest."""

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("queue length must be >= 1")
        self._items: collections.deque[T] = collections.deque()
        self._maxlen = maxlen
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._cond:
            if len(self._items) >= self._maxlen:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()

    def get(self, timeout: float | None) -> T | None:
        """Next item, or None after ``timeout`` seconds."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        return len(self._items)


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank-interpolated percentile (numpy's default), None for no data."""
    import numpy as np

    data = list(values)
    return float(np.percentile(data, q)) if data else None


class Window:
    """The last ``n`` samples of a measurement, for running p50/p99 without unbounded memory."""

    def __init__(self, n: int = 500) -> None:
        self._d: collections.deque[float] = collections.deque(maxlen=n)
        self._lock = threading.Lock()

    def add(self, v: float) -> None:
        with self._lock:
            self._d.append(v)

    def p(self, q: float) -> float | None:
        with self._lock:
            return percentile(self._d, q)

    def __len__(self) -> int:
        return len(self._d)


def now_us() -> int:
    """Capture timestamps are wall clock (they cross machines); µs since the Unix epoch."""
    return time.time_ns() // 1000


class WorkerNode:
    """Lifecycle shared by the device and fusion nodes: one MQTT connection feeding one worker
    thread. Subclasses set ``conn``, ``config.node`` and implement ``_work`` and ``_publish_stats``
    (called once more on stop, so the final counters reach the dashboards)."""

    conn: Any
    config: Any

    def _init_worker(self) -> None:
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    def start(self):
        self.conn.start()
        self._worker = threading.Thread(target=self._work, name=self.config.node, daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
        self._publish_stats()
        self.conn.stop()

    def _work(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _publish_stats(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class StopGuard:
    """Makes a stop request always end the process, as a user at a projector expects.

    The first SIGINT/SIGTERM asks for a clean stop (``on_first``: trip a switch, raise
    KeyboardInterrupt) and gives it ``grace_s``. A clean stop can hang on things outside our
    control: a broker that stopped answering, a stuck network thread, a child that ignores
    SIGTERM. When the grace runs out, or at a second Ctrl-C, ``kill`` takes down every process
    we started and the process exits at once with ``code``, saying so in one line.
    """

    def __init__(self, what: str, grace_s: float = 15.0,
                 kill: Callable[[], None] | None = None, code: int = 130) -> None:
        self.what = what
        self.grace_s = grace_s
        self.kill = kill
        self.code = code
        self._timer: threading.Timer | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def install(self, on_first: Callable[[str], None]) -> StopGuard:
        """SIGINT/SIGTERM handlers (main thread only): the first stops cleanly, the next forces."""
        def handler(signum, frame):
            name = signal.Signals(signum).name
            if self.armed:
                self.force(f"second {name}")
            self.arm()
            on_first(name)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        return self

    def arm(self) -> None:
        """Start the grace period (idempotent); a daemon timer, so it never delays an exit."""
        if self._timer is None:
            self._timer = threading.Timer(self.grace_s, self.force,
                                          args=(f"did not stop within {self.grace_s:g} s",))
            self._timer.daemon = True
            self._timer.start()

    def force(self, reason: str) -> NoReturn:
        """Kill what we started and exit now; no clean-up that could hang again."""
        try:
            if self.kill is not None:
                self.kill()
        finally:
            extra = " (its processes killed)" if self.kill is not None else ""
            os.write(2, f"{self.what}: {reason}; forced exit{extra}.\n".encode())
            os._exit(self.code)


class StopSwitch:
    """One event that SIGINT/SIGTERM, a duration limit or a dead parent process can trip."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""

    def trip(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

    def install_signals(self, what: str = "node", grace_s: float = 10.0) -> StopGuard:
        """Only from the main thread; the node then shuts down cleanly instead of dying, and
        a second signal (or a stop that hangs for ``grace_s``) ends it anyway."""
        return StopGuard(what, grace_s).install(self.trip)

    def wait(self, duration_s: float | None = None, watch_parent: int | None = None) -> str:
        """Block until tripped, ``duration_s`` elapsed, or parent ``watch_parent`` is gone."""
        end = None if duration_s is None else time.monotonic() + duration_s
        while not self.event.wait(0.2):
            if end is not None and time.monotonic() >= end:
                self.trip("duration")
            if watch_parent is not None and os.getppid() != watch_parent:
                self.trip("parent exited")  # launched by `demo`: never outlive it
        return self.reason


def parent_to_watch() -> int | None:
    """``demo`` sets NONN_WATCH_PARENT to its pid so children exit if it dies."""
    value = os.environ.get("NONN_WATCH_PARENT")
    return int(value) if value and value.isdigit() else None


def serve(node, duration_s: float | None = None) -> str:
    """Run a started-on-demand node (``start()``/``stop()``) until a signal, the duration or the
    death of a watching parent; always stops it cleanly (status ``offline``, final stats)."""
    switch = StopSwitch()
    if threading.current_thread() is threading.main_thread():
        switch.install_signals(getattr(getattr(node, "config", None), "node", "node"))
    node.start()
    try:
        return switch.wait(duration_s, parent_to_watch())
    finally:
        node.stop()
