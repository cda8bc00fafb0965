"""The int8 maths and model runners the live nodes share (LiteRT + numpy, no TensorFlow).

The device, the fusion node and the offline reference all go through the functions here, so
"accuracy over MQTT equals offline int8 accuracy" holds by construction unless the network
loses or reorders something: that is what the live tests check.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nonn_tflite.deployment import Deployment
from nonn_tflite.errors import ModelFileError
from nonn_tflite.int8 import QParams, requantise
from nonn_tflite.wire import FeatureIdentity, model_hash

# Image frames carry raw camera bytes: real value = (q - 0) * 1/255, the model input convention.
IMAGE_SCALE = float(np.float32(1.0 / 255.0))
IMAGE_ZERO_POINT = 0


# ---- int8 arithmetic ------------------------------------------------------------------

def image_to_input(pixels: np.ndarray, src: QParams, dst: QParams) -> np.ndarray:
    """Camera bytes (any dtype, ``src`` quantisation) -> the model's own int8 input."""
    return requantise(pixels, src, dst)


# ---- LiteRT runners -----------------------------------------------------------------

def _interpreter(path: Path, xnnpack: bool):
    """A LiteRT interpreter for a file that passed :mod:`nonn_tflite.intake` verification,
    checked to be one int8 input and one int8 output (what every node feeds and reads), and
    the file's bytes."""
    from nonn_tflite.intake import verify_file
    from nonn_tflite.interpreters import litert

    if not path.is_file():
        raise ModelFileError(f"model file {path} not found")
    data, model = verify_file(path)  # never hand a runtime an unverified flatbuffer
    _check_io(model, path)
    # Builtin kernels without a delegate, 1 thread (nonn_tflite/interpreters.py); XNNPACK is
    # faster on a Pi. Either may differ from TFLite Micro by 1 LSB on some values.
    interp = litert(data, "default" if xnnpack else "builtin", what=str(path), quiet=False)
    return interp, data


def _check_io(model, path: Path) -> None:
    """One int8 input and one int8 output, before LiteRT is asked for their details."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelFileError(f"{path}: {len(model.inputs)} inputs and {len(model.outputs)} "
                             "outputs; a NoNN model has one of each")
    for what, t in (("input", model.input_tensors()[0]), ("output", model.output_tensors()[0])):
        if t.dtype != "int8":
            raise ModelFileError(f"{path}: {what} is {t.dtype}, expected int8 "
                                 "(full-integer conversion)")


def _qparams(detail: Mapping, path: Path, what: str) -> QParams:
    if detail["dtype"] != np.int8:
        raise ModelFileError(f"{path}: {what} is {np.dtype(detail['dtype']).name}, "
                             "expected int8 (full-integer conversion)")
    scale, zp = detail["quantization"]
    if not scale > 0:
        raise ModelFileError(f"{path}: {what} has no quantisation parameters")
    return QParams(float(np.float32(scale)), int(zp))


class Int8Model:
    """A one-input, one-output int8 .tflite model; quantisation read from the model itself.

    Loading ends with one trial inference on zeros, so a model that verifies but cannot run
    fails here, as a ModelFileError at start-up, not later inside a node's worker thread.
    """

    def __init__(self, path: Path, xnnpack: bool = False) -> None:
        from nonn_tflite.intake import one_line

        self.path = path
        self._interp, data = _interpreter(path, xnnpack)
        self.hash = model_hash(data)  # the ``model`` field of the frames this model makes
        try:  # LiteRT decodes names and types strictly here
            self._in = self._interp.get_input_details()[0]
            self._out = self._interp.get_output_details()[0]
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{path} is not a loadable .tflite model: {one_line(exc)}") from None
        self.input_q = _qparams(self._in, path, "input")
        self.output_q = _qparams(self._out, path, "output")
        self.input_shape = tuple(int(v) for v in self._in["shape"])
        self.input_size = int(np.prod(self.input_shape))
        self.output_size = int(np.prod(self._out["shape"]))
        self._trial_run()

    def _trial_run(self) -> None:
        from nonn_tflite.intake import one_line

        try:
            self.run(np.zeros(self.input_size, np.int8))
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{self.path} loads but does not run: {one_line(exc)}") from None

    def run(self, q_in: np.ndarray) -> np.ndarray:
        """int8 in (any shape with the right size) -> flat int8 out (a copy)."""
        self._interp.set_tensor(self._in["index"], q_in.reshape(self.input_shape))
        self._interp.invoke()
        return self._interp.get_tensor(self._out["index"]).reshape(-1).copy()


class StudentRunner:
    """A device's model: camera pixels -> int8 feature vector."""

    def __init__(self, deployment: Deployment, k: int, xnnpack: bool = False) -> None:
        self.spec = deployment.student(k)
        self.model = Int8Model(deployment.path(self.spec.file), xnnpack)
        if self.model.input_size != deployment.image_size:
            raise ModelFileError(f"{self.model.path}: input has {self.model.input_size} values, "
                                 f"deployment input_shape {deployment.input_shape} has "
                                 f"{deployment.image_size}")
        if self.model.output_size != self.spec.width:
            raise ModelFileError(f"{self.model.path}: output width {self.model.output_size}, "
                                 f"deployment.json says {self.spec.width}")

    @property
    def output_q(self) -> QParams:
        return self.model.output_q

    def features(self, pixels: np.ndarray, pixel_q: QParams) -> np.ndarray:
        return self.model.run(image_to_input(pixels, pixel_q, self.model.input_q))


class FusionRunner:
    """The fusion model over requantised, zero-filled student slices."""

    def __init__(self, deployment: Deployment, xnnpack: bool = False) -> None:
        self.deployment = deployment
        self.model = Int8Model(deployment.path(deployment.fusion.file), xnnpack)
        self.slices = deployment.slices()
        if self.model.input_size != deployment.fusion.input_width:
            raise ModelFileError(f"{self.model.path}: input width {self.model.input_size}, "
                                 f"deployment.json says {deployment.fusion.input_width}")
        if self.model.output_size != deployment.num_classes:
            raise ModelFileError(f"{self.model.path}: {self.model.output_size} outputs, "
                                 f"deployment has {deployment.num_classes} classes")

    @property
    def output_q(self) -> QParams:
        return self.model.output_q

    def fusion_input(self, parts: Mapping[int, tuple[np.ndarray, QParams]]) -> np.ndarray:
        """Concatenate requantised slices; a missing student is quantised 0.0 (= zp_f)."""
        q_f = self.model.input_q
        x = np.full(self.model.input_size, q_f.zero_point, dtype=np.int8)
        for k, (values, q) in parts.items():
            x[self.slices[k]] = requantise(values, q, q_f)
        return x

    def logits(self, parts: Mapping[int, tuple[np.ndarray, QParams]]) -> np.ndarray:
        return self.model.run(self.fusion_input(parts))


def student_hash(deployment: Deployment, k: int) -> int | None:
    """The model hash student ``k``'s frames must carry: deployment.json's ``model_crc32``, or
    for a JSON written before that key existed, the hash of the student file beside it."""
    spec = deployment.student(k)
    if spec.model_crc32 is not None:
        return spec.model_crc32
    path = deployment.path(spec.file)
    return model_hash(path.read_bytes()) if path.is_file() else None


def feature_identities(deployment: Deployment) -> dict[int, FeatureIdentity]:
    """Per student, what deployment.json says its feature frames carry (int8, output scale and
    zero point, model hash): the fusion node refuses any other frame as ``stale_model``."""
    return {s.id: FeatureIdentity(s.output.scale, s.output.zero_point, student_hash(deployment, s.id))
            for s in deployment.students}
