"""The smallest tensor arena with which TFLite Micro allocates *and* invokes a model.

Found by bisection with TFLM's Python interpreter (a 64-bit host build of the reference
kernels; :mod:`nonn_tflite.profile` adds the margin a 32-bit target allocates).

TFLM's Python interpreter does not verify flatbuffers (a corrupt model can kill the process
with SIGFPE), and for some too-small arenas it segfaults instead of raising, even on sound
models (below ~464 B, and a few bytes under the minimum when a kernel's Prepare fails
half-way; seen on the fusion model). So every probe runs in a child process
(``python -m nonn_tflite.arena arena FILE LO HI``); a file that fails
:mod:`nonn_tflite.intake` verification never reaches a child.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nonn_tflite.errors import ModelFileError
from nonn_tflite.intake import verify_bytes, verify_file
from nonn_tflite.interpreters import first_line as _one_line
from nonn_tflite.interpreters import tflm as _tflm
from nonn_tflite.quantize import captured_output

MAX_CHILDREN = 64  # bisection restarts after crashes; far more than 2 * log2(ARENA_MAX)
ARENA_START = 64 << 10
ARENA_MAX = 256 << 20


@dataclass
class MinimalArena:
    arena_bytes: int  # minimal, 64-bit host
    recorded_bytes: int | None  # TFLM's RecordingMicroAllocator total at that size (reference)
    probes: int

    def as_dict(self) -> dict:
        return asdict(self)


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


def minimal_arena(model: bytes | str | Path, timeout: float = 300.0) -> MinimalArena:
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
        return MinimalArena(hi, recorded, probes)


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
    cmd = [sys.executable, "-m", "nonn_tflite.arena", "arena", str(path), str(lo), str(hi or 0)]
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


def _main(argv: list[str]) -> int:
    """Child-process entry: ``python -m nonn_tflite.arena arena FILE LO HI`` (see
    :func:`_child_bisect`)."""
    if len(argv) != 4 or argv[0] != "arena":
        print("usage: python -m nonn_tflite.arena arena FILE LO HI", file=sys.stderr)
        return 2
    try:
        _child_bisect(argv[1], int(argv[2]), int(argv[3]))
    except Exception as exc:  # reported by the parent as one line
        print(f"Error: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
