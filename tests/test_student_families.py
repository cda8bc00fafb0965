"""Both student families convert to full-int8 and run bit-exact under TFLite Micro (the
Python TFLM interpreter against LiteRT's reference kernels), after a short real training on
digits so BatchNorm statistics and activation ranges are not trivial."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)


def test_default_spec_is_todays_resnet():
    from nonn_tflite.architectures import StudentSpec

    spec = StudentSpec(8, 1, 16, 3)
    assert spec.family == "resnet"
    assert spec.describe() == "resnet w8 b1 -> 16"  # the string stored in manifests today
    assert StudentSpec(8, 1, 16, 3, "mbv2").describe() == "mbv2 w8 b1 e4 -> 16"


def test_mbv2_is_built_of_inverted_residuals():
    from nonn_tflite.architectures import StudentSpec, build_student

    model = build_student(StudentSpec(8, 2, 12, 3, "mbv2"), (32, 32, 3), 0)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("DepthwiseConv2D") == 6  # 3 stages x 2 blocks
    assert kinds.count("Add") == 4  # stage 0 keeps the stem width; later stages: block 2
    fmap, vec = model.outputs
    assert tuple(fmap.shape[1:]) == (4, 4, 12) and tuple(vec.shape[1:]) == (12,)  # stem /2


def test_unknown_family_is_refused():
    from nonn_tflite.architectures import StudentSpec, build_student
    from nonn_tflite.errors import UsageError

    with pytest.raises(UsageError, match="unknown student family 'vit'"):
        build_student(StudentSpec(8, 1, 4, 2, "vit"), (8, 8, 1), 0)


def test_sizing_estimates_an_mbv2_student():
    from nonn_tflite.architectures import StudentSpec
    from nonn_tflite.sizing import estimate

    res = estimate(StudentSpec(8, 1, 16, 3), (32, 32, 3))
    mb = estimate(StudentSpec(8, 1, 16, 3, "mbv2"), (32, 32, 3))
    assert 0 < mb.params < res.params  # depthwise-separable: fewer weights at one width
    assert mb.flash_bytes < res.flash_bytes


@pytest.mark.parametrize("family,blocks", [("resnet", 1), ("mbv2", 1)])
def test_family_converts_to_int8_and_is_bit_exact_under_tflm(family, blocks):
    import keras

    from nonn_tflite.architectures import StudentSpec, build_student, deployable_student
    from nonn_tflite.config import DataConfig
    from nonn_tflite.data import load_dataset, to_float
    from nonn_tflite.int8 import images_to_int8
    from nonn_tflite.parity import tflm_parity
    from nonn_tflite.profile import qparams
    from nonn_tflite.quantize import check_tflm, convert_int8, keras_layer_names

    keras.utils.set_random_seed(0)
    ds = load_dataset(DataConfig("digits"))
    student = build_student(StudentSpec(8, blocks, 6, 2, family), ds.input_shape, 0)
    vec = deployable_student(student)
    head = keras.layers.Dense(ds.num_classes)(vec.output)  # train it on the labels briefly
    clf = keras.Model(vec.input, head)
    clf.compile(keras.optimizers.Adam(0.01),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clf.fit(to_float(ds.x_train), ds.y_train, epochs=2, batch_size=64, verbose=0)

    buf = convert_int8(vec, to_float(ds.x_train[:128]))
    parsed = check_tflm(buf, f"{family} student", keras_layer_names(vec))  # TFLM ops, full int8
    ops = {op.opcode for op in parsed.operators}
    assert ("DEPTHWISE_CONV_2D" in ops) == (family == "mbv2")
    x = images_to_int8(ds.x_test[:24], qparams(parsed.input_tensors()[0]))
    result = tflm_parity(buf, x, 1 << 20)
    assert result.bit_exact, result.note
    assert result.total_values == 24 * 6
