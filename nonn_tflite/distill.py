"""Distillation: K students and the fusion head trained jointly from the frozen teacher.

Loss (GUIDE §1 step 7, as the NoNN paper states it)::

    (1 - alpha) * CE(y, fused) + alpha * tau^2 * KL(teacher_tau || fused_tau)
        + beta * sum_k AT(student_k map, teacher map restricted to partition P_k)

AT compares L2-normalised spatial attention maps (mean over channels of squared activations,
Zagoruyko & Komodakis 2017), resized to the teacher's spatial size when they differ. Student
dropout (beyond the paper) zeroes each student's vector with probability p during training,
so the fusion head still works when a device is offline and its slice arrives zero-filled.

Only ``keras.ops`` is used, so the TensorFlow, JAX and torch backends all train this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nonn_tflite.config import DistillConfig
from nonn_tflite.data import Dataset, augmentation_layers, to_float
from nonn_tflite.errors import UsageError


# -- loss terms (pure functions of tensors, so they can be checked on known values) ----------

def kd_loss(teacher_logits, student_logits, tau: float):
    """tau^2 * KL(softmax(t / tau) || softmax(s / tau)), averaged over the batch."""
    from keras import ops

    log_p_t = ops.log_softmax(teacher_logits / tau, axis=-1)
    log_p_s = ops.log_softmax(student_logits / tau, axis=-1)
    kl = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return ops.mean(kl) * tau * tau


def attention_map(fmap, size: tuple[int, int] | None = None):
    """(N, H, W, C) -> (N, H*W): channel-mean of squared activations, resized, L2-normalised."""
    from keras import ops

    att = ops.mean(ops.square(fmap), axis=-1, keepdims=True)
    if size is not None and tuple(att.shape[1:3]) != tuple(size):
        att = ops.image.resize(att, size, interpolation="bilinear", antialias=True)
    flat = ops.reshape(att, (ops.shape(att)[0], -1))
    return flat / (ops.sqrt(ops.sum(ops.square(flat), axis=-1, keepdims=True)) + 1e-8)


def at_loss(student_map, teacher_map):
    """Squared distance of the two normalised attention maps (0 when they match), batch mean."""
    from keras import ops

    size = tuple(int(d) for d in teacher_map.shape[1:3])
    diff = attention_map(student_map, size) - attention_map(teacher_map)
    return ops.mean(ops.sum(ops.square(diff), axis=-1))


def at_loss_to_target(student_map, target, size: tuple[int, int]):
    """:func:`at_loss` against a precomputed normalised teacher attention map (N, H*W)."""
    from keras import ops

    diff = attention_map(student_map, size) - ops.cast(target, "float32")
    return ops.mean(ops.sum(ops.square(diff), axis=-1))


def dropout_mask(batch, p: float, seed_generator):
    """(batch, 1) float mask: 0 with probability p (student offline), else 1. No rescaling,
    because at run time a missing student arrives as zeros, not as a scaled-up vector."""
    import keras
    from keras import ops

    u = keras.random.uniform((batch, 1), seed=seed_generator)
    return ops.cast(u >= p, "float32")


# -- the ensemble ---------------------------------------------------------------------------

def build_ensemble(teacher_view, students: list, fusion, partitions: list[list[int]],
                   cfg: DistillConfig, aug_layers: list,
                   attention_targets: tuple[int, int] | None = None):
    """A ``keras.Model`` whose ``compute_loss`` is the NoNN loss; the teacher stays frozen.

    With ``attention_targets`` (the teacher map's (H, W)), cached inputs carry each student's
    normalised teacher attention map (N, K, H*W) instead of the whole teacher map (the
    augmented-view cache, :mod:`nonn_tflite.views`)."""
    import keras
    from keras import ops

    class NoNNEnsemble(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="nonn_ensemble")
            self.teacher = teacher_view.model
            self.teacher.trainable = False
            self.teacher_probs = teacher_view.outputs_probabilities
            self.students = students
            self.fusion = fusion
            self.partitions = [np.asarray(p, dtype="int32") for p in partitions]
            self.aug = aug_layers
            self.seed_gen = keras.random.SeedGenerator(cfg.train.seed)
            self.trackers = {n: keras.metrics.Mean(name=n) for n in ("ce", "kd", "at")}
            self.acc = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

        def build(self, input_shape) -> None:  # sub-models are built already
            self.built = True

        def call(self, inputs, training=False):
            if isinstance(inputs, (list, tuple)):  # (images, cached teacher map, logits)
                x, t_map, t_out = inputs
            else:
                x = inputs
                if training:
                    for layer in self.aug:
                        x = layer(x, training=True)
                t_map, t_out = self.teacher(x, training=False)
                if self.teacher_probs:
                    t_out = ops.log(ops.clip(t_out, 1e-7, 1.0))
            maps, vecs = [], []
            for s in self.students:
                m, v = s(x, training=training)
                if training and cfg.student_dropout > 0:
                    v = v * dropout_mask(ops.shape(v)[0], cfg.student_dropout, self.seed_gen)
                maps.append(m)
                vecs.append(v)
            logits = self.fusion(ops.concatenate(vecs, axis=-1), training=training)
            return {"logits": logits, "t_logits": ops.stop_gradient(t_out),
                    "t_map": ops.stop_gradient(t_map), "maps": maps}

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            if y_pred is None:
                y_pred = self(x, training=training)
            logits = y_pred["logits"]
            ce = ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
            kd = kd_loss(y_pred["t_logits"], logits, cfg.tau)
            at = 0.0
            for k, (m, part) in enumerate(zip(y_pred["maps"], self.partitions)):
                if attention_targets is not None:
                    at = at + at_loss_to_target(m, y_pred["t_map"][:, k], attention_targets)
                else:
                    at = at + at_loss(m, ops.take(y_pred["t_map"], part, axis=-1))
            reg = sum((ops.sum(l) for net in [*self.students, self.fusion] for l in net.losses), 0.0)
            for name, value in (("ce", ce), ("kd", kd), ("at", at)):
                self.trackers[name].update_state(value)
            return (1 - cfg.alpha) * ce + cfg.alpha * kd + cfg.beta * at + reg

        def compute_metrics(self, x, y, y_pred, sample_weight=None):
            self.acc.update_state(y, y_pred["logits"])
            return self.get_metrics_result()

    return NoNNEnsemble()


# -- training -------------------------------------------------------------------------------

@dataclass
class DistillResult:
    students: list  # deployable keras models: image -> vector
    fusion: object
    specs: list  # sizing.SizeEstimate per student
    history: object = None
    val_accuracy: float = 0.0
    extra: dict = field(default_factory=dict)


def distill(ds: Dataset, teacher_view, partitions: list[list[int]], cfg: DistillConfig,
            estimates: list, quiet: bool = False) -> DistillResult:
    """Build students sized by ``estimates``, train them with the fusion head, keep the best
    epoch on the validation split."""

    from nonn_tflite.architectures import build_fusion, build_student, deployable_student
    from nonn_tflite.training import callbacks, optimizer, set_seed

    if not 0.0 <= cfg.student_dropout < 1.0:
        raise UsageError(f"--student-dropout {cfg.student_dropout} must be in [0, 1)")
    if cfg.views < 1:
        raise UsageError(f"--views {cfg.views} must be at least 1")
    set_seed(cfg.train.seed)
    wd = cfg.train.weight_decay
    students = [build_student(e.spec, ds.input_shape, k, wd) for k, e in enumerate(estimates)]
    fusion = build_fusion(sum(len(p) for p in partitions), ds.num_classes, wd)
    cbs = callbacks(cfg.train, "val_accuracy", f"students x{len(students)}", quiet)
    steps = int(np.ceil(len(ds.y_train) / cfg.train.batch_size))
    if cfg.views > 1:
        model, history, extra = _fit_views(ds, teacher_view, students, fusion, partitions, cfg,
                                           steps, cbs)
    else:
        model = build_ensemble(teacher_view, students, fusion, partitions, cfg,
                               augmentation_layers(ds))
        model.compile(optimizer=optimizer(cfg.train, steps))
        x_train, x_val = _inputs(teacher_view, ds.x_train, cfg), _inputs(teacher_view, ds.x_val, cfg)
        history = model.fit(x_train, ds.y_train, batch_size=cfg.train.batch_size,
                            epochs=cfg.train.epochs, validation_data=(x_val, ds.y_val),
                            callbacks=cbs, verbose=0)
        extra = {}
    best = max(history.history.get("val_accuracy", [0.0]))
    return DistillResult([deployable_student(s) for s in students], fusion, estimates, history, best,
                         extra)


def _fit_views(ds: Dataset, teacher_view, students: list, fusion, partitions: list[list[int]],
               cfg: DistillConfig, steps: int, cbs: list):
    """Train on the augmented-view cache (``cfg.views`` > 1): the teacher runs once per view
    before training, never during it; validation sees un-augmented images."""
    import time

    from nonn_tflite.training import optimizer
    from nonn_tflite.views import build_view_cache, teacher_targets, view_batches, view_pad

    t0 = time.perf_counter()
    cache = build_view_cache(teacher_view, ds.x_train, partitions, cfg.views, view_pad(ds),
                             ds.flippable, cfg.train.seed)
    val_logits, val_att = teacher_targets(teacher_view, ds.x_val, partitions)
    extra = {"views": cfg.views, "view_cache_seconds": round(time.perf_counter() - t0, 2),
             "view_cache_bytes": cache.nbytes()}
    model = build_ensemble(teacher_view, students, fusion, partitions, cfg, [],
                           attention_targets=cache.map_size)
    model.compile(optimizer=optimizer(cfg.train, steps))
    history = model.fit(view_batches(ds.x_train, ds.y_train, cache, cfg.train.batch_size,
                                     cfg.train.seed),
                        epochs=cfg.train.epochs, callbacks=cbs, verbose=0,
                        validation_data=((to_float(ds.x_val), val_att.astype(np.float32),
                                          val_logits), ds.y_val),
                        validation_batch_size=cfg.train.batch_size)
    return model, history, extra


def _inputs(teacher_view, x_uint8: np.ndarray, cfg: DistillConfig):
    """Images, or with ``cache_teacher`` (images, teacher map, teacher logits) computed once."""
    if not cfg.cache_teacher:
        return to_float(x_uint8)
    from nonn_tflite.teacher import predict_features

    fmap, logits = predict_features(teacher_view, x_uint8)
    return (to_float(x_uint8), fmap.astype(np.float16), logits.astype(np.float32))


def student_vectors(students: list, x_uint8: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
    """Each student's pooled vector for every image (what each device would transmit)."""
    xf = to_float(x_uint8)
    return [np.asarray(s.predict(xf, batch_size=batch_size, verbose=0)) for s in students]


def nonn_logits(students: list, fusion, x_uint8: np.ndarray, missing: tuple[int, ...] = ()) -> np.ndarray:
    """Float NoNN system: concatenated vectors (``missing`` students zero-filled) -> fusion."""
    vecs = student_vectors(students, x_uint8)
    for k in missing:
        vecs[k] = np.zeros_like(vecs[k])
    return np.asarray(fusion.predict(np.concatenate(vecs, axis=-1), batch_size=1024, verbose=0))
