"""What an int8 model costs on a device: flash, tensor arena, params, MACs, latency, parity.

* ``flash_bytes``: the .tflite file itself (TFLM reads the flatbuffer in place from flash).
* ``arena_bytes``: the smallest arena with which TFLite Micro allocates *and* invokes the
  model, found by bisection with the TFLM Python interpreter. That is a 64-bit host build of
  the reference kernels; ``arena_bytes_32bit`` adds the margin the firmware allocates
  (:data:`ARENA_MARGIN_FRACTION`, at least :data:`ARENA_MARGIN_MIN_BYTES`, 16-byte aligned; the
  firmware export allocates the same): 32-bit pointers shrink TFLM's bookkeeping, but
  optimised kernels (CMSIS-NN, ESP-NN) request scratch buffers the reference kernels do not.
* latency: LiteRT, 1 thread, median and p90 of single-image invokes, with the reference
  kernels (``BUILTIN_REF``; the closest a PC gets to TFLM's reference kernels) and with the
  default delegate (XNNPACK). Host figures rank models; they are not MCU timings.
* parity: TFLM against LiteRT with the reference resolver and 1 thread, bit for bit.

TFLM's Python interpreter does not verify flatbuffers (a corrupt model can kill the process
with SIGFPE), and for some too-small arenas it segfaults instead of raising, even on sound
models (below ~464 B, and a few bytes under the minimum when a kernel's Prepare fails
half-way; seen on the fusion model). So :func:`measure_arena` runs every TFLM probe in a child
process; only runs at a known-good arena size (parity) happen in this process.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nonn_tflite.errors import ModelFileError
from nonn_tflite.int8 import QParams
from nonn_tflite.intake import verify_bytes, verify_file
from nonn_tflite.interpreters import KERNELS, Int8Runner, first_line, litert, tflm  # noqa: F401
from nonn_tflite.parity import ParityResult, first_mismatch, tflm_parity  # noqa: F401
from nonn_tflite.quantize import captured_output, tflm_problems
from nonn_tflite.tflite_model import TensorInfo, TFLiteModel
from nonn_tflite.wire import HEADER_SIZE

ALIGN = 16
MAX_CHILDREN = 64  # bisection restarts after crashes; far more than 2 * log2(ARENA_MAX)
ARENA_START = 64 << 10
ARENA_MAX = 256 << 20
ARENA_MARGIN_FRACTION = 0.25
ARENA_MARGIN_MIN_BYTES = 2048
ARENA_MARGIN_RULE = (f"+{ARENA_MARGIN_FRACTION:.0%} (at least {ARENA_MARGIN_MIN_BYTES:,} B), "
                     f"rounded up to {ALIGN} B")  # how arena_with_margin reads in docs
ARENA_NOTE = (f"arena_bytes measured on a 64-bit host with TFLM reference kernels; "
              f"arena_bytes_32bit = {ARENA_MARGIN_RULE}, for 32-bit targets with optimised kernels")
WIRE_HEADER_BYTES = HEADER_SIZE  # the frame header, defined once in nonn_tflite/wire.py
DEFAULT_LATENCY_RUNS = 200


def align(n: int, to: int = ALIGN) -> int:
    return (int(n) + to - 1) // to * to


def arena_with_margin(measured: int) -> int:
    """The arena a 32-bit target should allocate for a host-measured ``measured`` bytes."""
    return align(measured + max(ARENA_MARGIN_MIN_BYTES, math.ceil(measured * ARENA_MARGIN_FRACTION)))


# -- tensor arena ---------------------------------------------------------------------------------

@dataclass
class ArenaResult:
    arena_bytes: int  # minimal, 64-bit host
    arena_bytes_32bit: int  # with the firmware margin
    recorded_bytes: int | None  # TFLM's RecordingMicroAllocator total at that size (reference)
    probes: int

    def as_dict(self) -> dict:
        return asdict(self)


_tflm = tflm  # the one TFLM opener (nonn_tflite/interpreters.py)


def _fits(buf: bytes, size: int) -> tuple[bool, str]:
    """(True, "") when TFLM allocates and invokes with ``size`` bytes (invoke: scratch buffers
    are checked too), else (False, TFLM's complaint)."""
    with captured_output((2,)) as out:
        try:
            it = _tflm(buf, size)
            details = it.get_input_details(0)
            it.set_input(np.zeros(details["shape"], details["dtype"]), 0)
            it.invoke()
            ok = True
        except RuntimeError:
            ok = False
    return ok, "" if ok else _tflm_complaint(out.text)


def _tflm_complaint(text: str) -> str:
    """The most telling line of TFLM's log (a missing op beats a short arena)."""
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    for line in lines:
        if "Didn't find op" in line or "not supported" in line.lower():
            return line
    return lines[-1] if lines else "TFLM failed to allocate tensors"


def _recorded_total(buf: bytes, size: int) -> int | None:
    """TFLM's RecordingMicroAllocator total (it prints to fd 2; we read it back)."""
    with captured_output((2,)) as out:
        try:
            _tflm(buf, size).print_allocations()
        except RuntimeError:
            return None
    for line in out.text.splitlines():
        if "Arena allocation total" in line:
            return int(line.split("total")[1].split()[0])
    return None


def measure_arena(model: bytes | str | Path, timeout: float = 300.0) -> ArenaResult:
    """Minimal TFLM arena by bisection, run in child processes.

    TFLM's Python wrapper segfaults instead of raising for some too-small arenas (below
    ~464 B, and just under the minimum when a kernel's Prepare fails half-way), so every probe
    runs in a child; a child that dies on a probe marks that size as too small and a new child
    carries on. A model that kills TFLM at every size up to :data:`ARENA_MAX` is reported as
    malformed (ModelFileError), as is one TFLM refuses outright (a missing op kernel).
    A file that fails :mod:`nonn_tflite.intake` verification never reaches a child.
    """
    if isinstance(model, (bytes, bytearray)):
        verify_bytes(bytes(model))
    else:
        verify_file(model)
    with _model_file(model) as path:
        lo, hi, probes, recorded = 0, None, 0, None
        for _ in range(MAX_CHILDREN):
            verdicts, crashed_at, done = _arena_child(path, lo, hi, timeout)
            probes += len(verdicts) + (crashed_at is not None)
            for size, fits in verdicts:
                if fits:
                    hi = size if hi is None else min(hi, size)
                else:
                    lo = max(lo, size)
            if crashed_at is not None:  # TFLM also crashes on some too-small arenas
                if hi is None and crashed_at >= ARENA_MAX:
                    raise ModelFileError(f"TFLite Micro crashed ({_signal_name(done)}) loading "
                                         f"{path.name} at every arena size up to {ARENA_MAX:,} B: "
                                         "the model is malformed or uses something TFLM cannot run")
                lo = max(lo, crashed_at)
            else:
                recorded = done.get("recorded")
                break
        else:
            raise ModelFileError(f"TFLM kept crashing while measuring the arena of {path.name}")
        return ArenaResult(hi, arena_with_margin(hi), recorded, probes)


@contextlib.contextmanager
def _model_file(model: bytes | str | Path):
    if isinstance(model, (bytes, bytearray)):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.tflite"
            path.write_bytes(model)
            yield path
    else:
        yield Path(model)


def _signal_name(code) -> str:
    try:
        return signal.Signals(-int(code)).name
    except (TypeError, ValueError):
        return f"exit {code}"


def _arena_child(path: Path, lo: int, hi: int | None, timeout: float):
    """Run bisection steps in a child: (verdicts, size it died on or None, final state).

    The final state is a dict from a finished child, or the return code of a dead one.
    """
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "nonn_tflite.profile", "arena", str(path), str(lo), str(hi or 0)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ModelFileError(f"measuring the TFLM arena of {path.name} took over {timeout:.0f} s; "
                             "gave up") from None
    verdicts, pending, done = [], None, None
    for line in proc.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "probe":
            pending = int(rest)
        elif word in ("fits", "fails"):
            verdicts.append((int(rest), word == "fits"))
            pending = None
        elif word == "done":
            done = json.loads(rest)
    if proc.returncode < 0:
        if pending is None:  # died outside a probe: not an arena-size question
            raise ModelFileError(f"TFLite Micro crashed ({_signal_name(proc.returncode)}) "
                                 f"reading {path.name}: the model is malformed")
        return verdicts, pending, proc.returncode
    if proc.returncode != 0 or done is None:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise ModelFileError(f"TFLM arena measurement of {path.name} failed: "
                             f"{last.removeprefix('Error: ')}")
    return verdicts, None, done


def _child_bisect(path: str, lo: int, hi: int) -> None:
    """Child side: print 'probe N' before and 'fits N'/'fails N' after each probe, so a crash
    loses nothing; finish with 'done {json}'."""
    buf = Path(path).read_bytes()
    verify_bytes(buf, Path(path).name)  # never hand TFLM an unverified flatbuffer
    best = hi or None
    while best is None or best - lo > 1:
        size = (lo + best) // 2 if best else min(ARENA_MAX, max(ARENA_START, lo * 4))
        print("probe", size, flush=True)
        ok, why = _fits(buf, size)
        print("fits" if ok else "fails", size, flush=True)
        if ok:
            best = size
        elif best is None and ("Didn't find op" in why or size >= ARENA_MAX):
            raise ModelFileError(f"TFLite Micro cannot run the model: {why}")
        else:
            lo = size
    print("done", json.dumps({"arena": best, "recorded": _recorded_total(buf, best)}), flush=True)


# -- LiteRT (nonn_tflite/interpreters.py; names kept here for importers) --------------------

_one_line = first_line


@dataclass
class LatencyResult:
    kernels: str
    median_ms: float
    p90_ms: float
    runs: int
    threads: int = 1


def measure_latency(buf: bytes, runs: int = DEFAULT_LATENCY_RUNS, kernels: str = "reference",
                    sample: np.ndarray | None = None, warmup: int = 5) -> LatencyResult:
    """Median and p90 of ``runs`` single-image invokes on 1 thread."""
    it = litert(buf, kernels)
    inp = it.get_input_details()[0]
    x = sample if sample is not None else np.random.default_rng(0).integers(
        -128, 128, inp["shape"]).astype(inp["dtype"])
    x = np.asarray(x, inp["dtype"]).reshape(inp["shape"])
    times = []
    for i in range(warmup + max(1, runs)):
        it.set_tensor(inp["index"], x)
        t0 = time.perf_counter_ns()
        try:  # a model LiteRT loads may still fail here: one line, not a traceback
            it.invoke()
        except RuntimeError as exc:
            raise ModelFileError(f"LiteRT cannot run the model: {_one_line(exc)}") from None
        if i >= warmup:
            times.append((time.perf_counter_ns() - t0) / 1e6)
    return LatencyResult(kernels, round(float(np.median(times)), 5),
                         round(float(np.percentile(times, 90)), 5), len(times))


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
        output=io_facts(model.output_tensors()[0]))


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


def _main(argv: list[str]) -> int:
    """Child-process entry: ``python -m nonn_tflite.profile arena FILE LO HI`` (see
    :func:`_child_bisect`)."""
    if len(argv) != 4 or argv[0] != "arena":
        print("usage: python -m nonn_tflite.profile arena FILE LO HI", file=sys.stderr)
        return 2
    try:
        _child_bisect(argv[1], int(argv[2]), int(argv[3]))
    except Exception as exc:  # reported by the parent as one line
        print(f"Error: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
