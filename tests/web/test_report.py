"""`nonn-tflite report RUN --html`: the page's content and the one-line errors (no browser)."""

from __future__ import annotations

import re
import shutil

from click.testing import CliRunner

from nonn_tflite.cli import main
from nonn_tflite.web.html_report import markdown_to_html


def _invoke(*args: str):
    return CliRunner().invoke(main, ["report", *args])


def test_default_output_is_run_slash_report_html(web_run, tmp_path):
    run = tmp_path / "digits-k2"
    shutil.copytree(web_run, run)
    result = _invoke(str(run), "--html")
    assert result.exit_code == 0 and result.output.strip() == f"wrote {run / 'report.html'}"
    page = (run / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "<style>" in page
    assert re.search(r"<td>student 1</td>(<td>[^<]*</td>){3}", page)  # a models table row
    assert "Fusion input: explicit requantisation" in page and "<pre><code>" in page


def test_missing_or_empty_run_is_one_line_error(tmp_path):
    for path, message in ((tmp_path / "nope", "run directory"),
                          (tmp_path, "no tflite/report.json")):
        result = _invoke(str(path), "--html")
        assert result.exit_code == 2, result.output
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
        assert message in result.output
    assert not (tmp_path / "report.html").exists()


def test_before_convert_the_page_shows_manifest_metrics(web_run, tmp_path):
    run = tmp_path / "distilled"
    run.mkdir()
    shutil.copy(web_run / "manifest.json", run)
    shutil.copy(web_run / "partition.png", run)
    result = _invoke(str(run), "--html", "--out", str(tmp_path / "x" / "page.html"))
    assert result.exit_code == 0, result.output
    page = (tmp_path / "x" / "page.html").read_text()
    assert "Not converted yet" in page and "int8_accuracy" in page and "<td>distill</td>" in page
    assert page.count("data:image/png;base64,") == 1 and "report.png not found" in page


def test_without_html_the_terminal_table(web_run):
    result = _invoke(str(web_run))
    assert result.exit_code == 0 and "student 1" in result.output and "fusion" in result.output
    assert _invoke(str(web_run), "--out", "x.html").exit_code == 2


def test_markdown_subset_is_escaped():
    html = markdown_to_html("# T <b>\n\n| a | b |\n|---|---|\n| `x<y` | 2 |\n\n- item\n\n"
                            "    code <\n")
    assert "<h2>T &lt;b&gt;</h2>" in html and "<td><code>x&lt;y</code></td>" in html
    assert "<li>item</li>" in html and "<pre><code>code &lt;</code></pre>" in html
    assert "<b>" not in html
