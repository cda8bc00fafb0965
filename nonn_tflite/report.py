"""The convert report in every form people and programs read: JSON, Markdown, CSV, PNG, terminal.

``report.json`` is the source; the other files are views of it, so they cannot disagree.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from nonn_tflite.rundir import atomic_write_bytes, atomic_write_text, write_json

CSV_FIELDS = ("model", "file", "flash_bytes", "arena_bytes", "arena_bytes_32bit", "params", "macs",
              "elementwise_ops", "latency_ms", "latency_p90_ms", "latency_default_ms",
              "payload_bytes", "accuracy_float", "accuracy_int8", "board", "fits", "parity_bit_exact",
              "parity_max_abs_diff")


def load_report(path: str | Path) -> dict:
    """A report.json (or the tflite/ folder or run directory holding one)."""
    p = Path(path)
    for cand in (p, p / "report.json", p / "tflite" / "report.json"):
        if cand.is_file():
            return json.loads(cand.read_text())
    from nonn_tflite.errors import RunDirError

    raise RunDirError(f"no report.json under {p}; run `nonn-tflite convert RUN_DIR` first")


def model_rows(report: dict) -> list[dict]:
    """One flat row per model: teacher, each student, fusion."""
    entries = [("teacher", report["teacher"])]
    entries += [(f"student {s['id']}", s) for s in report["students"]]
    entries.append(("fusion", report["fusion"]))
    rows = []
    for name, m in entries:
        parity = m.get("parity") or {}
        default = (m.get("latency") or {}).get("default") or {}
        rows.append({
            "model": name, "file": m.get("file"), "flash_bytes": m["flash_bytes"],
            "arena_bytes": m["arena_bytes"], "arena_bytes_32bit": m.get("arena_bytes_32bit"),
            "params": m["params"], "macs": m["macs"], "elementwise_ops": m.get("elementwise_ops"),
            "latency_ms": m.get("latency_ms"), "latency_p90_ms": m.get("latency_p90_ms"),
            "latency_default_ms": default.get("median_ms"), "payload_bytes": m.get("payload_bytes"),
            "accuracy_float": m.get("accuracy_float"), "accuracy_int8": m.get("accuracy_int8"),
            "board": m.get("board"), "fits": m.get("fits"),
            "parity_bit_exact": parity.get("bit_exact"),
            "parity_max_abs_diff": parity.get("max_abs_diff"),
        })
    return rows


# -- formatting ------------------------------------------------------------------------------------

def _bytes(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:,.1f} KiB" if n >= 1024 else f"{n:,} B"


def _count(n) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:,}"


def _ms(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _ratio(v) -> str:
    return "-" if v is None else f"{v:,.1f}x"


def _fit(row: dict) -> str:
    if row["board"] is None:
        return "-"
    return f"{row['board']} {'ok' if row['fits'] else 'NO'}"


def _parity(row: dict) -> str:
    if row["parity_bit_exact"] is None:
        return "-"
    return "bit-exact" if row["parity_bit_exact"] else f"max {row['parity_max_abs_diff']} LSB"


TABLE_COLUMNS = (("model", "model", str), ("flash", "flash_bytes", _bytes),
                 ("arena", "arena_bytes", _bytes), ("arena 32-bit", "arena_bytes_32bit", _bytes),
                 ("params", "params", _count), ("MACs", "macs", _count),
                 ("latency ms (p50)", "latency_ms", _ms), ("p90", "latency_p90_ms", _ms),
                 ("payload/inference", "payload_bytes", _bytes), ("acc float", "accuracy_float", _pct),
                 ("acc int8", "accuracy_int8", _pct))


def _cells(row: dict) -> list[str]:
    return [fmt(row[key]) for _, key, fmt in TABLE_COLUMNS] + [_fit(row), _parity(row)]


HEADERS = [c[0] for c in TABLE_COLUMNS] + ["board fit", "TFLM parity"]


# -- text forms ----------------------------------------------------------------------------------

def report_csv(report: dict) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in model_rows(report):
        w.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_FIELDS})
    return out.getvalue()


def report_markdown(report: dict) -> str:
    sysd, r = report["system"], report["ratios"]
    lines = [f"# NoNN int8 deployment: {report['deployment']}", "",
             f"Dataset `{report['dataset']['name']}`, {report['dataset']['test_images']} test images.",
             "", "## System accuracy (test split)", "",
             "| system | float (Keras) | int8 (as deployed) |", "|---|---|---|",
             f"| NoNN, {sysd['num_students']} students + fusion | {_pct(sysd['accuracy_float'])} | "
             f"{_pct(sysd['accuracy_int8'])} |",
             f"| teacher | {_pct(sysd['teacher_accuracy_float'])} | {_pct(sysd['teacher_accuracy_int8'])} |",
             "", "int8 system: every student and the fusion run as separate int8 models, student "
             "vectors requantised into the fusion input as below; runtime: "
             f"{sysd['int8_runtime']}. Drop: {sysd['accuracy_drop_points']:.2f} points.", "",
             "## Models", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in model_rows(report)]
    lines += ["", "Ratios, teacher / largest student: " + ", ".join(
        f"{k} {_ratio(v)}" for k, v in r.items()) + ".", "",
        "## Student feature agreement (Keras float vs int8)", "",
        "| student | filters | width | max abs diff (LSB) | unsaturated max (LSB) | saturated | "
        "cosine mean | cosine min |", "|---|---|---|---|---|---|---|---|"]
    for s in report["students"]:
        fa = s["feature_agreement"]
        nfilt = len(s["filters"]) if s.get("filters") is not None else "-"
        lines.append(f"| {s['id']} | {nfilt} | {s['width']} | {fa['max_abs_diff_lsb']:.2f} | "
                     f"{fa['max_abs_diff_lsb_unsaturated']:.2f} | {100 * fa['saturated_fraction']:.2f}% | "
                     f"{fa['cosine_mean']:.4f} | {fa['cosine_min']:.4f} |")
    lines += ["", "Saturated values (int8 127) are test features above the range seen in "
              "calibration; many of them call for more `--calibration` images."]
    cal = report["calibration"]
    lines += ["", "## Fusion input: explicit requantisation", "",
              "Each student's int8 vector carries its own scale `s_k` and zero point `zp_k`. The "
              "fusion model was calibrated on the float concatenation of the students' float "
              "vectors over the calibration images, which fixed one input scale `s_f` and zero "
              "point `zp_f`. The fusion node maps every student slice before running the int8 "
              "fusion model:", "",
              "    q_f = clip(round((q_k - zp_k) * s_k / s_f) + zp_f, -128, 127)", "",
              "with round half away from zero (C's `round`). A missing student's slice is `zp_f` "
              "(the quantised 0.0 that student dropout trained for).", "",
              "| model | input scale | input zp | output scale | output zp |", "|---|---|---|---|---|"]
    for name, m in [(f"student {s['id']}", s) for s in report["students"]] + [("fusion", report["fusion"])]:
        lines.append(f"| {name} | {m['input']['scale']:.6g} | {m['input']['zero_point']} | "
                     f"{m['output']['scale']:.6g} | {m['output']['zero_point']} |")
    if report.get("energy"):  # latency/energy estimates: nonn_tflite/energy.py renders them
        from nonn_tflite.energy import energy_markdown

        lines += [""] + energy_markdown(report["energy"])
    if report.get("measured"):  # QEMU measurements: nonn_tflite/measure.py renders them
        from nonn_tflite.measure import measured_markdown

        lines += [""] + measured_markdown(report["measured"])
    lines += ["", "## How these numbers were measured", "",
              f"- Calibration: {cal['count']} images of the {cal['split']} split, seed {cal['seed']} "
              f"(indices in `calibration_indices.json`, sha256 `{cal['indices_sha256'][:16]}...`).",
              f"- Flash: the .tflite file size. {report['notes']['arena']}.",
              f"- Latency: {report['notes']['latency']}",
              f"- MACs: {report['notes']['macs']}.",
              f"- Payload: {report['notes']['payload']}.",
              "- TFLM parity: TFLite Micro Python interpreter vs LiteRT reference kernels, 1 thread, "
              "on the first test images."]
    misfits = [s["problem"] for s in report["students"] if s.get("problem")]
    if misfits:
        lines += ["", "## Board fit: FAILED", ""] + [f"- {m}" for m in misfits]
    return "\n".join(lines) + "\n"


def plot_report(report: dict, path: Path) -> None:
    """Per-device flash, arena and latency beside the teacher's (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = model_rows(report)
    names = [r["model"] for r in rows]
    colors = ["#888888" if n == "teacher" else ("#d9822b" if n == "fusion" else "#2b6cd9") for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(max(9.0, 3 + 1.8 * len(rows)), 4.2))
    panels = (("flash_bytes", "flash", _bytes), ("arena_bytes", "TFLM arena (64-bit host)", _bytes),
              ("latency_ms", "latency, ms (LiteRT ref, 1 thread, p50)", lambda v: f"{v:.3g} ms"))
    for ax, (key, title, fmt) in zip(axes, panels, strict=True):
        values = [max(r[key] or 0, 1e-6) for r in rows]
        ax.bar(range(len(rows)), values, color=colors)
        ax.set_yscale("log")
        ax.set_ylim(min(values) / 3, max(values) * 3)  # log bars need a floor below the smallest
        ax.set_title(title)
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
        for i, v in enumerate(values):
            ax.annotate(fmt(v), (i, v), ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"{report['deployment']}: each device vs the teacher")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """report.json, report.md, report.csv and report.png in ``out_dir``."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"report.{ext}" for ext in ("json", "md", "csv", "png")]
    write_json(paths[0], report)
    atomic_write_text(paths[1], report_markdown(report))
    atomic_write_text(paths[2], report_csv(report))
    plot_report(report, paths[3])
    return paths


# -- terminal ------------------------------------------------------------------------------------

def _k(n) -> str:
    """Compact bytes for the terminal: 930, 9.1K, 1.2M."""
    if n is None:
        return "-"
    for unit, div in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _terminal_cells(row: dict) -> list[str]:
    acc = "-" if row["accuracy_int8"] is None else \
        f"{100 * row['accuracy_float']:.1f}/{100 * row['accuracy_int8']:.1f}"
    lat = "-" if row["latency_ms"] is None else f"{row['latency_ms']:.3f}/{row['latency_p90_ms']:.3f}"
    parity = {None: "-", True: "exact"}.get(row["parity_bit_exact"], f"±{row['parity_max_abs_diff']}")
    return [row["model"], _k(row["flash_bytes"]), f"{_k(row['arena_bytes'])}/{_k(row['arena_bytes_32bit'])}",
            _count(row["params"]), _count(row["macs"]), lat,
            "-" if row["payload_bytes"] is None else str(row["payload_bytes"]), acc, _fit(row), parity]


TERMINAL_HEADERS = ("model", "flash", "arena\nhost/32b", "params", "MACs", "ms\np50/p90",
                    "payload\nB", "acc %\nfloat/int8", "board", "TFLM\nparity")


def report_table(report: dict):
    """A compact rich table (fits ~100 columns); report.md has every column in full."""
    from rich.table import Table

    sysd = report["system"]
    table = Table(title=f"{report['deployment']}: NoNN int8 {_pct(sysd['accuracy_int8'])} vs float "
                        f"{_pct(sysd['accuracy_float'])} ({sysd['num_students']} students)")
    for i, h in enumerate(TERMINAL_HEADERS):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in model_rows(report):
        table.add_row(*_terminal_cells(row))
    table.caption = "teacher / largest student: " + ", ".join(
        f"{k} {_ratio(v)}" for k, v in report["ratios"].items()) + \
        ". arena: 64-bit host / with 32-bit margin. ms: LiteRT reference kernels, 1 thread."
    return table


def print_report(report: dict, console=None) -> None:
    """The report as a rich table (what ``convert`` and ``run`` print at the end)."""
    from rich.console import Console

    con = console or Console()
    if not con.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        con.width = max(con.width, 120)
    con.print(report_table(report))
    if report.get("energy"):  # latency/energy estimates: nonn_tflite/energy.py renders them
        from nonn_tflite.energy import energy_table

        con.print(energy_table(report["energy"]))


def print_inspection(ins, console=None, show_tensors: bool = True) -> None:
    """`nonn-tflite inspect`: ops, tensors, TFLM check, arena, MACs, params, latency."""
    from rich.console import Console
    from rich.table import Table

    from nonn_tflite.tflite_model import op_layer

    con = console or Console()
    if not con.is_terminal:
        con.width = max(con.width, 120)
    m = ins.model
    con.print(f"[bold]{ins.path}[/]  {m.size:,} B  schema v{m.schema_version}  "
              f"{len(m.operators)} ops  {len(m.tensors)} tensors  {m.params:,} params  "
              f"{m.macs:,} MACs (+{m.elementwise_ops:,} element-wise)")
    ops = Table(title="operators")
    for h in ("#", "op", "inputs", "output", "MACs", "layer"):
        ops.add_column(h)
    for o in m.operators:
        ins_shapes = ", ".join(str(list(m.tensors[i].shape)) for i in o.inputs if i >= 0)
        out = m.tensors[o.outputs[0]] if o.outputs else None
        ops.add_row(str(o.index), o.opcode, ins_shapes, str(list(out.shape)) if out else "-",
                    f"{o.macs:,}", op_layer(m, o))
    con.print(ops)
    if show_tensors:
        ts = Table(title="tensors")
        for h in ("#", "name", "dtype", "shape", "scale", "zp", "const bytes"):
            ts.add_column(h)
        for t in m.tensors:
            pt = t.quant.per_tensor if t.quant else None
            scale = f"{pt[0]:.6g}" if pt else ("per-channel" if t.quant else "-")
            ts.add_row(str(t.index), t.name[:60], t.dtype, str(list(t.shape)), scale,
                       str(pt[1]) if pt else "-", f"{t.data_bytes:,}" if t.data_bytes else "")
        con.print(ts)
    if ins.problems:
        con.print(f"[red]TFLite Micro check: {len(ins.problems)} problem(s)[/]")
        for p in ins.problems:
            con.print(f"  - {p}")
    else:
        con.print("[green]TFLite Micro check: OK[/] (every op has a TFLM kernel, no hybrid ops, "
                  "fixed shapes)")
    if ins.arena:
        con.print(f"arena: {ins.arena.arena_bytes:,} B on this 64-bit host; allocate "
                  f"{ins.arena.arena_bytes_32bit:,} B on a 32-bit target (margin included)")
    elif ins.arena_error:
        con.print(f"[yellow]arena: not measured: {ins.arena_error}[/]")
    if ins.latency:
        con.print(f"latency (LiteRT reference kernels, 1 thread, {ins.latency.runs} runs): "
                  f"median {ins.latency.median_ms:.3f} ms, p90 {ins.latency.p90_ms:.3f} ms")
