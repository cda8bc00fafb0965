"""Choose each student's size from its device budget.

* flash ~ int8 weights + int32 biases (BN folds into them) + per-channel quantisation
  parameters (float32 scale + int64 zero point per output channel, for the weights and for the
  bias) + flatbuffer overhead (slightly pessimistic; ``convert`` checks the real file);
* RAM: the figure ``convert`` checks against the board, ``arena_bytes_32bit``: the minimal
  32-bit TFLM arena estimated from the student's graph (:mod:`nonn_tflite.arena_model`: the
  greedy memory plan of its activations and CMSIS-NN scratch buffers, plus TFLM's persistent
  32-bit structs) plus the 32-bit margin (:func:`~nonn_tflite.arena_model.arena_32bit_with_margin`).
  The graph comes from the untrained Keras model here and from the .tflite in ``convert``; both
  give the same graph, so a student sized for a board never fails the fit only after training.
  tests/test_sizing.py checks measured <= estimate <= 1.2 x measured on QEMU (Cortex-M4,
  CMSIS-NN); benchmarks/sizing.py prints the table.

The candidates are the families asked for (``resnet``, ``mbv2`` or both: ``--student-family
auto``) at every width of :data:`WIDTHS` and every depth of :data:`FAMILY_BLOCKS`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from nonn_tflite.architectures import (STUDENT_FAMILIES, StudentSpec, build_student, default_stages,
                                       deployable_student)
from nonn_tflite.arena_model import arena_32bit_min, arena_32bit_with_margin, graph_from_keras
from nonn_tflite.boards import KB, DeviceBudget
from nonn_tflite.errors import BudgetError, UsageError

WIDTHS = (4, 6, 8, 12, 16, 24, 32, 48, 64)
BLOCKS = (0, 1, 2)
# blocks per stage tried for each family; an mbv2 stage has at least one block (0 builds 1)
FAMILY_BLOCKS = {"resnet": BLOCKS, "mbv2": (1, 2, 3)}
STUDENT_ARCHS = (*STUDENT_FAMILIES, "auto")  # DistillConfig.student_arch, --student-family
FLATBUFFER_BASE = 2048  # header, strings, subgraph tables
PER_OP_OVERHEAD = 400  # operator + tensor tables per op


@dataclass(frozen=True)
class SizeEstimate:
    spec: StudentSpec
    params: int
    flash_bytes: int
    ram_bytes: int  # arena_bytes_32bit: the 32-bit arena estimate + margin, as convert checks
    arena_32bit_min_bytes: int = 0  # the minimal 32-bit arena estimate, before the margin

    def fits(self, budget: DeviceBudget) -> bool:
        return self.flash_bytes <= budget.flash_bytes and self.ram_bytes <= budget.ram_bytes


@functools.lru_cache(maxsize=512)
def estimate(spec: StudentSpec, input_shape: tuple[int, int, int]) -> SizeEstimate:
    """Build the student once (no training) and estimate its int8 flash and 32-bit arena."""
    model = build_student(spec, input_shape, 0, wd=0.0)
    convs = [l for l in model.layers if type(l).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense")]
    weight_bytes = sum(_numel(l.kernel.shape) for l in convs)
    # per output channel: the int32 bias, and float32 scale + int64 zero point for the weights
    # and again for the bias (both are per-channel quantised)
    channel_bytes = sum(_out_channels(l) * (4 + 12 + 12) for l in convs)
    ops = len(convs) + sum(type(l).__name__ in ("Add", "GlobalAveragePooling2D") for l in model.layers)
    flash = weight_bytes + channel_bytes + FLATBUFFER_BASE + PER_OP_OVERHEAD * ops
    arena = arena_32bit_min(graph_from_keras(deployable_student(model)))
    return SizeEstimate(spec, int(model.count_params()), int(flash),
                        arena_32bit_with_margin(arena), arena)


def _out_channels(layer) -> int:
    """Channels a conv's weights are quantised along: a DepthwiseConv2D's kernel is (kh, kw, C,
    multiplier) and TFLite quantises it per output channel, C x multiplier (its last axis after
    conversion); other convs and Dense: the kernel's last axis."""
    shape = layer.kernel.shape
    if type(layer).__name__ == "DepthwiseConv2D":
        return int(shape[-2]) * int(shape[-1])
    return int(shape[-1])


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def student_families(arch: str) -> tuple[str, ...]:
    """The families the sizer may choose from for ``DistillConfig.student_arch``: one family by
    name, or ``auto`` for all of them (resnet first, so it wins ties)."""
    if arch == "auto":
        return STUDENT_FAMILIES
    if arch not in STUDENT_FAMILIES:
        raise UsageError(f"unknown student family {arch!r}; expected one of {', '.join(STUDENT_ARCHS)}")
    return (arch,)


def choose_student(budget: DeviceBudget, out_channels: int, input_shape, index: int = 0,
                   max_params: int | None = None,
                   families: tuple[str, ...] = ("resnet",)) -> SizeEstimate:
    """The student with the most parameters, over every shape of ``families``, whose estimate
    fits ``budget`` and, if given, has at most ``max_params`` parameters (the first candidate
    that fits is kept even if it has more).

    Parameters are the rule across families too: they are what the flash budget buys and they
    bound a student's capacity. An mbv2 student spends more flash per parameter (28 B of
    per-channel quantisation parameters per expanded channel, and three ops per block), so
    resnet wins at the budgets of the profiles (digits 64 KB / 32 KB, CIFAR-10 48/40 and 96/64);
    mbv2 wins where the arena is tight for full-resolution resnet maps (CIFAR-10, 64 KB / 20 KB).
    Ties go to the family listed first. The default (resnet only) is the sizer of before the
    mbv2 family, shape for shape."""
    unknown = [f for f in families if f not in FAMILY_BLOCKS]
    if unknown or not families:
        raise UsageError(f"student families {families!r}: expected one or more of "
                         f"{', '.join(FAMILY_BLOCKS)}")
    input_shape = tuple(int(d) for d in input_shape)
    stages = default_stages(input_shape)
    best: SizeEstimate | None = None
    smallest: SizeEstimate | None = None
    for family in families:
        for blocks in FAMILY_BLOCKS[family]:
            for width in WIDTHS:
                est = estimate(StudentSpec(width, blocks, out_channels, stages, family), input_shape)
                if smallest is None or est.flash_bytes + est.ram_bytes < smallest.flash_bytes + smallest.ram_bytes:
                    smallest = est
                if not est.fits(budget):
                    break  # wider only grows
                capped = max_params is not None and est.params > max_params and best is not None
                if not capped and (best is None or est.params > best.params):
                    best = est
    if best is None:
        assert smallest is not None
        raise BudgetError(
            f"no student fits device {index}'s budget of {budget.describe()}; the smallest "
            f"student for {out_channels} filters needs about {smallest.flash_bytes / KB:.1f} KB "
            f"flash and {smallest.ram_bytes / KB:.1f} KB RAM (try --flash-kb "
            f"{int(smallest.flash_bytes / KB) + 1} --ram-kb {int(smallest.ram_bytes / KB) + 1})")
    return best
