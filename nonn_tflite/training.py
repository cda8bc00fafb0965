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


# -- the airbench recipe (Jordan 2024, arXiv 2404.00498; airbench94.py's hyperparameters) --------

AIRBENCH_LR_PER_1024 = 11.5 / (1 + 1 / (1 - 0.85))  # airbench's lr for a mean loss, batch 1024
AIRBENCH_MOMENTUM = 0.85
# airbench's 0.0153 (per 1024 images, coupled, inside the momentum buffer) as Keras's decoupled
# per-step decay: 0.0153 / (kilostep scale 1024 x 7.667 / 1024 x (1 - momentum) x lr)
AIRBENCH_WEIGHT_DECAY = 0.0153 / ((1 + 1 / (1 - 0.85)) * (1 - 0.85) * AIRBENCH_LR_PER_1024)
AIRBENCH_LABEL_SMOOTHING = 0.2
AIRBENCH_TRANSLATE = 2  # pixels of pad-and-crop
AIRBENCH_BIAS_SCALER = 64.0  # airbench's learning-rate multiplier for BatchNorm biases
LOOKAHEAD_EVERY = 5


def airbench_lr(batch_size: int) -> float:
    """Peak learning rate for a mean loss: airbench's, scaled linearly with the batch."""
    return AIRBENCH_LR_PER_1024 * batch_size / 1024


def airbench_optimizer(batch_size: int, epochs: int, steps_per_epoch: int,
                       bias_scaler: float = AIRBENCH_BIAS_SCALER):
    """Nesterov SGD (momentum 0.85) with airbench's triangular schedule: 0.2 -> 1 over the first
    20 % of steps, then linearly down to 0.07; BatchNorm biases (``.../beta``) learn
    ``bias_scaler`` times faster, and every variable decays by the same fraction per step, as in
    airbench.

    Changed: the bias learning rate is a gradient scale (one Keras schedule; with SGD and
    momentum the two are the same), and the decay is decoupled (Keras) rather than inside the
    momentum buffer (PyTorch), converted to the same steady-state shrink per step.
    """
    import keras

    class BiasScaledSGD(keras.optimizers.SGD):
        def apply(self, grads, trainable_variables=None):
            variables = (self._trainable_variables if trainable_variables is None
                         else list(trainable_variables))
            grads = [g * bias_scaler if g is not None and v.path.endswith("/beta") else g
                     for g, v in zip(grads, variables)]
            return super().apply(grads, trainable_variables)

    return BiasScaledSGD(triangular_schedule(airbench_lr(batch_size), epochs * steps_per_epoch),
                         momentum=AIRBENCH_MOMENTUM, nesterov=True,
                         weight_decay=AIRBENCH_WEIGHT_DECAY)


def _triangular_schedule_class():
    import keras
    from keras import ops

    class TriangularSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, peak: float, total_steps: int, warmup: float = 0.2,
                     start: float = 0.2, end: float = 0.07) -> None:
            self.peak, self.total = float(peak), max(1, int(total_steps))
            self.warmup, self.start, self.end = warmup, start, end

        def __call__(self, step):
            t = ops.cast(step, "float32")
            w = max(1.0, self.warmup * self.total)
            up = self.start + (1 - self.start) * t / w
            down = 1 + (self.end - 1) * (t - w) / max(1.0, self.total - w)
            return self.peak * ops.where(t < w, up, ops.maximum(down, self.end))

        def get_config(self) -> dict:
            return {"peak": self.peak, "total_steps": self.total, "warmup": self.warmup,
                    "start": self.start, "end": self.end}

    return TriangularSchedule


def triangular_schedule(peak: float, total_steps: int, **kw):
    """airbench's schedule as a Keras LearningRateSchedule (the class is built on first use,
    so importing this module does not import Keras)."""
    return _triangular_schedule_class()(peak, total_steps, **kw)


def smoothed_crossentropy(num_classes: int, smoothing: float = AIRBENCH_LABEL_SMOOTHING):
    """Cross-entropy on integer labels against (1 - s) one-hot + s / classes (label smoothing)."""
    import keras
    from keras import ops

    def loss(y_true, logits):
        y = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), num_classes)
        y = y * (1.0 - smoothing) + smoothing / num_classes
        return keras.losses.categorical_crossentropy(y, logits, from_logits=True)

    return loss


def lookahead(total_steps: int, every: int = LOOKAHEAD_EVERY, decay: float = 0.95):
    """airbench's lookahead: every ``every`` steps the weights (BatchNorm statistics included)
    become an EMA of themselves, w <- ema <- d * ema + (1 - d) * w, with d rising as
    decay**every * (step / total)**3, so it only bites late in the schedule."""
    import keras

    class Lookahead(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.step = 0
            self.ema: list | None = None

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.step += 1
            if self.step % every:
                return
            weights = self.model.get_weights()
            if self.ema is None:
                self.ema = [np.array(w, copy=True) for w in weights]
                return
            d = decay**every * min(1.0, self.step / max(1, total_steps)) ** 3
            self.ema = [d * e + (1 - d) * w if np.issubdtype(w.dtype, np.floating) else w
                        for e, w in zip(self.ema, weights)]
            self.model.set_weights(self.ema)

    return Lookahead()


def flip_tta_logits(model, x_float: np.ndarray, batch_size: int = 256,
                    translate: bool = False) -> np.ndarray:
    """Test-time augmentation: the mean of the logits of each image and its mirror image; with
    ``translate``, airbench's level 2: half that, half the same for the image shifted by one
    pixel up-left and down-right (reflect padding)."""
    def mirrored(x: np.ndarray) -> np.ndarray:
        a = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
        b = np.asarray(model.predict(x[:, :, ::-1], batch_size=batch_size, verbose=0))
        return (a + b) / 2

    logits = mirrored(x_float)
    if not translate:
        return logits
    h, w = x_float.shape[1:3]
    padded = np.pad(x_float, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = [mirrored(padded[:, :h, :w]), mirrored(padded[:, 2:h + 2, 2:w + 2])]
    return (logits + (shifted[0] + shifted[1]) / 2) / 2


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


PLAIN_EVERY_S = 60.0  # a log file gets a plain line at least this often during an epoch


def progress_bar(epochs: int, label: str, monitor: str):
    """A rich progress bar over epochs in a terminal; piped into a log file, plain lines: one per
    epoch and one per minute within long epochs (a CIFAR-10 epoch on 2 cores takes minutes)."""
    import logging
    import time

    import keras
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    log = logging.getLogger("nonn_tflite")

    class RichProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self.terminal = Console().is_terminal
            self.start = self.last = time.monotonic()
            if not self.terminal:
                return
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                     TimeRemainingColumn(), transient=False)
            self.progress.start()
            self.task = self.progress.add_task(label, total=epochs, info="")

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            now = time.monotonic()
            if self.terminal or now - self.last < PLAIN_EVERY_S:
                return
            self.last = now
            steps = (self.params or {}).get("steps") or "?"
            log.info("%s: epoch %d/%d, step %d/%s, loss %.3f, %.0f s", label, self.epoch + 1,
                     epochs, batch + 1, steps, float((logs or {}).get("loss", float("nan"))),
                     now - self.start)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            info = f"loss {logs.get('loss', float('nan')):.3f}  {monitor} {logs.get(monitor, float('nan')):.3f}"
            if self.terminal:
                self.progress.update(self.task, completed=epoch + 1, info=info)
                return
            self.last = time.monotonic()
            log.info("%s: epoch %d/%d, %s, %.0f s", label, epoch + 1, epochs, info, self.last - self.start)

        def on_train_end(self, logs: dict | None = None) -> None:
            if self.terminal:
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
