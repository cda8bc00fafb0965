"""Fixtures for the web tests: one real converted run, real brokers, real Chromium; no mocks.

Chromium comes from Debian (``apt-get install -y chromium chromium-driver``) and is driven
with selenium; the browser tests are skipped (with the reason) where either is missing.
Everything listens on 127.0.0.1, and every process a test starts is killed on teardown.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-extensions", "--disable-default-apps",
    # any host but loopback fails to resolve: a page that needs the internet breaks here
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


@pytest.fixture(scope="session")
def web_run(tmp_path_factory) -> Path:
    """A converted digits run with partition.png (about 20-30 s, in a subprocess: no TF here)."""
    out = tmp_path_factory.mktemp("runs") / "digits-k2"
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("build_run.py")),
                           str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture
def browser(tmp_path):
    """Headless Debian Chromium via selenium, a fresh profile, a 1920x1080 projector viewport."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(chromium).exists() and Path(driver_path).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1920,1080"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    try:
        driver.quit()
    finally:
        _kill_tree(service.process)


def _kill_tree(proc) -> None:
    """chromedriver and any Chromium it left behind."""
    import psutil

    if proc is None:
        return
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    for p in [*kids, proc]:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            p.kill()


# ---- helpers ------------------------------------------------------------------------------

def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    """Poll ``check()`` until it returns something truthy; fail saying ``what`` did not happen."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def wait_for_http(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    def up() -> bool:
        assert proc is None or proc.poll() is None, "server process exited"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/state.json")
            return conn.getresponse().status == 200
        except OSError:
            return False

    wait_until(up, timeout, f"http://127.0.0.1:{port}/")


class SSEReader:
    """A minimal Server-Sent Events client (http.client): yields (event, data, id)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("GET", "/events", headers={"Accept": "text/event-stream"})
        self.response = self.conn.getresponse()
        self._iter = None

    def events(self):
        event, data, ident = "message", [], None
        while True:
            line = self.response.readline()
            if not line:
                return
            line = line.decode("utf-8").rstrip("\n")
            if not line:
                if data:
                    yield event, "\n".join(data), ident
                event, data, ident = "message", [], None
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif line.startswith("id:"):
                ident = line[3:].strip()

    def states(self):
        """The JSON snapshots only."""
        for event, data, _ in self.events():
            if event == "state":
                yield json.loads(data)

    def wait_for(self, predicate, timeout: float, what: str) -> dict:
        """The first pushed snapshot for which ``predicate`` holds (snapshots come >= 1/s)."""
        end = time.monotonic() + timeout
        last = None
        for state in self._states:
            if predicate(state):
                return state
            last = state
            if time.monotonic() > end:
                break
        raise AssertionError(f"no snapshot with {what} within {timeout:g} s (last: "
                             f"{json.dumps(last)[:600] if last else None})")

    @property
    def _states(self):
        if self._iter is None:
            self._iter = self.states()
        return self._iter

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="session")
def helpers():
    """The helpers above for test modules (importlib mode: conftest is not importable)."""
    from types import SimpleNamespace

    return SimpleNamespace(wait_until=wait_until, wait_for_http=wait_for_http,
                           SSEReader=SSEReader)
