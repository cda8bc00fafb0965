"""`nonn-tflite report RUN --html`: one self-contained HTML page per run directory.

Pictures (partition.png, tflite/report.png) are embedded as base64 and the stylesheet is
inlined, so the file opens anywhere, offline, and can be mailed as is. The tables come from
the report's own Markdown view (:func:`nonn_tflite.report.report_markdown` of report.json), so
the page shows exactly what report.md says, including any section added to it later; before
`convert` it falls back to the manifest's metrics.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from pathlib import Path

from nonn_tflite import __version__
from nonn_tflite.errors import RunDirError
from nonn_tflite.rundir import atomic_write_text

STYLE = Path(__file__).with_name("static") / "report.css"


def check_run(run: Path) -> Path:
    """The run directory, or a one-line error saying what is missing."""
    run = Path(run)
    if not run.exists():
        raise RunDirError(f"run directory {run} not found")
    if not run.is_dir():
        raise RunDirError(f"{run} is not a directory (give a run directory)")
    return run


def write_html_report(run: Path, out: Path | None = None) -> Path:
    """Write the page (default RUN/report.html) atomically; returns its path."""
    run = check_run(run)
    path = Path(out) if out is not None else run / "report.html"
    if path.is_dir():
        raise RunDirError(f"--out {path} is a directory; give a file name")
    page = render_report(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page)
    return path


def render_report(run: Path) -> str:
    """The whole page as a string."""
    report, manifest = _read_json(run / "tflite" / "report.json"), _read_json(run / "manifest.json")
    if report is None and not (manifest or {}).get("metrics"):
        raise RunDirError(f"{run} has no tflite/report.json and no manifest metrics: not a "
                          f"finished nonn-tflite run (run `nonn-tflite run` or `convert` first)")
    name = (report or {}).get("deployment") or (manifest or {}).get("name") or run.name
    body = [_header(name, run), _kpis(report, manifest), _figures(run)]
    body.append(_report_tables(report) if report is not None else _manifest_tables(run, manifest))
    body.append(f"<footer>nonn-tflite {html.escape(__version__)} &middot; generated "
                f"{html.escape(time.strftime('%Y-%m-%d %H:%M'))}</footer>")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>NoNN report: {html.escape(name)}</title>"
            f"<style>{STYLE.read_text()}</style></head>\n<body>\n" + "\n".join(body) +
            "\n</body></html>\n")


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is unreadable ({exc})") from None
    return data if isinstance(data, dict) else None


# ---- sections ------------------------------------------------------------------------------

def _header(name: str, run: Path) -> str:
    return (f"<header><h1>NoNN report <span class=\"name\">{html.escape(name)}</span></h1>"
            f"<p class=\"path\">{html.escape(str(run.resolve()))}</p></header>")


def _pct(v) -> str:
    return "&ndash;" if not isinstance(v, (int, float)) else f"{100 * v:.2f}%"


def _kpis(report: dict | None, manifest: dict | None) -> str:
    """The few numbers people ask first, big."""
    if report is not None:
        s = report.get("system") or {}
        cards = [("NoNN int8 accuracy", _pct(s.get("accuracy_int8"))),
                 ("NoNN float accuracy", _pct(s.get("accuracy_float"))),
                 ("teacher int8 accuracy", _pct(s.get("teacher_accuracy_int8"))),
                 ("devices", html.escape(_plain(s.get("num_students"))))]
    else:
        m = (manifest or {}).get("metrics", {})
        cards = [(html.escape(k.replace("_", " ")), _pct(v) if "accuracy" in k else
                  html.escape(_plain(v))) for k, v in list(m.items())[:4]]
    return "<section class=\"kpis\">" + "".join(
        f"<div class=\"kpi\"><div class=\"label\">{label}</div><div class=\"value\">{value}"
        f"</div></div>" for label, value in cards) + "</section>"


def _figures(run: Path) -> str:
    figs = [(run / "partition.png", "Knowledge partition: the teacher's filter activation "
             "network, one colour per student"),
            (run / "tflite" / "report.png", "Each device beside the teacher: flash, arena, "
             "latency")]
    return "<section class=\"figures\">" + "".join(_figure(p, c) for p, c in figs) + "</section>"


def _figure(path: Path, caption: str) -> str:
    if not path.is_file():
        return (f"<figure class=\"missing\"><div class=\"placeholder\">{html.escape(path.name)} "
                f"not found</div><figcaption>{html.escape(caption)}</figcaption></figure>")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img alt=\"{html.escape(path.name)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _report_tables(report: dict) -> str:
    from nonn_tflite.report import report_markdown

    return f"<section class=\"report\">{markdown_to_html(report_markdown(report))}</section>"


def _manifest_tables(run: Path, manifest: dict) -> str:
    """Before `convert`: metrics and finished stages from the manifest."""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_plain(v))}</td></tr>"
                   for k, v in sorted(manifest.get("metrics", {}).items()))
    stages = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{html.escape(str(s.get('finished', '')))}</td>"
        f"<td>{html.escape(_plain(s.get('seconds')))}</td></tr>"
        for n, s in (manifest.get("stages") or {}).items())
    return (f"<section class=\"report\"><p class=\"note\">Not converted yet: run "
            f"<code>nonn-tflite convert {html.escape(str(run))}</code> for the int8 tables.</p>"
            f"<h2>Metrics (manifest)</h2><table><thead><tr><th>metric</th><th>value</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>"
            f"<h2>Stages</h2><table><thead><tr><th>stage</th><th>finished</th><th>seconds</th>"
            f"</tr></thead><tbody>{stages}</tbody></table></section>")


def _plain(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


# ---- Markdown (the subset report.md uses) ---------------------------------------------------

def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> str:
    head, rows = _cells(lines[0]), [_cells(x) for x in lines[1:]
                                    if not re.fullmatch(r"\|?[\s:|-]+\|?", x.strip())]
    th = "".join(f"<th>{_inline(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (f"<div class=\"table\"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody>"
            "</table></div>")


def _blocks(md: str) -> list[tuple[str, list[str]]]:
    """Consecutive lines of one kind: heading, table, list, code, paragraph."""
    blocks: list[tuple[str, list[str]]] = []
    for line in md.splitlines():
        kind = ("blank" if not line.strip() else "heading" if line.startswith("#") else
                "table" if line.lstrip().startswith("|") else "list" if line.startswith("- ")
                else "code" if line.startswith("    ") else "para")
        if blocks and blocks[-1][0] == kind and kind != "heading":
            blocks[-1][1].append(line)
        else:
            blocks.append((kind, [line]))
    return blocks


def markdown_to_html(md: str) -> str:
    """Headings (shifted one level down: the page has its own h1), tables, lists, code, text."""
    out = []
    for kind, lines in _blocks(md):
        if kind == "heading":
            level, text = len(lines[0]) - len(lines[0].lstrip("#")), lines[0].lstrip("#").strip()
            out.append(f"<h{min(level + 1, 6)}>{_inline(text)}</h{min(level + 1, 6)}>")
        elif kind == "table":
            out.append(_table(lines))
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(x[2:])}</li>" for x in lines) + "</ul>")
        elif kind == "code":
            out.append("<pre><code>" + html.escape("\n".join(x[4:] for x in lines)) +
                       "</code></pre>")
        elif kind == "para":
            out.append(f"<p>{_inline(' '.join(x.strip() for x in lines))}</p>")
    return "\n".join(out)
