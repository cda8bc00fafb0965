"""What every benchmark shares: machine facts, versions, commit, timing, and result files.

Each benchmark prints a table, and writes ``benchmarks/results/<name>-<profile>.json`` and
``.md`` carrying the machine, CPU count, library versions, commit, wall time and every figure.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
# Tests point this elsewhere so a CI run never touches the committed results.
RESULTS = Path(os.environ.get("NONN_BENCH_RESULTS", ROOT / "benchmarks" / "results"))
sys.path.insert(0, str(ROOT))

from nonn_tflite.rundir import versions, write_json  # noqa: E402


# The instruction sets oneDNN picks its float kernels by: two CPUs with one model name (a
# generic "Intel(R) Xeon(R) Processor") but other sets train to other weights.
ONEDNN_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
              "amx_tile", "amx_int8", "amx_bf16")


def machine() -> dict[str, Any]:
    cpu, isa = platform.processor() or "", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                isa = [f for f in ONEDNN_ISA if f in flags]
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "isa": isa, "memory_gb": mem_gb,
            "platform": platform.platform(), "python": platform.python_version()}


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                               capture_output=True, text=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextmanager
def timed() -> Iterator[dict]:
    box: dict = {}
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - t0


def header(name: str, profile: str, argv: list[str] | None = None) -> dict:
    return {"benchmark": name, "profile": profile, "command": " ".join(argv or sys.argv),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit(),
            "machine": machine(), "versions": versions()}


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)\n"
    cols = columns or list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def print_table(title: str, rows: list[dict], columns: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = columns or (list(rows[0]) if rows else [])
    table = Table(title=title)
    for c in cols:
        table.add_column(c, justify="left" if c == cols[0] else "right", no_wrap=True, min_width=len(c))
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) for c in cols))
    # a log file or pipe gets the whole row; a narrow terminal gets ellipses
    Console(width=max(200, Console().width)).print(table)


def write_results(name: str, profile: str, doc: dict, rows: list[dict], columns: list[str] | None = None,
                  notes: str = "", out_dir: Path | None = None) -> Path:
    """``<name>-<profile>.json`` (everything) and ``.md`` (header + table + notes)."""
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{profile}.json"
    write_json(path, doc)
    md = [f"# {name} ({profile})", "",
          f"- command: `{doc.get('command', '')}`",
          f"- date: {doc.get('date')}, commit {doc.get('commit')}",
          f"- machine: {doc['machine']['cpu']} ({doc['machine']['cpu_count']} CPUs, "
          f"{doc['machine']['memory_gb']} GB), {doc['machine']['platform']}",
          "- versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if k != "platform"),
          f"- wall time: {doc.get('wall_seconds', 0):.1f} s", "", markdown_table(rows, columns)]
    if notes:
        md += ["", notes]
    (out_dir / f"{name}-{profile}.md").write_text("\n".join(md) + "\n")
    return path


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
