"""The fusion model as plain C: int8 fully-connected layers with TFLM's requantisation.

A gateway MCU then needs no TFLM at all for the fusion step (one small Dense). Multipliers are
computed here exactly as TFLM computes them (QuantizeMultiplier on the same double value), and
the C applies gemmlowp's rounding, so the C output equals the TFLM interpreter's bit for bit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from firmware_bridge.carrays import crc32
from firmware_bridge.render import render
from nonn_tflite.errors import ModelFileError
from nonn_tflite.int8 import QParams, round_half_away
from nonn_tflite.profile import qparams
from nonn_tflite.tflite_model import OpInfo, TensorInfo, TFLiteModel

_PASS_THROUGH = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS"}  # int8 layout no-ops for a 1 x N vector


@dataclass(frozen=True)
class FcLayer:
    """One int8 FULLY_CONNECTED layer, ready for C: out = clamp(requant(W (x - zp_in) + b))."""

    weights: np.ndarray  # int8 [out, in]
    bias: np.ndarray  # int32 [out]
    multipliers: tuple[int, ...]  # Q31 per output channel
    shifts: tuple[int, ...]
    input_offset: int  # -input zero point
    output_offset: int  # output zero point
    act_min: int
    act_max: int

    @property
    def in_width(self) -> int:
        return int(self.weights.shape[1])

    @property
    def out_width(self) -> int:
        return int(self.weights.shape[0])


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLM's QuantizeMultiplier: real = m * 2^(shift - 31), m in [2^30, 2^31)."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(round_half_away(q * (1 << 31)))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return int(q_fixed), int(shift)


def _effective_scales(inp: QParams, w_scales: list[float], out: QParams,
                      channels: int) -> list[float]:
    """input*filter/output scale per channel, with TFLM's own float/double steps."""
    s_in, s_out = np.float32(inp.scale), np.float32(out.scale)
    if len(w_scales) == 1:  # GetQuantizedConvolutionMultipler: float product, then double
        product = float(np.float32(s_in * np.float32(w_scales[0])))
        return [product / float(s_out)] * channels
    # PopulateConvolutionQuantizationParams: double throughout
    return [float(s_in) * float(np.float32(s)) / float(s_out) for s in w_scales]


def _activation_range(activation: str | None, out: QParams) -> tuple[int, int]:
    zp, scale = out.zero_point, float(np.float32(out.scale))
    if activation in (None, "NONE"):
        return -128, 127
    if activation == "RELU":
        return max(-128, zp), 127
    if activation == "RELU6":
        return max(-128, zp), min(127, zp + int(round_half_away(6.0 / scale)))
    raise ModelFileError(f"fusion model uses fused activation {activation}; "
                         "the C fusion supports NONE, RELU and RELU6")


def fc_layers(info: TFLiteModel, what: str = "fusion model") -> list[FcLayer]:
    """The model's FULLY_CONNECTED chain; anything else is refused with its op name."""
    layers = []
    for op in info.operators:
        if op.opcode in _PASS_THROUGH:
            continue
        if op.opcode != "FULLY_CONNECTED":
            raise ModelFileError(f"{what} uses {op.opcode}; the C fusion supports only "
                                 "FULLY_CONNECTED layers (use the Python fusion node)")
        layers.append(_fc_layer(info, op, what))
    if not layers:
        raise ModelFileError(f"{what} has no FULLY_CONNECTED layer")
    for a, b in itertools.pairwise(layers):
        if a.out_width != b.in_width:
            raise ModelFileError(f"{what}: layer widths {a.out_width} -> {b.in_width} differ")
    return layers


def _fc_layer(info: TFLiteModel, op: OpInfo, what: str) -> FcLayer:
    inp, w = info.tensors[op.inputs[0]], info.tensors[op.inputs[1]]
    out = info.tensors[op.outputs[0]]
    if (inp.dtype, w.dtype, out.dtype) != ("int8", "int8", "int8"):
        raise ModelFileError(f"{what}: FULLY_CONNECTED is not int8 throughout "
                             f"({inp.dtype}/{w.dtype}/{out.dtype})")
    if w.quant is None:
        raise ModelFileError(f"{what}: FULLY_CONNECTED weights have no quantisation")
    if any(z != 0 for z in w.quant.zero_point):
        raise ModelFileError(f"{what}: weights have a non-zero zero point")
    weights = info.tensor_data(w)
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    if has_bias and info.tensors[op.inputs[2]].dtype != "int32":
        raise ModelFileError(f"{what}: FULLY_CONNECTED bias is not int32")
    bias = (info.tensor_data(info.tensors[op.inputs[2]]) if has_bias
            else np.zeros(weights.shape[0], np.int32))
    q_in, q_out = _quant(inp), _quant(out)
    scales = _effective_scales(q_in, w.quant.scale, q_out, int(w.shape[0]))
    pairs = [quantize_multiplier(s) for s in scales]
    act_min, act_max = _activation_range(op.options.get("activation"), q_out)
    return FcLayer(weights, bias.reshape(-1), tuple(m for m, _ in pairs),
                   tuple(s for _, s in pairs), -q_in.zero_point, q_out.zero_point,
                   act_min, act_max)


def _quant(t: TensorInfo) -> QParams:
    return QParams(*qparams(t))


def flash_bytes(layers: list[FcLayer]) -> int:
    """Constant data of the C fusion: int8 weights, int32 bias and multiplier, int8 shift."""
    return sum(layer.weights.size + 9 * layer.out_width for layer in layers)


def params_crc32(layers: list[FcLayer]) -> int:
    """CRC-32 over every layer's weights, then bias as little-endian int32, in layer order.

    Mirrors nonn_fusion_params_crc32() in the generated C, which checks it at boot."""
    crc = 0
    for layer in layers:
        crc = crc32(layer.weights.astype(np.int8).tobytes(), crc)
        crc = crc32(layer.bias.astype("<i4").tobytes(), crc)
    return crc


def render_fusion(info: TFLiteModel, name: str = "fusion") -> tuple[str, str, list[FcLayer]]:
    """(header, source, layers) of the C fusion for ``info``."""
    layers = fc_layers(info)
    context = {
        "name": name,
        "layers": [_layer_context(i, layer) for i, layer in enumerate(layers)],
        "input": _quant(info.input_tensors()[0]),
        "output": _quant(info.output_tensors()[0]),
        "input_width": layers[0].in_width,
        "output_width": layers[-1].out_width,
        "max_width": max(layer.out_width for layer in layers),
        "crc": params_crc32(layers),
        "flash_bytes": flash_bytes(layers),
    }
    return (render("common/fusion_model.h.j2", **context),
            render("common/fusion_model.c.j2", **context), layers)


def _layer_context(index: int, layer: FcLayer) -> dict:
    rows = [", ".join(str(int(v)) for v in row) for row in layer.weights]
    return {
        "index": index,
        "in_width": layer.in_width,
        "out_width": layer.out_width,
        "weight_rows": rows,
        "bias": ", ".join(str(int(b)) for b in layer.bias),
        "multipliers": ", ".join(str(m) for m in layer.multipliers),
        "shifts": ", ".join(str(s) for s in layer.shifts),
        "input_offset": layer.input_offset,
        "output_offset": layer.output_offset,
        "act_min": layer.act_min,
        "act_max": layer.act_max,
    }
