"""Generate a TFLM op resolver holding exactly the ops a model uses.

``MicroMutableOpResolver<N>`` links only the kernels it registers, which is most of the flash
saving over registering everything (TFLM removed AllOpsResolver for that reason). N must equal
the number of Add calls: one too few fails at runtime, one too many wastes RAM.
"""

from __future__ import annotations

from firmware_bridge.render import render
from nonn_tflite.errors import ModelFileError
from nonn_tflite.tflite_model import TFLiteModel, parse_tflite

# Builtin op name -> MicroMutableOpResolver method, as spelt in tflite-micro's
# tensorflow/lite/micro/micro_mutable_op_resolver.h (2023 and later, which TensorFlowLite_ESP32
# 1.0.0 is built from). Names that CamelCase does not produce are spelled out; an op missing
# here has no Add method in TFLM, so export refuses the model instead of emitting dead code.
_SPECIAL = {
    "ADD_N": "AddAddN",
    "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs",
    "BROADCAST_TO": "AddBroadcastTo",
    "CONV_2D": "AddConv2D",
    "CUMSUM": "AddCumSum",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEPTH_TO_SPACE": "AddDepthToSpace",
    "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod",
    "GATHER_ND": "AddGatherNd",
    "HARD_SWISH": "AddHardSwish",
    "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D",
    "LEAKY_RELU": "AddLeakyRelu",
    "LOG_SOFTMAX": "AddLogSoftmax",
    "MAX_POOL_2D": "AddMaxPool2D",
    "MIRROR_PAD": "AddMirrorPad",
    "PADV2": "AddPadV2",
    "REDUCE_MAX": "AddReduceMax",
    "RELU6": "AddRelu6",
    "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SQUARED_DIFFERENCE": "AddSquaredDifference",
    "SVDF": "AddSvdf",
    "TRANSPOSE_CONV": "AddTransposeConv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
}
_CAMEL = (
    "ABS", "ADD", "ASSIGN_VARIABLE", "CALL_ONCE", "CAST", "CEIL", "CONCATENATION", "COS",
    "DEQUANTIZE", "DIV", "ELU", "EQUAL", "EXP", "EXPAND_DIMS", "FILL", "FLOOR", "FULLY_CONNECTED",
    "GATHER", "GREATER", "GREATER_EQUAL", "IF", "LESS", "LESS_EQUAL", "LOG", "LOGICAL_AND",
    "LOGICAL_NOT", "LOGICAL_OR", "LOGISTIC", "MAXIMUM", "MEAN", "MINIMUM", "MUL", "NEG",
    "NOT_EQUAL", "PACK", "PAD", "PRELU", "QUANTIZE", "READ_VARIABLE", "RELU", "RESHAPE", "ROUND",
    "RSQRT", "SELECT_V2", "SHAPE", "SIN", "SLICE", "SOFTMAX", "SPLIT", "SPLIT_V", "SQRT",
    "SQUARE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE", "UNPACK",
    "VAR_HANDLE", "WHILE", "ZEROS_LIKE",
)
TFLM_ADD_METHODS: dict[str, str] = {
    **{op: "Add" + "".join(part.capitalize() for part in op.split("_")) for op in _CAMEL},
    **_SPECIAL,
}


def ops_of(tflite_bytes: bytes) -> list[str]:
    """Op names the model's operators use, in first-use order, no repeats."""
    return parse_tflite(tflite_bytes).op_names


def add_method(op: str, what: str = "model") -> str:
    """The ``MicroMutableOpResolver`` method that registers builtin ``op``."""
    try:
        return TFLM_ADD_METHODS[op]
    except KeyError:
        raise ModelFileError(f"{what} uses op {op}, which TFLite Micro's "
                             "MicroMutableOpResolver cannot register") from None


def op_calls(model: TFLiteModel, what: str) -> list[tuple[str, str]]:
    """(op, Add method) for every op ``model`` uses; refuses ops TFLM cannot register."""
    return [(op, add_method(op, what)) for op in model.op_names]


def render_resolver(name: str, calls: list[tuple[str, str]]) -> str:
    """C++ header: ``NonnOpResolver`` sized to ``calls`` and a function making them."""
    return render("common/model_ops.h.j2", name=name, calls=calls, count=len(calls))


def resolver_header(name: str, tflite_bytes: bytes) -> str:
    """The resolver header for a model given as .tflite bytes."""
    return render_resolver(name, op_calls(parse_tflite(tflite_bytes, name), name))
