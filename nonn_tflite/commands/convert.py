"""``nonn-tflite convert`` and ``nonn-tflite inspect``: parse options, call the library, print."""

from __future__ import annotations

import json
from pathlib import Path

import click

from nonn_tflite.commands.common import common_options, is_quiet


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--board", "boards", default=None, metavar="NAME[,NAME...]",
              help="Check each student against this board (one for all, or one per student). "
                   "Default: the boards the distill stage used; none means no fit check.")
@click.option("--no-board", is_flag=True, help="Skip the board fit check.")
@click.option("--calibration", default=500, show_default=True, type=click.IntRange(min=1),
              help="Training images used to calibrate the int8 ranges.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed that picks the calibration images (same seed, same bytes).")
@click.option("--latency-runs", default=200, show_default=True, type=click.IntRange(min=200),
              help="Single-image LiteRT runs per model for the latency median and p90.")
@click.option("--parity-samples", default=32, show_default=True, type=click.IntRange(min=1),
              help="Test images run through TFLM and LiteRT (reference kernels) for parity.")
@click.option("--force", is_flag=True, help="Redo a finished convert stage.")
@click.option("--measure", "measure_on", type=click.Choice(["qemu"]), default=None,
              help="Then measure the models on emulated Cortex-M4 and M55 (CMSIS-NN and "
                   "reference kernels), as `nonn-tflite measure RUN_DIR` does.")
@common_options
def convert(run_dir: str, boards: str | None, no_board: bool, calibration: int, seed: int,
            latency_runs: int, parity_samples: int, force: bool, measure_on: str | None) -> None:
    """Convert a distilled run to int8 TFLite Micro models, verify, measure and report.

    \b
    Writes RUN_DIR/tflite/: student_<k>.tflite, fusion.tflite, teacher.tflite,
    deployment.json, test_sample.npz, calibration_indices.json and report.{json,md,csv,png}.
    \b
    Examples:
      nonn-tflite convert runs/digits-k2
      nonn-tflite convert runs/c10 --board esp32 --calibration 500
      nonn-tflite convert runs/digits-k2 --measure qemu   # + measured on emulated M4/M55
    """
    from nonn_tflite.convert import ConvertOptions

    names = [] if no_board else ([b.strip() for b in boards.split(",")] if boards else None)
    if measure_on:  # fail before the conversion when the toolchain is missing
        from firmware_bridge.qemu import check_tools, tflm_tree

        check_tools()
        tflm_tree("cmsis-nn")
        tflm_tree("reference")
    result = convert_and_report(run_dir, ConvertOptions(calibration=calibration, seed=seed,
                                                        boards=names, latency_runs=latency_runs,
                                                        parity_samples=parity_samples,
                                                        force=force))
    if measure_on == "qemu":
        from nonn_tflite.commands.measure import (DEFAULT_CPUS, DEFAULT_KERNELS, configs_from,
                                                  measure_and_print)

        measure_and_print(result.tflite_dir, configs_from(DEFAULT_CPUS, DEFAULT_KERNELS))


def convert_and_report(run_dir: str | Path, options=None, *, force: bool = False):
    """Run the convert stage and print its table (``convert`` and the end of ``run`` use this).

    ``options`` is a :class:`nonn_tflite.convert.ConvertOptions` (defaults: 500 calibration
    images, seed 0, the distill stage's boards, 200 latency runs); ``force`` overrides its own.
    Returns the ConvertResult; BoardFitError still propagates, after the table is printed.
    """
    from dataclasses import replace

    from nonn_tflite.convert import ConvertOptions, convert_run
    from nonn_tflite.errors import BoardFitError
    from nonn_tflite.report import print_report

    opts = options or ConvertOptions()
    if force:
        opts = replace(opts, force=True)
    try:
        result = convert_run(run_dir, opts)
    except BoardFitError as exc:
        if not is_quiet() and getattr(exc, "result", None) is not None:
            print_report(exc.result.report)
        raise
    if not is_quiet():
        print_report(result.report)
    click.echo(f"wrote {result.tflite_dir} (report.md, report.png, deployment.json)")
    return result


@click.command()
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.option("--latency", "latency_runs", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also time N single-image LiteRT runs (reference kernels, 1 thread).")
@click.option("--no-arena", is_flag=True, help="Skip the TFLM arena measurement.")
@click.option("--no-tensors", is_flag=True, help="Do not list every tensor.")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
@common_options
def inspect(model_file: str, latency_runs: int, no_arena: bool, no_tensors: bool,
            as_json: bool) -> None:
    """Show ops, tensors, TFLM check, arena, MACs and params of any .tflite file.

    TFLite Micro runs in a child process, so a malformed model cannot crash this command.
    Exit code 0: the model runs under TFLM; 1: it does not (only reasons TFLM itself refuses:
    an op it lacks, a hybrid op; the first one and a count, the table lists all); 2: the file
    is not a sound .tflite model. A dynamic batch in shape_signature is fine (TFLM uses
    shape); a float model that TFLM runs exits 0, with a note that it is not full int8.

    \b
    Example:
      nonn-tflite inspect runs/c10/tflite/student_0.tflite
    """
    from nonn_tflite.errors import CompatibilityError, ModelFileError
    from nonn_tflite.profile import inspect_file
    from nonn_tflite.quantize import int8_problems, tflm_notes
    from nonn_tflite.report import print_inspection

    ins = inspect_file(model_file, arena=not no_arena, latency_runs=latency_runs)
    not_int8, notes = int8_problems(ins.model), tflm_notes(ins.model)
    if as_json:
        facts = ins.as_dict()
        facts.update({"full_int8": not not_int8, "int8_problems": not_int8, "notes": notes})
        click.echo(json.dumps(facts, indent=2))
    else:
        print_inspection(ins, show_tensors=not no_tensors)
        _print_int8_notes(not_int8, notes)
    if ins.problems:  # the facts are shown; the exit code says the model cannot run
        raise CompatibilityError(ins.problems, model_file)
    if ins.arena_error:
        raise ModelFileError(ins.arena_error)


def _print_int8_notes(not_int8: list[str], notes: list[str]) -> None:
    """What TFLM runs but the toolkit's int8 devices would not take, and other notes."""
    if not_int8:
        click.echo(f"not full int8 ({len(not_int8)}; the toolkit's int8 devices and wire format "
                   f"need int8 throughout): {not_int8[0]}"
                   + (f" ... and {len(not_int8) - 1} more (--json lists all)" if len(not_int8) > 1 else ""))
    for note in notes:
        click.echo(f"note: {note}")
