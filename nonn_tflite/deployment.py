"""The ``tflite/deployment.json`` contract (schema 1, docs/ARCHITECTURE.md): one reader for
everything downstream of ``convert``, the live nodes and the firmware generators alike, so both
accept and refuse exactly the same files.

Only the JSON is read here (no model is opened): each consumer checks the .tflite files it
loads against these figures in its own runtime (LiteRT on the nodes, the flatbuffer reader for
firmware), because a stale JSON beside a re-converted model must not go unnoticed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nonn_tflite.errors import RunDirError
from nonn_tflite.int8 import QParams
from nonn_tflite.wire import Topics, deployment_id, model_hash


@dataclass(frozen=True)
class StudentSpec:
    id: int
    file: str
    width: int
    input: QParams
    output: QParams
    filters: tuple[int, ...] = ()  # the teacher filters this student mimics
    board: str | None = None
    arena_bytes: int | None = None  # with the 32-bit target margin, as convert writes it
    arena_bytes_host: int | None = None  # measured on this host
    model_crc32: int | None = None  # CRC-32 of the .tflite (the frames' model hash); None: old JSON


@dataclass(frozen=True)
class FusionSpec:
    file: str
    input_width: int
    input: QParams
    output: QParams
    model_crc32: int | None = None


@dataclass(frozen=True)
class Deployment:
    """``tflite/deployment.json`` of a run (schema 1, see docs/ARCHITECTURE.md)."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    students: tuple[StudentSpec, ...]
    fusion: FusionSpec
    directory: Path

    @property
    def id(self) -> int:
        return deployment_id(self.name)

    @property
    def topics(self) -> Topics:
        return Topics(self.name)

    @property
    def feature_widths(self) -> dict[int, int]:
        return {s.id: s.width for s in self.students}

    @property
    def image_size(self) -> int:
        return int(np.prod(self.input_shape))

    def student(self, k: int) -> StudentSpec:
        for spec in self.students:
            if spec.id == k:
                return spec
        ids = ", ".join(str(s.id) for s in self.students)
        raise RunDirError(f"deployment {self.name} has no student {k} (students: {ids})")

    def path(self, file: str) -> Path:
        return self.directory / file

    def slices(self) -> dict[int, slice]:
        """Where each student's vector sits in the fusion input (students in id order)."""
        out, start = {}, 0
        for spec in sorted(self.students, key=lambda s: s.id):
            out[spec.id] = slice(start, start + spec.width)
            start += spec.width
        return out


def find_deployment_file(path: str | Path) -> Path:
    """Accept a run directory, its ``tflite/`` folder or the deployment.json itself."""
    p = Path(path)
    for candidate in (p, p / "deployment.json", p / "tflite" / "deployment.json"):
        if candidate.is_file():
            return candidate
    if not p.exists():
        raise RunDirError(f"run directory {p} does not exist")
    raise RunDirError(f"{p} has no tflite/deployment.json: run `nonn-tflite convert {p}` first")


def load_deployment(path: str | Path) -> Deployment:
    """Read and check deployment.json; raises RunDirError/ModelFileError with what is wrong."""
    file = find_deployment_file(path)
    try:
        d = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{file} is not valid JSON: {exc}") from None
    try:
        return _parse_deployment(d, file)
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{file}: missing or malformed field {exc}") from None


def _parse_deployment(d: Mapping, file: Path) -> Deployment:
    if d.get("schema") != 1:
        raise RunDirError(f"{file}: schema {d.get('schema')!r} is not supported (expected 1)")
    if d.get("fusion_input", "requantise") != "requantise":
        raise RunDirError(f"{file}: fusion_input {d['fusion_input']!r} is not supported")
    students = tuple(_student(s) for s in d["students"])
    f = d["fusion"]
    fusion = FusionSpec(str(f["file"]), int(f["input_width"]),
                        QParams.from_json(f["input"], "fusion input"),
                        QParams.from_json(f["output"], "fusion output"),
                        _crc32(f.get("model_crc32")))
    dep = Deployment(str(d["deployment"]), int(d["num_classes"]),
                     tuple(str(c) for c in d.get("class_names", range(int(d["num_classes"])))),
                     tuple(int(v) for v in d["input_shape"]), students, fusion, file.parent)
    Topics(dep.name)  # raises for names that cannot be topics
    if len({s.id for s in students}) != len(students) or not students:
        raise RunDirError(f"{file}: student ids must be unique and at least one student given")
    if any(not 0 <= s.id < 255 for s in students):
        raise RunDirError(f"{file}: student ids must be 0..254")
    if sum(s.width for s in students) != fusion.input_width:
        raise RunDirError(f"{file}: student widths sum to {sum(s.width for s in students)}, "
                          f"fusion input_width is {fusion.input_width}")
    return dep


def _student(s: Mapping) -> StudentSpec:
    return StudentSpec(int(s["id"]), str(s["file"]), int(s["width"]),
                       QParams.from_json(s["input"], f"student {s['id']} input"),
                       QParams.from_json(s["output"], f"student {s['id']} output"),
                       tuple(int(f) for f in s.get("filters", ())), s.get("board"),
                       _positive_int(s.get("arena_bytes")), _positive_int(s.get("arena_bytes_host")),
                       _crc32(s.get("model_crc32")))


def _crc32(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"'model_crc32' {value!r} (expected a CRC-32, 0..4294967295)")
    return value


def with_model_hashes(doc: dict, directory: Path) -> dict:
    """``doc`` with ``model_crc32`` (:func:`nonn_tflite.wire.model_hash` of each student's and
    the fusion's .tflite in ``directory``): what the fusion node checks every frame against."""
    for entry in [*doc["students"], doc["fusion"]]:
        entry["model_crc32"] = model_hash((Path(directory) / entry["file"]).read_bytes())
    return doc


def _positive_int(value) -> int | None:
    """A byte count, or None where convert wrote none (0 means 'not measured')."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
