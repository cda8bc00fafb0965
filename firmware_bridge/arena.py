"""Tensor-arena sizes: measured on the host with the TFLM Python interpreter, then padded.

Host figures come from a 64-bit build of TFLM's reference kernels; a 32-bit MCU has smaller
pointers but its optimised kernels (ESP-NN, CMSIS-NN) may ask for scratch buffers the
reference kernels do not. Hence a stated margin on top of the measurement.

Bisection runs in a child process: TFLM's Python wrapper raises RuntimeError for a too-small
arena, but for a few hundred bytes it segfaults instead, which must not take export down.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nonn_tflite.errors import ModelFileError

ALIGN = 16
MAX_ARENA = 256 << 20


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


def measure_arena(model: bytes, *, timeout: float = 120.0) -> int:
    """Smallest arena (multiple of 16 B) with which TFLM allocates and invokes ``model``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model)
        lo, hi = 0, None  # lo never fits; hi (once known) always fits
        while hi is None or hi - lo > ALIGN:
            results = _probe_worker(path, lo, hi, timeout)
            for size, fits in results:
                if fits:
                    hi = size if hi is None else min(hi, size)
                else:
                    lo = max(lo, size)
            if not results:  # the worker died on its first probe: treat that size as too small
                lo = _next_probe(lo, hi)
        return hi


def _next_probe(lo: int, hi: int | None) -> int:
    if hi is None:
        return max(4096, lo * 2)
    return align((lo + hi) // 2)


def _probe_worker(path: Path, lo: int, hi: int | None, timeout: float) -> list[tuple[int, bool]]:
    """Run bisection steps in a child; return every (size, fits) it reported before exiting."""
    cmd = [sys.executable, "-m", "firmware_bridge.arena", str(path), str(lo), str(hi or 0)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ModelFileError(f"measuring the tensor arena of {path.name} timed out") from exc
    results = []
    for line in proc.stdout.splitlines():
        size, verdict = line.split()
        results.append((int(size), verdict == "fits"))
    if proc.returncode not in (0, -11, 139) and not results:
        raise ModelFileError(f"TFLM could not load the model to measure its arena: "
                             f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    if results and results[-1][0] >= MAX_ARENA and not results[-1][1]:
        raise ModelFileError(f"model needs more than {MAX_ARENA:,} B of tensor arena")
    return results


def _fits(model: bytes, size: int) -> bool:
    import numpy as np
    from tflite_micro import runtime

    try:
        interpreter = runtime.Interpreter.from_bytes(model, arena_size=size)
        details = interpreter.get_input_details(0)
        interpreter.set_input(np.zeros(details["shape"], details["dtype"]), 0)
        interpreter.invoke()
    except RuntimeError:
        return False
    return True


def _worker(path: str, lo: int, hi: int) -> None:
    """Child side: bisect from (lo, hi], printing each verdict at once (a crash loses none)."""
    model = Path(path).read_bytes()
    best: int | None = hi or None
    while best is None or best - lo > ALIGN:
        size = _next_probe(lo, best)
        if size > MAX_ARENA:
            print(size, "fails", flush=True)
            return
        fits = _fits(model, size)
        print(size, "fits" if fits else "fails", flush=True)
        if fits:
            best = size
        else:
            lo = size


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
