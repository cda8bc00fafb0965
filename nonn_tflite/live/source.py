"""Source node: the "camera". Publishes test images at a fixed rate and scores the answers.

Ground truth never leaves the source: it keeps ``seq -> label`` locally, listens to the
prediction topic and measures end-to-end latency from its own capture timestamps (one clock,
so the figure is honest even when devices' clocks drift).

Each run draws a random session id that every frame carries: the fusion node keys its caches by
(session, seq), so a restarted source is answered from its first frame, and predictions for
another run's frames are never scored as ours. Per-frame records are kept for a window of the
latest frames only, so a source can run for days in bounded memory.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nonn_tflite.data import IMAGE_SUFFIXES
from nonn_tflite.errors import DatasetError
from nonn_tflite.deployment import Deployment
from nonn_tflite.live.models import IMAGE_SCALE, IMAGE_ZERO_POINT
from nonn_tflite.live.mqtt import (
    BrokerConfig,
    Connection,
    ConnectionConfig,
    make_client_id,
)
from nonn_tflite.live.protocol import U32, Decoder, DType, Frame, MsgType, encode
from nonn_tflite.live.runtime import Window, now_us

log = logging.getLogger(__name__)



# ---- images -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageSet:
    """uint8 NHWC images and integer labels (-1 = unknown, not scored)."""

    x: np.ndarray
    y: np.ndarray
    origin: str

    def __len__(self) -> int:
        return len(self.x)


def test_sample_path(run: Path) -> Path:
    return Path(run) / "tflite" / "test_sample.npz"


def load_images(deployment: Deployment, run: Path | None = None, images: Path | None = None,
                npz: Path | None = None) -> ImageSet:
    """From ``--images DIR``, ``--npz FILE`` or the run's ``tflite/test_sample.npz``."""
    if images is not None:
        return _check(load_folder(Path(images), deployment), deployment)
    path = Path(npz) if npz is not None else None
    if path is None:
        candidates = [deployment.directory / "test_sample.npz"]
        if run is not None:
            candidates.insert(0, test_sample_path(Path(run)))
        path = next((c for c in candidates if c.is_file()), candidates[0])
    return _check(load_npz(path), deployment)


def load_npz(path: Path) -> ImageSet:
    if not path.is_file():
        raise DatasetError(f"{path} not found: give --images DIR or --npz FILE "
                           "(an .npz with x uint8 NHWC and y int)")
    try:
        # ---- hostile-input fix: never unpickle (explicit, whatever numpy's default), say so
        # plainly, and refuse a bare .npy/pickle instead of failing with an AttributeError
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path} is not an .npz archive (x uint8 NHWC, y int)")
        with loaded as data:
            x = np.asarray(data["x"])
            y = np.asarray(data["y"]).astype(np.int64).reshape(-1) if "y" in data else None
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object arrays" in str(exc).lower():
            raise DatasetError(f"{path} holds pickled objects, which are refused for safety; "
                               "expected x uint8 NHWC and y int") from None
        raise DatasetError(f"{path}: cannot read 'x' (and 'y') arrays: {exc}") from None
    except (OSError, KeyError) as exc:
        raise DatasetError(f"{path}: cannot read 'x' (and 'y') arrays: {exc}") from None
    # ---- end of hostile-input fix
    if y is None:
        y = np.full(len(x), -1, np.int64)
    if len(y) != len(x):
        raise DatasetError(f"{path}: {len(x)} images but {len(y)} labels")
    return ImageSet(x, y, str(path))


def load_folder(folder: Path, deployment: Deployment) -> ImageSet:
    """Image files (PIL), resized to the model input; a parent folder named like a class
    (``class_names``) gives the label."""
    if not folder.is_dir():
        raise DatasetError(f"--images {folder} is not a directory")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError("--images needs Pillow (pip install pillow); or use --npz") from None
    h, w, c = deployment.input_shape
    names = {n: i for i, n in enumerate(deployment.class_names)}
    xs, ys = [], []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("L" if c == 1 else "RGB").resize((w, h))
            xs.append(np.asarray(im, np.uint8).reshape(h, w, c))
        ys.append(names.get(f.parent.name, -1))
    return ImageSet(np.stack(xs), np.asarray(ys, np.int64), str(folder))


def _check(images: ImageSet, deployment: Deployment) -> ImageSet:
    if len(images) == 0:
        raise DatasetError(f"{images.origin}: no images")
    if images.x.dtype != np.uint8:
        raise DatasetError(f"{images.origin}: images are {images.x.dtype}, expected uint8")
    if tuple(images.x.shape[1:]) != tuple(deployment.input_shape):
        raise DatasetError(f"{images.origin}: images are {tuple(images.x.shape[1:])}, the "
                           f"deployment expects {tuple(deployment.input_shape)} (NHWC)")
    return images


def image_frame(deployment: Deployment, seq: int, timestamp_us: int, pixels: np.ndarray,
                session: int = 0) -> Frame:
    """Raw uint8 pixels; scale 1/255 and zero point 0 make (q - zp) * s the model's x / 255."""
    return Frame(MsgType.IMAGE, deployment.id, seq & U32, timestamp_us,
                 np.ascontiguousarray(pixels, np.uint8).tobytes(), dtype=DType.UINT8,
                 scale=IMAGE_SCALE, zero_point=IMAGE_ZERO_POINT, session=session & U32)


def new_session() -> int:
    """A random, non-zero 32-bit session id (0 is what session-less senders put)."""
    return secrets.randbits(32) or 1


# ---- scoring -------------------------------------------------------------------------------

WINDOW = 4096  # frames whose label, image index and prediction the scoreboard keeps


@dataclass
class Scoreboard:
    """Sent frames and the predictions that came back; thread-safe and bounded.

    ``labels``, ``indices`` and ``predictions`` hold the latest ``window`` frames sent (a frame
    whose answer has not come by the time it leaves the window counts as ``expired``); the
    counters (``frames``, ``answered``, ``scored``, ``correct``) cover the whole run, so
    figures for a run are read from them, never from the lengths of the dicts.
    ``on_answer(index, label, cls)``, when set, sees every answered frame once (under the
    lock), for tallies over the whole run that need more than the label (the demo's
    agreement with the offline system).
    """

    session: int = 0
    window: int = WINDOW
    labels: OrderedDict[int, int] = field(default_factory=OrderedDict)       # seq -> label
    indices: OrderedDict[int, int] = field(default_factory=OrderedDict)      # seq -> image index
    predictions: OrderedDict[int, int] = field(default_factory=OrderedDict)  # seq -> class
    latency_ms: Window = field(default_factory=lambda: Window(100_000))
    sent_total: int = 0
    answered: int = 0
    expired: int = 0     # left the window unanswered
    duplicates: int = 0
    unknown: int = 0     # not ours: another session, or a frame already out of the window
    correct: int = 0
    scored: int = 0
    last_prediction: float = 0.0
    on_answer: Callable[[int, int, int], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, seq: int, index: int, label: int) -> None:
        with self._lock:
            self.labels[seq] = label
            self.indices[seq] = index
            self.sent_total += 1
            while len(self.labels) > self.window:
                old, _ = self.labels.popitem(last=False)
                del self.indices[old]
                if self.predictions.pop(old, None) is None:
                    self.expired += 1

    def predicted(self, frame: Frame, received_us: int) -> None:
        cls = int(np.argmax(frame.values()))
        with self._lock:
            if frame.session != self.session or frame.seq not in self.labels:
                self.unknown += 1   # not ours (another source, an earlier run, or expired)
                return
            if frame.seq in self.predictions:
                self.duplicates += 1
                return
            self.predictions[frame.seq] = cls
            self.answered += 1
            self.latency_ms.add((received_us - frame.timestamp_us) / 1e3)
            self.last_prediction = time.monotonic()
            label = self.labels[frame.seq]
            if label >= 0:
                self.scored += 1
                self.correct += int(cls == label)
            if self.on_answer is not None:
                self.on_answer(self.indices[frame.seq], label, cls)

    def rows(self) -> list[tuple[int, int, int, int]]:
        """(seq, image index, label, predicted class) of every answered frame in the window."""
        with self._lock:
            return [(s, self.indices[s], self.labels[s], c) for s, c in self.predictions.items()]

    @property
    def frames(self) -> int:
        """Frames sent in this run."""
        return self.sent_total

    @property
    def size(self) -> int:
        """Per-frame records held (at most 3 x ``window``)."""
        return len(self.labels) + len(self.indices) + len(self.predictions)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None


@dataclass(frozen=True)
class SourceConfig:
    rate: float = 20.0              # frames per second
    frames: int | None = None       # default: every image once; more cycles through them
    drain_s: float = 3.0            # wait this long for the last predictions
    client_id: str | None = None
    node: str = "source"
    window: int = WINDOW            # frames remembered for scoring (bounded memory)
    session: int | None = None      # None: a fresh random id for this run


class SourceNode:
    """Publishes images on a fixed schedule (no drift) and scores predictions as they come."""

    def __init__(self, deployment: Deployment, broker: BrokerConfig, images: ImageSet,
                 config: SourceConfig = SourceConfig()) -> None:
        if config.rate <= 0:
            raise DatasetError("--rate must be > 0")
        self.deployment = deployment
        self.images = images
        self.config = config
        self.topics = deployment.topics
        if config.window < 1:
            raise DatasetError("the scoreboard window must be >= 1 frame")
        self.session = new_session() if config.session is None else config.session & U32
        self.score = Scoreboard(self.session, config.window)
        self.decoder = Decoder(deployment.id, deployment.feature_widths,
                               num_classes=deployment.num_classes)
        self.bytes_sent = 0
        self.send_failed = 0
        self.stop_event = threading.Event()
        self.conn = Connection(broker, ConnectionConfig(
            client_id=config.client_id or make_client_id(config.node),
            subscriptions=(self.topics.prediction,),
            status_topic=self.topics.status(config.node)), on_message=self._on_message)

    @property
    def total(self) -> int:
        return self.config.frames if self.config.frames is not None else len(self.images)

    def start(self) -> SourceNode:
        self.conn.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.conn.stop()

    def run(self, on_tick: Callable[[int], None] | None = None) -> Scoreboard:
        """Send ``total`` frames at ``rate``, then wait (bounded) for the last predictions."""
        period = 1.0 / self.config.rate
        t0 = time.monotonic()
        for i in range(self.total):
            delay = t0 + i * period - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                break
            self.send(i)
            if on_tick is not None:
                on_tick(i + 1)
        self._drain()
        return self.score

    def send(self, i: int) -> None:
        index = i % len(self.images)
        frame = image_frame(self.deployment, i, now_us(), self.images.x[index], self.session)
        self.score.sent(frame.seq, index, int(self.images.y[index]))
        data = encode(frame)
        if self.conn.publish(self.topics.image, data):
            self.bytes_sent += len(data)
        else:
            self.send_failed += 1  # broker away: the frame is lost, as a camera's would be

    def _drain(self) -> None:
        end = time.monotonic() + self.config.drain_s
        while (self.score.answered + self.score.expired < self.score.frames
               and time.monotonic() < end
               and not self.stop_event.is_set()):
            time.sleep(0.02)

    def _on_message(self, topic: str, payload: bytes, t: float) -> None:
        frame = self.decoder.decode(payload, expect=MsgType.PREDICTION)
        if frame is not None:
            self.score.predicted(frame, now_us())
