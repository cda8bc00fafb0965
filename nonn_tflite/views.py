"""Augmented, consistent distillation on a CPU: the teacher's outputs for V fixed augmented views
of every training image, computed once, and batches that show each student exactly the view
whose teacher outputs it is trained against.

Why: on two cores the teacher cannot run online for every student step, and caching it on
un-augmented images (``--cache-teacher``) trains the students without augmentation while the
teacher and the baselines had it. A view is (horizontal flip, vertical shift, horizontal
shift), the same family as :func:`nonn_tflite.data.augmentation_layers` (zero pad ``pad``
pixels, crop back, flip photos only); view 0 of every image is the image itself. The view
parameters are stored with the outputs, so :func:`apply_views` rebuilds exactly the image the
teacher saw, and each epoch draws one of the V views per image (seeded by seed and epoch).

What is cached per view: the teacher's logits (float32) and, per student k, the L2-normalised
attention map of the teacher's map restricted to partition P_k (float16; (K, H*W), what the AT
term compares against), not the whole feature map: K*H*W values instead of H*W*C.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nonn_tflite.data import Dataset, to_float


@dataclass(frozen=True)
class ViewParams:
    """Per image and view: ``flip`` (bool), ``dy`` and ``dx`` (crop-window offset in pixels,
    |d| <= pad; see :func:`apply_views`)."""

    flip: np.ndarray  # (N, V) bool
    dy: np.ndarray  # (N, V) int8
    dx: np.ndarray  # (N, V) int8
    pad: int

    @property
    def views(self) -> int:
        return int(self.flip.shape[1])

    def take(self, idx: np.ndarray, view: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.flip[idx, view], self.dy[idx, view], self.dx[idx, view]


def draw_views(n: int, views: int, pad: int, flippable: bool, seed: int) -> ViewParams:
    """V views per image, view 0 the identity, the others drawn uniformly (seeded)."""
    rng = np.random.default_rng([seed, 0x56494557])  # "VIEW"
    flip = rng.random((n, views)) < 0.5 if flippable else np.zeros((n, views), bool)
    dy = rng.integers(-pad, pad + 1, (n, views)).astype(np.int8)
    dx = rng.integers(-pad, pad + 1, (n, views)).astype(np.int8)
    flip[:, 0], dy[:, 0], dx[:, 0] = False, 0, 0
    return ViewParams(flip, dy, dx, pad)


def apply_views(x_uint8: np.ndarray, flip: np.ndarray, dy: np.ndarray, dx: np.ndarray,
                pad: int) -> np.ndarray:
    """Each image zero-padded by ``pad``, cropped back with the window offset by (dy, dx) from
    the centre (dy > 0: the content moves up), then mirrored if ``flip``."""
    n, h, w, _ = x_uint8.shape
    padded = np.pad(x_uint8, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty_like(x_uint8)
    for i in range(n):
        top, left = pad + int(dy[i]), pad + int(dx[i])
        crop = padded[i, top:top + h, left:left + w]
        out[i] = crop[:, ::-1] if flip[i] else crop
    return out


@dataclass
class ViewCache:
    """The teacher's outputs for every (image, view)."""

    params: ViewParams
    logits: np.ndarray  # (N, V, classes) float32
    attention: np.ndarray  # (N, V, K, H*W) float16, L2-normalised per (image, view, student)
    map_size: tuple[int, int]  # the teacher map's (H, W)

    def nbytes(self) -> int:
        return int(self.logits.nbytes + self.attention.nbytes + 3 * self.params.flip.size)


def partition_attention(fmap, partitions: list[list[int]]) -> np.ndarray:
    """(N, K, H*W): :func:`nonn_tflite.distill.attention_map` of the map restricted to each P_k."""
    from keras import ops

    from nonn_tflite.distill import attention_map

    return np.stack([np.asarray(attention_map(ops.take(fmap, np.asarray(p, "int32"), axis=-1)))
                     for p in partitions], axis=1)


def teacher_targets(teacher_view, x_uint8: np.ndarray, partitions: list[list[int]],
                    batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits float32 (N, classes), attention float16 (N, K, H*W)) of the teacher on images."""
    from nonn_tflite.teacher import predict_features

    logits, att = [], []
    for start in range(0, len(x_uint8), 2048):  # bounded memory: full maps only per chunk
        fmap, out = predict_features(teacher_view, x_uint8[start:start + 2048], batch_size)
        logits.append(np.asarray(out, np.float32))
        att.append(partition_attention(fmap, partitions).astype(np.float16))
    return np.concatenate(logits), np.concatenate(att)


def build_view_cache(teacher_view, x_uint8: np.ndarray, partitions: list[list[int]], views: int,
                     pad: int, flippable: bool, seed: int) -> ViewCache:
    """Run the teacher once on each of the V views of every image."""
    params = draw_views(len(x_uint8), views, pad, flippable, seed)
    logits, att = [], []
    for v in range(views):
        xv = apply_views(x_uint8, params.flip[:, v], params.dy[:, v], params.dx[:, v], pad)
        lo, at = teacher_targets(teacher_view, xv, partitions)
        logits.append(lo)
        att.append(at)
    size = tuple(int(d) for d in teacher_view.model.outputs[0].shape[1:3])
    return ViewCache(params, np.stack(logits, 1), np.stack(att, 1), size)  # type: ignore[arg-type]


def view_batches(x_uint8: np.ndarray, y: np.ndarray, cache: ViewCache, batch_size: int, seed: int):
    """A ``keras.utils.PyDataset`` of ((images, attention targets, logits), labels): a seeded
    shuffle per epoch, and per image one of its V views, rebuilt from the stored parameters."""
    import keras

    class ViewBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = 0
            self.plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def __len__(self) -> int:
            return int(np.ceil(len(y) / batch_size))

        def _plan(self) -> tuple[np.ndarray, np.ndarray]:
            if self.epoch not in self.plans:
                rng = np.random.default_rng([seed, self.epoch])
                self.plans = {self.epoch: (rng.permutation(len(y)),
                                           rng.integers(0, cache.params.views, len(y)))}
            return self.plans[self.epoch]

        def __getitem__(self, i: int):
            order, choice = self._plan()  # a pure function of (seed, epoch, i): order-proof
            idx = np.sort(order[i * batch_size:(i + 1) * batch_size])
            v = choice[idx]
            xb = apply_views(x_uint8[idx], *cache.params.take(idx, v), cache.params.pad)
            return ((to_float(xb), cache.attention[idx, v].astype(np.float32),
                     cache.logits[idx, v]), y[idx])

        def on_epoch_end(self) -> None:
            self.epoch += 1

    return ViewBatches()


def view_pad(ds: Dataset) -> int:
    """The shift range of the views: the pad of :func:`nonn_tflite.data.augmentation_layers`."""
    return max(1, ds.input_shape[0] // 8)
