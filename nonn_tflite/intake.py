"""Verify before use: the one gate every ``.tflite`` file passes before a runtime sees it.

LiteRT verifies flatbuffers but answers with multi-line C++ messages; TFLite Micro verifies
nothing and dies (SIGFPE, SIGSEGV) on a corrupt model. So every opener (the device and fusion
nodes, ``inspect``, convert's arena measurement, ``demo``) calls :func:`verify_bytes` or
:func:`verify_file` first. On top of :func:`~nonn_tflite.tflite_model.parse_tflite` (flatbuffer
structure, schema version, buffer bounds, indices, constant sizes, every subgraph) it checks
what a runtime would otherwise trust:

* tensor types and builtin ops are ones the schema defines;
* no tensor is larger than :data:`MAX_TENSOR_BYTES` (a corrupt dimension must not make a
  runtime try to allocate gigabytes);
* quantisation is coherent: scales finite and > 0, zero points inside the type's range, one
  scale per channel along a valid ``quantized_dimension``;
* names are valid UTF-8 (runtimes decode them strictly);
* no operator writes into a constant tensor, no model input is constant, and every tensor an
  operator reads is a model input, a constant, a variable or the output of an earlier operator
  (LiteRT otherwise fails mid-invoke with "lacks data"; TFLM reads an unwritten buffer);
* MAC ops have consistent shapes: filter/weight rank, output channels equal to the filter's,
  a bias as long as the output channels, input channels a multiple of the filter's.

Every failure is one :class:`~nonn_tflite.errors.ModelFileError` line naming the file and what
is wrong. Passing does not prove TFLM will cope (zero-size dimensions are legal in the schema
and still kill it), which is why TFLM runs untrusted files only in a child process
(:func:`nonn_tflite.profile.measure_arena`).
"""

from __future__ import annotations

import math
from pathlib import Path

from nonn_tflite.errors import ModelFileError
from nonn_tflite.tflite_model import (
    DTYPE_BYTES,
    TENSOR_TYPES,
    OpInfo,
    TensorInfo,
    TFLiteModel,
    builtin_op_names,
    read_model_bytes,
    parse_tflite,
)

MAX_TENSOR_BYTES = 256 << 20  # as large as the biggest TFLM arena profile.py ever tries
_ZERO_POINT_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
                     "int4": (-8, 7)}
_KNOWN_OPS = frozenset(builtin_op_names().values())


def verify_bytes(data: bytes, name: str = "model") -> TFLiteModel:
    """The parsed model, or ModelFileError naming the first thing that is wrong."""
    model = parse_tflite(data, name)
    problem = first_problem(model)
    if problem is not None:
        raise ModelFileError(f"{name} is not a valid TFLite model: {problem}")
    return model


def verify_file(path: str | Path) -> tuple[bytes, TFLiteModel]:
    """(bytes, parsed model) of a verified file; read once, so what was checked is what runs."""
    data = read_model_bytes(path)
    return data, verify_bytes(data, str(path))


def one_line(text: str, limit: int = 300) -> str:
    """A runtime's (often multi-line) message as one line, for a ModelFileError."""
    flat = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return flat[:limit] + ("..." if len(flat) > limit else "")


# ---- the checks ------------------------------------------------------------------------------

def first_problem(model: TFLiteModel) -> str | None:
    """The first semantic problem of a structurally sound model, None when there is none."""
    if not model.inputs or not model.outputs:
        return "the main subgraph has no inputs or no outputs"
    for t in model.tensors:
        problem = _tensor_problem(t)
        if problem is not None:
            return problem
    constant_inputs = [i for i in model.inputs if model.tensors[i].is_constant]
    if constant_inputs:
        return f"model input tensor {constant_inputs[0]} holds constant data"
    for op in model.operators:
        problem = _op_problem(model, op)
        if problem is not None:
            return f"operator {op.index} ({op.opcode}) {problem}"
    return _dataflow_problem(model)


def _dataflow_problem(model: TFLiteModel) -> str | None:
    """Operators run in file order; each must read only what exists by then."""
    ready = set(model.inputs) | {t.index for t in model.tensors if t.is_constant or t.is_variable}
    for op in model.operators:
        missing = [i for i in op.inputs if i >= 0 and i not in ready]
        if missing:
            return (f"operator {op.index} ({op.opcode}) reads tensor {missing[0]}, which is "
                    "no model input, no constant and no output of an earlier operator")
        ready.update(op.outputs)
    unwritten = [i for i in model.outputs if i not in ready]
    if unwritten:
        return f"model output tensor {unwritten[0]} is never written"
    return None


def _tensor_problem(t: TensorInfo) -> str | None:
    where = f"tensor {t.index} ({t.name})"
    if "\ufffd" in t.name:  # the reader decodes with errors="replace"
        return f"tensor {t.index} has a name that is not valid UTF-8"
    if t.dtype not in TENSOR_TYPES.values():
        return f"{where} has unknown type code {t.dtype.removeprefix('type')}"
    size = t.numel * DTYPE_BYTES.get(t.dtype, 1)
    if size > MAX_TENSOR_BYTES:
        return (f"{where} of shape {list(t.shape)} would need {size:,} bytes "
                f"(more than {MAX_TENSOR_BYTES:,})")
    if t.quant is None:
        return None
    q = t.quant
    if not all(math.isfinite(s) and s > 0 for s in q.scale):
        return f"{where} has a quantisation scale that is not finite and > 0 ({q.scale[:4]})"
    lo, hi = _ZERO_POINT_RANGE.get(t.dtype, (-(1 << 63), (1 << 63) - 1))
    if not all(lo <= z <= hi for z in q.zero_point):
        return f"{where} has a zero point outside [{lo}, {hi}] for {t.dtype} ({q.zero_point[:4]})"
    if len(q.scale) > 1:
        dim = q.quantized_dimension
        if not 0 <= dim < len(t.shape) or t.shape[dim] != len(q.scale):
            return (f"{where} has {len(q.scale)} per-channel scales, but dimension {dim} of "
                    f"shape {list(t.shape)} does not have that many channels")
    return None


def _op_problem(model: TFLiteModel, op: OpInfo) -> str | None:
    if op.opcode.startswith("BUILTIN_") and len(_KNOWN_OPS) > 10:
        return f"uses builtin op code {op.builtin_code}, which the TFLite schema does not define"
    written = [i for i in op.outputs if model.tensors[i].is_constant]
    if written:
        return f"writes into tensor {written[0]}, which holds constant data"
    check = _SHAPE_CHECKS.get(op.opcode)
    return check(_shapes(model, op)) if check else None


def _shapes(model: TFLiteModel, op: OpInfo) -> tuple[list, tuple]:
    ins = [model.tensors[i].shape if i >= 0 else None for i in op.inputs]
    out = model.tensors[op.outputs[0]].shape if op.outputs else ()
    return ins, out


def _conv(shapes: tuple[list, tuple]) -> str | None:
    ins, out = shapes
    if len(ins) < 2 or ins[0] is None or ins[1] is None:
        return "lacks its input or filter"
    x, w = ins[0], ins[1]
    if len(x) != 4 or len(w) != 4 or len(out) != 4:
        return f"needs 4-D input, filter and output, has {list(x)}, {list(w)}, {list(out)}"
    if w[0] != out[3]:
        return f"has a filter for {w[0]} output channels, but its output has {out[3]}"
    if w[3] and x[3] % w[3]:
        return f"input has {x[3]} channels, not a multiple of the filter's {w[3]}"
    return _bias(ins, out[3])


def _depthwise(shapes: tuple[list, tuple]) -> str | None:
    ins, out = shapes
    if len(ins) < 2 or ins[0] is None or ins[1] is None:
        return "lacks its input or filter"
    x, w = ins[0], ins[1]
    if len(x) != 4 or len(w) != 4 or len(out) != 4:
        return f"needs 4-D input, filter and output, has {list(x)}, {list(w)}, {list(out)}"
    if w[0] != 1 or w[3] != out[3]:
        return f"has filter {list(w)} for an output of {out[3]} channels"
    return _bias(ins, out[3])


def _fully_connected(shapes: tuple[list, tuple]) -> str | None:
    ins, out = shapes
    if len(ins) < 2 or ins[0] is None or ins[1] is None:
        return "lacks its input or weights"
    x, w = ins[0], ins[1]
    if len(w) != 2 or not out:
        return f"needs 2-D weights and an output, has {list(w)} and {list(out)}"
    if out[-1] != w[0]:
        return f"has weights for {w[0]} units, but its output has {out[-1]}"
    numel = math.prod(x)
    if w[1] and numel % w[1]:
        return f"input of {numel} values is not a multiple of the weights' {w[1]} inputs"
    return _bias(ins, w[0])


def _bias(ins: list, channels: int) -> str | None:
    if len(ins) > 2 and ins[2] is not None and math.prod(ins[2]) != channels:
        return f"has a bias of {math.prod(ins[2])} values for {channels} output channels"
    return None


_SHAPE_CHECKS = {"CONV_2D": _conv, "DEPTHWISE_CONV_2D": _depthwise,
                 "FULLY_CONNECTED": _fully_connected}
