"""Train or import the teacher, and find the feature map whose filters NoNN partitions.

An imported teacher is fitted to the toolkit, not the other way round: its input convention
(raw 0-255, [0, 1], [-1, 1], mean/std) is found on validation images and baked into a flat
graph that takes the toolkit's [0, 1] images (:func:`import_teacher_model`), so every later
stage uses it exactly like a trained teacher; students keep the devices' convention.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nonn_tflite.config import TeacherConfig
from nonn_tflite.data import Dataset, augmentation_layers, to_float
from nonn_tflite.errors import DatasetError, ModelFileError, UsageError
from nonn_tflite.training import augmented_classifier, callbacks, optimizer, set_seed


def train_teacher(ds: Dataset, cfg: TeacherConfig, quiet: bool = False):
    """Train ``cfg.arch`` on ``ds``; the epoch with the best validation accuracy is kept."""
    import keras

    from nonn_tflite.architectures import build_teacher

    set_seed(cfg.train.seed)
    if cfg.arch == "airbench":
        return train_airbench(ds, cfg, quiet)
    model = build_teacher(cfg.arch, ds.input_shape, ds.num_classes, cfg.train.weight_decay)
    trainer = augmented_classifier(model, augmentation_layers(ds))
    steps = int(np.ceil(len(ds.y_train) / cfg.train.batch_size))
    trainer.compile(optimizer=optimizer(cfg.train, steps),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    history = trainer.fit(to_float(ds.x_train), ds.y_train, batch_size=cfg.train.batch_size,
                          epochs=cfg.train.epochs, validation_data=(to_float(ds.x_val), ds.y_val),
                          callbacks=callbacks(cfg.train, "val_accuracy", f"teacher {cfg.arch}", quiet),
                          verbose=0)
    return model, history


def train_airbench(ds: Dataset, cfg: TeacherConfig, quiet: bool = False):
    """airbench's recipe (see :mod:`nonn_tflite.training`): label smoothing 0.2, Nesterov SGD
    with a triangular schedule scaled to ``cfg.train.batch_size`` and 64x for BatchNorm biases,
    lookahead, flips (photos) and 2-pixel translations; ``cfg.train`` gives epochs, batch size
    and seed (its lr, momentum and weight decay are airbench's, logged, not the CLI's). Model
    selection on validation accuracy as for every teacher. Its metrics and the int8 graph are single-view; the CIFAR-10
    benchmark reports flip TTA (:func:`nonn_tflite.training.flip_tta_logits`) beside them."""
    import logging

    import keras

    from nonn_tflite.architectures import build_teacher
    from nonn_tflite.training import (AIRBENCH_BIAS_SCALER, AIRBENCH_TRANSLATE, airbench_lr,
                                      airbench_optimizer, lookahead, smoothed_crossentropy)

    model = build_teacher("airbench", ds.input_shape, ds.num_classes, x_train=ds.x_train)
    trainer = augmented_classifier(model, augmentation_layers(ds, pad=AIRBENCH_TRANSLATE))
    bs = cfg.train.batch_size
    steps = int(np.ceil(len(ds.y_train) / bs))
    logging.getLogger("nonn_tflite").info(
        "airbench recipe: batch %d, peak lr %.4f (airbench's, scaled to the batch), momentum "
        "0.85, BatchNorm biases x%g, label smoothing 0.2, lookahead; --lr is not used", bs,
        airbench_lr(bs), AIRBENCH_BIAS_SCALER)
    trainer.compile(optimizer=airbench_optimizer(bs, cfg.train.epochs, steps),
                    loss=smoothed_crossentropy(ds.num_classes),
                    metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    cbs = [lookahead(cfg.train.epochs * steps)]
    cbs += callbacks(cfg.train, "val_accuracy", "teacher airbench", quiet)
    history = trainer.fit(to_float(ds.x_train), ds.y_train, batch_size=bs, epochs=cfg.train.epochs,
                          validation_data=(to_float(ds.x_val), ds.y_val), callbacks=cbs, verbose=0)
    return model, history


def load_keras_model(path: str | Path, what: str = "teacher"):
    """Load a ``.keras`` (or legacy ``.h5``) model safely, with one clear error per failure."""
    import keras

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{what} model {path} not found; expected a Keras .keras file")
    if path.suffix not in (".keras", ".h5"):
        raise ModelFileError(f"{what} model {path} is not a Keras model file; expected a .keras "
                             "file saved by model.save() (Keras 3) or a legacy .h5")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ModelFileError(f"{what} model {path} is corrupt or not a Keras archive "
                             "(a .keras file is a zip with config.json and weights)")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{what} model {path} could not be loaded: {first}") from exc


def check_input_shape(model, ds: Dataset) -> None:
    """The teacher takes the dataset's images (a UsageError naming both shapes otherwise)."""
    want = tuple(model.input_shape[1:])
    if len(want) != 3 or any(w is not None and w != d for w, d in zip(want, ds.input_shape)):
        raise DatasetError(f"the teacher takes inputs of shape {want} but dataset {ds.name} has "
                           f"images of shape {ds.input_shape}; pass the --dataset it was trained "
                           "on (or a teacher for these images)")


def check_num_classes(model, ds: Dataset) -> None:
    """The teacher's head has one output per class of the dataset."""
    out = tuple(model.outputs[0].shape)
    classes = out[-1] if len(out) == 2 else None
    if classes != ds.num_classes:
        what = f"{classes} classes" if classes is not None else f"shape {out[1:]}"
        raise DatasetError(f"the teacher outputs {what} but dataset {ds.name} has "
                           f"{ds.num_classes}; pass the --dataset it was trained on (or a teacher "
                           f"whose last layer has {ds.num_classes} units)")


# -- input convention ------------------------------------------------------------------------

@dataclass(frozen=True)
class InputConvention:
    """How a teacher wants its pixels, as ``teacher_input = x01 * scale + offset`` where ``x01``
    is the toolkit's ``uint8 / 255`` (the students' and the devices' convention)."""

    name: str
    scale: tuple[float, ...] = (1.0,)
    offset: tuple[float, ...] = (0.0,)

    def apply(self, x01: np.ndarray) -> np.ndarray:
        return (x01 * np.asarray(self.scale, np.float32)
                + np.asarray(self.offset, np.float32)).astype(np.float32)


TEACHER_INPUT_HELP = ("unit: x/255 in [0, 1] (the toolkit's own); raw: 0-255 pixels; symmetric: "
                      "[-1, 1]; mean-std:M,S: (x/255 - M) / S, per channel as M1/M2/M3,S1/S2/S3, "
                      "or mean-std:cifar10, mean-std:imagenet, mean-std:dataset")
# common per-channel statistics, in [0, 1] units
KNOWN_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def mean_std(name: str, mean, std) -> InputConvention:
    mean, std = tuple(float(m) for m in mean), tuple(float(v) for v in std)
    if len(mean) != len(std) or any(v <= 0 for v in std):
        raise UsageError(f"--teacher-input {name}: needs as many means as stds, stds > 0")
    return InputConvention(name, tuple(1.0 / v for v in std), tuple(-m / v for m, v in zip(mean, std)))


def dataset_stats(ds: Dataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the training images, in [0, 1] units."""
    x = to_float(ds.x_train[:5000]).reshape(-1, ds.input_shape[-1])
    return tuple(x.mean(0).tolist()), tuple(np.maximum(x.std(0), 1e-3).tolist())


def parse_teacher_input(text: str, ds: Dataset | None = None) -> InputConvention:
    """``--teacher-input`` as an :class:`InputConvention` (UsageError on anything else)."""
    text = text.strip()
    fixed = {"unit": InputConvention("unit"), "raw": InputConvention("raw", (255.0,)),
             "symmetric": InputConvention("symmetric", (2.0,), (-1.0,))}
    if text in fixed:
        return fixed[text]
    kind, _, arg = text.partition(":")
    if kind == "mean-std" and arg in KNOWN_STATS:
        return mean_std(text, *KNOWN_STATS[arg])
    if kind == "mean-std" and arg == "dataset" and ds is not None:
        return mean_std(text, *dataset_stats(ds))
    try:
        if kind != "mean-std":
            raise ValueError(kind)
        m, s = arg.split(",")
        return mean_std(text, [float(v) for v in m.split("/")], [float(v) for v in s.split("/")])
    except ValueError:
        raise UsageError(f"--teacher-input {text!r} is not understood; expected {TEACHER_INPUT_HELP}"
                         ) from None


def candidate_inputs(ds: Dataset) -> list[InputConvention]:
    """The conventions tried when ``--teacher-input`` is not given, in order of preference."""
    names = ["unit", "raw", "symmetric"]
    if ds.input_shape[-1] == 3:
        names += ["mean-std:cifar10", "mean-std:imagenet"]
    return [parse_teacher_input(n, ds) for n in names + ["mean-std:dataset"]]


def _channel_check(conv: InputConvention, ds: Dataset) -> None:
    if len(conv.scale) not in (1, ds.input_shape[-1]):
        raise UsageError(f"--teacher-input {conv.name} has {len(conv.scale)} channel values but "
                         f"dataset {ds.name} images have {ds.input_shape[-1]} channels")


def score_inputs(model, ds: Dataset, candidates: list[InputConvention],
                 images: int = 1000) -> dict[str, dict[str, float]]:
    """Validation accuracy and cross-entropy of ``model`` (taking the user's own inputs) under
    each convention, on a slice of the validation split."""
    x01, y = to_float(ds.x_val[:images]), ds.y_val[:images]
    probs = outputs_probabilities(model)
    scores = {}
    for conv in candidates:
        _channel_check(conv, ds)
        out = np.asarray(model.predict(conv.apply(x01), batch_size=256, verbose=0), np.float64)
        logp = np.log(np.clip(out, 1e-7, 1.0)) if probs else out - _logsumexp(out)
        scores[conv.name] = {"accuracy": float(np.mean(np.argmax(out, 1) == y)),
                             "cross_entropy": float(-np.mean(logp[np.arange(len(y)), y]))}
    return scores


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    return top + np.log(np.exp(z - top).sum(axis=1, keepdims=True))


def choose_input(model, ds: Dataset, requested: str | None, source: str = "teacher",
                 images: int = 1000) -> tuple[InputConvention, dict[str, dict[str, float]]]:
    """The convention under which the teacher fits validation images best (or the one asked
    for); a UsageError when even the best accuracy is near chance (<= 1.5x).

    "Best" is the lowest cross-entropy among those above chance: accuracy alone cannot tell
    [0, 1] from 0-255 for a ReLU network without normalisation (its argmax barely changes
    when the input is scaled), while its logits then grow 255-fold and its loss explodes.
    """
    candidates = [parse_teacher_input(requested, ds)] if requested else candidate_inputs(ds)
    scores = score_inputs(model, ds, candidates, images)
    chance = 1.0 / ds.num_classes
    fitting = [c for c in candidates if scores[c.name]["accuracy"] > 1.5 * chance]
    if not fitting:
        tried = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in scores.items())
        hint = ("drop --teacher-input to try every convention, or pass the one it was trained with"
                if requested else "pass the --dataset it was trained on, or --teacher-input "
                "mean-std:M,S with the normalisation it was trained with")
        under = f"--teacher-input {requested}" if requested else "every input convention tried"
        raise UsageError(f"{source} scores near chance on {min(images, len(ds.y_val))} validation "
                         f"images of {ds.name} under {under} (chance "
                         f"{chance:.3f}; accuracy {tried}): it does not fit this data; {hint}")
    return min(fitting, key=lambda c: scores[c.name]["cross_entropy"]), scores


def outputs_probabilities(model) -> bool:
    """Whether the model ends in a softmax (its outputs are probabilities, not logits)."""
    last = model.layers[-1]
    while _is_graph_model(last):
        last = last.layers[-1]
    act = getattr(getattr(last, "activation", None), "__name__", "")
    return act == "softmax" or type(last).__name__ == "Softmax"


# -- nested models and the imported graph --------------------------------------------------------

def _is_graph_model(layer) -> bool:
    return type(layer).__name__ in ("Sequential", "Functional")


def _inline(model, x, names: list[str]):
    """Apply ``model``'s layers to ``x``, descending into nested Sequential/Functional models,
    so every inner layer's output becomes a tensor of the outer graph (weights shared)."""
    def call(layer, *args, **kwargs):
        if _is_graph_model(layer):
            return _inline(layer, args[0], names)
        names.append(layer.name)
        return layer(*args, **kwargs)

    if type(model).__name__ == "Sequential":
        for layer in model.layers:
            x = call(layer, x)
        return x
    if len(model.inputs) != 1:
        raise ModelFileError(f"model {model.name} has {len(model.inputs)} inputs; a teacher takes "
                             "one image")
    out = model._run_through_graph([x], call_fn=lambda op, *a, **k: call(op, *a, **k))
    return out[0] if isinstance(out, (list, tuple)) else out


def imported_graph(model, conv: InputConvention):
    """The user's teacher as one flat graph that takes the toolkit's [0, 1] images: a
    ``Rescaling`` layer maps them to the teacher's own convention first (none for ``unit``).

    Every stage (partition, distill, convert's int8 teacher, report) then feeds it exactly
    what it feeds a trained teacher, and the int8 teacher keeps the devices' input
    (``int8 = uint8 - 128``). Nested sub-models are inlined so their layers can be found by
    name (``--feature-layer``); the weights are the user's own, shared, not copied.
    """
    import keras

    inp = keras.Input(tuple(model.inputs[0].shape[1:]), name="image")
    x = inp
    if conv.name != "unit":
        per_channel = len(conv.scale) > 1  # (1, 1, C) broadcasts over NHWC as it is
        scale = np.float32(conv.scale).reshape(1, 1, -1) if per_channel else conv.scale[0]
        offset = np.float32(conv.offset).reshape(1, 1, -1) if per_channel else conv.offset[0]
        x = keras.layers.Rescaling(scale, offset, name="teacher_input")(x)
    names: list[str] = []
    out = _inline(model, x, names)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ModelFileError(f"teacher {model.name}: nested sub-models share layer names "
                             f"({', '.join(dupes[:4])}); rename them so each layer is unique")
    return keras.Model(inp, out, name=model.name)


# -- feature layer ---------------------------------------------------------------------------

def _producer(t):
    return t._keras_history[0]


def _ancestors(model) -> list:
    """Layers whose outputs reach the model's output, in the model's (topological) order."""
    seen: set[int] = set()
    stack = list(model.outputs)
    while stack:
        layer = _producer(stack.pop())
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        for node in layer._inbound_nodes:
            stack += list(node.input_tensors)
    return [layer for layer in model.layers if id(layer) in seen]


def _out_shape(layer) -> tuple | None:
    try:
        out = layer.output
    except (AttributeError, ValueError):  # a layer used more than once has no single output
        return None
    if isinstance(out, (list, tuple)):
        return None
    return tuple(out.shape)


def _is_spatial(shape: tuple | None) -> bool:
    return shape is not None and len(shape) == 4 and (shape[1] or 2) > 1 and (shape[2] or 2) > 1


def feature_candidates(model) -> list[tuple[str, tuple]]:
    """(name, (H, W, C)) of every learned spatial map (H, W > 1) that reaches the output."""
    learned: set[str] = set()
    out = []
    for layer in _ancestors(model):
        inbound = {_producer(t).name for node in layer._inbound_nodes for t in node.input_tensors}
        if layer.weights or inbound & learned:
            learned.add(layer.name)
        shape = _out_shape(layer)
        if layer.name in learned and _is_spatial(shape) and type(layer).__name__ != "InputLayer":
            out.append((layer.name, shape[1:]))
    return out


def _shapes_text(cands: list[tuple[str, tuple]], last: int = 8) -> str:
    shown = ", ".join(f"{n} {tuple(s)}" for n, s in cands[-last:])
    return (f"the last {last} of {len(cands)}: {shown}" if len(cands) > last else shown) or "none"


def find_feature_layer(model, name: str | None = None) -> str:
    """The layer whose filters NoNN splits: ``name`` if given, else the last spatial map
    (H, W > 1) whose channels reach the classifier (see :func:`explain_feature_layer`)."""
    return explain_feature_layer(model, name)[0]


def explain_feature_layer(model, name: str | None = None) -> tuple[str, str]:
    """(layer name, why it was chosen). Pooling to 1x1, Flatten, global pooling and reshape-like
    tails are skipped: a pooled map has the right channels but no spatial activity left."""
    cands = feature_candidates(model)
    if name:
        try:
            layer = model.get_layer(name)
        except ValueError:
            raise ModelFileError(f"--feature-layer {name!r} is not a layer of {model.name}; "
                                 f"candidates (name, H x W x C): {_shapes_text(cands)}") from None
        shape = _out_shape(layer)
        if shape is None or len(shape) != 4:
            raise ModelFileError(f"--feature-layer {name!r} outputs shape {shape}; a 4-D (N, H, W, C) "
                                 f"feature map is needed; candidates: {_shapes_text(cands)}")
        return name, f"--feature-layer {name} {shape[1:]}"
    if not cands:
        maps = [layer.name for layer in model.layers if len(_out_shape(layer) or ()) == 4
                and type(layer).__name__ != "InputLayer"]
        why = f" (its 4-D maps {', '.join(maps[:4])} are 1x1 or not learned)" if maps else ""
        raise ModelFileError(f"model {model.name} has no 4-D feature map (N, H, W, C) with H, W > 1"
                             f"{why}: NoNN needs a convolutional teacher; pass --feature-layer NAME")
    chosen, shape = cands[-1]
    ancestors = _ancestors(model)
    names = [layer.name for layer in ancestors]
    tail = ancestors[names.index(chosen) + 1:]
    head = " -> ".join(f"{layer.name} {(_out_shape(layer) or (None, '?'))[1:]}" for layer in tail[:4])
    why = (f"the last spatial map ({shape[0]}x{shape[1]}, {shape[2]} filters) whose channels reach "
           f"the classifier; after it: {head or 'nothing'}" + (" ..." if len(tail) > 4 else ""))
    return chosen, why


@dataclass
class ImportedTeacher:
    """A user's teacher, fitted to the toolkit: what was chosen, and why."""

    model: object  # keras.Model taking [0, 1] images (see imported_graph)
    convention: InputConvention
    chosen_by: str  # "--teacher-input" or "validation accuracy"
    scores: dict  # convention name -> validation accuracy on the slice
    feature_layer: str
    feature_reason: str

    def describe(self) -> dict:
        return {"input": self.convention.name, "input_chosen_by": self.chosen_by,
                "input_scale": list(self.convention.scale),
                "input_offset": list(self.convention.offset),
                "input_val_accuracy": self.scores, "feature_layer": self.feature_layer,
                "feature_layer_reason": self.feature_reason}


def import_teacher_model(path: str | Path, ds: Dataset, teacher_input: str | None = None,
                         feature_layer: str | None = None) -> ImportedTeacher:
    """Load a user's ``.keras``/``.h5`` teacher and fit the toolkit to it: check the input
    shape and the class count, pick the input convention, and find the feature layer.

    Each misfit is one UsageError naming what is wrong and what to pass.
    """
    original = load_keras_model(path)
    check_input_shape(original, ds)
    check_num_classes(original, ds)
    if teacher_input:
        parse_teacher_input(teacher_input, ds)  # a malformed option fails before any work
    flat = imported_graph(original, InputConvention("unit"))
    name, why = explain_feature_layer(flat, feature_layer)  # before scoring: no map, no NoNN
    conv, scores = choose_input(flat, ds, teacher_input, f"teacher {Path(path).name}")
    model = imported_graph(original, conv) if conv.name != "unit" else flat
    return ImportedTeacher(model, conv, "--teacher-input" if teacher_input else "validation accuracy",
                           scores, name, why)


@dataclass
class TeacherView:
    """The teacher as the students see it: features of the chosen layer and logits."""

    model: object  # keras.Model: image -> [feature map, teacher output]
    feature_layer: str
    outputs_probabilities: bool  # teacher ends in softmax: take log() to get logits

    @property
    def num_filters(self) -> int:
        return int(self.model.outputs[0].shape[-1])


def teacher_view(teacher, feature_layer: str | None = None) -> TeacherView:
    import keras

    name = find_feature_layer(teacher, feature_layer)
    inputs = teacher.inputs[0] if len(teacher.inputs) == 1 else teacher.inputs
    extractor = keras.Model(inputs, [teacher.get_layer(name).output, teacher.outputs[0]])
    extractor.trainable = False
    return TeacherView(extractor, name, outputs_probabilities(teacher))


def predict_features(view: TeacherView, x_uint8: np.ndarray, batch_size: int = 256):
    """Feature maps and logits of the teacher for un-augmented images."""
    fmap, out = view.model.predict(to_float(x_uint8), batch_size=batch_size, verbose=0)
    if view.outputs_probabilities:
        out = np.log(np.clip(out, 1e-7, 1.0))
    return fmap, out


def evaluate(model, x_uint8: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    from nonn_tflite.training import accuracy

    return accuracy(model.predict(to_float(x_uint8), batch_size=batch_size, verbose=0), y)
