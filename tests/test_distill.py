"""Loss terms on known values, and student dropout really zeroing a student's vector."""

from __future__ import annotations

import logging

import numpy as np
import pytest


def test_kd_is_zero_when_distributions_match_and_positive_otherwise():
    from nonn_tflite.distill import kd_loss

    t = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], dtype="float32")
    assert float(kd_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(t, t + 5.0, 4.0)) == pytest.approx(0.0, abs=1e-6)  # shift-invariant
    s = t[:, ::-1].copy()
    assert float(kd_loss(t, s, 4.0)) > 0.01


def test_kd_matches_a_hand_computation():
    from nonn_tflite.distill import kd_loss

    t = np.array([[np.log(0.75), np.log(0.25)]], dtype="float32")
    s = np.array([[np.log(0.5), np.log(0.5)]], dtype="float32")
    expected = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)
    assert float(kd_loss(t, s, 1.0)) == pytest.approx(expected, rel=1e-5)


def test_attention_transfer_zero_for_identical_maps_and_positive_for_different():
    from nonn_tflite.distill import at_loss, attention_map

    rng = np.random.default_rng(0)
    m = rng.random((3, 4, 4, 5)).astype("float32")
    assert float(at_loss(m, m)) == pytest.approx(0.0, abs=1e-6)
    assert float(at_loss(m * 3.0, m)) == pytest.approx(0.0, abs=1e-5)  # maps are normalised
    other = rng.random((3, 4, 4, 5)).astype("float32") ** 4
    assert float(at_loss(other, m)) > 1e-3
    att = np.asarray(attention_map(m))
    np.testing.assert_allclose(np.linalg.norm(att, axis=-1), 1.0, rtol=1e-5)


def test_attention_transfer_resizes_student_maps_to_the_teacher_size():
    from nonn_tflite.distill import at_loss

    teacher = np.ones((2, 2, 2, 3), dtype="float32")
    student = np.ones((2, 4, 4, 7), dtype="float32")  # other size, other channel count
    assert float(at_loss(student, teacher)) == pytest.approx(0.0, abs=1e-6)


def test_dropout_mask_zeroes_at_rate_p():
    import keras

    from nonn_tflite.distill import dropout_mask

    gen = keras.random.SeedGenerator(0)
    m = np.asarray(dropout_mask(20000, 0.3, gen))
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert abs((m == 0).mean() - 0.3) < 0.02
    assert np.all(np.asarray(dropout_mask(100, 0.0, gen)) == 1.0)


def test_student_dropout_zeroes_vectors_inside_the_ensemble():
    """With p close to 1, the fused logits in training equal the fusion bias (all inputs 0)."""
    import keras

    from nonn_tflite.architectures import StudentSpec, build_fusion, build_student
    from nonn_tflite.config import DistillConfig
    from nonn_tflite.distill import build_ensemble
    from nonn_tflite.teacher import teacher_view

    inp = keras.Input((8, 8, 1))
    fmap = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="features")(inp)
    teacher = keras.Model(inp, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(fmap)))
    students = [build_student(StudentSpec(4, 0, 3, 2), (8, 8, 1), k) for k in range(2)]
    fusion = build_fusion(6, 10)
    fusion.get_layer("fusion_logits").bias.assign(np.arange(10, dtype="float32"))
    x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")

    def logits(p: float, training: bool):
        cfg = DistillConfig(student_dropout=p)
        model = build_ensemble(teacher_view(teacher), students, fusion, [[0, 1, 2], [3, 4, 5]], cfg, [])
        return np.asarray(model(x, training=training)["logits"])

    dropped = logits(0.99999, True)
    np.testing.assert_allclose(dropped, np.tile(np.arange(10), (16, 1)), atol=1e-6)
    kept = logits(0.99999, False)  # no dropout outside training
    assert np.abs(kept - np.arange(10)).max() > 1e-4


def test_training_code_is_backend_neutral():
    """Training modules use keras/keras.ops only, so KERAS_BACKEND=jax or torch trains too
    (checked by hand with jax 0.10: `KERAS_BACKEND=jax nonn-tflite run` trains)."""
    import ast
    from pathlib import Path

    import nonn_tflite

    def tensorflow_only(node) -> bool:  # `if keras.backend.backend() == "tensorflow":`
        return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and "backend" in ast.unparse(node.test.left)
                and any(isinstance(c, ast.Constant) and c.value == "tensorflow"
                        for c in node.test.comparators))

    root = Path(nonn_tflite.__file__).parent
    for name in ("distill.py", "training.py", "teacher.py", "architectures.py", "partition.py", "sizing.py",
                 "views.py"):
        tree = ast.parse((root / name).read_text())
        guarded = {id(n) for g in ast.walk(tree) if tensorflow_only(g) for n in ast.walk(g)}
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue  # TensorFlow-only extras (op determinism) under a backend check
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            assert not any(m.split(".")[0] == "tensorflow" for m in mods), f"{name} imports {mods}"


def test_training_progress_in_a_log_file_is_plain_lines(monkeypatch, caplog):
    """Piped into a log file (no terminal), training writes plain lines: within epochs at
    least every PLAIN_EVERY_S seconds, and one per epoch with the validation metric."""
    import keras

    from nonn_tflite import training

    monkeypatch.setattr(training, "PLAIN_EVERY_S", 0.0)
    x = np.random.default_rng(0).random((64, 4), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    with caplog.at_level(logging.INFO, logger="nonn_tflite"):
        model.fit(x, y, batch_size=16, epochs=2, validation_data=(x, y), verbose=0,
                  callbacks=[training.progress_bar(2, "toy", "val_accuracy")])
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("toy: epoch 1/2, step 2/4, loss ") for m in lines), lines
    assert any(m.startswith("toy: epoch 2/2, loss ") and "val_accuracy" in m for m in lines), lines
