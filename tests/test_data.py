"""Datasets: embedded digits, npz pairs, image folders, splits and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from nonn_tflite.config import DataConfig
from nonn_tflite.data import load_dataset, to_float
from nonn_tflite.errors import DatasetError


def test_digits_is_offline_real_and_split_three_ways():
    ds = load_dataset(DataConfig())
    assert ds.input_shape == (8, 8, 1) and ds.num_classes == 10
    total = len(ds.y_train) + len(ds.y_val) + len(ds.y_test)
    assert total == 1797  # scikit-learn's real handwritten digits
    assert ds.x_train.dtype == np.uint8 and ds.x_train.max() == 255
    assert abs(len(ds.y_val) / (len(ds.y_train) + len(ds.y_val)) - 0.1) < 0.01
    assert set(np.unique(ds.y_val)) == set(range(10))  # stratified
    assert not ds.flippable  # a flipped 2 is not a 2


def test_validation_split_is_seeded_and_disjoint_from_train():
    a = load_dataset(DataConfig(seed=1))
    b = load_dataset(DataConfig(seed=1))
    c = load_dataset(DataConfig(seed=2))
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.x_val, c.x_val)
    assert a.sha256 == c.sha256  # same underlying data
    train_rows = {r.tobytes() for r in a.x_train}
    overlap = sum(r.tobytes() in train_rows for r in a.x_val)
    assert overlap <= 3  # digits has a few duplicate images; splits share indices never


def test_to_float_maps_uint8_to_unit_interval():
    x = np.array([0, 128, 255], dtype=np.uint8)
    np.testing.assert_allclose(to_float(x), [0.0, 128 / 255, 1.0])


def _write_pair(folder, x_train, y_train, x_test=None, y_test=None):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", x=x_train, y=y_train)
    np.savez(folder / "test.npz", x=x_train if x_test is None else x_test,
             y=y_train if y_test is None else y_test)
    return folder


def test_npz_pair_and_cifar10_data_dir(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 6, 6, 3), dtype=np.uint8)
    y = np.arange(50) % 5
    ds = load_dataset(DataConfig(dataset=str(_write_pair(tmp_path / "mine", x, y))))
    assert ds.input_shape == (6, 6, 3) and ds.num_classes == 5 and ds.name == "mine"
    c10 = load_dataset(DataConfig(dataset="cifar10", data_dir=str(_write_pair(tmp_path / "c10", x, y))))
    assert c10.class_names[0] == "airplane" and c10.flippable


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            d = tmp_path / "pets" / split / cls
            d.mkdir(parents=True)
            for i in range(12):
                Image.fromarray(np.full((5, 5, 3), i * 10 + (cls == "dog") * 100, np.uint8)).save(d / f"{i}.png")
    ds = load_dataset(DataConfig(dataset=str(tmp_path / "pets")))
    assert ds.class_names == ["cat", "dog"] and ds.input_shape == (5, 5, 3)


@pytest.mark.parametrize("bad,match", [
    ("missing_keys", "has arrays"),
    ("float_x", "expected a pair train.npz/test.npz"),
    ("no_channel", "add a channel axis"),
    ("label_count", "one non-negative int label per image"),
    ("pickle", "pickled objects"),
])
def test_malformed_npz_gets_one_clear_message(tmp_path, bad, match):
    folder = tmp_path / bad
    folder.mkdir()
    x = np.zeros((10, 4, 4, 1), np.uint8)
    y = np.zeros(10, np.int64)
    if bad == "missing_keys":
        np.savez(folder / "train.npz", images=x, labels=y)
    elif bad == "float_x":
        np.savez(folder / "train.npz", x=x.astype(np.float32), y=y)
    elif bad == "no_channel":
        np.savez(folder / "train.npz", x=x[..., 0], y=y)
    elif bad == "label_count":
        np.savez(folder / "train.npz", x=x, y=y[:3])
    else:
        np.savez(folder / "train.npz", x=np.array([{"evil": 1}], dtype=object), y=y)
    np.savez(folder / "test.npz", x=x, y=y)
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset(DataConfig(dataset=str(folder)))
    assert "\n" not in str(info.value)


def test_unknown_and_missing_datasets(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'mnist-ish'"):
        load_dataset(DataConfig(dataset="mnist-ish"))
    with pytest.raises(DatasetError, match=r"cifar10: no train.npz in .*expected a pair"):
        load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds neither"):
        load_dataset(DataConfig(dataset=str(tmp_path / "empty")))
