"""How long the airbench teacher takes per CIFAR-10 epoch on this machine, measured on a few
training steps of the real recipe, and what a full airbench94 schedule (~10 epochs) projects to.

Trains ``--steps`` steps of :func:`nonn_tflite.teacher.train_airbench` (real CIFAR-10 images,
real augmentation, lookahead, validation) per batch size, times every step, and times the
forward pass alone (validation, TTA and the view cache cost forward passes only). The median
step after the first (graph tracing) gives seconds per epoch = median x ceil(45,000 / batch)
plus the validation pass. Load average before and after is recorded: on a shared machine the
figures are upper bounds for an idle one.

    python benchmarks/airbench_timing.py --data-dir /tmp/c10 --batch 512:12 --batch 128:24
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from common import header, print_table, timed, write_results

TRAIN_IMAGES = 45_000  # CIFAR-10 train minus the 10 % validation split
VAL_IMAGES = 5_000
EPOCHS_AIRBENCH94 = 10  # airbench94 trains 9.9 epochs


def time_training(data_dir: str, batch: int, steps: int) -> dict:
    import keras

    import nonn_tflite.teacher as teacher
    from nonn_tflite.config import DataConfig, TeacherConfig, TrainConfig
    from nonn_tflite.data import load_dataset

    ds = load_dataset(DataConfig("cifar10", data_dir, subset=batch * steps))
    stamps: list[float] = []

    class Stamp(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            stamps.append(time.perf_counter())

        def on_train_batch_end(self, b, logs=None):
            stamps.append(time.perf_counter())

    real = teacher.callbacks
    teacher.callbacks = lambda *a, **k: real(*a, **k) + [Stamp()]
    try:
        t0 = time.perf_counter()
        model, _ = teacher.train_airbench(ds, TeacherConfig("airbench", TrainConfig(epochs=1, batch_size=batch)),
                                          quiet=True)
        wall = time.perf_counter() - t0
    finally:
        teacher.callbacks = real
    d = np.diff(stamps)
    x = np.asarray(ds.x_train[: min(len(ds.x_train), 2048)], np.float32) / 255
    model.predict(x[:256], batch_size=256, verbose=0)  # trace once
    t1 = time.perf_counter()
    model.predict(x, batch_size=256, verbose=0)
    fwd = (time.perf_counter() - t1) / len(x)
    step = float(np.median(d[1:]))
    epoch = step * int(np.ceil(TRAIN_IMAGES / batch)) + fwd * VAL_IMAGES
    return {"batch": batch, "steps_timed": len(d), "first_step_s": round(float(d[0]), 2),
            "median_step_s": round(step, 3), "ms_per_train_image": round(1000 * step / batch, 2),
            "ms_per_forward_image": round(1000 * fwd, 2), "wall_s": round(wall, 1),
            "projected_epoch_s": round(epoch, 1),
            "projected_airbench94_min": round(EPOCHS_AIRBENCH94 * epoch / 60, 1),
            "projected_view_cache_s_per_view": round(fwd * TRAIN_IMAGES, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="folder with CIFAR-10 train.npz/test.npz")
    ap.add_argument("--batch", action="append", default=None, metavar="BATCH:STEPS",
                    help="batch size and steps to time (repeatable; default 512:12)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    doc = header("airbench-timing", "cpu")
    doc["load_average_before"] = [round(v, 2) for v in os.getloadavg()]
    doc["nice"] = os.nice(0)
    rows = []
    with timed() as t:
        for spec in args.batch or ["512:12"]:
            b, s = (int(v) for v in spec.split(":"))
            rows.append(time_training(args.data_dir, b, s))
            print(rows[-1], flush=True)
    doc["wall_seconds"] = t["seconds"]
    doc["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    doc["rows"] = rows
    notes = ("Median step of the real airbench recipe on real CIFAR-10 (the first step, graph "
             "tracing, excluded); epoch = median step x ceil(45000 / batch) + 5000 validation "
             f"forwards. Load average {doc['load_average_before']} before, "
             f"{doc['load_average_after']} after, on {os.cpu_count()} CPUs: other jobs shared "
             "the cores, so these are upper bounds for an idle machine.")
    doc["notes"] = notes
    cols = ["batch", "median_step_s", "ms_per_train_image", "ms_per_forward_image",
            "projected_epoch_s", "projected_airbench94_min"]
    print_table("airbench on CIFAR-10, this machine", rows, cols)
    write_results("airbench", "timing", doc, rows, cols, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
