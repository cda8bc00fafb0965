"""End to end in headless Chromium: `demo --web` live, and the HTML report from a file.

Set NONN_DOCS_SCREENSHOT=1 to also copy the live screenshot to docs/dashboard.png (the
README's picture); otherwise screenshots stay in the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from nonn_tflite.cli import main
from nonn_tflite.live.broker import free_port

pytestmark = pytest.mark.timeout(150)
REPO = Path(__file__).resolve().parents[2]
FRAMES = 160


def _tiles(browser) -> dict[str, str]:
    return browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('.device-tile')]"
        ".map(t => [t.dataset.node, t.dataset.status]))")


def _value(browser, element_id: str) -> str:
    return browser.execute_script(f"return document.getElementById('{element_id}')"
                                  ".dataset.value || ''")


def _text(browser, element_id: str) -> str:
    return browser.execute_script(f"return document.getElementById('{element_id}').textContent")


def _severe_logs(browser) -> list[dict]:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_demo_web_page_follows_the_run(web_run, browser, tmp_path, cli, procs, helpers):
    port, summary = free_port(), tmp_path / "summary.json"
    demo = subprocess.Popen(cli("demo", web_run, "--web", "--port", port, "--rate", 20,
                                "--frames", FRAMES, "--kill-device", "1@3s", "--summary",
                                summary, "--no-dashboard"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(demo)
    helpers.wait_for_http(port, proc=demo)
    browser.get(f"http://127.0.0.1:{port}/")
    wait = helpers.wait_until

    wait(lambda: _tiles(browser) == {"device-0": "online", "device-1": "online"}, 40,
         "both device tiles online")
    before = int(wait(lambda: int(_value(browser, "frame-counter") or 0), 20, "frames"))
    wait(lambda: int(_value(browser, "frame-counter")) >= before + 10, 10, "the counter moving")
    shown = browser.execute_script(
        "const c = document.getElementById('image');"
        "return [c.width, c.height, document.querySelectorAll('#top3 li').length,"
        " document.getElementById('prediction').textContent]")
    assert shown[:3] == [8, 8, 3] and shown[3] in [str(i) for i in range(10)]

    wait(lambda: _tiles(browser) == {"device-0": "online", "device-1": "offline"}, 20,
         "device-1 offline after --kill-device 1@3s")
    assert _text(browser, "badge") == "live"  # the run goes on without it
    wait(lambda: int(_value(browser, "partial")) >= 20, 10, "partial frames counted")
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
    if os.environ.get("NONN_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, REPO / "docs" / "dashboard.png")

    _, err = demo.communicate(timeout=60)
    assert demo.returncode == 0, err[-2000:]
    s = json.loads(summary.read_text())
    wait(lambda: _text(browser, "badge") == "finished", 10, "the finished badge")
    assert float(_value(browser, "accuracy")) == pytest.approx(s["accuracy"], abs=1e-12)
    assert int(_value(browser, "frame-counter")) == s["frames"] == FRAMES
    assert int(_value(browser, "partial")) == s["partial_frames"]
    assert f"{100 * s['accuracy']:.1f}%" == _text(browser, "accuracy")
    assert not _severe_logs(browser)


def test_html_report_opens_offline_with_table_and_pictures(web_run, browser, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", str(web_run), "--html", "--out", str(out)])
    assert result.exit_code == 0 and f"wrote {out}" in result.output
    page = out.read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    browser.get(out.as_uri())
    assert "digits-k2" in browser.find_element("css selector", "h1").text
    models = browser.execute_script(
        "const t = [...document.querySelectorAll('table')].find(t =>"
        " t.querySelector('th').textContent === 'model');"
        "return {head: [...t.querySelectorAll('th')].map(c => c.textContent),"
        " rows: [...t.querySelectorAll('tbody tr')].map(r => r.cells[0].textContent)}")
    assert {"flash", "arena", "MACs", "acc int8"} <= set(models["head"])
    assert models["rows"] == ["teacher", "student 0", "student 1", "fusion"]
    images = browser.execute_script(
        "return [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 100])")
    assert images == [["partition.png", True], ["report.png", True]]
    system = json.loads((web_run / "tflite" / "report.json").read_text())["system"]
    kpi = browser.find_element("css selector", ".kpi .value").text
    assert kpi == f"{100 * system['accuracy_int8']:.2f}%"
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(name.startswith(("data:", "file:")) for name in fetched), fetched
    assert browser.save_screenshot(str(tmp_path / "report.png"))
    assert not _severe_logs(browser)
