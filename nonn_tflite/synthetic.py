"""A synthetic K-student int8 deployment, built in seconds with no teacher and no partition.

Why: the live, firmware and hostile-input tests, the fuzzers and the soak/live benchmarks need a
real deployment (real int8 .tflite files laid out as a run directory, docs/ARCHITECTURE.md) at
any K, without the minutes a distillation takes. K small CNN students (8x8x1 digits -> ``width``
pooled channels each) and a Dense fusion are trained jointly for a few epochs on the bundled
digits and converted with the toolkit's own :func:`nonn_tflite.quantize.convert_int8`, so every
student is full-integer int8 with batch-1 shapes: TFLite-Micro clean. Accuracy is whatever a
few epochs give (61 % at K = 16 with the defaults); nothing here claims NoNN's figures.

    python -m nonn_tflite.synthetic OUT --students 16 --width 4
    python -m nonn_tflite.synthetic OUT --widths 5,6 --stem 16,24:2 --epochs 8 --name digits-k2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SyntheticSpec:
    """What to build. ``stem`` is the (filters, stride) of each 3x3 conv before a student's 1x1
    partition conv; ``widths`` sets K and each student's pooled vector length."""

    widths: tuple[int, ...] = (4, 4)
    stem: tuple[tuple[int, int], ...] = ((8, 2),)
    epochs: int = 3
    name: str = ""
    board: str = "host"
    calibration: int = 128
    seed: int = 0

    @property
    def deployment(self) -> str:
        return self.name or f"synthetic-k{len(self.widths)}"


# The tests' two-student deployment: unequal widths, so an off-by-one in the fusion's slicing shows.
DIGITS_K2 = SyntheticSpec(widths=(5, 6), stem=((16, 1), (24, 2)), epochs=8, name="digits-k2")


def _models(spec: SyntheticSpec):
    import keras

    inp = keras.Input((8, 8, 1))
    nets = []
    for k, width in enumerate(spec.widths):
        h = inp
        for filters, stride in spec.stem:
            h = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu")(h)
        h = keras.layers.Conv2D(width, 1, activation="relu")(h)  # the partition's width
        nets.append(keras.Model(inp, keras.layers.GlobalAveragePooling2D()(h), name=f"student_{k}"))
    dense = keras.layers.Dense(10, name="fusion")
    vec = keras.Input((sum(spec.widths),))
    fusion = keras.Model(vec, dense(vec), name="fusion")
    joint = keras.Model(inp, dense(keras.layers.Concatenate()([s(inp) for s in nets])))
    return nets, fusion, joint


def _io_qparams(data: bytes) -> tuple[dict, dict]:
    from nonn_tflite.tflite_model import parse_tflite

    m = parse_tflite(data)
    pairs = [t.quant.per_tensor for t in (m.input_tensors()[0], m.output_tensors()[0])]
    return tuple({"scale": float(s), "zero_point": int(z)} for s, z in pairs)


def build_deployment(out: Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write ``out/tflite/{student_k,fusion}.tflite, deployment.json, test_sample.npz``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from nonn_tflite.data import digits_arrays
    from nonn_tflite.quantize import convert_int8

    keras.utils.set_random_seed(spec.seed)
    (xtr, ytr), (xte, yte) = digits_arrays()
    nets, fusion, joint = _models(spec)
    joint.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    joint.fit(xtr / 255.0, ytr, epochs=spec.epochs, batch_size=32, verbose=0)
    tdir = Path(out) / "tflite"
    tdir.mkdir(parents=True, exist_ok=True)
    calib = (xtr[:spec.calibration] / 255.0).astype(np.float32)
    entries, start = [], 0
    for k, (net, width) in enumerate(zip(nets, spec.widths)):
        data = convert_int8(net, calib)
        (tdir / f"student_{k}.tflite").write_bytes(data)
        qin, qout = _io_qparams(data)
        entries.append({"id": k, "file": f"student_{k}.tflite", "width": width,
                        "filters": list(range(start, start + width)), "input": qin,
                        "output": qout, "arena_bytes": 0, "board": spec.board})
        start += width
    vectors = np.concatenate([np.asarray(n(calib)) for n in nets], axis=1)
    fdata = convert_int8(fusion, vectors)
    (tdir / "fusion.tflite").write_bytes(fdata)
    fin, fout = _io_qparams(fdata)
    doc = {"schema": 1, "deployment": spec.deployment, "num_classes": 10,
           "class_names": [str(i) for i in range(10)], "input_shape": [8, 8, 1],
           "students": entries,
           "fusion": {"file": "fusion.tflite", "input_width": sum(spec.widths), "input": fin,
                      "output": fout},
           "fusion_input": "requantise"}
    from nonn_tflite.deployment import with_model_hashes

    (tdir / "deployment.json").write_text(json.dumps(with_model_hashes(doc, tdir), indent=2))
    np.savez(tdir / "test_sample.npz", x=xte, y=yte)
    return Path(out)


def _cli_args(spec: SyntheticSpec) -> list[str]:
    return ["--widths", ",".join(map(str, spec.widths)),
            "--stem", ",".join(f"{f}:{s}" for f, s in spec.stem), "--epochs", str(spec.epochs),
            "--name", spec.deployment, "--board", spec.board, "--seed", str(spec.seed)]


def build_in_subprocess(out: Path, spec: SyntheticSpec = SyntheticSpec(),
                        timeout_s: float = 600.0) -> Path:
    """The same, in a child process, so the caller (pytest, a node, a fuzzer) never imports
    TensorFlow."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "nonn_tflite.synthetic", str(out), *_cli_args(spec)],
                          check=False, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
                          env=env)
    if done.returncode != 0:
        raise RuntimeError(f"building the synthetic deployment failed: {done.stderr[-2000:]}")
    return Path(out)


def k_students(students: int, width: int = 4) -> SyntheticSpec:
    """K equal students of ``width`` channels (fuzzing, soak and live benchmarks)."""
    return SyntheticSpec(widths=(width,) * students)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _stem(text: str) -> tuple[tuple[int, int], ...]:
    return tuple((int(f), int(s or 1)) for f, _, s in (p.partition(":") for p in text.split(",")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--students", type=int, default=2, help="K equal students (unless --widths)")
    ap.add_argument("--width", type=int, default=4, help="pooled channels per student")
    ap.add_argument("--widths", type=_ints, default=None, help="per-student widths, e.g. 5,6")
    ap.add_argument("--stem", type=_stem, default=SyntheticSpec.stem,
                    help="3x3 convs before the 1x1, FILTERS[:STRIDE],... (default 8:2)")
    ap.add_argument("--epochs", type=int, default=SyntheticSpec.epochs)
    ap.add_argument("--name", default="")
    ap.add_argument("--board", default="host")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    widths = args.widths or (args.width,) * args.students
    build_deployment(args.out, SyntheticSpec(widths=widths, stem=args.stem, epochs=args.epochs,
                                             name=args.name, board=args.board, seed=args.seed))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
