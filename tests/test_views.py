"""The augmented-view cache: the stored view parameters rebuild exactly the images the teacher
saw, the cache holds the teacher's exact outputs for them, each training batch pairs an image
with the teacher outputs of that very image, and ``views=1`` leaves distillation as it was."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)

PARTS = [[0, 1, 2], [3, 4, 5]]


def _teacher(seed: int = 0):
    import keras

    from nonn_tflite.teacher import teacher_view

    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    fmap = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="features")(x)
    out = keras.layers.Dense(10, name="logits")(keras.layers.GlobalAveragePooling2D()(fmap))
    return teacher_view(keras.Model(inp, out))


def _digits(n: int = 96):
    from nonn_tflite.config import DataConfig
    from nonn_tflite.data import load_dataset

    return load_dataset(DataConfig("digits", subset=n))


def test_views_rebuild_flips_and_shifts_exactly():
    from nonn_tflite.views import apply_views, draw_views

    x = np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1) + 1
    one = np.ones(2, bool)
    zero = np.zeros(2, np.int8)
    np.testing.assert_array_equal(apply_views(x, ~one, zero, zero, 1), x)
    np.testing.assert_array_equal(apply_views(x, one, zero, zero, 1), x[:, :, ::-1])
    up = apply_views(x, ~one, zero + 1, zero, 1)  # window one row lower: content moves up
    np.testing.assert_array_equal(up[:, -1], 0)
    np.testing.assert_array_equal(up[:, :-1], x[:, 1:])
    left = apply_views(x, ~one, zero, zero - 1, 1)  # window one column left: content moves right
    np.testing.assert_array_equal(left[:, :, 0], 0)
    np.testing.assert_array_equal(left[:, :, 1:], x[:, :, :-1])
    p = draw_views(500, 4, 2, True, seed=3)
    assert not p.flip[:, 0].any() and not p.dy[:, 0].any() and not p.dx[:, 0].any()  # identity
    assert 0.4 < p.flip[:, 1:].mean() < 0.6 and set(np.unique(p.dx)) == {-2, -1, 0, 1, 2}
    assert not draw_views(50, 4, 2, False, 3).flip.any()  # digits are never mirrored


def test_cache_holds_the_teachers_exact_outputs_for_its_views():
    from nonn_tflite.teacher import predict_features
    from nonn_tflite.views import apply_views, build_view_cache, partition_attention

    view, ds = _teacher(), _digits()
    cache = build_view_cache(view, ds.x_train, PARTS, views=3, pad=1, flippable=True, seed=0)
    n = len(ds.x_train)
    assert cache.logits.shape == (n, 3, 10) and cache.attention.shape == (n, 3, 2, 16)
    assert cache.map_size == (4, 4)
    distinct = 0
    for v in range(3):
        p = cache.params
        xv = apply_views(ds.x_train, p.flip[:, v], p.dy[:, v], p.dx[:, v], p.pad)
        distinct += int(v > 0 and not np.array_equal(xv, ds.x_train))
        fmap, logits = predict_features(view, xv)  # the teacher, rerun on the rebuilt views
        np.testing.assert_array_equal(cache.logits[:, v], logits)
        np.testing.assert_array_equal(cache.attention[:, v],
                                      partition_attention(fmap, PARTS).astype(np.float16))
    assert distinct == 2
    # the attention targets are the teacher's restricted maps, normalised: unit L2 norm each
    norms = np.linalg.norm(cache.attention.astype(np.float32), axis=-1)
    np.testing.assert_allclose(norms[norms > 0], 1.0, atol=2e-3)


def test_each_batch_pairs_an_image_with_the_teachers_outputs_for_it():
    from nonn_tflite.data import to_float
    from nonn_tflite.views import build_view_cache, view_batches

    view, ds = _teacher(), _digits()
    cache = build_view_cache(view, ds.x_train, PARTS, views=4, pad=1, flippable=True, seed=0)
    batches = view_batches(ds.x_train, ds.y_train, cache, 32, seed=0)
    assert len(batches) == int(np.ceil(len(ds.y_train) / 32))
    seen = []
    for epoch in range(2):
        for i in range(len(batches)):
            (xb, att, logits), yb = batches[i]
            _, direct = view.model.predict(xb, verbose=0)  # the teacher on the delivered image
            np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-5)
            assert att.shape == (len(yb), 2, 16)
            seen.append(xb)
        batches.on_epoch_end()
    first, second = np.concatenate(seen[:len(batches)]), np.concatenate(seen[len(batches):])
    assert not np.array_equal(first, second)  # another shuffle and other views each epoch
    # a batch is a pure function of (seed, epoch, index): asking twice gives the same batch
    np.testing.assert_array_equal(batches[1][0][0], batches[1][0][0])
    assert np.all(np.isin(np.round(first * 255), np.arange(256)))  # uint8 pixels, as devices see
    assert to_float(ds.x_train[:1]).dtype == first.dtype


def test_distill_with_views_trains_and_views_one_is_unchanged():
    from nonn_tflite.architectures import StudentSpec
    from nonn_tflite.config import DistillConfig, TrainConfig
    from nonn_tflite.distill import distill, nonn_logits
    from nonn_tflite.errors import UsageError
    from nonn_tflite.sizing import estimate

    view, ds = _teacher(), _digits(128)
    est = [estimate(StudentSpec(4, 0, 3, 2), ds.input_shape)] * 2
    cfg = DistillConfig(views=3, train=TrainConfig(epochs=2, batch_size=32))
    res = distill(ds, view, PARTS, cfg, est, quiet=True)
    assert res.extra["views"] == 3 and res.extra["view_cache_bytes"] > 0
    assert len(res.history.history["val_accuracy"]) == 2
    assert np.isfinite(nonn_logits(res.students, res.fusion, ds.x_test)).all()
    with pytest.raises(UsageError, match="--views 0"):
        distill(ds, view, PARTS, DistillConfig(views=0), est, quiet=True)
    assert DistillConfig().views == 1  # the default: today's online-teacher path


def test_cli_refuses_views_below_one_in_one_line(tmp_path):
    from click.testing import CliRunner

    from nonn_tflite.cli import main

    result = CliRunner().invoke(main, ["run", "--views", "0", "--out", str(tmp_path / "r")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and lines[-1].startswith("Error: ") and "--views 0" in lines[-1]
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()
