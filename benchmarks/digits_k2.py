"""Regenerate the reference deployment ``models/digits-k2`` and the README's "What you get" from
one run of the README's first command, so no figure there is typed by hand.

1. ``nonn-tflite run --students 2 --out <tmp>/digits-k2`` (the README's command; only the
   folder differs, and the run's name is the folder's name, ``digits-k2``, either way);
2. the finished run replaces ``models/digits-k2`` (copied beside it, then swapped in);
3. two live demos on it over the embedded broker, summaries in
   ``benchmarks/results/demo-digits-k2.json`` and ``demo-digits-k2-kill.json``; the files are
   then checked against the manifest's sha256 (a demo must not touch the deployment);
4. ``benchmarks/results/digits-k2-reference.json``: machine, versions, commit and the figures
   ``tests/test_default_run.py`` compares a fresh run against;
5. ``python benchmarks/readme_results.py`` rewrites both generated README sections.

With ``--other-machine``, step 2-4 are replaced: the run stays out of ``models/digits-k2`` and its
figures go to ``benchmarks/results/digits-k2-machine-<cpu>.json``. The README then shows what the
same command gave on that CPU too, and ``tests/test_default_run.py`` compares exactly there.

    python benchmarks/digits_k2.py                  # all of it (about 4-6 min on 2 cores)
    python benchmarks/digits_k2.py --no-train       # keep models/digits-k2: demos + README only
    python benchmarks/digits_k2.py --other-machine  # record this CPU's figures beside the reference
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import readme_results
from common import RESULTS, ROOT, header, machine
from readme_results import report_sizes

MODEL = ROOT / "models" / "digits-k2"
RUN_ARGS = ["run", "--students", "2"]  # the README's command, less --out
DEMO_ARGS = ["--frames", "360", "--rate", "50"]
KILL = "1@3s"


def _cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "nonn_tflite.cli", *args]
    print("$ nonn-tflite " + " ".join(args), flush=True)
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"error: `nonn-tflite {' '.join(args)}` failed with exit code {done.returncode}")


def _run_command(run_dir: Path) -> dict:
    """The README's command into ``run_dir``, timed."""
    t0 = time.perf_counter()
    _cli(*RUN_ARGS, "--out", str(run_dir))
    return {"run_seconds": round(time.perf_counter() - t0, 1)}


def train_into_models() -> dict:
    """One run of the README's command, swapped in as models/digits-k2."""
    with tempfile.TemporaryDirectory(prefix="digits-k2-") as tmp:
        run_dir = Path(tmp) / "digits-k2"
        timing = _run_command(run_dir)
        new, old = MODEL.with_name(".digits-k2.new"), MODEL.with_name(".digits-k2.old")
        for p in (new, old):
            shutil.rmtree(p, ignore_errors=True)
        shutil.copytree(run_dir, new)
    if MODEL.exists():
        MODEL.rename(old)
    new.rename(MODEL)
    shutil.rmtree(old, ignore_errors=True)
    return timing


def demo(kill: bool) -> dict:
    args = ["demo", "models/digits-k2", *DEMO_ARGS, *(["--kill-device", KILL] if kill else [])]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        _cli(*args, "--no-dashboard", "--summary", str(out))
        summary = json.loads(out.read_text())
    doc = header("demo", "digits-k2" + ("-kill" if kill else ""), ["nonn-tflite", *args])
    doc.update(summary)
    doc["command"] = "nonn-tflite " + " ".join(args)
    if kill:
        doc["kill_flag"] = f"--kill-device {KILL}"
    return doc


def reference_doc(extra: dict, run: Path = MODEL, profile: str = "reference") -> dict:
    """What a fresh run of the default command is compared against (tests/test_default_run.py)."""
    rep = json.loads((run / "tflite" / "report.json").read_text())
    man = json.loads((run / "manifest.json").read_text())
    part = json.loads((run / "partition.json").read_text())
    doc = header("digits-k2", profile, ["nonn-tflite", *RUN_ARGS, "--out", "runs/digits-k2"])
    doc.update(extra)
    doc.update({"metrics": man["metrics"], "system": rep["system"],
                "partition": {k: part.get(k) for k in ("sizes", "modularity", "percentile", "edges",
                                                       "warning")},
                "sizes": report_sizes(rep)})
    return doc


def record_other_machine() -> int:
    """The README's command on this CPU, recorded beside the reference, not replacing it."""
    from nonn_tflite.rundir import write_json

    slug = re.sub(r"[^a-z0-9]+", "-", machine()["cpu"].lower()).strip("-") or "unknown"
    with tempfile.TemporaryDirectory(prefix="digits-k2-") as tmp:
        run_dir = Path(tmp) / "digits-k2"
        doc = reference_doc(_run_command(run_dir), run_dir, profile=f"machine-{slug}")
    path = RESULTS / f"digits-k2-machine-{slug}.json"
    write_json(path, doc)
    print(f"wrote {path}")
    return readme_results.main()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-train", action="store_true", help="Keep models/digits-k2; redo demos + README.")
    ap.add_argument("--other-machine", action="store_true",
                    help="Record this CPU's figures beside the reference; models/digits-k2 stays.")
    args = ap.parse_args(argv)
    if args.other_machine:
        return record_other_machine()
    extra = {} if args.no_train else train_into_models()
    results = [demo(kill=False), demo(kill=True)]
    from nonn_tflite.rundir import RunDir, write_json

    bad = RunDir.open(MODEL, need="convert").verify_files()
    if bad:
        sys.exit(f"error: models/digits-k2 no longer matches its manifest after the demos: {bad}")
    for doc in results:
        write_json(RESULTS / f"demo-{doc['profile']}.json", doc)
    ref_path = RESULTS / "digits-k2-reference.json"
    if args.no_train and ref_path.exists():
        extra = {k: v for k, v in json.loads(ref_path.read_text()).items() if k == "run_seconds"}
    if not args.no_train or not ref_path.exists():
        write_json(ref_path, reference_doc(extra))
    return readme_results.main()


if __name__ == "__main__":
    sys.exit(main())
