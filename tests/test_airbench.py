"""The airbench teacher (Jordan 2024): its whitening layer whitens, its size is airbench94's,
its schedule has airbench's shape, and the whole recipe trains on a small real dataset, beats
chance by a wide margin and converts to a full-int8 model that TFLite Micro runs."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)


def test_whitening_layer_decorrelates_the_training_patches():
    from nonn_tflite.architectures import whitening_weights

    rng = np.random.default_rng(0)
    base = rng.normal(128, 40, (300, 9, 9, 3))
    x = np.clip(base + np.roll(base, 1, axis=2) * 0.8 + base[..., :1], 0, 255).astype(np.uint8)
    kernel, bias = whitening_weights(x, eps=1e-6)
    assert kernel.shape == (2, 2, 3, 24) and bias.shape == (24,)
    win = np.lib.stride_tricks.sliding_window_view(x / 255.0, (2, 2), axis=(1, 2))
    rows = win.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12)
    out = rows @ kernel.reshape(12, 24)[:, :12] + bias[:12]
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.cov(out.T), np.eye(12), atol=1e-2)
    np.testing.assert_allclose(kernel[..., 12:], -kernel[..., :12])  # and the negatives


def test_cifar_sized_airbench_is_airbench94s_network():
    from nonn_tflite.architectures import build_teacher
    from nonn_tflite.errors import UsageError
    from nonn_tflite.teacher import find_feature_layer

    x = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    model = build_teacher("airbench", (32, 32, 3), 10, x_train=x)
    assert 1.9e6 < model.count_params() < 2.05e6  # airbench94: about 2 M
    assert not model.get_layer("whiten").trainable
    assert tuple(model.get_layer("features").output.shape[1:]) == (3, 3, 256)
    assert find_feature_layer(model) == "features"
    with pytest.raises(UsageError, match="whitening"):
        build_teacher("airbench", (32, 32, 3), 10)


def test_triangular_schedule_has_airbenchs_shape():
    from nonn_tflite.training import AIRBENCH_LR_PER_1024, airbench_lr, triangular_schedule

    sched = triangular_schedule(1.0, 100)
    values = [float(sched(s)) for s in (0, 10, 20, 60, 100, 150)]
    np.testing.assert_allclose(values, [0.2, 0.6, 1.0, 1 - 0.93 / 2, 0.07, 0.07], rtol=1e-5)
    assert airbench_lr(512) == pytest.approx(AIRBENCH_LR_PER_1024 / 2)
    assert AIRBENCH_LR_PER_1024 == pytest.approx(1.5, rel=1e-3)


def test_batchnorm_biases_learn_airbenchs_64x_faster():
    import keras
    import tensorflow as tf

    from nonn_tflite.training import AIRBENCH_BIAS_SCALER, airbench_optimizer

    def first_step(opt) -> dict[str, np.ndarray]:
        keras.utils.set_random_seed(0)
        inp = keras.Input((4,))
        model = keras.Model(inp, keras.layers.BatchNormalization(scale=False, name="bn")(
            keras.layers.Dense(3, name="fc")(inp)))
        before = {v.path: np.array(v) for v in model.trainable_variables}
        x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
        with tf.GradientTape() as tape:
            loss = keras.ops.sum(model(x, training=True) * np.arange(3, dtype="float32"))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return {v.path: np.array(v) - before[v.path] for v in model.trainable_variables}

    scaled = first_step(airbench_optimizer(512, 10, 100))
    plain = first_step(airbench_optimizer(512, 10, 100, bias_scaler=1.0))
    beta = next(k for k in scaled if k.endswith("bn/beta"))
    np.testing.assert_allclose(scaled[beta], AIRBENCH_BIAS_SCALER * plain[beta], rtol=1e-5)
    assert np.abs(plain[beta]).max() > 0
    for k in scaled:
        if k != beta:
            np.testing.assert_allclose(scaled[k], plain[k], rtol=1e-6, atol=1e-9)


def test_translate_tta_is_airbenchs_level_2():
    from nonn_tflite.training import flip_tta_logits

    class PositionSum:  # logits depend on where each pixel is, so every view differs
        weights = np.random.default_rng(1).normal(size=(6, 6, 2, 3))

        def predict(self, x, batch_size=None, verbose=0):
            return np.einsum("nhwc,hwck->nk", x, self.weights)

    x = np.random.default_rng(2).random((5, 6, 6, 2))
    m = PositionSum()
    mirror = lambda v: (m.predict(v) + m.predict(v[:, :, ::-1])) / 2  # noqa: E731
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    want = 0.5 * mirror(x) + 0.25 * (mirror(padded[:, 0:6, 0:6]) + mirror(padded[:, 2:8, 2:8]))
    np.testing.assert_allclose(flip_tta_logits(m, x, translate=True), want)
    np.testing.assert_allclose(flip_tta_logits(m, x), mirror(x))
    assert not np.allclose(want, mirror(x))


def test_recipe_trains_on_digits_and_converts_to_int8_for_tflm():
    from nonn_tflite.config import DataConfig, TeacherConfig, TrainConfig
    from nonn_tflite.data import load_dataset, to_float
    from nonn_tflite.int8 import images_to_int8
    from nonn_tflite.interpreters import MicroRunner
    from nonn_tflite.profile import qparams
    from nonn_tflite.quantize import check_tflm, convert_int8, keras_layer_names
    from nonn_tflite.teacher import evaluate, train_teacher
    from nonn_tflite.training import flip_tta_logits

    ds = load_dataset(DataConfig("digits"))
    model, history = train_teacher(ds, TeacherConfig("airbench", TrainConfig(epochs=3, batch_size=128)),
                                   quiet=True)
    assert len(history.history["val_accuracy"]) == 3
    acc = evaluate(model, ds.x_test, ds.y_test)
    assert acc > 0.5, acc  # chance is 0.1
    tta = flip_tta_logits(model, to_float(ds.x_test))
    assert tta.shape == (len(ds.y_test), 10) and np.isfinite(tta).all()

    buf = convert_int8(model, to_float(ds.x_train[:128]))
    parsed = check_tflm(buf, "airbench teacher", keras_layer_names(model))
    ops = {op.opcode for op in parsed.operators}
    assert {"CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED"} <= ops and "GELU" not in ops
    x = images_to_int8(ds.x_test[:120], qparams(parsed.input_tensors()[0]))
    logits = MicroRunner(buf, 4 << 20)(x)  # TFLite Micro itself
    int8_acc = float(np.mean(np.argmax(logits, -1) == ds.y_test[:120]))
    assert int8_acc > 0.5 and int8_acc > float(np.mean(np.argmax(
        model.predict(to_float(ds.x_test[:120]), verbose=0), -1) == ds.y_test[:120])) - 0.1


def test_cli_offers_airbench_and_names_it_for_an_unknown_arch(tmp_path):
    from click.testing import CliRunner

    from nonn_tflite.cli import main

    assert "airbench" in CliRunner().invoke(main, ["teacher", "--help"]).output
    result = CliRunner().invoke(main, ["teacher", "--arch", "vgg", "--out", str(tmp_path / "t")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and "airbench" in lines[-1] and "Traceback" not in result.output
