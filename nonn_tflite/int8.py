"""int8 arithmetic shared by conversion checks, the live nodes and the firmware generators.

One copy on purpose: the C fusion code rounds half away from zero, and "accuracy over MQTT
equals offline int8 accuracy" only holds if every Python path rounds, saturates and requantises
exactly as the C does. Functions take a :class:`QParams` or any ``(scale, zero_point)`` pair.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from nonn_tflite.errors import ModelFileError


class QParams(NamedTuple):
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


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's round(): half away from zero, so the C fusion code gives identical bytes."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize(real: np.ndarray, q: tuple[float, int]) -> np.ndarray:
    """float -> int8 with saturation."""
    scale, zero_point = q
    return np.clip(round_half_away(np.asarray(real, np.float64) / scale) + zero_point,
                   -128, 127).astype(np.int8)


def dequantize(values: np.ndarray, q: tuple[float, int]) -> np.ndarray:
    scale, zero_point = q
    return (np.asarray(values, np.float64) - zero_point) * scale


def requantise(values: np.ndarray, src: tuple[float, int], dst: tuple[float, int]) -> np.ndarray:
    """``q_d = clip(round((q_s - zp_s) * s_s / s_d) + zp_d, -128, 127)`` (ARCHITECTURE.md)."""
    real_over_dst = (np.asarray(values, np.float64) - src[1]) * (src[0] / dst[0])
    return np.clip(round_half_away(real_over_dst) + dst[1], -128, 127).astype(np.int8)


def images_to_int8(x_uint8: np.ndarray, q: tuple[float, int]) -> np.ndarray:
    """uint8 images -> a model's int8 input (``uint8 - 128`` when scale is 1/255, zp -128)."""
    return quantize(np.asarray(x_uint8, np.float64) / 255.0, q)
