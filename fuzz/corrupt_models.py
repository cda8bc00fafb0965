"""Corrupted-model fuzzing: damaged copies of a student .tflite through every model opener.

Each case is one deterministic corruption of a good student (truncation, bit flips in the
header, overwritten offsets and structure bytes, flipped weights, and targeted fields: shapes,
types, buffer and tensor indices, opcodes, quantisation, op options). It goes through

* ``inspect``: ``nonn-tflite inspect FILE --latency 2`` (verification, TFLM arena in a child,
  LiteRT latency in-process), as a user runs it;
* ``arena``: :func:`nonn_tflite.profile.measure_arena`, convert's measurement path, fed
  directly (its child must refuse what it cannot verify);
* ``device``: the device node's model loading, :class:`~nonn_tflite.live.models.StudentRunner`,
  and one inference on a real image;
* ``raw_tflm`` (only with ``--baseline``): the TFLM Python interpreter in-process on the
  unverified bytes, what the toolkit never does; it shows what the gate and the child prevent.

Outcomes: ``clean_error`` (a one-line NonnError), ``valid`` (loads and runs), ``crash`` (the
process died: a signal or an abort) and ``unhandled`` (another exception escaped, or the error
was not one line). Cases run in worker processes that announce every (case, target) before
running it, so a worker that dies names the case and its signal, and a fresh worker resumes
after it: a dead process is counted, never hidden.

    python -m fuzz.corrupt_models --count 1000 --jobs 2 --json fuzz/results/models-1000.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("inspect", "arena", "device")
BASELINE = "raw_tflm"
OUTCOMES = ("clean_error", "valid", "crash", "unhandled")
KINDS = ("truncate", "header", "offset", "bytes", "weights", "field", "field", "multi")
CASE_TIMEOUT_S = 120.0  # per case and worker; a hang counts as a crash

# ---- where the bytes that matter are ---------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One scalar of the flatbuffer a corruption can target."""

    pos: int
    fmt: str  # struct format, little-endian
    what: str


def _scalar(tab, slot_offset: int, fmt: str, what: str) -> list[Field]:
    o = tab.Offset(slot_offset)
    return [Field(tab.Pos + o, fmt, what)] if o else []


def _vector(tab, slot_offset: int, fmt: str, what: str) -> list[Field]:
    o = tab.Offset(slot_offset)
    if not o:
        return []
    start, n = tab.Vector(o), tab.VectorLen(o)
    size = struct.calcsize(fmt)
    return [Field(start + i * size, fmt, f"{what}[{i}]") for i in range(n)]


def _table_scalars(tab, what: str) -> list[Field]:
    """Every field of a table (op options), read through its vtable, as single bytes."""
    vt = tab.Pos - struct.unpack_from("<i", tab.Bytes, tab.Pos)[0]
    n = struct.unpack_from("<H", tab.Bytes, vt)[0]
    out = []
    for slot in range(4, n, 2):
        o = struct.unpack_from("<H", tab.Bytes, vt + slot)[0]
        if o:
            out.append(Field(tab.Pos + o, "<b", f"{what} slot {(slot - 4) // 2}"))
    return out


def locate(data: bytes) -> tuple[list[tuple[int, int]], list[Field]]:
    """(weight spans as (start, length), semantic fields) of a sound .tflite model."""
    import tflite
    from flatbuffers.table import Table

    m = tflite.Model.GetRootAs(bytearray(data), 0)
    spans, fields = [], _scalar(m._tab, 4, "<I", "schema version")
    for b in range(m.BuffersLength()):
        tab = m.Buffers(b)._tab
        o = tab.Offset(4)
        if o and tab.VectorLen(o):
            spans.append((tab.Vector(o), tab.VectorLen(o)))
    for i in range(m.OperatorCodesLength()):
        tab = m.OperatorCodes(i)._tab
        fields += _scalar(tab, 4, "<b", f"opcode {i} deprecated_builtin_code")
        fields += _scalar(tab, 10, "<i", f"opcode {i} builtin_code")
    g = m.Subgraphs(0)
    fields += _vector(g._tab, 6, "<i", "subgraph inputs") + _vector(g._tab, 8, "<i", "subgraph outputs")
    for i in range(g.TensorsLength()):
        t = g.Tensors(i)
        fields += _vector(t._tab, 4, "<i", f"tensor {i} shape")
        fields += _scalar(t._tab, 6, "<b", f"tensor {i} type")
        fields += _scalar(t._tab, 8, "<I", f"tensor {i} buffer")
        q = t.Quantization()
        if q is not None:
            fields += _vector(q._tab, 8, "<f", f"tensor {i} scale")
            fields += _vector(q._tab, 10, "<q", f"tensor {i} zero_point")
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        fields += _scalar(op._tab, 4, "<I", f"operator {i} opcode_index")
        fields += _vector(op._tab, 6, "<i", f"operator {i} inputs")
        fields += _vector(op._tab, 8, "<i", f"operator {i} outputs")
        opts = op.BuiltinOptions()
        if opts is not None and op.BuiltinOptionsType():
            fields += _table_scalars(Table(opts.Bytes, opts.Pos), f"operator {i} options")
    return spans, fields


# ---- corruptions -----------------------------------------------------------------------------

_INTS = (0, 1, -1, 2, 3, 7, 8, 16, 127, 128, 255, 256, 1 << 15, 1 << 16, 1 << 24, 1 << 30,
         (1 << 31) - 1, -(1 << 31))
_FLOATS = (0.0, -0.0, -1.0, 1e-45, 1e-30, 1e30, 3.4e38, float("inf"), float("-inf"), float("nan"))


def _interesting(rng: random.Random, fmt: str, old) -> int | float:
    if fmt == "<f":
        return rng.choice(_FLOATS + (old * 2, old / 1024))
    lo, hi = {"<b": (-128, 127), "<B": (0, 255), "<i": (-(1 << 31), (1 << 31) - 1),
              "<I": (0, (1 << 32) - 1), "<q": (-(1 << 63), (1 << 63) - 1)}[fmt]
    pick = rng.choice(_INTS + (old + 1, old - 1, old * 2, old + rng.randint(2, 64), -old))
    if not lo <= pick <= hi:
        pick = pick & ((1 << (8 * struct.calcsize(fmt))) - 1)
        if lo < 0 and pick > hi:
            pick -= 1 << (8 * struct.calcsize(fmt))
    return pick


class Corrupter:
    """Case ``i`` of seed ``seed`` is always the same bytes, so any case can be replayed."""

    def __init__(self, good: bytes, seed: int = 0) -> None:
        self.good = bytes(good)
        self.seed = seed
        self.spans, self.fields = locate(self.good)
        weights = {p for s, n in self.spans for p in range(s, s + n)}
        self.weights = sorted(weights)
        self.structure = [p for p in range(len(self.good)) if p not in weights]

    def case(self, i: int) -> tuple[str, bytes, str]:
        """(kind, corrupted bytes, what was done) of case ``i``."""
        rng = random.Random(f"{self.seed}:{i}")
        kind = KINDS[i % len(KINDS)]
        data = bytearray(self.good)
        if kind == "truncate":
            cut = rng.randrange(0, len(data))
            return kind, bytes(data[:cut]), f"truncated to {cut} of {len(data)} bytes"
        if kind == "multi":
            steps = [self._apply(rng, rng.choice(("offset", "bytes", "field", "field")), data)
                     for _ in range(rng.randint(2, 3))]
            return kind, bytes(data), "; ".join(steps)
        what = self._apply(rng, kind, data)
        return kind, bytes(data), what

    def _apply(self, rng: random.Random, kind: str, data: bytearray) -> str:
        if kind == "header":
            bits = [(rng.randrange(64), rng.randrange(8)) for _ in range(rng.randint(1, 3))]
            for pos, bit in bits:
                data[pos] ^= 1 << bit
            return "header bits " + ", ".join(f"{p}.{b}" for p, b in bits)
        if kind == "offset":
            pos = rng.choice(self.structure) & ~3
            old = struct.unpack_from("<I", data, pos)[0]
            new = rng.choice([0, 1, 4, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, rng.getrandbits(32),
                              old ^ (1 << rng.randrange(32)), old + 4, old - 4]) & 0xFFFFFFFF
            struct.pack_into("<I", data, pos, new)
            return f"word at {pos}: {old:#x} -> {new:#x}"
        if kind == "bytes":
            done = []
            for _ in range(rng.randint(1, 4)):
                pos = rng.choice(self.structure)
                data[pos] = rng.randrange(256)
                done.append(str(pos))
            return "structure bytes at " + ", ".join(done)
        if kind == "weights":
            n = rng.randint(1, 16)
            for _ in range(n):
                data[rng.choice(self.weights)] ^= 1 << rng.randrange(8)
            return f"{n} weight bit flips"
        f = rng.choice(self.fields)
        old = struct.unpack_from(f.fmt, data, f.pos)[0]
        new = _interesting(rng, f.fmt, old)
        struct.pack_into(f.fmt, data, f.pos, new)
        return f"{f.what}: {old} -> {new}"


# ---- running one case in a worker ------------------------------------------------------------

def _one_line_error(text: str) -> bool:
    lines = [s for s in text.strip().splitlines() if s.strip()]
    return (len(lines) == 1 and lines[0].startswith("Error: ")
            and "rerun with --debug" not in lines[0])


def run_inspect(path: Path) -> tuple[str, str]:
    """``nonn-tflite inspect`` as a user runs it: exit 0 valid; 1/2 with one error line clean."""
    from click.testing import CliRunner

    from nonn_tflite.cli import main

    res = CliRunner().invoke(main, ["inspect", str(path), "--no-tensors", "--latency", "2"])
    if res.exit_code == 0:
        return "valid", "exit 0"
    if res.exit_code in (1, 2) and _one_line_error(res.stderr):
        return "clean_error", res.stderr.strip()
    return "unhandled", f"exit {res.exit_code}: {res.stderr.strip()[-300:]!r} {res.exception!r}"


def run_arena(path: Path) -> tuple[str, str]:
    """convert's measurement path, fed the file directly."""
    from nonn_tflite.errors import NonnError
    from nonn_tflite.profile import measure_arena

    try:
        result = measure_arena(path, timeout=60.0)
    except NonnError as exc:
        return _classify_error(exc)
    except Exception as exc:  # noqa: BLE001 - the point is to see what escapes
        return "unhandled", f"{type(exc).__name__}: {exc}"
    return "valid", f"arena {result.arena_bytes} B"


def run_device(path: Path, deployment_dir: Path) -> tuple[str, str]:
    """The device node's model loading and one inference, as ``DeviceNode`` does at start."""
    import dataclasses

    import numpy as np

    from nonn_tflite.errors import NonnError
    from nonn_tflite.deployment import load_deployment
    from nonn_tflite.int8 import QParams
    from nonn_tflite.live.models import IMAGE_SCALE, IMAGE_ZERO_POINT, StudentRunner

    dep = load_deployment(deployment_dir)
    first = dataclasses.replace(dep.students[0], file=path.name)
    dep = dataclasses.replace(dep, directory=path.parent, students=(first, *dep.students[1:]))
    pixels = np.arange(dep.image_size, dtype=np.uint8).reshape(dep.input_shape)
    try:
        runner = StudentRunner(dep, first.id)
        vector = runner.features(pixels, QParams(IMAGE_SCALE, IMAGE_ZERO_POINT))
    except NonnError as exc:
        return _classify_error(exc)
    except Exception as exc:  # noqa: BLE001
        return "unhandled", f"{type(exc).__name__}: {str(exc)[:300]}"
    if vector.shape != (first.width,):
        return "unhandled", f"ran, but returned shape {vector.shape}, not ({first.width},)"
    return "valid", f"vector of {first.width}"


def run_raw_tflm(path: Path) -> tuple[str, str]:
    """The baseline: TFLM on unverified bytes in this process (a crash kills the worker)."""
    import numpy as np
    from tflite_micro import runtime

    try:
        it = runtime.Interpreter.from_bytes(path.read_bytes(), arena_size=256 << 10)
        details = it.get_input_details(0)
        it.set_input(np.zeros(details["shape"], details["dtype"]), 0)
        it.invoke()
    except Exception as exc:  # noqa: BLE001 - refusing is fine; dying is what we count
        return "clean_error", f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    return "valid", "ran"


RUNNERS = {"inspect": run_inspect, "arena": run_arena, "raw_tflm": run_raw_tflm}


def _classify_error(exc: Exception) -> tuple[str, str]:
    text = str(exc)
    return ("clean_error" if text and "\n" not in text else "unhandled"), text[:300]


# ---- what to run -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """The cases (corruptions of ``model``, or given ``files``) and the targets to run."""

    model: str
    deployment: str
    seed: int = 0
    files: tuple[str, ...] = ()
    targets: tuple[str, ...] = TARGETS

    def source(self) -> Corrupter | FileCases:
        if self.files:
            return FileCases(self.files)
        return Corrupter(Path(self.model).read_bytes(), self.seed)


class FileCases:
    """Given files as cases (regression files, or the tests' hand-made killers)."""

    def __init__(self, files: tuple[str, ...]) -> None:
        self.files = [Path(f) for f in files]

    def case(self, i: int) -> tuple[str, bytes, str]:
        return "file", self.files[i].read_bytes(), self.files[i].name


def _run_target(target: str, path: Path, plan: Plan) -> tuple[str, str]:
    if target == "device":
        return run_device(path, Path(plan.deployment))
    return RUNNERS[target](path)


def _worker(plan_file: Path, start: int, stop: int, skip: int) -> int:
    """Run cases [start, stop); one JSON line before and after every (case, target)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    plan = Plan(**json.loads(plan_file.read_text()))
    source = plan.source()
    tmp = Path(tempfile.mkdtemp(prefix="nonn-fuzz-"))
    for i in range(start, stop):
        kind, data, what = source.case(i)
        path = tmp / f"case-{i}.tflite"
        path.write_bytes(data)
        for target in plan.targets[skip if i == start else 0:]:
            _emit({"case": i, "target": target, "event": "start"})
            outcome, detail = _run_target(target, path, plan)
            _emit({"case": i, "target": target, "event": "done", "kind": kind, "what": what,
                   "outcome": outcome, "detail": detail})
        path.unlink()
    return 0


def _emit(record: dict) -> None:
    sys.__stdout__.write("@@" + json.dumps(record) + "\n")
    sys.__stdout__.flush()


# ---- supervising workers ---------------------------------------------------------------------

@dataclass
class Results:
    """Every (case, target) outcome, including the cases that killed a worker."""

    targets: tuple[str, ...] = TARGETS
    records: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: dict) -> None:
        with self.lock:
            self.records.append(record)

    def table(self) -> list[dict]:
        """One row per target, then the worst outcome of each case over the toolkit's targets."""
        per = {t: Counter() for t in self.targets}
        worst: dict[int, str] = {}
        rank = {o: n for n, o in enumerate(("valid", "clean_error", "unhandled", "crash"))}
        for r in self.records:
            per[r["target"]][r["outcome"]] += 1
            if r["target"] != BASELINE:
                old = worst.get(r["case"], "valid")
                worst[r["case"]] = max(old, r["outcome"], key=rank.__getitem__)
        rows = [{"target": t, **{o: per[t][o] for o in OUTCOMES}, "total": sum(per[t].values())}
                for t in self.targets]
        cases = Counter(worst.values())
        rows.append({"target": "any toolkit target (worst per case)",
                     **{o: cases[o] for o in OUTCOMES}, "total": len(worst)})
        return rows

    def by_kind(self) -> list[dict]:
        kinds: dict[str, Counter] = {}
        for r in self.records:
            if r["target"] != BASELINE:
                kinds.setdefault(r.get("kind", "?"), Counter())[r["outcome"]] += 1
        return [{"kind": k, **{o: c[o] for o in OUTCOMES}} for k, c in sorted(kinds.items())]

    def failures(self, include_baseline: bool = False) -> list[dict]:
        return [r for r in self.records if r["outcome"] in ("crash", "unhandled")
                and (include_baseline or r["target"] != BASELINE)]

    def outcome(self, case: int, target: str) -> dict | None:
        return next((r for r in self.records if r["case"] == case and r["target"] == target),
                    None)


def _describe_death(code: int | None) -> str:
    if code is None:
        return "hung (killed after the case timeout)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code} mid-case"


def _run_lane(plan: Plan, plan_file: Path, start: int, stop: int, results: Results,
              crash_dir: Path | None) -> None:
    """Run cases [start, stop) in workers until every (case, target) has an outcome."""
    case, skip = start, 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    while case < stop:
        cmd = [sys.executable, "-m", "fuzz.corrupt_models", "worker", str(plan_file),
               str(case), str(stop), str(skip)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env=env, cwd=ROOT)
        pending, code = _follow(proc, results, (stop - case) * CASE_TIMEOUT_S)
        if pending is None:
            return
        kind, data, what = plan.source().case(pending["case"])
        results.add({**pending, "event": "done", "kind": kind, "what": what, "outcome": "crash",
                     "detail": _describe_death(code)})
        if crash_dir is not None and pending["target"] != BASELINE:
            crash_dir.mkdir(parents=True, exist_ok=True)
            (crash_dir / f"seed{plan.seed}-case{pending['case']}.tflite").write_bytes(data)
        t = plan.targets.index(pending["target"]) + 1
        case, skip = (pending["case"], t) if t < len(plan.targets) else (pending["case"] + 1, 0)


def _follow(proc: subprocess.Popen, results: Results, timeout_s: float
            ) -> tuple[dict | None, int | None]:
    """Read a worker's records: (the (case, target) it died in, exit code), or (None, 0)."""
    hung = threading.Event()

    def kill() -> None:
        hung.set()
        proc.kill()

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    pending = None
    try:
        for line in proc.stdout:
            if not line.startswith("@@"):
                continue
            rec = json.loads(line[2:])
            if rec["event"] == "start":
                pending = rec
            else:
                results.add(rec)
                pending = None
    finally:
        timer.cancel()
        code = proc.wait()
    if pending is None and code == 0:
        return None, 0
    if pending is None:  # died between cases: nothing to attribute it to
        raise RuntimeError(f"fuzz worker {_describe_death(code)} outside any case")
    return pending, None if hung.is_set() else code


def run_cases(plan: Plan, count: int, jobs: int = 2, crash_dir: Path | None = None) -> Results:
    """Run cases 0..count-1 of ``plan`` in ``jobs`` lanes of worker processes."""
    results = Results(plan.targets)
    jobs = max(1, min(jobs, count))
    bounds = [count * j // jobs for j in range(jobs + 1)]
    with tempfile.TemporaryDirectory(prefix="nonn-fuzz-plan-") as tmp:
        plan_file = Path(tmp) / "plan.json"
        plan_file.write_text(json.dumps(asdict(plan)))
        lanes = [threading.Thread(target=_run_lane, args=(plan, plan_file, bounds[j],
                                                          bounds[j + 1], results, crash_dir))
                 for j in range(jobs)]
        for lane in lanes:
            lane.start()
        for lane in lanes:
            lane.join()
    results.records.sort(key=lambda r: (r["case"], plan.targets.index(r["target"])))
    return results


def format_table(results: Results) -> str:
    lines = [f"{'target':<38}" + "".join(f"{o:>12}" for o in OUTCOMES) + f"{'total':>8}"]
    for row in results.table():
        lines.append(f"{row['target']:<38}" + "".join(f"{row[o]:>12}" for o in OUTCOMES)
                     + f"{row['total']:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return _worker(Path(argv[1]), int(argv[2]), int(argv[3]), int(argv[4]))
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="Student .tflite to corrupt (default: build a synthetic "
                                    "2-student deployment and use its student 0).")
    ap.add_argument("--deployment", help="The model's run directory (deployment.json).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=int(os.environ.get("NONN_FUZZ_MODELS", "1000")))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--baseline", action="store_true",
                    help="Also run raw TFLM in-process on every case (what the gate prevents).")
    ap.add_argument("--json", type=Path, help="Write the table and every failure here.")
    ap.add_argument("--crash-dir", type=Path, help="Keep the files of crashing cases here.")
    args = ap.parse_args(argv)
    model, deployment = _inputs(args)
    targets = TARGETS + ((BASELINE,) if args.baseline else ())
    plan = Plan(str(model), str(deployment), args.seed, targets=targets)
    t0 = time.monotonic()
    results = run_cases(plan, args.count, args.jobs, args.crash_dir)
    seconds = time.monotonic() - t0
    print(format_table(results))
    for f in results.failures()[:20]:
        print(f"  case {f['case']} {f['target']} {f['outcome']}: {f['what']} -> {f['detail']}")
    print(f"{args.count} cases, seed {args.seed}, {seconds:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": "python -m fuzz.corrupt_models " + " ".join(argv),
            "model": str(model), "model_bytes": Path(model).stat().st_size,
            "count": args.count, "seed": args.seed, "seconds": round(seconds, 1),
            "table": results.table(), "by_kind": results.by_kind(),
            "failures": results.failures(), "baseline_failures":
                [r for r in results.failures(True) if r["target"] == BASELINE]}, indent=2) + "\n")
    return 1 if results.failures() else 0


def _inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """The model and deployment to corrupt; builds a synthetic deployment if none is given."""
    if args.model and args.deployment:
        return Path(args.model), Path(args.deployment)
    from nonn_tflite.synthetic import build_in_subprocess

    out = build_in_subprocess(Path(tempfile.mkdtemp(prefix="nonn-fuzz-run-")) / "k2")
    return out / "tflite" / "student_0.tflite", out


if __name__ == "__main__":
    sys.exit(main())
