"""What the firmware needs to know about a .tflite file, read from the flatbuffer itself.

The generated C must agree with the model it embeds (tensor shapes, int8 quantisation, ops),
so these facts come from the bytes rather than from JSON written beside them. Uses the
``tflite`` flatbuffer classes only: no TensorFlow, no interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tflite

from nonn_tflite.errors import ModelFileError

# tflite.TensorType values -> names used in messages and checks.
TENSOR_TYPES = {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
BUILTIN_OPS = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
ACTIVATIONS = {v: k for k, v in vars(tflite.ActivationFunctionType).items()
               if not k.startswith("_")}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: shape, element type and (per-tensor or per-channel) quantisation."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    buffer: int

    @property
    def scale(self) -> float:
        """The single scale of a per-tensor quantised tensor."""
        if len(self.scales) != 1:
            raise ModelFileError(f"tensor {self.name!r} is not per-tensor quantised")
        return self.scales[0]

    @property
    def zero_point(self) -> int:
        if len(self.zero_points) != 1:
            raise ModelFileError(f"tensor {self.name!r} is not per-tensor quantised")
        return self.zero_points[0]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass(frozen=True)
class OperatorInfo:
    """One operator of subgraph 0 with its builtin name, tensor indices and activation."""

    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    activation: str | None


@dataclass(frozen=True)
class ModelInfo:
    """Schema version, op codes, operators and I/O tensors of a single-subgraph model."""

    version: int
    op_codes: tuple[str, ...]
    operators: tuple[OperatorInfo, ...]
    tensors: tuple[TensorInfo, ...]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    raw: bytes

    def buffer_data(self, tensor: TensorInfo, dtype: type) -> np.ndarray:
        """The constant data of ``tensor`` as a numpy array of ``dtype`` in its shape."""
        model = tflite.Model.GetRootAsModel(self.raw, 0)
        buf = model.Buffers(tensor.buffer)
        data = buf.DataAsNumpy() if buf is not None and buf.DataLength() else None
        if data is None or isinstance(data, int):
            raise ModelFileError(f"tensor {tensor.name!r} has no constant data")
        return np.frombuffer(data.tobytes(), dtype=dtype).reshape(tensor.shape)


def builtin_code(op_code: tflite.OperatorCode) -> int:
    """The real builtin code: the schema keeps small codes in the deprecated int8 field."""
    return max(op_code.DeprecatedBuiltinCode(), op_code.BuiltinCode())


def read_model(data: bytes, what: str = "model") -> ModelInfo:
    """Parse ``data`` (a .tflite flatbuffer); raise ModelFileError if it is not one."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFileError(f"{what} is not a .tflite flatbuffer (no TFL3 identifier)")
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() != 1:
            raise ModelFileError(f"{what} has {model.SubgraphsLength()} subgraphs; "
                                 "firmware export supports exactly 1")
        codes = tuple(_op_name(builtin_code(model.OperatorCodes(i)), what)
                      for i in range(model.OperatorCodesLength()))
        graph = model.Subgraphs(0)
        tensors = tuple(_tensor(graph.Tensors(i), i) for i in range(graph.TensorsLength()))
        operators = tuple(_operator(graph.Operators(i), codes)
                          for i in range(graph.OperatorsLength()))
        inputs = tuple(tensors[i] for i in graph.InputsAsNumpy())
        outputs = tuple(tensors[i] for i in graph.OutputsAsNumpy())
    except ModelFileError:
        raise
    except Exception as exc:  # a truncated or foreign flatbuffer fails deep inside flatbuffers
        raise ModelFileError(f"{what} is not a readable .tflite model ({exc})") from exc
    return ModelInfo(model.Version(), codes, operators, tensors, inputs, outputs, bytes(data))


def _op_name(code: int, what: str) -> str:
    if code == tflite.BuiltinOperator.CUSTOM:
        raise ModelFileError(f"{what} uses a custom op, which firmware export cannot register")
    try:
        return BUILTIN_OPS[code]
    except KeyError:
        raise ModelFileError(f"{what} uses builtin op code {code}, unknown to tflite "
                             f"{getattr(tflite, '__version__', '')}".rstrip()) from None


def _tensor(t: tflite.Tensor, index: int) -> TensorInfo:
    q = t.Quantization()
    scales: tuple[float, ...] = ()
    zps: tuple[int, ...] = ()
    if q is not None and q.ScaleLength():
        scales = tuple(float(s) for s in q.ScaleAsNumpy())
        zps = tuple(int(z) for z in q.ZeroPointAsNumpy()) if q.ZeroPointLength() else (0,)
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    name = (t.Name() or b"").decode("utf-8", "replace")
    return TensorInfo(index, name, TENSOR_TYPES.get(t.Type(), str(t.Type())), shape,
                      scales, zps, t.Buffer())


def _operator(op: tflite.Operator, codes: tuple[str, ...]) -> OperatorInfo:
    name = codes[op.OpcodeIndex()]
    activation = None
    if name == "FULLY_CONNECTED":
        table = op.BuiltinOptions()
        if table is not None:
            opts = tflite.FullyConnectedOptions()
            opts.Init(table.Bytes, table.Pos)
            activation = ACTIVATIONS.get(opts.FusedActivationFunction(), "UNKNOWN")
    inputs = tuple(int(i) for i in op.InputsAsNumpy()) if op.InputsLength() else ()
    outputs = tuple(int(i) for i in op.OutputsAsNumpy()) if op.OutputsLength() else ()
    return OperatorInfo(name, inputs, outputs, activation)


def require_int8_io(info: ModelInfo, what: str) -> None:
    """Refuse float or hybrid models: the firmware only moves int8 tensors."""
    for kind, tensors in (("input", info.inputs), ("output", info.outputs)):
        if len(tensors) != 1:
            raise ModelFileError(f"{what} has {len(tensors)} {kind}s; expected exactly 1")
        t = tensors[0]
        if t.dtype != "INT8" or len(t.scales) != 1:
            raise ModelFileError(
                f"{what} {kind} is {t.dtype.lower()}, not per-tensor int8: export needs "
                "full-integer models (run `nonn-tflite convert` with int8 quantisation)")
