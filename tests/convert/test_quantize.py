"""int8 conversion, calibration and the TFLite Micro compatibility check."""

from __future__ import annotations

import numpy as np
import pytest

from nonn_tflite.errors import CompatibilityError, ConversionError, ModelFileError
from nonn_tflite.profile import measure_arena
from nonn_tflite.quantize import (
    TFLM_BUILTIN_OPS,
    calibration_indices,
    check_tflm,
    convert_int8,
    indices_digest,
    int8_problems,
    tflm_problems,
)
from nonn_tflite.tflite_model import builtin_op_names, parse_tflite


def _model(activation: str = "relu"):
    import keras

    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inp)
    x = keras.layers.Activation(activation, name="smooth")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, x, name="odd")


def test_calibration_indices_seeded_distinct_and_recorded():
    a, b = calibration_indices(1000, 200, seed=4), calibration_indices(1000, 200, seed=4)
    c = calibration_indices(1000, 200, seed=5)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(set(a.tolist())) == 200 and a.min() >= 0 and a.max() < 1000
    assert len(calibration_indices(50, 500, seed=0)) == 50  # capped at the split size
    assert indices_digest(a) == indices_digest(b) != indices_digest(c)
    with pytest.raises(ConversionError):
        calibration_indices(0, 10, seed=0)


def test_conversion_is_byte_identical_and_full_int8(float_images):
    model = _model()
    first, second = convert_int8(model, float_images), convert_int8(model, float_images)
    assert first == second
    m = parse_tflite(first)
    assert tflm_problems(m) == []
    assert {t.dtype for t in m.tensors if not t.is_constant} == {"int8"}
    assert all(t.shape_signature is None or -1 not in t.shape_signature for t in m.tensors)
    assert convert_int8(model, float_images[::-1]) == first  # min/max: order is irrelevant
    assert convert_int8(model, float_images * 0.5) != first  # the data itself matters


def test_op_without_tflm_kernel_is_refused_by_name(float_images):
    data = convert_int8(_model("gelu"), float_images)  # TFLite has an int8 GELU; TFLM does not
    with pytest.raises(CompatibilityError) as exc:
        check_tflm(data, "odd.tflite", ["conv_a", "smooth", "gap"])
    msg = str(exc.value)
    assert "GELU" in msg and "layer smooth" in msg and "odd.tflite" in msg
    # and TFLM itself agrees: it cannot even allocate the model
    with pytest.raises(ModelFileError, match="GELU"):
        measure_arena(data)


def test_float_models_run_under_tflm_but_convert_refuses_them_with_every_offence(float_images):
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(_model())  # plain float, batch -1 signature
    data = conv.convert()
    assert tflm_problems(parse_tflite(data)) == []  # TFLM runs float models (and ignores -1)
    problems = int8_problems(parse_tflite(data))
    text = "\n".join(problems)
    assert "is float32, not int8" in text and "layer smooth+conv_a" in text  # ReLU fused
    assert "has float32 weights" in text and "dynamic" not in text
    with pytest.raises(CompatibilityError, match="is not a full-int8 TFLite Micro model") as exc:
        check_tflm(data)
    assert f"and {len(problems) - 1} more" in str(exc.value) and "\n" not in str(exc.value)


def test_tflm_op_list_names_real_builtins():
    names = set(builtin_op_names().values())
    assert TFLM_BUILTIN_OPS <= names
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MEAN", "ADD"} <= TFLM_BUILTIN_OPS
    assert "GELU" not in TFLM_BUILTIN_OPS and "CUSTOM" not in TFLM_BUILTIN_OPS


def test_empty_calibration_data_is_a_conversion_error():
    with pytest.raises(ConversionError, match="empty"):
        convert_int8(_model(), np.zeros((0, 8, 8, 1), np.float32))


def test_tf_op_without_tflite_kernel_is_one_line_naming_op_and_layer():
    import keras

    inp = keras.Input((4,), name="x")
    out = keras.layers.Lambda(lambda t: keras.ops.cumprod(t, axis=1), name="running_product")(inp)
    with pytest.raises(ConversionError) as exc:
        convert_int8(keras.Model(inp, out, name="weird"), np.random.default_rng(0).random((10, 4)))
    msg = str(exc.value)
    assert "Cumprod" in msg and "layer running_product" in msg and "\n" not in msg
