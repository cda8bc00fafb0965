"""Training helpers shared by the teacher and the students: optimiser, model selection on the
validation split, augmentation only while training, and a progress bar.

Everything here uses ``keras.ops`` / Keras APIs only, so ``KERAS_BACKEND=jax`` trains too.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from nonn_tflite.config import TrainConfig


def optimizer(cfg: TrainConfig, steps_per_epoch: int):
    """SGD with Nesterov momentum, cosine-decayed learning rate and decoupled weight decay."""
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(
        cfg.lr, decay_steps=max(1, cfg.epochs * steps_per_epoch), alpha=0.01)
    return keras.optimizers.SGD(schedule, momentum=cfg.momentum, nesterov=True)


def augmented_classifier(model, aug_layers: list):
    """``model`` that sees augmented images only in training (validation sees them as-is)."""
    import keras

    class AugmentedClassifier(keras.Model):
        def __init__(self) -> None:
            super().__init__(name=f"{model.name}_train")
            self.inner = model
            self.aug = aug_layers

        def call(self, x, training=False):
            if training:
                for layer in self.aug:
                    x = layer(x, training=True)
            return self.inner(x, training=training)

    return AugmentedClassifier()


def callbacks(cfg: TrainConfig, monitor: str, label: str, quiet: bool = False) -> list:
    cbs: list = [keep_best(monitor, cfg.patience)]
    if not quiet:
        cbs.append(progress_bar(cfg.epochs, label, monitor))
    return cbs


def keep_best(monitor: str, patience: int = 0):
    """Restore the weights of the best validation epoch at the end (model selection on val)."""
    import keras

    class KeepBest(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best = -math.inf
            self.best_epoch = -1
            self.weights: list | None = None

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            value = (logs or {}).get(monitor)
            if value is None:
                return
            if value > self.best:
                self.best, self.best_epoch = float(value), epoch
                self.weights = [np.array(w) for w in self.model.get_weights()]
            elif patience and epoch - self.best_epoch >= patience:
                self.model.stop_training = True

        def on_train_end(self, logs: dict | None = None) -> None:
            if self.weights is not None:
                self.model.set_weights(self.weights)

    return KeepBest()


def progress_bar(epochs: int, label: str, monitor: str):
    """A rich progress bar over epochs showing loss and the validation metric."""
    import keras
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    class RichProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                     TimeRemainingColumn(), transient=False)
            self.progress.start()
            self.task = self.progress.add_task(label, total=epochs, info="")

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            info = f"loss {logs.get('loss', float('nan')):.3f}  {monitor} {logs.get(monitor, float('nan')):.3f}"
            self.progress.update(self.task, completed=epoch + 1, info=info)

        def on_train_end(self, logs: dict | None = None) -> None:
            self.progress.stop()

    return RichProgress()


def history_csv(history: Any, path: Path) -> None:
    """Per-epoch metrics as CSV (one row per epoch)."""
    hist = getattr(history, "history", history) or {}
    keys = sorted(hist)
    rows = zip(*(hist[k] for k in keys)) if keys else []
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", *keys])
        for i, row in enumerate(rows):
            w.writerow([i + 1, *(f"{float(v):.6g}" for v in row)])


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y).reshape(-1)))


def set_seed(seed: int) -> None:
    """Seed Python, numpy and the backend (Keras's shuffling, augmentation and dropout draw
    from these), and ask TensorFlow for deterministic kernels: with both, training on one
    machine gives the same weights every run. Floating-point reduction order still depends on
    the CPU's instruction set and core count (oneDNN picks kernels per CPU), so another CPU
    may land a few test images apart."""
    import keras

    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        enable = getattr(tf.config.experimental, "enable_op_determinism", None)
        if enable is not None:
            enable()
