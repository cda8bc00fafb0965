"""A converted run measured on emulated Cortex-M cores: `nonn-tflite measure` on a copy of it.

Runs the real TFLite Micro C++ runtime (CMSIS-NN and reference kernels) on QEMU's Cortex-M4
(mps2-an386) and Cortex-M55 (mps3-an547) for every student, the fusion and the teacher, and
writes ``benchmarks/results/measured-<profile>.{json,md}``: the measured table (instructions per
inference, TFLM arena_used, minimal arena, reserved arena, linked flash, static RAM, bit-exact),
the teacher / largest-student instruction ratio per configuration, toolchain, machine and
commit. The run itself is never modified: it is copied to a temporary folder and measured there
(``--keep`` keeps that copy).

    python benchmarks/measure_qemu.py                                  # models/digits-k2
    python benchmarks/measure_qemu.py --run runs/c10 --profile cifar10-cpu
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, header, print_table, write_results

COLUMNS = ["model", "config", "instructions / inference", "arena_used", "arena_min", "reserved",
           "flash", "static RAM", "bit-exact"]


def measure_copy(run: Path, work: Path, cpus: str, kernels: str, samples: int) -> tuple[dict, float]:
    """Copy ``run`` into ``work`` and run ``nonn-tflite measure`` on the copy."""
    copy = work / run.name
    shutil.copytree(run, copy)
    cmd = [sys.executable, "-m", "nonn_tflite.cli", "measure", str(copy), "--cpu", cpus,
           "--kernels", kernels, "--samples", str(samples)]
    print("$ nonn-tflite " + " ".join(cmd[3:]), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"error: nonn-tflite measure failed with exit code {done.returncode}")
    tdir = copy / "tflite" if (copy / "tflite" / "report.json").is_file() else copy
    return json.loads((tdir / "report.json").read_text()), seconds


def table_rows(section: dict) -> list[dict]:
    from nonn_tflite.measure import row_cells

    return [dict(zip(COLUMNS, row_cells(r))) for r in section["rows"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "models" / "digits-k2",
                    help="a converted run folder (default: models/digits-k2)")
    ap.add_argument("--profile", default=None, help="results name suffix (default: the run's name)")
    ap.add_argument("--cpu", default="cortex-m4,cortex-m55")
    ap.add_argument("--kernels", default="cmsis-nn,reference")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--keep", type=Path, default=None, help="measure the copy here and keep it")
    args = ap.parse_args()
    profile = args.profile or args.run.resolve().name
    doc = header("measured", profile)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report, seconds = measure_copy(args.run, args.keep, args.cpu, args.kernels, args.samples)
    else:
        with tempfile.TemporaryDirectory(prefix="nonn-measure-") as tmp:
            report, seconds = measure_copy(args.run, Path(tmp), args.cpu, args.kernels,
                                           args.samples)
    section = report["measured"]
    from nonn_tflite.measure import ratio_sentence, skipped_lines

    rows = table_rows(section)
    skipped = skipped_lines(report)
    doc.update({"wall_seconds": seconds, "run": str(args.run), "deployment": report["deployment"],
                "samples": args.samples, "measured": section, "skipped": skipped,
                "students": [{k: s.get(k) for k in ("file", "arena_bytes", "arena_bytes_32bit",
                                                    "arena_bytes_32bit_measured", "board", "fits")}
                             for s in report["students"]],
                "energy": report.get("energy")})
    tool = section.get("toolchain", {})
    notes = "\n".join([
        ratio_sentence(section), "",
        f"Measured on QEMU ({', '.join(dict.fromkeys(c['machine'] + ' ' + c['cpu'] for c in section['configs']))}):"
        " instruction counts (-icount shift=0), not cycles. Runtime: TFLite Micro "
        f"{tool.get('tflm', '?')}; {tool.get('gcc', '?')}; {tool.get('qemu', '?')}. "
        "arena_used is TFLM's arena_used_bytes() on the 32-bit build; arena_min the smallest arena "
        "that allocates and invokes (bisection); reserved = what a device reserves: "
        f"{section['arena_rule']}. Flash = text + rodata + data of the linked program (runtime "
        "and model included); static RAM = data + bss (the reserved arena included). Bit-exact: "
        f"outputs on {args.samples} test image(s) identical to the Python TFLM interpreter's. "
        f"Wall time includes building any TFLM runtime not yet cached.",
        *(["", *skipped] if skipped else [])])
    print_table(f"measured on QEMU: {report['deployment']}", rows, COLUMNS)
    print(ratio_sentence(section))
    path = write_results("measured", profile, doc, rows, COLUMNS, notes=notes)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
