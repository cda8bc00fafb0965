"""What an int8 model costs on a device: one :class:`ModelProfile` per file, from the parts.

* ``flash_bytes``: the .tflite file itself (TFLM reads the flatbuffer in place from flash).
* ``arena_bytes``: the smallest arena with which TFLite Micro allocates *and* invokes the
  model (:mod:`nonn_tflite.arena`: bisection, TFLM in child processes). That is a 64-bit host
  build of the reference kernels.
* ``arena_bytes_32bit``: what a 32-bit device reserves and what the board fit checks, one rule
  (:func:`arena_32bit_with_margin`, +2 %) over the minimal 32-bit arena:
  ``arena_bytes_32bit_estimate`` from the graph (:mod:`nonn_tflite.arena_model`: TFLM's memory
  plan, CMSIS-NN scratch buffers, 32-bit structs; checked against QEMU in tests/test_sizing.py),
  replaced by the QEMU measurement once ``nonn-tflite measure`` ran
  (``arena_bytes_32bit_measured``). The student sizer computes the same estimate before
  training (:mod:`nonn_tflite.sizing`), so a student sized for a board fits it after training.
* latency (:mod:`nonn_tflite.latency`): LiteRT, 1 thread, reference kernels and XNNPACK.
* parity (:mod:`nonn_tflite.parity`): TFLM against LiteRT's reference kernels, and the gate.

The runtimes are opened in :mod:`nonn_tflite.interpreters`. The names those modules define
stay importable from here.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nonn_tflite.arena import ARENA_MAX, ARENA_START, MAX_CHILDREN, MinimalArena, minimal_arena  # noqa: F401
from nonn_tflite.interpreters import KERNELS, Int8Runner, first_line, litert, tflm  # noqa: F401
from nonn_tflite.latency import DEFAULT_LATENCY_RUNS, LatencyResult, measure_latency  # noqa: F401
from nonn_tflite.parity import ParityResult, first_mismatch, tflm_parity  # noqa: F401
from nonn_tflite.quantize import tflm_problems
from nonn_tflite.errors import ModelFileError
from nonn_tflite.int8 import QParams
from nonn_tflite.intake import verify_file
from nonn_tflite.tflite_model import TensorInfo, TFLiteModel
from nonn_tflite.wire import HEADER_SIZE

from nonn_tflite.arena_model import (ALIGN, ARENA_32BIT_ESTIMATE_RULE, ARENA_32BIT_MARGIN_FRACTION,  # noqa: F401
                                     ARENA_32BIT_MARGIN_MIN_BYTES, ARENA_32BIT_MARGIN_RULE, align,
                                     arena_32bit_min_of_tflite, arena_32bit_with_margin)

# The old host-derived rule: what exports still reserve for a model neither measured on QEMU nor
# exported for cortex-m (firmware_bridge/cortex_m.py device_arena).
ARENA_MARGIN_FRACTION = 0.25
ARENA_MARGIN_MIN_BYTES = 2048
ARENA_MARGIN_RULE = (f"+{ARENA_MARGIN_FRACTION:.0%} (at least {ARENA_MARGIN_MIN_BYTES:,} B), "
                     f"rounded up to {ALIGN} B")  # how arena_with_margin reads in docs
ARENA_NOTE = (f"arena_bytes measured on a 64-bit host with TFLM reference kernels; "
              f"arena_bytes_32bit = {ARENA_32BIT_ESTIMATE_RULE}")
WIRE_HEADER_BYTES = HEADER_SIZE  # the frame header, defined once in nonn_tflite/wire.py


def arena_with_margin(measured: int) -> int:
    """The arena a 32-bit target should allocate for a host-measured ``measured`` bytes."""
    return align(measured + max(ARENA_MARGIN_MIN_BYTES, math.ceil(measured * ARENA_MARGIN_FRACTION)))


# -- tensor arena ---------------------------------------------------------------------------------

@dataclass
class ArenaResult:
    arena_bytes: int  # minimal, 64-bit host
    arena_bytes_32bit: int  # what a 32-bit device reserves: the estimate + the 32-bit margin
    recorded_bytes: int | None  # TFLM's RecordingMicroAllocator total at that size (reference)
    probes: int
    arena_bytes_32bit_estimate: int | None = None  # minimal 32-bit arena, from the graph

    def as_dict(self) -> dict:
        return asdict(self)


def measure_arena(model: bytes | str | Path, timeout: float = 300.0) -> ArenaResult:
    """Minimal host TFLM arena (:func:`nonn_tflite.arena.minimal_arena`, TFLM in child
    processes), and the arena a 32-bit target reserves: :func:`arena_32bit_with_margin` of the
    minimal 32-bit arena estimated from the graph (:func:`arena_32bit_min_of_tflite`)."""
    m = minimal_arena(model, timeout)  # verifies the flatbuffer before any parsing here
    data = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    try:
        est = arena_32bit_min_of_tflite(data)
    except (IndexError, KeyError, ValueError, TypeError) as exc:  # TFLM ran it; our reader did not
        raise ModelFileError(f"cannot estimate the 32-bit arena from the model's graph "
                             f"({type(exc).__name__}: {first_line(str(exc))})") from None
    return ArenaResult(m.arena_bytes, arena_32bit_with_margin(est), m.recorded_bytes, m.probes, est)


# -- LiteRT (nonn_tflite/interpreters.py; names kept here for importers) --------------------

# -- parity: nonn_tflite/parity.py (names kept here for importers) ---------------------------


# -- quantisation helpers ----------------------------------------------------------------------

def qparams(t: TensorInfo) -> QParams:
    """(scale, zero_point) of a per-tensor quantised tensor."""
    pt = t.quant.per_tensor if t.quant else None
    if pt is None:
        raise ModelFileError(f"tensor '{t.name}' is not per-tensor int8 quantised")
    return QParams(*pt)


# -- one model ---------------------------------------------------------------------------------

@dataclass
class ModelProfile:
    """The measured facts of one .tflite file."""

    file: str
    flash_bytes: int
    arena_bytes: int
    arena_bytes_32bit: int
    params: int
    macs: int
    elementwise_ops: int
    ops: list[str]
    latency_ms: float | None  # median, reference kernels
    latency_p90_ms: float | None
    latency: dict = field(default_factory=dict)  # kernels -> LatencyResult dict
    parity: dict | None = None
    input: dict = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    arena_bytes_32bit_estimate: int | None = None  # minimal 32-bit arena from the graph
    arena_32bit_basis: str = ARENA_32BIT_ESTIMATE_RULE  # measure.py names the QEMU rule instead

    def as_dict(self) -> dict:
        return asdict(self)


def io_facts(t: TensorInfo) -> dict:
    pt = t.quant.per_tensor if t.quant else None
    return {"dtype": t.dtype, "shape": list(t.shape),
            "scale": pt[0] if pt else None, "zero_point": pt[1] if pt else None}


def profile_model(path: str | Path, *, latency_runs: int = DEFAULT_LATENCY_RUNS,
                  parity_inputs: np.ndarray | None = None) -> ModelProfile:
    """Flash, arena, params, MACs, latency (both kernel sets) and, given inputs, parity."""
    path = Path(path)
    buf, model = verify_file(path)
    arena = measure_arena(path)
    latency = {}
    if latency_runs > 0:
        for kernels in ("reference", "default"):
            latency[kernels] = asdict(measure_latency(buf, latency_runs, kernels))
    parity = None
    if parity_inputs is not None and len(parity_inputs):
        parity = asdict(tflm_parity(buf, parity_inputs, arena.arena_bytes))
    ref = latency.get("reference")
    return ModelProfile(
        file=path.name, flash_bytes=path.stat().st_size, arena_bytes=arena.arena_bytes,
        arena_bytes_32bit=arena.arena_bytes_32bit, params=model.params, macs=model.macs,
        elementwise_ops=model.elementwise_ops, ops=model.op_names,
        latency_ms=ref["median_ms"] if ref else None, latency_p90_ms=ref["p90_ms"] if ref else None,
        latency=latency, parity=parity, input=io_facts(model.input_tensors()[0]),
        output=io_facts(model.output_tensors()[0]),
        arena_bytes_32bit_estimate=arena.arena_bytes_32bit_estimate)


# -- inspect any file -------------------------------------------------------------------------

@dataclass
class Inspection:
    """Everything `nonn-tflite inspect` shows about one file."""

    path: str
    model: TFLiteModel
    problems: list[str]
    arena: ArenaResult | None
    arena_error: str | None
    latency: LatencyResult | None

    def as_dict(self) -> dict:
        m = self.model
        return {
            "file": self.path, "flash_bytes": m.size, "schema_version": m.schema_version,
            "description": m.description, "params": m.params, "macs": m.macs,
            "elementwise_ops": m.elementwise_ops, "ops": m.op_names,
            "operators": [{"index": o.index, "op": o.opcode, "inputs": o.inputs,
                           "outputs": o.outputs, "macs": o.macs, "options": o.options}
                          for o in m.operators],
            "tensors": [{"index": t.index, "name": t.name, "dtype": t.dtype,
                         "shape": list(t.shape), "constant_bytes": t.data_bytes,
                         "scale": t.quant.scale if t.quant else None,
                         "zero_point": t.quant.zero_point if t.quant else None}
                        for t in m.tensors],
            "inputs": [io_facts(t) for t in m.input_tensors()],
            "outputs": [io_facts(t) for t in m.output_tensors()],
            "tflm_compatible": not self.problems, "problems": self.problems,
            "arena": self.arena.as_dict() if self.arena else None, "arena_error": self.arena_error,
            "arena_note": ARENA_NOTE,
            "latency": asdict(self.latency) if self.latency else None,
        }


def inspect_file(path: str | Path, *, arena: bool = True, latency_runs: int = 0) -> Inspection:
    """Verify the flatbuffer, check TFLM compatibility, then measure (TFLM in a child)."""
    buf, model = verify_file(path)  # ModelFileError for anything that is not a sound .tflite
    problems = tflm_problems(model)
    result, error = None, None
    if arena:
        try:
            result = measure_arena(path)
        except ModelFileError as exc:
            error = str(exc)
    latency = None
    if latency_runs > 0:
        latency = measure_latency(buf, latency_runs, "reference")
    return Inspection(str(path), model, problems, result, error, latency)


if __name__ == "__main__":  # the child entry moved to nonn_tflite.arena; this one still works
    from nonn_tflite.arena import _main

    sys.exit(_main(sys.argv[1:]))
