"""A synthetic K-student int8 deployment, built in seconds, for fuzzing, soak and outage tests.

Real parts only: K small CNN students (8x8x1 digits -> ``width`` pooled channels each) and a
Dense fusion, trained jointly for a few epochs on scikit-learn's digits (bundled, offline) and
converted with the toolkit's own :func:`nonn_tflite.quantize.convert_int8`, so every student is
full-integer int8 with fixed batch-1 shapes: TFLite-Micro clean, unlike a plain converter run.
The layout is a run directory as docs/ARCHITECTURE.md specifies.

    python -m fuzz.synthetic OUT --students 16 --width 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.data * 255.0 / 16.0).astype(np.uint8).reshape(-1, 8, 8, 1)
    return x, d.target.astype(np.int64)


def _models(students: int, width: int):
    import keras

    inp = keras.Input((8, 8, 1))
    nets = []
    for k in range(students):
        h = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
        h = keras.layers.Conv2D(width, 1, activation="relu")(h)
        nets.append(keras.Model(inp, keras.layers.GlobalAveragePooling2D()(h), name=f"student_{k}"))
    dense = keras.layers.Dense(10, name="fusion")
    vec = keras.Input((students * width,))
    fusion = keras.Model(vec, dense(vec), name="fusion")
    joint = keras.Model(inp, dense(keras.layers.Concatenate()([s(inp) for s in nets])))
    return nets, fusion, joint


def _io_qparams(data: bytes) -> tuple[dict, dict]:
    from nonn_tflite.tflite_model import parse_tflite

    m = parse_tflite(data)
    pairs = [t.quant.per_tensor for t in (m.input_tensors()[0], m.output_tensors()[0])]
    return tuple({"scale": float(s), "zero_point": int(z)} for s, z in pairs)


def build_deployment(out: Path, students: int = 2, width: int = 4, epochs: int = 3,
                     test_size: int = 300, name: str | None = None) -> Path:
    """Write ``out/tflite/{student_k,fusion}.tflite, deployment.json, test_sample.npz``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from nonn_tflite.quantize import convert_int8

    keras.utils.set_random_seed(0)
    x, y = _digits()
    xtr, ytr, xte, yte = x[:-test_size], y[:-test_size], x[-test_size:], y[-test_size:]
    nets, fusion, joint = _models(students, width)
    joint.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    joint.fit(xtr / 255.0, ytr, epochs=epochs, batch_size=32, verbose=0)
    tdir = Path(out) / "tflite"
    tdir.mkdir(parents=True, exist_ok=True)
    calib = (xtr[:128] / 255.0).astype(np.float32)
    entries = []
    for k, net in enumerate(nets):
        data = convert_int8(net, calib)
        (tdir / f"student_{k}.tflite").write_bytes(data)
        qin, qout = _io_qparams(data)
        entries.append({"id": k, "file": f"student_{k}.tflite", "width": width,
                        "filters": list(range(k * width, (k + 1) * width)), "input": qin,
                        "output": qout, "arena_bytes": 0, "board": "host"})
    vectors = np.concatenate([np.asarray(n(calib)) for n in nets], axis=1)
    fdata = convert_int8(fusion, vectors)
    (tdir / "fusion.tflite").write_bytes(fdata)
    fin, fout = _io_qparams(fdata)
    doc = {"schema": 1, "deployment": name or f"synthetic-k{students}", "num_classes": 10,
           "class_names": [str(i) for i in range(10)], "input_shape": [8, 8, 1],
           "students": entries,
           "fusion": {"file": "fusion.tflite", "input_width": students * width, "input": fin,
                      "output": fout},
           "fusion_input": "requantise"}
    (tdir / "deployment.json").write_text(json.dumps(doc, indent=2))
    np.savez(tdir / "test_sample.npz", x=xte, y=yte)
    return Path(out)


def build_in_subprocess(out: Path, students: int, width: int = 4, timeout_s: float = 600.0) -> Path:
    """The same, in a child process, so the caller never imports TensorFlow."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "fuzz.synthetic", str(out), "--students",
                           str(students), "--width", str(width)], check=False, capture_output=True, text=True,
                          timeout=timeout_s, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"building the synthetic deployment failed: {done.stderr[-2000:]}")
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--students", type=int, default=2)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args(argv)
    build_deployment(args.out, args.students, args.width, args.epochs)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
