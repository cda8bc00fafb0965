"""Deployment description and the int8 maths the live nodes share (LiteRT + numpy, no TensorFlow).

The device, the fusion node and the offline reference all go through the functions here, so
"accuracy over MQTT equals offline int8 accuracy" holds by construction unless the network
loses or reorders something: that is what the live tests check.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nonn_tflite.errors import ModelFileError, RunDirError
from nonn_tflite.live.protocol import Topics, deployment_id

# Image frames carry raw camera bytes: real value = (q - 0) * 1/255, the model input convention.
IMAGE_SCALE = float(np.float32(1.0 / 255.0))
IMAGE_ZERO_POINT = 0


@dataclass(frozen=True)
class QParams:
    """Affine int8 quantisation: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int

    @classmethod
    def from_json(cls, d: Mapping, what: str) -> QParams:
        try:
            scale, zp = float(d["scale"]), int(d["zero_point"])
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{what}: needs numeric 'scale' and 'zero_point'") from None
        if not (math.isfinite(scale) and scale > 0):
            raise ModelFileError(f"{what}: scale must be finite and > 0, got {scale}")
        return cls(scale, zp)


@dataclass(frozen=True)
class StudentSpec:
    id: int
    file: str
    width: int
    input: QParams
    output: QParams


@dataclass(frozen=True)
class FusionSpec:
    file: str
    input_width: int
    input: QParams
    output: QParams


@dataclass(frozen=True)
class Deployment:
    """``tflite/deployment.json`` of a run (schema 1, see docs/ARCHITECTURE.md)."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    students: tuple[StudentSpec, ...]
    fusion: FusionSpec
    directory: Path

    @property
    def id(self) -> int:
        return deployment_id(self.name)

    @property
    def topics(self) -> Topics:
        return Topics(self.name)

    @property
    def feature_widths(self) -> dict[int, int]:
        return {s.id: s.width for s in self.students}

    @property
    def image_size(self) -> int:
        return int(np.prod(self.input_shape))

    def student(self, k: int) -> StudentSpec:
        for spec in self.students:
            if spec.id == k:
                return spec
        ids = ", ".join(str(s.id) for s in self.students)
        raise RunDirError(f"deployment {self.name} has no student {k} (students: {ids})")

    def path(self, file: str) -> Path:
        return self.directory / file

    def slices(self) -> dict[int, slice]:
        """Where each student's vector sits in the fusion input (students in id order)."""
        out, start = {}, 0
        for spec in sorted(self.students, key=lambda s: s.id):
            out[spec.id] = slice(start, start + spec.width)
            start += spec.width
        return out


def find_deployment_file(path: str | Path) -> Path:
    """Accept a run directory, its ``tflite/`` folder or the deployment.json itself."""
    p = Path(path)
    for candidate in (p, p / "deployment.json", p / "tflite" / "deployment.json"):
        if candidate.is_file():
            return candidate
    raise RunDirError(f"no tflite/deployment.json under {p} (run `nonn-tflite convert {p}` first)")


def load_deployment(path: str | Path) -> Deployment:
    """Read and check deployment.json; raises RunDirError/ModelFileError with what is wrong."""
    file = find_deployment_file(path)
    try:
        d = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{file} is not valid JSON: {exc}") from None
    try:
        return _parse_deployment(d, file)
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{file}: missing or malformed field {exc}") from None


def _parse_deployment(d: Mapping, file: Path) -> Deployment:
    if d.get("schema") != 1:
        raise RunDirError(f"{file}: schema {d.get('schema')!r} is not supported (expected 1)")
    if d.get("fusion_input", "requantise") != "requantise":
        raise RunDirError(f"{file}: fusion_input {d['fusion_input']!r} is not supported")
    students = tuple(
        StudentSpec(int(s["id"]), str(s["file"]), int(s["width"]),
                    QParams.from_json(s["input"], f"student {s['id']} input"),
                    QParams.from_json(s["output"], f"student {s['id']} output"))
        for s in d["students"])
    f = d["fusion"]
    fusion = FusionSpec(str(f["file"]), int(f["input_width"]),
                        QParams.from_json(f["input"], "fusion input"),
                        QParams.from_json(f["output"], "fusion output"))
    dep = Deployment(str(d["deployment"]), int(d["num_classes"]),
                     tuple(str(c) for c in d.get("class_names", range(int(d["num_classes"])))),
                     tuple(int(v) for v in d["input_shape"]), students, fusion, file.parent)
    Topics(dep.name)  # raises for names that cannot be topics
    if len({s.id for s in students}) != len(students) or not students:
        raise RunDirError(f"{file}: student ids must be unique and at least one student given")
    if any(not 0 <= s.id < 255 for s in students):
        raise RunDirError(f"{file}: student ids must be 0..254")
    if sum(s.width for s in students) != fusion.input_width:
        raise RunDirError(f"{file}: student widths sum to {sum(s.width for s in students)}, "
                          f"fusion input_width is {fusion.input_width}")
    return dep


# ---- int8 arithmetic ------------------------------------------------------------------

def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's round(): half away from zero, so the C fusion code gives identical bytes."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize(real: np.ndarray, q: QParams) -> np.ndarray:
    """float -> int8 with saturation."""
    return np.clip(round_half_away(np.asarray(real, np.float64) / q.scale) + q.zero_point,
                   -128, 127).astype(np.int8)


def requantise(values: np.ndarray, src: QParams, dst: QParams) -> np.ndarray:
    """``q_f = clip(round((q_k - zp_k) * s_k / s_f) + zp_f, -128, 127)`` (ARCHITECTURE.md)."""
    real_over_dst = (np.asarray(values, np.float64) - src.zero_point) * (src.scale / dst.scale)
    return np.clip(round_half_away(real_over_dst) + dst.zero_point, -128, 127).astype(np.int8)


def image_to_input(pixels: np.ndarray, src: QParams, dst: QParams) -> np.ndarray:
    """Camera bytes (any dtype, ``src`` quantisation) -> the model's own int8 input."""
    return requantise(pixels, src, dst)


# ---- LiteRT runners -----------------------------------------------------------------

def _interpreter(path: Path, xnnpack: bool):
    """A LiteRT interpreter for a file that passed :mod:`nonn_tflite.intake` verification,
    checked to be one int8 input and one int8 output (what every node feeds and reads)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from nonn_tflite.intake import one_line, verify_file

    if not path.is_file():
        raise ModelFileError(f"model file {path} not found")
    data, model = verify_file(path)  # never hand a runtime an unverified flatbuffer
    _check_io(model, path)
    # Reference kernels + 1 thread are bit-exact with TFLite Micro (the MCU build); XNNPACK is
    # faster on a Pi but may differ by 1 LSB.
    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = Interpreter(model_content=data, num_threads=1,
                             experimental_op_resolver_type=resolver)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path} is not a loadable .tflite model: {one_line(exc)}") from None
    return interp


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
        self._interp = _interpreter(path, xnnpack)
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
