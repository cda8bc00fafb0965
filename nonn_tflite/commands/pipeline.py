"""``run``, ``teacher``, ``partition``, ``distill`` and ``info``."""

from __future__ import annotations

import json
from typing import Any, Callable

import click

from nonn_tflite.commands.common import common_options, import_tensorflow_quietly, is_quiet

F = Callable[..., Any]


def _stack(*decorators: F) -> F:
    def apply(func: F) -> F:
        for d in reversed(decorators):
            func = d(func)
        return func

    return apply


data_options = _stack(
    click.option("--dataset", default="digits", show_default=True,
                 help="digits (embedded, offline), cifar10, or a folder with train.npz/test.npz "
                      "or train/<class>/ image subfolders."),
    click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                 help="Where cifar10's train.npz/test.npz live (default ~/.cache/nonn-tflite/cifar10)."),
    click.option("--val-fraction", type=float, default=0.1, show_default=True,
                 help="Validation split carved from train (partitioning, early stopping, selection)."),
    click.option("--subset", type=int, default=None, help="Use only this many training images (smoke tests)."),
)

teacher_options = _stack(
    click.option("--arch", default="wrn-16-2", show_default=True,
                 help="Teacher: wrn-<depth>-<width>, resnet-20, resnet-8 or airbench (Jordan "
                      "2024's ~2 M-parameter whitened conv net and its recipe; its lr, momentum "
                      "and weight decay are airbench's, scaled to --batch-size)."),
    click.option("--teacher", "teacher_path", type=click.Path(dir_okay=False), default=None,
                 help="Use your own pretrained .keras or .h5 teacher instead of training one."),
    click.option("--teacher-input", default=None, metavar="CONVENTION",
                 help="Input convention of an imported --teacher: unit ([0, 1]), raw (0-255), "
                      "symmetric ([-1, 1]) or mean-std:M,S ((x/255 - M) / S; per channel "
                      "M1/M2/M3,S1/S2/S3; or mean-std:cifar10|imagenet|dataset). Default: try "
                      "each on validation images and keep the best (recorded in the manifest)."),
)

partition_options = _stack(
    click.option("--method", type=click.Choice(["louvain", "random", "contiguous"]), default="louvain",
                 show_default=True, help="louvain (NoNN); random or contiguous are ablation baselines."),
    click.option("--rule", type=click.Choice(["hebbian-difference", "hebbian"]),
                 default="hebbian-difference", show_default=True, help="Edge weight rule."),
    click.option("--top-k", type=int, default=50, show_default=True,
                 help="Most active filters per image that add edges."),
    click.option("--percentile", default="auto", show_default=True,
                 help="Drop edges under this percentile of non-zero weights (0 keeps all); auto: "
                      "the sparsest network whose K parts keep significant structure."),
    click.option("--resolution", type=float, default=1.0, show_default=True, help="Louvain resolution."),
    click.option("--feature-layer", default=None,
                 help="Teacher layer to partition (default: the last spatial map, H and W > 1, "
                      "before the classifier head; pooled 1x1 maps and Flatten are skipped)."),
    click.option("--max-images", type=int, default=5000, show_default=True,
                 help="Validation images used to build the filter network."),
)

budget_options = _stack(
    click.option("--flash-kb", type=float, default=None, help="Model flash budget per device in KB (default 64)."),
    click.option("--ram-kb", type=float, default=None, help="Tensor-arena budget per device in KB (default 32)."),
    click.option("--board", "boards", default=None,
                 help="Board profile(s), one for all or one per student: esp32,rp2040 (see `nonn-tflite boards`)."),
    click.option("--max-student-share", type=float, default=0.125, show_default=True,
                 help="Cap on each student's parameters as a share of the teacher's, however roomy the board."),
    click.option("--student-family", type=click.Choice(["resnet", "mbv2", "auto"]), default="resnet",
                 show_default=True,
                 help="Student family: resnet (basic residual blocks), mbv2 (MobileNetV2 inverted "
                      "residuals, depthwise convs), or auto: size both for each budget and keep "
                      "the shape with the most parameters that fits."),
)

distill_options = _stack(
    click.option("--alpha", type=float, default=0.9, show_default=True, help="Weight of KD against cross-entropy."),
    click.option("--tau", type=float, default=4.0, show_default=True, help="KD temperature."),
    click.option("--beta", type=float, default=10.0, show_default=True, help="Weight of attention transfer."),
    click.option("--student-dropout", type=float, default=0.1, show_default=True,
                 help="Probability a student's vector is zeroed in training (0 turns it off)."),
    click.option("--cache-teacher", is_flag=True,
                 help="Compute teacher outputs once on un-augmented images (faster on CPU; no augmentation)."),
    click.option("--views", type=int, default=1, show_default=True,
                 help="Cache the teacher's outputs for this many flip/shift views of each training "
                      "image and train on exactly those views (augmented, consistent, no teacher "
                      "in the loop); 1 keeps the online teacher (or --cache-teacher)."),
)


def train_options(prefix: str, epochs: int) -> F:
    name = f"--{prefix}epochs" if prefix else "--epochs"
    return _stack(
        click.option(name, f"{prefix.replace('-', '_')}epochs", type=int, default=epochs,
                     show_default=True, help="Training epochs."),
    )


def _positive(name: str, value: float | None) -> None:
    from nonn_tflite.errors import UsageError

    if value is not None and value <= 0:
        raise UsageError(f"{name} must be positive, got {value}")


def _data_cfg(dataset: str, data_dir: str | None, val_fraction: float, subset: int | None, seed: int):
    from nonn_tflite.config import DataConfig

    return DataConfig(dataset, data_dir, val_fraction, seed, subset)


def _teacher_cfg(arch: str, teacher_path: str | None, epochs: int, batch_size: int, lr: float,
                 seed: int, teacher_input: str | None = None):
    from nonn_tflite.config import TeacherConfig, TrainConfig
    from nonn_tflite.errors import UsageError

    _positive("--epochs", epochs)
    if teacher_input and not teacher_path:
        raise UsageError("--teacher-input describes an imported teacher; pass --teacher FILE too")
    return TeacherConfig(arch=arch if not teacher_path else "imported",
                         train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
                         source=teacher_path, input=teacher_input)


def _partition_cfg(students: int, method: str, rule: str, top_k: int, percentile: str | float,
                   resolution: float, feature_layer: str | None, max_images: int, seed: int):
    from nonn_tflite.config import PartitionConfig
    from nonn_tflite.errors import UsageError

    if students < 1:
        raise UsageError(f"--students {students} must be at least 1")
    _positive("--top-k", top_k)
    _positive("--resolution", resolution)
    if str(percentile).strip().lower() == "auto":
        percentile = "auto"
    else:
        try:
            percentile = float(percentile)
        except ValueError:
            raise UsageError(f"--percentile {percentile!r} must be auto or a number in [0, 100)") from None
        if not 0 <= percentile < 100:
            raise UsageError(f"--percentile {percentile} must be auto or a number in [0, 100)")
        percentile = percentile or None
    return PartitionConfig(students, method, rule, top_k, percentile, resolution,
                           feature_layer, max_images, seed)


def _distill_cfg(alpha: float, tau: float, beta: float, student_dropout: float, cache_teacher: bool,
                 flash_kb, ram_kb, boards: str | None, max_student_share: float, epochs: int,
                 batch_size: int, lr: float, seed: int, views: int = 1,
                 student_family: str = "resnet"):
    from nonn_tflite.config import BudgetConfig, DistillConfig, TrainConfig
    from nonn_tflite.errors import UsageError

    if not 0 <= alpha <= 1:
        raise UsageError(f"--alpha {alpha} must be in [0, 1]")
    _positive("--tau", tau)
    _positive("--flash-kb", flash_kb)
    _positive("--ram-kb", ram_kb)
    _positive("--epochs", epochs)
    if not 0 <= student_dropout < 1:
        raise UsageError(f"--student-dropout {student_dropout} must be in [0, 1)")
    _positive("--max-student-share", max_student_share)
    if views < 1:
        raise UsageError(f"--views {views} must be at least 1")
    board_list = [b.strip() for b in boards.split(",")] if boards else []
    return DistillConfig(alpha, tau, beta, student_dropout, student_family, cache_teacher,
                         BudgetConfig(flash_kb, ram_kb, board_list, max_student_share),
                         TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
                         views=views)


shared_options = _stack(
    click.option("--seed", type=int, default=0, show_default=True, help="Seed for splits, partition and training."),
    click.option("--batch-size", type=int, default=64, show_default=True),
    click.option("--lr", type=float, default=0.05, show_default=True, help="Peak learning rate (cosine decay)."),
)


def _status(message: str):
    from rich.console import Console

    return Console(stderr=True).status(message) if not is_quiet() else _Null()


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def print_summary(run) -> None:
    from rich.console import Console
    from rich.table import Table

    from nonn_tflite.pipeline import summary_rows

    table = Table(title=f"NoNN run {run.path}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in summary_rows(run):
        table.add_row(k, v)
    Console().print(table)


# -- commands -------------------------------------------------------------------------------

@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to create.")
@data_options
@teacher_options
@train_options("", 30)
@shared_options
@click.option("--force", is_flag=True, help="Redo the teacher stage of an existing run.")
@common_options
def teacher(out, dataset, data_dir, val_fraction, subset, arch, teacher_path, teacher_input, epochs,
            seed, batch_size, lr, force):
    """Train a teacher CNN (or import yours) into a new run directory.

    \b
    Examples:
      nonn-tflite teacher --dataset cifar10 --arch wrn-16-4 --out runs/c10
      nonn-tflite teacher --teacher my_model.keras --dataset cifar10 --out runs/mine
      nonn-tflite teacher --teacher resnet.h5 --teacher-input raw --dataset cifar10 --out runs/r
    """
    import_tensorflow_quietly()
    from nonn_tflite.pipeline import run_teacher

    run = run_teacher(out, _data_cfg(dataset, data_dir, val_fraction, subset, seed),
                      _teacher_cfg(arch, teacher_path, epochs, batch_size, lr, seed, teacher_input),
                      force, is_quiet())
    print_summary(run)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--students", "-k", type=int, default=2, show_default=True, help="Number of students (devices), K.")
@partition_options
@click.option("--teacher", "teacher_path", type=click.Path(dir_okay=False), default=None,
              help="Start RUN_DIR from your own pretrained .keras or .h5 teacher.")
@click.option("--teacher-input", default=None, metavar="CONVENTION",
              help="Input convention of an imported --teacher: unit ([0, 1]), raw (0-255), "
                   "symmetric ([-1, 1]) or mean-std:M,S ((x/255 - M) / S; per channel "
                   "M1/M2/M3,S1/S2/S3; or mean-std:cifar10|imagenet|dataset). Default: try "
                   "each on validation images and keep the best (recorded in the manifest).")
@data_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Redo the partition (discards distilled students).")
@common_options
def partition(run_dir, students, method, rule, top_k, percentile, resolution, feature_layer,
              max_images, teacher_path, teacher_input, dataset, data_dir, val_fraction, subset, seed,
              force):
    """Split the teacher's last-layer filters into K disjoint groups, one per student.

    \b
    Examples:
      nonn-tflite partition runs/c10 --students 4
      nonn-tflite partition runs/mine --students 2 --teacher my_model.keras --dataset cifar10
      nonn-tflite partition runs/r --students 4 --teacher resnet.h5 --dataset cifar10 \\
          --teacher-input mean-std:cifar10 --feature-layer activation_18
    """
    import_tensorflow_quietly()
    from nonn_tflite.errors import UsageError
    from nonn_tflite.pipeline import import_teacher, run_partition
    from nonn_tflite.rundir import RunDir

    cfg = _partition_cfg(students, method, rule, top_k, percentile, resolution, feature_layer,
                         max_images, seed)
    if teacher_input and not teacher_path:
        raise UsageError("--teacher-input describes an imported teacher; pass --teacher FILE too")
    if teacher_path:
        import_teacher(run_dir, teacher_path, _data_cfg(dataset, data_dir, val_fraction, subset, seed),
                       force, teacher_input, feature_layer)
    run = RunDir.open(run_dir, need="teacher")
    with _status("building the filter activation network"):
        run_partition(run, cfg, force)
    print_summary(RunDir(run_dir))


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@budget_options
@distill_options
@train_options("", 40)
@shared_options
@click.option("--force", is_flag=True, help="Redo distillation of an existing run.")
@common_options
def distill(run_dir, flash_kb, ram_kb, boards, max_student_share, student_family, alpha, tau, beta,
            student_dropout, cache_teacher, views, epochs, seed, batch_size, lr, force):
    """Train the K students and the fusion head from the frozen teacher (KD + attention).

    \b
    Examples:
      nonn-tflite distill runs/c10 --flash-kb 64 --ram-kb 32
      nonn-tflite distill runs/c10 --board esp32,rp2040 --epochs 60
      nonn-tflite distill runs/c10 --views 8 --epochs 30
      nonn-tflite distill runs/c10 --student-family auto --flash-kb 64 --ram-kb 20
    """
    import_tensorflow_quietly()
    from nonn_tflite.pipeline import run_distill
    from nonn_tflite.rundir import RunDir

    run = RunDir.open(run_dir, need="partition")
    cfg = _distill_cfg(alpha, tau, beta, student_dropout, cache_teacher, flash_kb, ram_kb, boards,
                       max_student_share, epochs, batch_size, lr, seed, views, student_family)
    run_distill(run, cfg, force, is_quiet())
    print_summary(RunDir(run_dir))


@click.command()
@click.option("--students", "-k", type=int, default=2, show_default=True, help="Number of students (devices), K.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to create.")
@data_options
@teacher_options
@train_options("teacher-", 30)
@partition_options
@budget_options
@distill_options
@train_options("", 40)
@shared_options
@click.option("--no-convert", is_flag=True, help="Stop after distillation (skip int8 conversion).")
@click.option("--force", is_flag=True, help="Redo every stage of an existing run.")
@common_options
def run(students, out, dataset, data_dir, val_fraction, subset, arch, teacher_path, teacher_input,
        teacher_epochs,
        method, rule, top_k, percentile, resolution, feature_layer, max_images, flash_kb, ram_kb,
        boards, max_student_share, student_family, alpha, tau, beta, student_dropout, cache_teacher,
        views, epochs, seed, batch_size, lr, no_convert, force):
    """Whole pipeline: teacher -> partition -> distill -> int8 convert + report.

    \b
    Example (offline, embedded digits, a few minutes on 2 cores):
      nonn-tflite run --students 2 --out runs/digits-k2
    \b
    CIFAR-10 with 4 ESP32s:
      nonn-tflite run --dataset cifar10 --arch resnet-20 --students 4 --board esp32 --out runs/c10
    
    The airbench teacher, students on 8 cached augmented views:
      nonn-tflite run --dataset cifar10 --arch airbench --teacher-epochs 10 --views 8 \\
          --students 4 --out runs/c10-ab
    """
    import_tensorflow_quietly()
    from nonn_tflite.errors import RunDirError
    from nonn_tflite.pipeline import run_distill, run_partition, run_teacher
    from nonn_tflite.rundir import RunDir

    data = _data_cfg(dataset, data_dir, val_fraction, subset, seed)
    tcfg = _teacher_cfg(arch, teacher_path, teacher_epochs, batch_size, lr, seed, teacher_input)
    pcfg = _partition_cfg(students, method, rule, top_k, percentile, resolution, feature_layer,
                          max_images, seed)
    dcfg = _distill_cfg(alpha, tau, beta, student_dropout, cache_teacher, flash_kb, ram_kb, boards,
                        max_student_share, epochs, batch_size, lr, seed, views, student_family)
    if RunDir(out).manifest and not force:
        raise RunDirError(f"{out} already holds a run; pass --force to redo it or choose another --out")
    quiet = is_quiet()
    run_dir = run_teacher(out, data, tcfg, force, quiet, feature_layer)
    with _status("partitioning the teacher's filters"):
        run_partition(run_dir, pcfg, force)
    run_distill(RunDir(out), dcfg, force, quiet)
    if not no_convert:
        _convert_if_available(out, force)
    print_summary(RunDir(out))


def _convert_if_available(out: str, force: bool) -> None:
    """End ``run`` with int8 conversion and its report (the convert stage's own command)."""
    try:
        from nonn_tflite.commands.convert import convert_and_report
    except ImportError:
        return
    convert_and_report(out, force=force)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@common_options
def info(run_dir, as_json):
    """Show what a run directory holds: stages, accuracies, students.

    \b
    Example:
      nonn-tflite info runs/digits-k2
      nonn-tflite info runs/digits-k2 --json | jq .metrics
    """
    from nonn_tflite.rundir import RunDir

    run = RunDir.open(run_dir)
    if as_json:
        click.echo(json.dumps(run.manifest, indent=2))
        return
    print_summary(run)
    stale = run.verify_files()
    if stale:
        click.echo(f"warning: files changed since the manifest was written: {', '.join(stale)}", err=True)


__all__ = ["run", "teacher", "partition", "distill", "info"]
