"""Run directories: one folder per NoNN run, with a ``manifest.json`` as the single truth.

A stage writes its files into a private staging folder; only when it finished are they moved
into place and the manifest updated (atomically, last). A failed or interrupted stage therefore
never leaves a run that *looks* complete: the manifest does not list it. Redoing a finished
stage needs ``force``, and discards the stages that depended on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from nonn_tflite.errors import RunDirError

MANIFEST = "manifest.json"
FORMAT = 1
STAGES = ("teacher", "partition", "distill", "convert")
NEXT_STEP = {
    "teacher": "nonn-tflite teacher --out RUN_DIR (or --teacher my_model.keras)",
    "partition": "nonn-tflite partition RUN_DIR --students K",
    "distill": "nonn-tflite distill RUN_DIR",
    "convert": "nonn-tflite convert RUN_DIR",
}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of what shaped the results (read from metadata: imports nothing heavy)."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("nonn-tflite", "numpy", "tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert",
                 "tflite-micro", "networkx"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


@dataclass
class Stage:
    """What a running stage hands back: where to write, and what to record."""

    name: str
    dir: Path
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # other top-level manifest sections


class RunDir:
    """A run directory and its manifest."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest: dict = self._read_manifest() if (self.path / MANIFEST).exists() else {}

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, need: str | None = None) -> "RunDir":
        """Open an existing run; ``need`` names a stage that must be finished already."""
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirError(f"run directory {run.path} not found; create one with "
                              f"{NEXT_STEP['teacher'].replace('RUN_DIR', str(run.path))}")
        if not run.manifest:
            raise RunDirError(f"{run.path} is not a nonn-tflite run directory (no {MANIFEST})")
        if need:
            run.require(need)
        return run

    def _read_manifest(self) -> dict:
        try:
            data = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{self.path / MANIFEST} is unreadable ({exc}); the run is damaged") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RunDirError(f"{self.path / MANIFEST} is not a nonn-tflite manifest of format {FORMAT}")
        return data

    # -- stages ------------------------------------------------------------------------------
    def has(self, stage: str) -> bool:
        return stage in self.manifest.get("stages", {})

    def require(self, stage: str) -> None:
        if not self.has(stage):
            step = NEXT_STEP[stage].replace("RUN_DIR", str(self.path))
            raise RunDirError(f"{self.path} has no finished '{stage}' stage; run `{step}` first")

    def file(self, name: str) -> Path:
        return self.path / name

    @contextlib.contextmanager
    def stage(self, name: str, force: bool = False) -> Iterator[Stage]:
        """Run a stage: yields a :class:`Stage` whose ``dir`` is a private staging folder.

        On success the staged files replace the run's and the manifest records the stage;
        on any error the staging folder is removed and the run is left as it was.
        """
        if self.has(name) and not force:
            raise RunDirError(f"stage '{name}' already finished in {self.path}; pass --force to "
                              f"redo it (this discards it and the stages after it)")
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob(f".staging-{name}-*"):  # left by a killed earlier attempt
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=self.path))
        os.chmod(staging, 0o777 & ~_umask())
        stage = Stage(name, staging)
        started = time.time()
        try:
            yield stage
            if self.has(name):
                self._discard_from(name)
            moved = self._move_into_place(staging)
            self._record(stage, moved, time.time() - started)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _discard_from(self, name: str) -> None:
        """Forget ``name`` and every later stage (their files are stale once it is redone)."""
        later = STAGES[STAGES.index(name):] if name in STAGES else (name,)
        files = self.manifest.get("files", {})
        for st in later:
            info = self.manifest.get("stages", {}).pop(st, None)
            self.manifest.get("config", {}).pop(st, None)
            for rel in (info or {}).get("files", []):
                files.pop(rel, None)
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    (self.path / rel).unlink()
            for key in (info or {}).get("metrics", []):
                self.manifest.get("metrics", {}).pop(key, None)
        self._write_manifest()

    def _move_into_place(self, staging: Path) -> list[str]:
        moved = []
        for src in sorted(p for p in staging.rglob("*") if p.is_file()):
            rel = src.relative_to(staging)
            dst = self.path / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            moved.append(rel.as_posix())
        return moved

    def _record(self, stage: Stage, moved: list[str], seconds: float) -> None:
        m = self.manifest
        if not m:
            m.update({"format": FORMAT, "name": self.path.name,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        m["versions"] = versions()
        m.setdefault("config", {})[stage.name] = stage.config
        m.setdefault("metrics", {}).update(stage.metrics)
        for key, value in stage.extra.items():
            m[key] = value
        files = m.setdefault("files", {})
        for rel in moved:
            files[rel] = sha256_file(self.path / rel)
        m.setdefault("stages", {})[stage.name] = {
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(seconds, 2),
            "files": moved,
            "metrics": sorted(stage.metrics),
        }
        self._write_manifest()

    def _write_manifest(self) -> None:
        write_json(self.path / MANIFEST, self.manifest)

    # -- what later stages read --------------------------------------------------------------
    def config(self, stage: str) -> dict:
        return self.manifest.get("config", {}).get(stage, {})

    def data_config(self):
        from nonn_tflite.config import DataConfig, from_dict

        return from_dict(DataConfig, self.manifest.get("data"))

    def load_dataset(self):
        """Reload the run's dataset and check it is byte-for-byte the one the run used."""
        from nonn_tflite.data import load_dataset

        ds = load_dataset(self.data_config())
        want = self.manifest.get("dataset", {}).get("sha256")
        if want and ds.sha256 != want:
            raise RunDirError(f"dataset {ds.name} differs from the one {self.path} was trained on "
                              f"(sha256 {ds.sha256[:12]} != {want[:12]}); pass the same data")
        return ds

    def verify_files(self) -> list[str]:
        """Names of recorded files whose content no longer matches the manifest."""
        bad = []
        for rel, digest in self.manifest.get("files", {}).items():
            p = self.path / rel
            if not p.exists() or sha256_file(p) != digest:
                bad.append(rel)
        return bad
