"""A stop request always ends the process: a clean stop gets a grace period, then (or at a second
Ctrl-C) everything started is killed. Real processes and real signals; the hang is real too."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

pytestmark = pytest.mark.timeout(60)

# A program whose clean stop hangs for ever (like paho's loop_stop joining a stuck thread), with
# one child process that only the guard's kill callback can take down.
HANGING = textwrap.dedent("""
    import subprocess, sys, threading
    from nonn_tflite.live.runtime import StopGuard

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    def interrupt(name):
        raise KeyboardInterrupt
    StopGuard("hanger", grace_s=float(sys.argv[1]), kill=child.kill).install(interrupt)
    try:
        print(child.pid, flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        threading.Event().wait()   # the clean stop that never finishes
""")


def _start(grace_s: float) -> tuple[subprocess.Popen, psutil.Process]:
    p = subprocess.Popen([sys.executable, "-c", HANGING, str(grace_s)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    child = psutil.Process(int(p.stdout.readline()))
    time.sleep(0.3)  # past the print, into the wait
    return p, child


def _finish(p: subprocess.Popen, child: psutil.Process, timeout: float) -> str:
    _, stderr = p.communicate(timeout=timeout)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr
    _, alive = psutil.wait_procs([child], timeout=5)
    assert not alive, "the guard's kill did not take the child down"
    return stderr


def test_a_hanging_stop_is_forced_after_the_grace_period():
    p, child = _start(grace_s=1.5)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    stderr = _finish(p, child, timeout=20)
    waited = time.monotonic() - t0
    assert 1.4 <= waited < 15, waited
    assert "hanger: did not stop within 1.5 s; forced exit (its processes killed)." in stderr


def test_a_second_ctrl_c_forces_at_once():
    p, child = _start(grace_s=300)
    p.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert p.poll() is None  # still "stopping cleanly"
    p.send_signal(signal.SIGINT)
    stderr = _finish(p, child, timeout=20)
    assert "hanger: second SIGINT; forced exit" in stderr


def test_sigterm_then_sigterm_forces_too():
    p, child = _start(grace_s=300)
    p.terminate()
    time.sleep(0.5)
    p.terminate()
    assert "second SIGTERM" in _finish(p, child, timeout=20)
