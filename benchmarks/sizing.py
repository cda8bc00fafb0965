"""Student sizing: the 32-bit arena estimate against the arena TFLM really needs on Cortex-M.

For each student configuration: build it untrained, convert it to int8 (the convert code path,
random calibration images: activation sizes do not depend on the ranges), and compare

* ``estimate``: the sizer's minimal 32-bit arena (nonn_tflite/arena_model.py, from the Keras
  graph), and ``arena_32bit`` = estimate + the 32-bit margin: what the budget and convert's
  board fit check;
* ``m4_cmsis`` / ``m55_cmsis`` / ``m4_ref``: the smallest arena with which the real TFLM C++
  allocates and invokes the model on QEMU (Cortex-M4 mps2-an386 / Cortex-M55 mps3-an547;
  CMSIS-NN / reference kernels; firmware_bridge.qemu.min_arena). Configurations whose runtime
  is not built (``--configs``) are left out;
* ``host``: the minimal arena of the 64-bit host TFLM (Python interpreter, reference kernels),
  and ``old_check`` = host + 25 % (at least 2,048 B), what convert's fit used to check;
* ``old_sizer``: the previous sizer's figure (largest activation set + 1,024 B).

``bound_ok``: largest measured <= estimate <= 1.2 x largest measured (the boards run CMSIS-NN;
the reference kernels request no conv scratch, so they need less). Rows marked ``fit`` are the students the arena model's constants were fitted to; ``held-out``
ones are tests/test_sizing.py's grid. digits-k2's trained students are added when present.

    python benchmarks/sizing.py                  # all rows, M4 CMSIS-NN + M55 CMSIS-NN + M4 reference
    python benchmarks/sizing.py --quick          # held-out rows, M4 CMSIS-NN only
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from common import RESULTS, ROOT, header, markdown_table, print_table, timed, write_json

FIT = [(4, 0, 8, (8, 8, 1)), (8, 1, 16, (8, 8, 1)), (16, 2, 32, (16, 16, 3)), (12, 1, 16, (32, 32, 3)),
       (8, 0, 10, (28, 28, 1)), (32, 1, 24, (16, 16, 3)), (6, 2, 12, (8, 8, 1)), (24, 0, 16, (16, 16, 3)),
       (48, 1, 32, (8, 8, 1)), (4, 1, 8, (28, 28, 1)), (4, 2, 8, (16, 16, 3)), (8, 0, 16, (32, 32, 3)),
       (16, 1, 16, (28, 28, 1)), (24, 2, 16, (8, 8, 1)), (32, 0, 32, (8, 8, 1)), (48, 0, 24, (16, 16, 3))]
CONFIGS = {"m4_cmsis": ("cortex-m4", "cmsis-nn"), "m55_cmsis": ("cortex-m55", "cmsis-nn"),
           "m4_ref": ("cortex-m4", "reference")}


def _held_out() -> list:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_sizing import ARENA_GRID

    return ARENA_GRID


def _old_sizer(model) -> int:
    """The sizer before issue 14: the largest (inputs + output) of one op, + 1,024 B."""
    peak = 0
    for layer in model.layers:
        if type(layer).__name__ in ("InputLayer", "BatchNormalization", "ReLU"):
            continue
        ins = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        total = sum(int(np.prod(t.shape[1:])) for t in ins) + int(np.prod(layer.output.shape[1:]))
        peak = max(peak, total)
    return peak + 1024


def _measure(data: bytes, shape, configs) -> dict:
    from firmware_bridge.qemu import Config, min_arena, run_probe

    x = np.random.default_rng(1).integers(-128, 128, (1, int(np.prod(shape))), dtype=np.int8)
    out = {}
    for col in configs:
        config = Config(*CONFIGS[col])
        probe = run_probe(data, x, config)
        out[col] = min_arena(data, x, config, probe.arena_used_bytes)
    return out


def _row(label: str, split: str, data: bytes, shape, est_keras: int | None, old: int | None,
         configs, work: Path) -> dict:
    from nonn_tflite.arena import minimal_arena
    from nonn_tflite.arena_model import arena_32bit_min_of_tflite, arena_32bit_with_margin
    from nonn_tflite.profile import arena_with_margin

    est = arena_32bit_min_of_tflite(data)
    assert est_keras is None or est_keras == est, (label, est_keras, est)  # sizer == convert
    path = work / "m.tflite"
    path.write_bytes(data)
    host = minimal_arena(path).arena_bytes
    measured = _measure(data, shape, configs)
    worst = max(measured.values())
    return {"student": label, "input": "x".join(map(str, shape)), "split": split,
            "estimate": est, "arena_32bit": arena_32bit_with_margin(est), **measured,
            "estimate/measured": round(est / worst, 3), "host": host,
            "old_check": arena_with_margin(host), "old_sizer": old,
            "bound_ok": worst <= est <= 1.2 * worst}  # the largest configuration bounds it


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="held-out rows on Cortex-M4 CMSIS-NN only")
    args = ap.parse_args(argv)
    from nonn_tflite.architectures import StudentSpec, build_student, default_stages, deployable_student
    from nonn_tflite.quantize import convert_int8
    from nonn_tflite.sizing import estimate

    configs = ["m4_cmsis"] if args.quick else list(CONFIGS)
    grid = [("held-out", c) for c in _held_out()] + ([] if args.quick else [("fit", c) for c in FIT])
    rows = []
    with timed() as t, tempfile.TemporaryDirectory() as tmp:
        for split, (width, blocks, out, shape) in grid:
            spec = StudentSpec(width, blocks, out, default_stages(shape))
            model = build_student(spec, shape, 0, wd=0.0)
            calib = np.random.default_rng(0).random((8, *shape), dtype=np.float32)
            data = convert_int8(deployable_student(model), calib)
            rows.append(_row(spec.describe(), split, data, shape,
                             estimate(spec, shape).arena_32bit_min_bytes, _old_sizer(model),
                             configs, Path(tmp)))
            print(rows[-1], flush=True)
        run = ROOT / "models" / "digits-k2" / "tflite"
        if not args.quick and (run / "report.json").is_file():
            import json

            for s in json.loads((run / "report.json").read_text())["students"]:
                data = (run / s["file"]).read_bytes()
                rows.append(_row(f"digits-k2 {s['file']} (trained)", "trained", data,
                                 tuple(s["input"]["shape"][1:]), None, None, configs, Path(tmp)))
    cols = ["student", "input", "split", "estimate", *configs, "estimate/measured", "arena_32bit",
            "host", "old_check", "old_sizer", "bound_ok"]
    ratios = [r["estimate/measured"] for r in rows]
    notes = (f"estimate / largest measured minimal arena: {min(ratios):.3f} .. {max(ratios):.3f} "
             f"over {len(rows)} students; bound measured <= estimate <= 1.2 x measured holds on "
             f"{sum(r['bound_ok'] for r in rows)}/{len(rows)}. Bytes. Measured = smallest arena "
             "(16-byte steps) with which TFLM AllocateTensors + Invoke succeed on QEMU. M7 "
             "(STM32F746) runs the same CMSIS-NN DSP kernels as the M4; ESP-NN (ESP32 boards) "
             "cannot be emulated and is assumed to need no more scratch than the largest of "
             "CMSIS-NN's DSP and MVE buffers the estimate includes.")
    print_table("32-bit arena: estimate vs measured (bytes)", rows, cols)
    print(notes)
    name = "sizing-quick" if args.quick else "sizing"
    doc = {**header("sizing", "quick" if args.quick else "full"), "wall_seconds": t["seconds"],
           "configs": {c: CONFIGS[c] for c in configs}, "rows": rows, "notes": notes}
    toolchain = _toolchain()
    if toolchain:
        doc["toolchain"] = toolchain
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{name}.json", doc)
    md = [f"# sizing ({doc['profile']})", "", f"- command: `{doc['command']}`",
          f"- date: {doc['date']}, commit {doc['commit']}",
          f"- machine: {doc['machine']['cpu']} ({doc['machine']['cpu_count']} CPUs), {doc['machine']['platform']}",
          f"- toolchain: {toolchain}", f"- wall time: {t['seconds']:.0f} s", "",
          markdown_table(rows, cols), "", notes]
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    return 0 if all(r["bound_ok"] for r in rows) else 1


def _toolchain() -> dict | None:
    try:
        from firmware_bridge.cortex_m import _toolchain as tc

        return tc()
    except Exception:  # noqa: BLE001 (the table still stands without the versions)
        return None


if __name__ == "__main__":
    sys.exit(main())
