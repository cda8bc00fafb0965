"""``nonn-tflite measure``: a converted run on emulated Cortex-M cores (real TFLM C++ under QEMU)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from nonn_tflite.commands.common import common_options, is_quiet

CPU_NAMES = ("cortex-m4", "cortex-m7", "cortex-m55")  # firmware_bridge.qemu.CPUS, without importing
KERNEL_NAMES = ("cmsis-nn", "reference")
DEFAULT_CPUS = "cortex-m4,cortex-m55"
DEFAULT_KERNELS = "cmsis-nn,reference"
DEFAULT_SAMPLES = 4


def _names(text: str, valid: tuple[str, ...], flag: str) -> list[str]:
    from nonn_tflite.errors import UsageError

    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise UsageError(f"{flag} {text!r}: expected a comma-separated list of {', '.join(valid)}")
    return list(dict.fromkeys(names))


def configs_from(cpus: str, kernels: str) -> list:
    """The (cpu, kernels) configurations of ``--cpu`` x ``--kernels``, in that order."""
    from firmware_bridge.qemu import Config

    return [Config(c, k) for c in _names(cpus, CPU_NAMES, "--cpu")
            for k in _names(kernels, KERNEL_NAMES, "--kernels")]


def measure_and_print(run_dir: str | Path, configs, *, samples: int = DEFAULT_SAMPLES,
                      teacher: bool = True, link: bool = True, as_json: bool = False) -> dict:
    """Measure a converted run, write report.json/md and deployment.json, print the table
    (``measure`` and ``convert --measure qemu`` use this). Returns the report; raises
    BoardFitError after printing when a student no longer fits its board."""
    from firmware_bridge.cortex_m import converted_dir, measure_run
    from nonn_tflite.errors import BoardFitError
    from nonn_tflite.measure import measured_table, skipped_lines

    tdir = converted_dir(run_dir)
    if not is_quiet() and not as_json:
        click.echo(f"measuring {tdir} on {', '.join(c.key for c in configs)} "
                   f"({samples} test image(s); the TFLM runtime is built once per configuration "
                   "and cached, minutes the first time)")
    report = measure_run(tdir, configs, samples=samples, teacher=teacher, link=link)
    section = report["measured"]
    if as_json:
        click.echo(json.dumps(section, indent=2))
    elif not is_quiet():
        from rich.console import Console

        Console(width=160).print(measured_table(section))
        for line in skipped_lines(report):
            click.echo(line)
    if not as_json:
        click.echo(f"wrote {tdir / 'report.json'}, report.md and deployment.json (32-bit arenas: "
                   f"{section['arena_rule']})")
    not_exact = [f"{r['model']} on {r['config']}" for r in section["rows"] if not r["bit_exact"]]
    misfits = [s["problem"] for s in report["students"] if s.get("problem")]
    if misfits:
        raise BoardFitError("; ".join(misfits) + " (measured 32-bit arena)")
    if not_exact:
        from nonn_tflite.errors import ConversionError

        raise ConversionError("not bit-exact with the Python TFLM interpreter: "
                              + ", ".join(not_exact))
    return report


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--cpu", "cpus", default=DEFAULT_CPUS, show_default=True, metavar="CPU[,CPU...]",
              help="Emulated cores: cortex-m4 (QEMU mps2-an386), cortex-m7 (mps2-an500), "
                   "cortex-m55 (mps3-an547).")
@click.option("--kernels", default=DEFAULT_KERNELS, show_default=True, metavar="SET[,SET...]",
              help="TFLM kernel sets: cmsis-nn, reference.")
@click.option("--samples", default=DEFAULT_SAMPLES, show_default=True,
              type=click.IntRange(1, 64),
              help="Test images run per model (outputs checked bit-exact; median instructions).")
@click.option("--no-teacher", is_flag=True, help="Measure only the students and the fusion.")
@click.option("--no-link", is_flag=True,
              help="Skip the per-model link: no flash and static RAM figures (faster).")
@click.option("--json", "as_json", is_flag=True, help="Print the measured section as JSON.")
@common_options
def measure(run_dir: str, cpus: str, kernels: str, samples: int, no_teacher: bool,
            no_link: bool, as_json: bool) -> None:
    """Run every student, the fusion and the teacher of a converted run on emulated Cortex-M
    cores with the real TFLite Micro C++ runtime, and write what was measured.

    \b
    Per model and configuration: instructions per inference (QEMU -icount: instruction
    counts, not cycles), TFLM's arena_used_bytes() on the 32-bit build, the minimal arena
    that allocates and invokes, linked flash and static RAM, and whether the outputs are
    bit-exact with the Python TFLM interpreter. report.json/report.md get a `measured`
    section; deployment.json and the board fit use the measured 32-bit arena plus a small
    margin; latency and energy of boards with an emulated core become measured instructions
    x cycles per instruction. Needs arm-none-eabi-gcc, make, qemu-system-arm and a TFLM tree
    ($NONN_TFLM_DIR).
    \b
    Example:
      nonn-tflite measure runs/digits-k2
      nonn-tflite measure runs/c10 --cpu cortex-m4 --kernels cmsis-nn --samples 2
      nonn-tflite export runs/digits-k2 --target cortex-m --out fw/   # reserves that arena
    """
    measure_and_print(run_dir, configs_from(cpus, kernels), samples=samples,
                      teacher=not no_teacher, link=not no_link, as_json=as_json)
