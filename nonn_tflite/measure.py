"""QEMU measurements in the report: what was measured on the emulated cores, and what changes.

``firmware_bridge.cortex_m.measure_run`` runs every model on emulated Cortex-M cores with the
real TFLM C++ runtime. This module holds the report side, which is plain data and has no
toolchain: each model entry gets its ``measured`` figures per configuration. The 32-bit arena
becomes the measured ``arena_used_bytes()`` plus
:data:`~nonn_tflite.profile.ARENA_32BIT_MARGIN_RULE` (no longer host + 25 %), so the board fit
is checked again. The energy section is then recomputed, and boards whose core was emulated use
measured instructions × cycles per instruction (nonn_tflite/boards.py).
"""

from __future__ import annotations

from nonn_tflite.profile import ARENA_32BIT_MARGIN_RULE, arena_32bit_with_margin

LABEL = "measured on QEMU (instruction counts, not cycles)"


def _entries(report: dict) -> list[dict]:
    return [report["teacher"], report["fusion"], *report["students"]]


def apply_measurements(report: dict, results: dict[str, dict], meta: dict) -> dict:
    """Put ``results`` (file -> config key -> figures) into ``report`` and redo what depends on
    the arena and the instruction counts: board fits, ratios and the energy section."""
    for entry in _entries(report):
        measured = results.get(entry["file"])
        if not measured:
            continue
        if "skipped" in measured:
            entry["measured"] = None
            entry["measured_skipped"] = measured["skipped"]
            continue
        entry["measured"] = measured
        arena = max(m["arena_bytes_min"] for m in measured.values())
        entry["arena_bytes_32bit_measured"] = arena
        entry["arena_bytes_32bit"] = arena_32bit_with_margin(arena)
        entry["arena_32bit_basis"] = ARENA_32BIT_MARGIN_RULE
    report["measured"] = {"label": LABEL, **meta, "arena_rule": ARENA_32BIT_MARGIN_RULE,
                          "rows": measured_rows(report),
                          "teacher_student_instruction_ratio": instruction_ratios(report)}
    _refit(report)
    return report


def measured_rows(report: dict) -> list[dict]:
    rows = []
    for entry in _entries(report):
        for key, m in (entry.get("measured") or {}).items():
            rows.append({"model": entry["file"], "config": key, **{k: m.get(k) for k in (
                "cpu", "machine", "kernels", "instructions_per_inference", "arena_used_bytes",
                "arena_bytes_min", "arena_reserved_bytes",
                "flash_bytes", "static_ram_bytes", "bit_exact")}})
    return rows


def instruction_ratios(report: dict) -> dict[str, float | None]:
    """Per configuration: teacher instructions / the largest student's."""
    teacher = report["teacher"].get("measured") or {}
    out = {}
    for key, t in teacher.items():
        students = [(s.get("measured") or {}).get(key) for s in report["students"]]
        biggest = max((s["instructions_per_inference"] for s in students if s), default=0)
        out[key] = t["instructions_per_inference"] / biggest if biggest else None
    return out


def _refit(report: dict) -> None:
    """Board fit of each student against its measured 32-bit arena; the energy section anew."""
    from nonn_tflite.boards import BOARDS
    from nonn_tflite.energy import energy_section

    boards = []
    for k, s in enumerate(report["students"]):
        board = BOARDS.get(s.get("board") or "")
        boards.append(board)
        if board is None:
            continue
        over = []
        if s["flash_bytes"] > board.model_flash_bytes:
            over.append(f"flash {s['flash_bytes']:,} B > {board.model_flash_bytes:,} B left for the model")
        if s["arena_bytes_32bit"] > board.model_ram_bytes:
            over.append(f"arena {s['arena_bytes_32bit']:,} B (measured 32-bit + margin) > "
                        f"{board.model_ram_bytes:,} B of RAM left for the arena")
        s["fits"] = not over
        s["problem"] = f"student {k} does not fit {board.name}: {'; '.join(over)}" if over else None
    if report.get("energy") is not None or any(boards):
        report["energy"] = energy_section(report, boards)


def measured_markdown(section: dict) -> list[str]:
    """report.md: the measured table, labelled with the QEMU machines."""
    machines = ", ".join(dict.fromkeys(f"{c['machine']} ({c['cpu']})" for c in section["configs"]))
    lines = ["## Measured on emulated Cortex-M cores (QEMU)", "",
             f"Measured on QEMU {machines}: instruction counts, not cycles. The runtime is the "
             f"real TFLite Micro C++ ({section.get('toolchain', {}).get('tflm', '?')}), built "
             f"with {section.get('toolchain', {}).get('gcc', '?')}. The arena is TFLM's own "
             "`arena_used_bytes()` from the 32-bit build. Flash is the linked program (text + "
             "rodata + data, the runtime included); static RAM is data + bss, the reserved "
             f"arena included. The arena the device reserves is the {section['arena_rule']}.",
             " `arena_min` is the smallest arena with which AllocateTensors and Invoke succeed on "
             "the emulated core (bisection; arena_used_bytes() leaves out Prepare's temporary "
             "allocations).",
             "", "| " + " | ".join(h for h, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in section["rows"]]
    lines += ["", ratio_sentence(section)]
    return lines + [""]


# (header, row key) of the measured table: report.md, the terminal and benchmarks share it.
COLUMNS = (("model", "model"), ("config", "config"),
           ("instructions / inference", "instructions_per_inference"),
           ("arena_used", "arena_used_bytes"), ("arena_min", "arena_bytes_min"),
           ("reserved", "arena_reserved_bytes"), ("flash", "flash_bytes"),
           ("static RAM", "static_ram_bytes"), ("bit-exact vs Python TFLM", "bit_exact"))


def row_cells(row: dict) -> list[str]:
    """One measured row as text cells (bytes and counts with thousands separators)."""
    cells = []
    for _, key in COLUMNS:
        v = row.get(key)
        if key == "bit_exact":
            cells.append("yes" if v else "NO")
        elif isinstance(v, int):
            cells.append(f"{v:,}")
        else:
            cells.append("-" if v is None else str(v))
    return cells


def ratio_sentence(section: dict) -> str:
    """The teacher / largest-student instruction ratio per configuration, as one sentence."""
    ratios = section.get("teacher_student_instruction_ratio") or {}
    if not ratios:
        return "Teacher not measured (no teacher/student instruction ratio)."
    return "Teacher / largest student, instructions per inference: " + ", ".join(
        f"{k} {v:.1f}x" if v else f"{k} -" for k, v in ratios.items()) + "."


def skipped_lines(report: dict) -> list[str]:
    """Models that were not measured, and why (e.g. a teacher too big for the probe)."""
    return [f"{e['file']}: not measured ({e['measured_skipped']})" for e in _entries(report)
            if e.get("measured_skipped")]


def measured_table(section: dict):
    """The measured rows as a rich table for the terminal (``nonn-tflite measure``)."""
    from rich.table import Table

    machines = ", ".join(dict.fromkeys(f"{c['machine']} ({c['cpu']})" for c in section["configs"]))
    table = Table(title=f"Measured on QEMU {machines}: instruction counts, not cycles")
    for i, (header, _) in enumerate(COLUMNS):
        table.add_column(header.replace("bit-exact vs Python TFLM", "bit-exact"),
                         justify="left" if i < 2 else "right")
    for r in section["rows"]:
        table.add_row(*row_cells(r))
    table.caption = (f"{ratio_sentence(section)} reserved = the arena a device reserves: "
                     f"{section['arena_rule']}.")
    return table
