"""The TF-free .tflite reader: facts, MAC counts, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nonn_tflite.errors import ModelFileError
from nonn_tflite.quantize import convert_int8
from nonn_tflite.tflite_model import layer_of, parse_tflite, read_tflite


@pytest.fixture(scope="module")
def hand_model(float_images):
    """Conv 3x3 valid (8x8x1 -> 6x6x4), depthwise 3x3 same, 1x1 conv to 8, GAP, Dense 8->3."""
    import keras

    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="valid", activation="relu", name="c3")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = keras.layers.Conv2D(8, 1, activation="relu", name="c1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(x), name="hand")
    model.get_layer("fc").bias.assign([0.1, -0.2, 0.3])  # an all-zero bias is dropped by the converter
    return model, convert_int8(model, float_images)


def test_mac_count_equals_hand_computation(hand_model):
    model, data = hand_model
    m = parse_tflite(data)
    by_op = {op.opcode: 0 for op in m.operators}
    for op in m.operators:
        by_op[op.opcode] += op.macs
    conv3 = 6 * 6 * 4 * (3 * 3 * 1)
    dw = 6 * 6 * 4 * (3 * 3)
    conv1 = 6 * 6 * 8 * (1 * 1 * 4)
    fc = 3 * 8
    assert by_op["CONV_2D"] == conv3 + conv1
    assert by_op["DEPTHWISE_CONV_2D"] == dw
    assert by_op["FULLY_CONNECTED"] == fc
    assert m.macs == conv3 + dw + conv1 + fc == 3768
    assert m.elementwise_ops == 6 * 6 * 8  # the MEAN of global pooling reads 288 values
    assert m.params == model.count_params()  # weights + biases, not shape arguments


def test_reader_facts(hand_model):
    _, data = hand_model
    m = parse_tflite(data, "hand.tflite")
    assert m.schema_version == 3 and m.num_subgraphs == 1 and m.size == len(data)
    (inp,), (out,) = m.input_tensors(), m.output_tensors()
    assert (inp.dtype, inp.shape, out.dtype, out.shape) == ("int8", (1, 8, 8, 1), "int8", (1, 3))
    assert inp.quant.per_tensor[1] == -128
    assert m.op_names == ["CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED"]
    conv = next(op for op in m.operators if op.opcode == "CONV_2D")
    assert conv.options["stride_w"] == 1 and conv.options["padding"] == "VALID"
    assert conv.options["activation"] == "RELU"  # the converter fuses ReLU into the conv
    layers = {layer_of(m.tensors[op.outputs[0]].name) for op in m.operators[:-1]}
    assert {"c3", "dw", "c1"} <= layers


@pytest.mark.parametrize("make, phrase", [
    (lambda good: good[: len(good) // 2], "truncated or corrupt"),
    (lambda good: good[:6], "only 6 bytes"),
    (lambda good: np.random.default_rng(7).bytes(len(good)), "TFL3"),
    (lambda good: b"this is a text file, not a model\n" * 20, "looks like text"),
    (lambda good: b"", "only 0 bytes"),
])
def test_corrupt_files_get_one_clear_error(hand_model, tmp_path, make, phrase):
    path = tmp_path / "bad.tflite"
    path.write_bytes(make(hand_model[1]))
    with pytest.raises(ModelFileError) as exc:
        read_tflite(path)
    msg = str(exc.value)
    assert phrase in msg and str(path) in msg and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        read_tflite(tmp_path / "nope.tflite")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_corruption_never_escapes_as_another_exception(hand_model, data):
    """Flip bytes anywhere: the reader either parses or raises ModelFileError, nothing else."""
    good = bytearray(hand_model[1])
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(good) - 1))
        good[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(8, len(good)))
    try:
        m = parse_tflite(bytes(good[:cut]))
    except ModelFileError:
        return
    assert m.macs >= 0 and all(d >= 0 for t in m.tensors for d in t.shape)
