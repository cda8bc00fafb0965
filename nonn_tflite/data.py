"""Datasets: the embedded ``digits`` default, CIFAR-10, any ``train.npz``/``test.npz`` pair, and
folders of class subfolders of images.

Images stay ``uint8`` NHWC in memory (small, hashable, exactly what a camera gives a device);
:func:`to_float` maps them to the models' ``[0, 1]`` input only when a model needs them. A
validation split is carved from train (seeded) for partitioning, early stopping and model
selection; the test split is only for the final report.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nonn_tflite.config import DataConfig
from nonn_tflite.errors import DatasetError

# Image files read with Pillow, for datasets and for the live source alike (one list).
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".webp")
NPZ_FORMAT = "a pair train.npz/test.npz, each with arrays x (uint8, N x H x W x C) and y (int, N)"


@dataclass
class Dataset:
    """A dataset split three ways; all images uint8 NHWC, labels int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str] = field(default_factory=list)
    sha256: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def flippable(self) -> bool:
        """Horizontal flips are label-preserving for photos, not for digits or text."""
        return self.name not in ("digits",)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "sizes": {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)},
        }


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 images -> the models' float32 input in [0, 1] (int8 input = uint8 - 128)."""
    return np.asarray(x, dtype=np.float32) / np.float32(255.0)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load ``cfg.dataset`` and carve the seeded validation split from its training part."""
    if not 0.0 < cfg.val_fraction < 0.9:
        raise DatasetError(f"--val-fraction {cfg.val_fraction} is out of range; expected 0 < f < 0.9")
    name, (x_tr, y_tr), (x_te, y_te), classes = _load_raw(cfg)
    _check_arrays(name, x_tr, y_tr, "train")
    _check_arrays(name, x_te, y_te, "test")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DatasetError(f"dataset {name}: train images are {x_tr.shape[1:]} but test images "
                           f"are {x_te.shape[1:]}; both splits must share one image shape")
    digest = _sha256(x_tr, y_tr, x_te, y_te)
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    classes = classes or [str(i) for i in range(num_classes)]
    x_tr, y_tr, x_val, y_val = _split(x_tr, y_tr, cfg.val_fraction, cfg.seed)
    if cfg.subset:
        x_tr, y_tr = x_tr[: cfg.subset], y_tr[: cfg.subset]
        x_val, y_val = x_val[: max(1, cfg.subset // 5)], y_val[: max(1, cfg.subset // 5)]
        x_te, y_te = x_te[: max(1, cfg.subset // 2)], y_te[: max(1, cfg.subset // 2)]
    return Dataset(name, x_tr, y_tr, x_val, y_val, x_te, y_te, classes, digest)


def _load_raw(cfg: DataConfig):
    spec = cfg.dataset
    if spec == "digits":
        return ("digits", *digits_arrays(), [str(i) for i in range(10)])
    if spec == "cifar10":
        return ("cifar10", *_cifar10(cfg.data_dir), list(CIFAR10_CLASSES))
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "train.npz").exists():
        return (path.name, *_npz_pair(path), [])
    if path.is_dir() and (path / "train").is_dir():
        return (path.name, *_image_folder(path), _folder_classes(path / "train"))
    if path.is_dir():
        raise DatasetError(f"dataset folder {path} holds neither train.npz/test.npz nor "
                           f"train/ and test/ class subfolders of images; expected {NPZ_FORMAT}")
    raise DatasetError(f"unknown dataset {spec!r}; expected 'digits', 'cifar10', a folder with "
                       f"train.npz/test.npz, or a folder with train/<class>/*.png and test/<class>/")


def digits_arrays():
    """The real 8x8 handwritten digits bundled with scikit-learn (offline, 1,797 images)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(1797).permutation(len(y))  # fixed train/test split
    x, y = x[order], y[order]
    n_test = 360
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


def _cifar10(data_dir: str | None):
    candidates = [Path(data_dir).expanduser()] if data_dir else []
    candidates.append(Path(os.environ.get("NONN_CACHE", "~/.cache/nonn-tflite")).expanduser() / "cifar10")
    for folder in candidates:
        if (folder / "train.npz").exists():
            return _npz_pair(folder)
    if data_dir:
        raise DatasetError(f"cifar10: no train.npz in {candidates[0]}; expected {NPZ_FORMAT}")
    try:
        import keras

        (x_tr, y_tr), (x_te, y_te) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # offline: keras cannot download
        looked = ", ".join(str(c) for c in candidates)
        raise DatasetError(f"cifar10: not found in {looked} and the download failed "
                           f"({type(exc).__name__}); pass --data-dir with {NPZ_FORMAT}") from exc
    return (x_tr, y_tr.reshape(-1)), (x_te, y_te.reshape(-1))


def _npz_pair(folder: Path):
    return _npz(folder / "train.npz"), _npz(folder / "test.npz")


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise DatasetError(f"{path} not found; expected {NPZ_FORMAT}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise DatasetError(f"{path} has arrays {z.files}; expected {NPZ_FORMAT}")
            return np.asarray(z["x"]), np.asarray(z["y"]).reshape(-1)
    except DatasetError:
        raise
    except ValueError as exc:
        raise DatasetError(f"{path} holds pickled objects, which are refused for safety; "
                           f"expected {NPZ_FORMAT}") from exc
    except Exception as exc:
        raise DatasetError(f"{path} is not a readable .npz file ({exc}); expected {NPZ_FORMAT}") from exc


def _folder_classes(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir())


def _image_folder(root: Path):
    classes = _folder_classes(root / "train")
    if not classes:
        raise DatasetError(f"{root / 'train'} has no class subfolders; expected train/<class>/*.png")
    return _read_images(root / "train", classes), _read_images(root / "test", classes)


def _read_images(split_dir: Path, classes: list[str]):
    from PIL import Image

    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir} not found; expected class subfolders of images there too")
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for f in sorted((split_dir / cls).glob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    img = Image.open(f)
                    xs.append(np.asarray(img.convert("L" if img.mode in ("L", "1") else "RGB")))
                except Exception as exc:
                    raise DatasetError(f"{f} is not a readable image ({exc})") from exc
                ys.append(label)
    if not xs:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {split_dir}/<class>/")
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise DatasetError(f"images under {split_dir} differ in size {sorted(shapes)[:3]}; "
                           "resize them to one size first")
    x = np.stack(xs)
    return (x[..., None] if x.ndim == 3 else x).astype(np.uint8), np.asarray(ys, dtype=np.int64)


def _check_arrays(name: str, x: np.ndarray, y: np.ndarray, split: str) -> None:
    if x.ndim == 3:
        raise DatasetError(f"dataset {name} {split}: x has shape {x.shape}; expected N x H x W x C "
                           "(add a channel axis)")
    if x.ndim != 4 or x.dtype != np.uint8:
        raise DatasetError(f"dataset {name} {split}: x is {x.dtype} {x.shape}; expected {NPZ_FORMAT}")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise DatasetError(f"dataset {name} {split}: y is {y.dtype} {y.shape} for {x.shape[0]} "
                           "images; expected one non-negative int label per image")


def _sha256(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Stratified, seeded validation split carved from train."""
    rng = np.random.default_rng(seed)
    val_idx = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        n = int(round(len(idx) * fraction))
        val_idx.extend(rng.choice(idx, size=n, replace=False).tolist())
    mask = np.zeros(len(y), dtype=bool)
    mask[val_idx] = True
    train_order = rng.permutation(np.flatnonzero(~mask))
    val_order = rng.permutation(np.flatnonzero(mask))
    return x[train_order], y[train_order].astype(np.int64), x[val_order], y[val_order].astype(np.int64)


def augmentation_layers(dataset: Dataset, pad: int | None = None):
    """Keras preprocessing layers for training: pad-and-crop, plus flips for photos."""
    import keras

    h, w, _ = dataset.input_shape
    pad = pad if pad is not None else max(1, h // 8)
    layers = [keras.layers.ZeroPadding2D(pad), keras.layers.RandomCrop(h, w)]
    if dataset.flippable:
        layers.append(keras.layers.RandomFlip("horizontal"))
    return layers
