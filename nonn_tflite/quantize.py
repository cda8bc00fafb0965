"""Full-integer int8 conversion of Keras models, calibration, and the TFLite Micro check.

Conversion needs all of: ``optimizations=[DEFAULT]``, a representative dataset of batch-1
float32 arrays, ``TFLITE_BUILTINS_INT8`` only, and int8 input/output types; without the
representative data the converter silently makes a hybrid model that TFLM refuses. Models are
wrapped with a batch-1 input first, so no tensor keeps a dynamic (-1) batch dimension (TFLM
cannot resize inputs). Calibration images come from the *training* split, chosen by a seed,
and the converter is deterministic, so the same model, data and seed give identical bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nonn_tflite.errors import CompatibilityError, ConversionError
from nonn_tflite.tflite_model import MAC_OPS, OpInfo, TFLiteModel, layer_of, op_layer, parse_tflite

log = logging.getLogger(__name__)

# Builtin ops with a kernel in TensorFlow Lite Micro: the Add*() methods of
# tensorflow/lite/micro/micro_mutable_op_resolver.h (tflite-micro main, 2024-2025), checked
# against the Register_* kernels of the installed tflite-micro wheel. Custom ops that TFLM
# also ships (CIRCULAR_BUFFER, DETECTION_POSTPROCESS, ETHOSU) are not builtins and are absent.
TFLM_BUILTIN_OPS = frozenset("""
ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL BATCH_TO_SPACE_ND
BROADCAST_ARGS BROADCAST_TO CALL_ONCE CAST CEIL CONCATENATION CONV_2D COS CUMSUM DEPTH_TO_SPACE
DEPTHWISE_CONV_2D DEQUANTIZE DIV DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP EQUAL EXP EXPAND_DIMS
FILL FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GATHER_ND GREATER GREATER_EQUAL HARD_SWISH
IF L2_NORMALIZATION L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL LOG LOG_SOFTMAX LOGICAL_AND
LOGICAL_NOT LOGICAL_OR LOGISTIC MAX_POOL_2D MAXIMUM MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL
PACK PAD PADV2 PRELU QUANTIZE READ_VARIABLE REDUCE_MAX REDUCE_MIN RELU RELU6 RESHAPE
RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR REVERSE_V2 ROUND RSQRT SELECT_V2 SHAPE SIN SLICE SOFTMAX
SPACE_TO_BATCH_ND SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE SQUARED_DIFFERENCE SQUEEZE
STRIDED_SLICE SUB SUM SVDF TANH TRANSPOSE TRANSPOSE_CONV UNIDIRECTIONAL_SEQUENCE_LSTM UNPACK
VAR_HANDLE WHILE ZEROS_LIKE
""".split())

# Input position of the bias of each MAC op (TRANSPOSE_CONV: output_shape, filter, input, bias).
_BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}


# -- calibration ---------------------------------------------------------------------------------

def calibration_indices(num_train: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct training-split indices chosen by ``seed`` (sorted: order is irrelevant
    to min/max calibration, and sorted lists diff cleanly between runs)."""
    if num_train < 1:
        raise ConversionError("the training split is empty; cannot calibrate int8 ranges")
    if count < 1:
        raise ConversionError(f"--calibration {count}: need at least one calibration image")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_train, size=min(count, num_train), replace=False))


def indices_digest(indices: np.ndarray) -> str:
    """sha256 of the indices as the JSON list written to calibration_indices.json."""
    return hashlib.sha256(json.dumps([int(i) for i in indices]).encode()).hexdigest()


# -- conversion ---------------------------------------------------------------------------------

def convert_int8(model, samples: np.ndarray) -> bytes:
    """Full-integer int8 .tflite of a single-input Keras ``model``, calibrated on ``samples``
    (float32, one row per calibration input, in the model's input layout)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim < 2 or len(samples) == 0:
        raise ConversionError(f"calibration data for {model.name} is empty or has no batch axis")
    wrapped = batch1(model)
    try:
        return _convert(wrapped, samples, from_saved_model=False)
    except ConversionError as first:
        log.debug("from_keras_model failed (%s); retrying via model.export + from_saved_model", first)
        return _convert(wrapped, samples, from_saved_model=True)


def batch1(model):
    """The model behind a fixed batch-1 input, so no tensor keeps a -1 batch dimension."""
    import keras

    if len(model.inputs) != 1:
        raise ConversionError(f"model {model.name} has {len(model.inputs)} inputs; expected 1")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ConversionError(f"model {model.name} input shape {shape} is not fully defined; "
                              "TFLite Micro needs fixed shapes")
    name = getattr(model.inputs[0], "name", None) or "input"
    inp = keras.Input(shape=shape, batch_size=1, name=str(name).split(":")[0])
    return keras.Model(inp, model(inp), name=model.name)


def _representative(samples: np.ndarray):
    def gen() -> Iterator[list[np.ndarray]]:
        for i in range(len(samples)):
            yield [samples[i:i + 1]]
    return gen


def _convert(model, samples: np.ndarray, from_saved_model: bool) -> bytes:
    data, error = None, None
    with captured_output() as out, tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # int8 *inputs* need no statistics: their range comes from the representative data
        warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
        try:
            data = bytes(_converter(model, samples, tmp, from_saved_model).convert())
        except Exception as exc:  # the converter raises many types; users get one line
            reason = _first_line(str(exc)) or type(exc).__name__
            error = ConversionError(f"int8 conversion of {model.name} failed: {reason}")
            error.__cause__ = exc
    log.debug("converter output for %s:\n%s", model.name, out.text)  # after the capture ends
    if data is None:
        raise error or ConversionError(f"int8 conversion of {model.name} produced nothing")
    return data


def _converter(model, samples: np.ndarray, tmp: str, from_saved_model: bool):
    """A TFLiteConverter set for full-integer int8 (GUIDE §3: every one of these is needed)."""
    import tensorflow as tf

    if from_saved_model:
        model.export(tmp)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
    else:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = _representative(samples)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv


def _first_line(text: str) -> str:
    """The useful part of a converter error: the ops TFLite lacks (and their layers), else
    the first line of MLIR's multi-page dump."""
    import re

    select = re.search(r"TF Select ops: ([^\n]+)", text)
    if select:
        scopes = re.findall(r'fused\["(\w+):", "([^"@]+)@', text)
        layers = sorted({layer_of(scope) for op, scope in scopes if op in select.group(1)})
        where = f" (layer {', '.join(layers)})" if layers else ""
        return (f"it uses TensorFlow ops with no TFLite builtin kernel: {select.group(1).strip()}"
                f"{where}; TFLite Micro cannot run them either")
    for line in text.strip().splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ")):
            return line[:300]
    return ""


class _Captured:
    text = ""


@contextlib.contextmanager
def captured_output(fds: tuple[int, ...] = (1, 2)) -> Iterator[_Captured]:
    """Send stdout/stderr (converter and TFLM chatter) to a buffer while inside.

    TensorFlow's converter and TFLM write straight to file descriptors 1 and 2, bypassing
    ``sys.stdout``, so the descriptors are redirected; Python-level writes (Keras prints) are
    redirected too, for callers whose ``sys.stdout`` is not fd 1 (click's CliRunner).
    """
    result = _Captured()
    py = io.StringIO()
    with tempfile.TemporaryFile() as sink, contextlib.ExitStack() as stack:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if 1 in fds:
            stack.enter_context(contextlib.redirect_stdout(py))
        if 2 in fds:
            stack.enter_context(contextlib.redirect_stderr(py))
        saved = {fd: os.dup(fd) for fd in fds}
        try:
            for fd in fds:
                os.dup2(sink.fileno(), fd)
            yield result
        finally:
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, dup in saved.items():
                os.dup2(dup, fd)
                os.close(dup)
            sink.seek(0)
            result.text = sink.read().decode("utf-8", errors="replace") + py.getvalue()


# -- TFLite Micro compatibility ---------------------------------------------------------------

def tflm_problems(model: TFLiteModel, known_layers: list[str] | None = None) -> list[str]:
    """Every reason TensorFlow Lite Micro itself would refuse ``model`` (allocate or invoke).

    Only what TFLM checks counts: an op without a TFLM kernel (custom ops included), and a
    hybrid op (int8 weights, float activations: "Hybrid models are not supported on TFLite
    Micro"). TFLM allocates every tensor from ``shape`` and never reads ``shape_signature``, so
    a converter's ``[-1, H, W, C]`` signature is no problem (see :func:`tflm_notes`); a
    negative dimension in ``shape`` itself is refused earlier, by the reader. Float models run
    under TFLM too; that the toolkit's devices need full int8 is :func:`int8_problems`.
    Each message names the op and the Keras layer it came from (read from tensor names;
    ``known_layers`` makes that exact). tests/convert/test_tflm_agreement.py holds this
    against a real TFLM allocate+invoke.
    """
    problems: list[str] = []
    for op in model.operators:
        problems += _op_problems(model, op, known_layers)
    return list(dict.fromkeys(problems))


def int8_problems(model: TFLiteModel, known_layers: list[str] | None = None) -> list[str]:
    """Where ``model`` departs from the full-int8, batch-1 form the toolkit deploys.

    TFLM would run such a model (a float model, say), but the devices and the wire format
    (int8 vectors, one scale and zero point each) need int8 tensors throughout, int8 weights,
    int32 biases and batch 1, so ``convert`` refuses its own output on any of these.
    """
    problems: list[str] = []
    for op in model.operators:
        problems += _int8_op_problems(model, op, known_layers)
    produced = {i for op in model.operators for i in op.outputs}
    for t in model.tensors:
        if t.index not in produced and t.index not in model.inputs:
            continue
        op = model.producer(t.index)
        layer = op_layer(model, op, known_layers) if op else layer_of(t.name)
        where = f"tensor '{t.name}' (layer {layer})"
        if t.dtype != "int8":
            origin = f", output of op {op.index} {op.opcode}" if op else ", a model input"
            problems.append(f"{where} is {t.dtype}, not int8{origin}")
        elif t.quant is None or t.quant.per_tensor is None:
            problems.append(f"{where} is int8 without one per-tensor scale/zero point")
    for i in model.inputs + model.outputs:
        t = model.tensors[i]
        if t.shape and t.shape[0] != 1:
            problems.append(f"model input/output '{t.name}' has batch {t.shape[0]}; the devices "
                            "run batch 1")
    return list(dict.fromkeys(problems))


def tflm_notes(model: TFLiteModel) -> list[str]:
    """Facts worth a line that are no TFLM problem: dynamic dimensions in ``shape_signature``
    other than the batch (TFLM runs the model at the stored ``shape`` regardless)."""
    notes = []
    for i in model.inputs:
        t = model.tensors[i]
        sig = t.shape_signature or ()
        if any(d < 0 for d in sig[1:]):
            notes.append(f"input '{t.name}' has shape_signature {list(sig)}; TFLM ignores it and "
                         f"runs the model at its stored shape {list(t.shape)}")
    return notes


def _op_problems(model: TFLiteModel, op: OpInfo, known: list[str] | None) -> list[str]:
    layer = op_layer(model, op, known)
    where = f"op {op.index} {op.opcode} (layer {layer})"
    if op.builtin_code == 32:
        flex = " (a TensorFlow Select op)" if (op.custom_code or "").startswith("Flex") else ""
        return [f"op {op.index} custom '{op.custom_code}'{flex} (layer {layer}) has no TFLM "
                "builtin kernel"]
    out = []
    if op.opcode not in TFLM_BUILTIN_OPS:
        out.append(f"{where} has no TFLite Micro kernel")
    if op.opcode in MAC_OPS:
        weights = _input(model, op, 1)
        act = _input(model, op, 2 if op.opcode == "TRANSPOSE_CONV" else 0)
        if (weights is not None and weights.dtype in ("int8", "int4") and act is not None
                and act.dtype == "float32"):
            out.append(f"{where} is a hybrid op ({weights.dtype} weights, float32 activations), "
                       "which TFLM refuses")
    return out


def _int8_op_problems(model: TFLiteModel, op: OpInfo, known: list[str] | None) -> list[str]:
    where = f"op {op.index} {op.opcode} (layer {op_layer(model, op, known)})"
    out = []
    if op.opcode in MAC_OPS:
        weights = _input(model, op, 1)
        if weights is not None and weights.is_constant and weights.dtype != "int8":
            out.append(f"{where} has {weights.dtype} weights '{weights.name}', not int8")
    bias = _input(model, op, _BIAS_INPUT.get(op.opcode, -1))
    if bias is not None and bias.dtype != "int32":
        out.append(f"{where} has a {bias.dtype} bias '{bias.name}', not int32")
    return out


def _input(model: TFLiteModel, op: OpInfo, pos: int):
    if pos < 0 or pos >= len(op.inputs) or op.inputs[pos] < 0:
        return None
    return model.tensors[op.inputs[pos]]


def check_tflm(model: TFLiteModel | bytes, what: str = "model",
               known_layers: list[str] | None = None) -> TFLiteModel:
    """The parsed model, or :class:`CompatibilityError` (first problem and a count) when TFLM
    would refuse it or it is not the full-int8 batch-1 model the devices need."""
    parsed = parse_tflite(model, what) if isinstance(model, (bytes, bytearray)) else model
    refused = tflm_problems(parsed, known_layers)
    if refused:
        raise CompatibilityError(refused + int8_problems(parsed, known_layers), what)
    not_int8 = int8_problems(parsed, known_layers)
    if not_int8:
        raise CompatibilityError(not_int8, what, "is not a full-int8 TFLite Micro model")
    return parsed


def keras_layer_names(model) -> list[str]:
    """All layer names of a Keras model, nested models included (for :func:`layer_of`)."""
    names = []
    for layer in getattr(model, "layers", []):
        names.append(layer.name)
        names += keras_layer_names(layer)
    return names


def write_model(path: Path, data: bytes) -> None:
    from nonn_tflite.rundir import atomic_write_bytes

    atomic_write_bytes(path, data)
