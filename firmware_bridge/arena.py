"""Tensor-arena sizes for the firmware: the host measurement plus a stated margin.

Host figures come from a 64-bit build of TFLM's reference kernels; a 32-bit MCU has smaller
pointers but its optimised kernels (ESP-NN, CMSIS-NN) may ask for scratch buffers the
reference kernels do not. Hence the margin, the same rule the conversion stage reports as
``arena_bytes_32bit`` (nonn_tflite.profile), so README figures and report.json agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALIGN = 16


@dataclass(frozen=True)
class ArenaMargin:
    """Margin added to the host measurement: ``fraction`` of it, at least ``minimum`` bytes."""

    fraction: float = 0.25
    minimum: int = 2048

    def apply(self, measured: int) -> int:
        extra = max(self.minimum, math.ceil(measured * self.fraction))
        return align(measured + extra)

    def describe(self) -> str:
        return f"+{self.fraction:.0%} (at least {self.minimum:,} B), rounded up to {ALIGN} B"


def align(n: int, to: int = ALIGN) -> int:
    return (int(n) + to - 1) // to * to


def measure_arena(model: bytes) -> int:
    """Smallest arena (multiple of 16 B) with which TFLM allocates and invokes ``model``.

    Delegates to the conversion stage's bisection, which probes in child processes because
    TFLM's Python wrapper segfaults, rather than raising, for some too-small arenas."""
    from nonn_tflite.profile import measure_arena as bisect

    return bisect(model).arena_bytes
