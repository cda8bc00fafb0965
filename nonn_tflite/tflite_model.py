"""Read a ``.tflite`` flatbuffer without TensorFlow: ops, tensors, quantisation, buffers, MACs.

Every read is bounds-checked against the file, so a truncated, corrupted or foreign file raises
:class:`~nonn_tflite.errors.ModelFileError` instead of an ``IndexError`` (or, worse, feeding
garbage offsets to TFLite Micro, which does not verify flatbuffers and can die with SIGFPE).
:func:`parse_tflite` also checks what TFLM would trust blindly: tensor and opcode indices,
constant buffer sizes against tensor shapes, and strides/filter sizes (divisors in kernels).

MAC counting (:attr:`OpInfo.macs`) covers the multiply-accumulate ops: CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV and BATCH_MATMUL. Element-wise and pooling
work (ADD, SUB, MUL, AVERAGE_POOL_2D, MAX_POOL_2D, MEAN, SUM, ...) is counted separately in
:attr:`OpInfo.elementwise` (one per output element, per pooled input element for pools and
reductions) so the MAC figure stays comparable with papers, which count only MACs.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from nonn_tflite.errors import ModelFileError

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3

TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string",
                6: "bool", 7: "int16", 8: "complex64", 9: "int8", 10: "float64",
                11: "complex128", 12: "uint64", 13: "resource", 14: "variant", 15: "uint32",
                16: "uint16", 17: "int4", 18: "bfloat16"}
DTYPE_BYTES = {"float32": 4, "float16": 2, "int32": 4, "uint8": 1, "int64": 8, "bool": 1,
               "int16": 2, "complex64": 8, "int8": 1, "float64": 8, "complex128": 16,
               "uint64": 8, "uint32": 4, "uint16": 2, "bfloat16": 2}
# numpy spelling of the dtypes :meth:`TFLiteModel.tensor_data` can return (flatbuffers are LE)
NUMPY_DTYPES = {"float32": "<f4", "float16": "<f2", "int32": "<i4", "uint8": "u1", "int64": "<i8",
                "bool": "?", "int16": "<i2", "complex64": "<c8", "int8": "i1", "float64": "<f8",
                "complex128": "<c16", "uint64": "<u8", "uint32": "<u4", "uint16": "<u2"}

MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL")
ELEMENTWISE_OPS = ("ADD", "SUB", "MUL", "DIV", "SQUARED_DIFFERENCE", "MAXIMUM", "MINIMUM")
POOL_OPS = ("AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D")
REDUCE_OPS = ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN")

_PADDING = {0: "SAME", 1: "VALID"}
_ACTIVATION = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
# BuiltinOptions union tags used here (schema.fbs)
_OPT_CONV, _OPT_DEPTHWISE, _OPT_POOL, _OPT_FC, _OPT_TRANSPOSE_CONV = 1, 2, 5, 8, 49


def builtin_op_names() -> dict[int, str]:
    """BuiltinOperator code -> name, from the pure-Python ``tflite`` schema package."""
    try:
        from tflite.BuiltinOperator import BuiltinOperator
    except ImportError:  # names are cosmetic; codes still identify ops
        return {0: "ADD", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 9: "FULLY_CONNECTED", 32: "CUSTOM"}
    return {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}


_OP_NAMES = builtin_op_names()


# -- bounds-checked flatbuffer access ------------------------------------------------------------

class _Buf:
    """Little-endian reads that fail with ModelFileError outside the file."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.name = name

    def fail(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.name} is not a valid TFLite model: {what}")

    def read(self, fmt: str, pos: int, what: str):
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise self.fail(f"{what} at byte {pos} lies outside the {len(self.data)}-byte file "
                            "(truncated or corrupt)")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def uoffset(self, pos: int, what: str) -> int:
        target = pos + self.read("<I", pos, what)
        if target >= len(self.data):
            raise self.fail(f"{what} points past the end of the file (truncated or corrupt)")
        return target

    def table(self, pos: int, what: str) -> _Table:
        vt = pos - self.read("<i", pos, what)
        vt_size = self.read("<H", vt, f"{what} vtable")
        tbl_size = self.read("<H", vt + 2, f"{what} vtable")
        if vt_size < 4 or vt_size % 2 or vt + vt_size > len(self.data) or pos + tbl_size > len(self.data):
            raise self.fail(f"{what} has a malformed vtable (truncated or corrupt)")
        return _Table(self, pos, vt, vt_size, tbl_size, what)

    def vector(self, pos: int, elem_size: int, what: str) -> tuple[int, int]:
        """(start of elements, count) of the vector at ``pos``, checked to fit the file."""
        n = self.read("<I", pos, f"{what} length")
        start = pos + 4
        if start + n * elem_size > len(self.data):
            raise self.fail(f"{what} claims {n} elements, more than the file holds "
                            "(truncated or corrupt)")
        return start, n


@dataclass
class _Table:
    buf: _Buf
    pos: int
    vt: int
    vt_size: int
    size: int
    what: str

    def _field(self, slot: int) -> int | None:
        entry = 4 + 2 * slot
        if entry >= self.vt_size:
            return None
        off = self.buf.read("<H", self.vt + entry, self.what)
        if off == 0:
            return None
        if off >= self.size:
            raise self.buf.fail(f"{self.what} field {slot} lies outside its table")
        return self.pos + off

    def scalar(self, slot: int, fmt: str, default: int | float = 0):
        p = self._field(slot)
        return default if p is None else self.buf.read(fmt, p, f"{self.what} field {slot}")

    def table(self, slot: int, what: str) -> _Table | None:
        p = self._field(slot)
        return None if p is None else self.buf.table(self.buf.uoffset(p, what), what)

    def vector(self, slot: int, fmt: str, what: str) -> list | None:
        p = self._field(slot)
        if p is None:
            return None
        size = struct.calcsize(fmt)
        start, n = self.buf.vector(self.buf.uoffset(p, what), size, what)
        return list(struct.unpack_from(f"<{n}{fmt.lstrip('<')}", self.buf.data, start)) if n else []

    def string(self, slot: int, what: str) -> str | None:
        p = self._field(slot)
        if p is None:
            return None
        start, n = self.buf.vector(self.buf.uoffset(p, what), 1, what)
        return self.buf.data[start:start + n].decode("utf-8", errors="replace")

    def tables(self, slot: int, what: str) -> list[_Table]:
        p = self._field(slot)
        if p is None:
            return []
        start, n = self.buf.vector(self.buf.uoffset(p, what), 4, what)
        return [self.buf.table(self.buf.uoffset(start + 4 * i, f"{what}[{i}]"), f"{what}[{i}]")
                for i in range(n)]

    def bytes_span(self, slot: int, what: str) -> tuple[int, int] | None:
        p = self._field(slot)
        if p is None:
            return None
        return self.buf.vector(self.buf.uoffset(p, what), 1, what)


# -- the model ---------------------------------------------------------------------------------

@dataclass
class QuantParams:
    scale: list[float]
    zero_point: list[int]
    quantized_dimension: int = 0

    @property
    def per_tensor(self) -> tuple[float, int] | None:
        """(scale, zero_point) when the tensor has one scale, else None (per-channel)."""
        if len(self.scale) == 1 and len(self.zero_point) == 1:
            return float(self.scale[0]), int(self.zero_point[0])
        return None


@dataclass
class TensorInfo:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...] | None
    buffer: int
    data_bytes: int  # bytes of constant data (0 for activations)
    quant: QuantParams | None
    is_variable: bool = False
    data_offset: int = 0  # where the constant data starts in the file (when data_bytes > 0)

    @property
    def is_constant(self) -> bool:
        return self.data_bytes > 0

    @property
    def numel(self) -> int:
        return _prod(self.shape)

    @property
    def is_dynamic(self) -> bool:
        return bool(self.shape_signature) and any(d < 0 for d in self.shape_signature)  # type: ignore[union-attr]


@dataclass
class OpInfo:
    index: int
    opcode: str
    builtin_code: int
    custom_code: str | None
    version: int
    inputs: list[int]
    outputs: list[int]
    options: dict = field(default_factory=dict)
    macs: int = 0
    elementwise: int = 0


@dataclass
class TFLiteModel:
    """What a .tflite file holds (first subgraph in detail; TFLM runs subgraph 0)."""

    name: str
    size: int
    schema_version: int
    description: str
    tensors: list[TensorInfo]
    operators: list[OpInfo]
    inputs: list[int]
    outputs: list[int]
    num_subgraphs: int
    num_buffers: int
    data: bytes = field(default=b"", repr=False)  # the file, for :meth:`tensor_data`

    @property
    def op_names(self) -> list[str]:
        """Distinct op names in first-use order (what a MicroMutableOpResolver must register)."""
        return list(dict.fromkeys(op.opcode for op in self.operators))

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.operators)

    @property
    def elementwise_ops(self) -> int:
        return sum(op.elementwise for op in self.operators)

    @cached_property
    def params(self) -> int:
        """Weights and biases: constant tensors, except int32/int64 shape and axis arguments."""
        bias_like = {op.inputs[2] for op in self.operators
                     if op.opcode in MAC_OPS and len(op.inputs) > 2 and op.inputs[2] >= 0}
        return sum(t.numel for t in self.tensors if t.is_constant
                   and (t.dtype not in ("int32", "int64") or t.index in bias_like))

    def input_tensors(self) -> list[TensorInfo]:
        return [self.tensors[i] for i in self.inputs]

    def output_tensors(self) -> list[TensorInfo]:
        return [self.tensors[i] for i in self.outputs]

    def producer(self, tensor: int) -> OpInfo | None:
        for op in self.operators:
            if tensor in op.outputs:
                return op
        return None

    def tensor_data(self, tensor: TensorInfo) -> np.ndarray:
        """The constant data (weights, bias) of ``tensor`` in its shape, read-only.

        :func:`parse_tflite` already checked that the data lies in the file and fits the shape.
        """
        if not tensor.is_constant:
            raise ModelFileError(f"{self.name}: tensor '{tensor.name}' has no constant data")
        if tensor.dtype not in NUMPY_DTYPES:
            raise ModelFileError(f"{self.name}: tensor '{tensor.name}' is {tensor.dtype}, "
                                 "which numpy cannot hold")
        return np.frombuffer(self.data, NUMPY_DTYPES[tensor.dtype], tensor.numel,
                             tensor.data_offset).reshape(tensor.shape)


def read_model_bytes(path: str | Path) -> bytes:
    """The bytes of a .tflite file, or one clear error if it is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p} not found (expected a .tflite file)")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{p} cannot be read ({exc.strerror or exc})") from None


def read_tflite(path: str | Path) -> TFLiteModel:
    """Parse and structurally verify the .tflite file at ``path``."""
    return parse_tflite(read_model_bytes(path), str(path))


def parse_tflite(data: bytes, name: str = "model") -> TFLiteModel:
    """Parse and structurally verify a .tflite flatbuffer held in memory."""
    buf = _Buf(bytes(data), name)
    if len(buf.data) < 8:
        raise buf.fail(f"only {len(buf.data)} bytes long")
    if buf.data[4:8] != FILE_IDENTIFIER:
        hint = " (it looks like text)" if _looks_like_text(buf.data) else ""
        raise buf.fail(f"missing the TFL3 file identifier{hint}")
    model = buf.table(buf.uoffset(0, "root offset"), "Model")
    version = model.scalar(0, "<I")
    if version != SCHEMA_VERSION:
        raise buf.fail(f"schema version {version}; expected {SCHEMA_VERSION}")
    opcodes = [_opcode(t) for t in model.tables(1, "operator_codes")]
    subgraphs = model.tables(2, "subgraphs")
    if not subgraphs:
        raise buf.fail("it has no subgraph")
    buffers = [_buffer_span(buf, t) for t in model.tables(4, "buffers")]
    sg = subgraphs[0]
    tensors = [_tensor(i, t, buffers, buf) for i, t in enumerate(sg.tables(0, "tensors"))]
    inputs = sg.vector(1, "i", "subgraph inputs") or []
    outputs = sg.vector(2, "i", "subgraph outputs") or []
    _check_indices(buf, "subgraph inputs/outputs", inputs + outputs, len(tensors), optional=False)
    ops = [_operator(i, t, opcodes, tensors, buf) for i, t in enumerate(sg.tables(3, "operators"))]
    for n, other in enumerate(subgraphs[1:], start=1):  # IF/WHILE bodies: checked, not kept
        _verify_subgraph(buf, other, n, opcodes, buffers)
    return TFLiteModel(name=name, size=len(buf.data), schema_version=version,
                       description=model.string(3, "description") or "", tensors=tensors,
                       operators=ops, inputs=inputs, outputs=outputs,
                       num_subgraphs=len(subgraphs), num_buffers=len(buffers), data=buf.data)


def _verify_subgraph(buf: _Buf, sg: _Table, n: int, opcodes: list, buffers: list[int]) -> None:
    """The checks of subgraph 0 on another subgraph: runtimes read every subgraph."""
    tensors = [_tensor(i, t, buffers, buf) for i, t in enumerate(sg.tables(0, f"subgraph {n} tensors"))]
    io = (sg.vector(1, "i", f"subgraph {n} inputs") or []) + (sg.vector(2, "i", f"subgraph {n} outputs") or [])
    _check_indices(buf, f"subgraph {n} inputs/outputs", io, len(tensors), optional=False)
    for i, t in enumerate(sg.tables(3, f"subgraph {n} operators")):
        _operator(i, t, opcodes, tensors, buf)


def _looks_like_text(data: bytes) -> bool:
    head = data[:256]
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _opcode(t: _Table) -> tuple[int, str | None, int]:
    deprecated = t.scalar(0, "<b")
    code = max(int(deprecated), int(t.scalar(3, "<i")))  # newer ops only fit the int32 field
    return code, t.string(1, "custom_code"), int(t.scalar(2, "<i", 1))


def _buffer_span(buf: _Buf, t: _Table) -> tuple[int, int]:
    """(start in the file, bytes) of one buffer's data; (0, 0) when it has none."""
    span = t.bytes_span(0, "buffer data")
    if span is not None:
        return span
    offset, size = t.scalar(1, "<Q"), t.scalar(2, "<Q")
    if offset > 1:  # data stored after the flatbuffer (models over 2 GB)
        if offset + size > len(buf.data):
            raise buf.fail(f"a buffer's external data ({size} bytes at {offset}) lies past the end")
        return int(offset), int(size)
    return 0, 0


def _tensor(index: int, t: _Table, buffers: list[tuple[int, int]], buf: _Buf) -> TensorInfo:
    what = f"tensor {index}"
    shape = tuple(t.vector(0, "i", f"{what} shape") or [])
    dtype_code = t.scalar(1, "<b")
    dtype = TENSOR_TYPES.get(dtype_code, f"type{dtype_code}")
    buffer = int(t.scalar(2, "<I"))
    name = t.string(3, f"{what} name") or f"tensor_{index}"
    if buffer >= len(buffers):
        raise buf.fail(f"{what} ({name}) uses buffer {buffer} of {len(buffers)}")
    if any(d < 0 for d in shape):
        raise buf.fail(f"{what} ({name}) has a negative dimension in shape {list(shape)} (a "
                       "dynamic tensor: TFLM allocates every tensor from its stored shape and "
                       "refuses dynamic ones; a -1 belongs in shape_signature only)")
    sig = t.vector(7, "i", f"{what} shape_signature")
    data_offset, data_bytes = buffers[buffer]
    if data_bytes and dtype in DTYPE_BYTES and data_bytes != _prod(shape) * DTYPE_BYTES[dtype]:
        raise buf.fail(f"{what} ({name}) holds {data_bytes} bytes of data, but its shape "
                       f"{list(shape)} of {dtype} needs {_prod(shape) * DTYPE_BYTES[dtype]}")
    return TensorInfo(index, name, dtype, shape, tuple(sig) if sig is not None else None, buffer,
                      data_bytes, _quant(t.table(4, f"{what} quantization"), buf, what),
                      bool(t.scalar(5, "<B")), data_offset)


def _quant(t: _Table | None, buf: _Buf, what: str) -> QuantParams | None:
    if t is None:
        return None
    scale = t.vector(2, "f", f"{what} scales") or []
    zp = t.vector(3, "q", f"{what} zero points") or []
    if not scale:
        return None
    if len(zp) not in (0, len(scale)):
        raise buf.fail(f"{what} has {len(scale)} scales but {len(zp)} zero points")
    return QuantParams([float(s) for s in scale], [int(z) for z in zp] or [0] * len(scale),
                       int(t.scalar(6, "<i")))


def _operator(index: int, t: _Table, opcodes: list, tensors: list[TensorInfo], buf: _Buf) -> OpInfo:
    what = f"operator {index}"
    oc = int(t.scalar(0, "<I"))
    if oc >= len(opcodes):
        raise buf.fail(f"{what} uses opcode {oc} of {len(opcodes)}")
    code, custom, version = opcodes[oc]
    name = (custom or "CUSTOM") if code == 32 else _OP_NAMES.get(code, f"BUILTIN_{code}")
    inputs = t.vector(1, "i", f"{what} inputs") or []
    outputs = t.vector(2, "i", f"{what} outputs") or []
    _check_indices(buf, f"{what} ({name}) inputs", inputs, len(tensors), optional=True)
    _check_indices(buf, f"{what} ({name}) outputs", outputs, len(tensors), optional=False)
    op = OpInfo(index, name, code, custom, version, inputs, outputs,
                _options(t, name, buf, what))
    op.macs, op.elementwise = _work(op, tensors)
    return op


def _check_indices(buf: _Buf, what: str, idx: list[int], n: int, optional: bool) -> None:
    for i in idx:
        if i >= n or i < (-1 if optional else 0):
            raise buf.fail(f"{what} refer to tensor {i}, but there are {n} tensors")


def _options(t: _Table, name: str, buf: _Buf, what: str) -> dict:
    """The options MACs and kernels depend on; strides and sizes are divisors, so check them."""
    kind = t.scalar(3, "<B")
    opt = t.table(4, f"{what} options") if kind else None
    if opt is None:
        return {}
    if kind == _OPT_CONV:
        d = {"padding": opt.scalar(0, "<b"), "stride_w": opt.scalar(1, "<i"),
             "stride_h": opt.scalar(2, "<i"), "activation": opt.scalar(3, "<b"),
             "dilation_w": opt.scalar(4, "<i", 1), "dilation_h": opt.scalar(5, "<i", 1)}
    elif kind == _OPT_DEPTHWISE:
        d = {"padding": opt.scalar(0, "<b"), "stride_w": opt.scalar(1, "<i"),
             "stride_h": opt.scalar(2, "<i"), "depth_multiplier": opt.scalar(3, "<i"),
             "activation": opt.scalar(4, "<b"), "dilation_w": opt.scalar(5, "<i", 1),
             "dilation_h": opt.scalar(6, "<i", 1)}
    elif kind == _OPT_POOL:
        d = {"padding": opt.scalar(0, "<b"), "stride_w": opt.scalar(1, "<i"),
             "stride_h": opt.scalar(2, "<i"), "filter_w": opt.scalar(3, "<i"),
             "filter_h": opt.scalar(4, "<i"), "activation": opt.scalar(5, "<b")}
    elif kind == _OPT_FC:
        return {"activation": _ACTIVATION.get(opt.scalar(0, "<b"), "?")}
    elif kind == _OPT_TRANSPOSE_CONV:
        d = {"padding": opt.scalar(0, "<b"), "stride_w": opt.scalar(1, "<i"),
             "stride_h": opt.scalar(2, "<i")}
    else:
        return {}
    for key in ("stride_w", "stride_h", "dilation_w", "dilation_h", "filter_w", "filter_h"):
        if key in d and d[key] < 1:
            raise buf.fail(f"{what} ({name}) has {key}={d[key]}; it must be >= 1")
    if d.get("depth_multiplier", 1) < 0:
        raise buf.fail(f"{what} ({name}) has depth_multiplier={d['depth_multiplier']}")
    d["padding"] = _PADDING.get(d["padding"], "?")
    if "activation" in d:
        d["activation"] = _ACTIVATION.get(d["activation"], "?")
    return d


def _work(op: OpInfo, tensors: list[TensorInfo]) -> tuple[int, int]:
    """(MACs, element-wise ops) of one op from its tensor shapes; see the module docstring."""
    def shape(pos: int, ins: bool = True) -> tuple[int, ...]:
        idx = op.inputs if ins else op.outputs
        return tensors[idx[pos]].shape if len(idx) > pos and idx[pos] >= 0 else ()

    out = _prod(shape(0, ins=False)) if op.outputs else 0
    name = op.opcode
    if name == "CONV_2D" and len(shape(1)) == 4:  # filter [O, H, W, I/groups]
        _, kh, kw, ci = shape(1)
        return out * kh * kw * ci, 0
    if name == "DEPTHWISE_CONV_2D" and len(shape(1)) == 4:  # filter [1, H, W, O]
        return out * shape(1)[1] * shape(1)[2], 0
    if name == "FULLY_CONNECTED" and len(shape(1)) == 2:  # weights [units, in]
        return out * shape(1)[1], 0
    if name == "TRANSPOSE_CONV" and len(shape(1)) == 4 and len(shape(2)) == 4:
        o, kh, kw, _ = shape(1)  # inputs: output_shape, filter [O, H, W, I], input
        return _prod(shape(2)) * kh * kw * o, 0
    if name == "BATCH_MATMUL" and shape(0):
        return out * shape(0)[-1], 0
    if name in ELEMENTWISE_OPS:
        return 0, out
    if name in POOL_OPS:
        return 0, out * op.options.get("filter_w", 1) * op.options.get("filter_h", 1)
    if name in REDUCE_OPS:
        return 0, _prod(shape(0))
    return 0, 0


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def layer_of(tensor_name: str, known_layers: list[str] | None = None) -> str:
    """The Keras layer(s) a converted tensor came from, read from its name.

    Converted names look like ``student_0_1/conv_a_1/Relu;student_0_1/conv_a_1/convolution``:
    model and layer name scopes (Keras 3 adds ``_1`` to each), one ``;``-separated part per
    fused TF op. Fused layers are joined with ``+`` (``s0_relu+s0_bn+s0_conv``). With
    ``known_layers`` only real layer names are returned.
    """
    found = []
    for segment in tensor_name.split(";"):
        layer = _segment_layer(segment.split(":")[0], known_layers)
        if layer and layer not in found:
            found.append(layer)
    return "+".join(found) if found else tensor_name.split(":")[0]


def _segment_layer(segment: str, known_layers: list[str] | None) -> str | None:
    parts = [p for p in segment.split("/") if p]
    if known_layers is not None:
        known = set(known_layers)
        for part in reversed(parts):
            for cand in (part, part.rsplit("_", 1)[0]):
                if cand in known:
                    return cand
        return None
    for part in reversed(parts[:-1]):  # the last part is the TF op (Relu, BiasAdd, ...)
        if re.fullmatch(r".+_\d+", part):
            return part.rsplit("_", 1)[0]
    if len(parts) >= 2:
        return parts[-2]
    return segment.removeprefix("serving_default_") or None


def op_layer(model: TFLiteModel, op: OpInfo, known_layers: list[str] | None = None) -> str:
    """The Keras layer an op came from: its output's name, else its weights', else its input's.

    Outputs of the last op are often renamed (``StatefulPartitionedCall:0``); its constant
    weights still carry the layer scope, and its activation input names the *previous* layer,
    so that one is the last resort.
    """
    order = op.outputs + op.inputs[1:] + op.inputs[:1]
    names = [model.tensors[i].name for i in order if i >= 0]
    for name in names:
        if known_layers:
            if any(_segment_layer(seg.split(":")[0], known_layers) for seg in name.split(";")):
                return layer_of(name, known_layers)
        elif "/" in name:
            return layer_of(name)
    return layer_of(names[0]) if names else "?"
