"""Train or load the teacher, and find the 4-D feature map whose filters NoNN partitions."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nonn_tflite.config import TeacherConfig
from nonn_tflite.data import Dataset, augmentation_layers, to_float
from nonn_tflite.errors import DatasetError, ModelFileError
from nonn_tflite.training import augmented_classifier, callbacks, optimizer, set_seed


def train_teacher(ds: Dataset, cfg: TeacherConfig, quiet: bool = False):
    """Train ``cfg.arch`` on ``ds``; the epoch with the best validation accuracy is kept."""
    import keras

    from nonn_tflite.architectures import build_teacher

    set_seed(cfg.train.seed)
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
    want = tuple(model.input_shape[1:])
    if len(want) != 3 or any(w is not None and w != d for w, d in zip(want, ds.input_shape)):
        raise DatasetError(f"the teacher takes inputs of shape {want} but dataset {ds.name} has "
                           f"images of shape {ds.input_shape}; use the dataset it was trained on")


def find_feature_layer(model, name: str | None = None) -> str:
    """The teacher's last 4-D feature map (``name`` if given), i.e. the filters NoNN splits."""
    if name:
        try:
            layer = model.get_layer(name)
        except ValueError as exc:
            raise ModelFileError(f"--feature-layer {name!r} is not a layer of {model.name}") from exc
        if len(layer.output.shape) != 4:
            raise ModelFileError(f"--feature-layer {name!r} outputs shape {tuple(layer.output.shape)}; "
                                 "a 4-D (N, H, W, C) feature map is needed")
        return name
    for layer in reversed(model.layers):
        if type(layer).__name__ == "InputLayer":
            break  # the image itself is no feature map
        out = getattr(layer, "output", None)
        if out is not None and not isinstance(out, (list, tuple)) and len(out.shape) == 4:
            return layer.name
    raise ModelFileError(f"model {model.name} has no 4-D feature map (N, H, W, C): NoNN needs a "
                         "convolutional teacher; pass --feature-layer if it is nested")


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
    last = teacher.layers[-1]
    act = getattr(getattr(last, "activation", None), "__name__", "")
    probs = act == "softmax" or type(last).__name__ == "Softmax"
    return TeacherView(extractor, name, probs)


def predict_features(view: TeacherView, x_uint8: np.ndarray, batch_size: int = 256):
    """Feature maps and logits of the teacher for un-augmented images."""
    fmap, out = view.model.predict(to_float(x_uint8), batch_size=batch_size, verbose=0)
    if view.outputs_probabilities:
        out = np.log(np.clip(out, 1e-7, 1.0))
    return fmap, out


def evaluate(model, x_uint8: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    from nonn_tflite.training import accuracy

    return accuracy(model.predict(to_float(x_uint8), batch_size=batch_size, verbose=0), y)
