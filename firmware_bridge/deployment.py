"""Load a converted run (``<run>/tflite``) into what the firmware generators need.

``deployment.json`` is the contract (docs/ARCHITECTURE.md); each model is read back from its
.tflite and checked against it, because a stale JSON beside a re-converted model would put the
wrong scale into C constants without anyone noticing until predictions drift.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_bridge.carrays import crc32
from nonn_tflite.errors import ModelFileError, RunDirError
from nonn_tflite.live.models import QParams
from nonn_tflite.live.protocol import deployment_id
from nonn_tflite.profile import measure_arena, qparams
from nonn_tflite.tflite_model import TensorInfo, TFLiteModel, parse_tflite

log = logging.getLogger(__name__)
SCHEMA = 1
_TOPIC_SAFE = re.compile(r"[A-Za-z0-9._-]+\Z")
_CUSTOM = 32  # BuiltinOperator.CUSTOM

@dataclass(frozen=True)
class Arena:
    """Host-measured tensor arena and where the number came from."""

    bytes: int
    source: str  # "deployment.json", "report.json" or "measured (TFLM bisection)"


@dataclass(frozen=True)
class ModelEntry:
    """One .tflite of the deployment, parsed and cross-checked with deployment.json."""

    name: str  # "student_0" / "fusion": C identifier and file stem
    path: Path
    data: bytes
    info: TFLiteModel
    input: QParams
    output: QParams
    stated_arena: Arena | None  # from deployment.json or report.json, if either has it

    @functools.cached_property
    def arena(self) -> Arena:
        """The stated arena, else a TFLM measurement (only paid for when a target needs it)."""
        if self.stated_arena is not None:
            return self.stated_arena
        log.info("measuring the tensor arena of %s with the TFLM interpreter", self.path.name)
        return Arena(measure_arena(self.data).arena_bytes, "measured (TFLM bisection)")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.info.input_tensors()[0].shape

    @property
    def input_size(self) -> int:
        return self.info.input_tensors()[0].numel

    @property
    def output_size(self) -> int:
        return self.info.output_tensors()[0].numel

    @property
    def crc32(self) -> int:
        return crc32(self.data)


@dataclass(frozen=True)
class Student:
    id: int
    model: ModelEntry
    width: int
    filters: tuple[int, ...]
    board: str | None


@dataclass(frozen=True)
class Deployment:
    run_dir: Path
    tflite_dir: Path
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    students: tuple[Student, ...]
    fusion: ModelEntry

    @property
    def deployment_id(self) -> int:
        """The id every frame carries (CRC-32 of the UTF-8 name)."""
        return deployment_id(self.name)

    def slices(self) -> list[tuple[int, int]]:
        """(offset, width) of each student's vector inside the fusion input."""
        out, offset = [], 0
        for s in self.students:
            out.append((offset, s.width))
            offset += s.width
        return out


def tflite_dir_of(run_dir: Path) -> Path:
    """Accept ``runs/x`` or ``runs/x/tflite``."""
    run_dir = Path(run_dir)
    for candidate in (run_dir / "tflite", run_dir):
        if (candidate / "deployment.json").is_file():
            return candidate
    if not run_dir.exists():
        raise RunDirError(f"run directory {run_dir} does not exist")
    raise RunDirError(f"{run_dir} has no tflite/deployment.json: "
                      f"run `nonn-tflite convert {run_dir}` first")


def load_deployment(run_dir: Path) -> Deployment:
    """Read deployment.json, report.json and every model; raise one clear error on mismatch."""
    tdir = tflite_dir_of(run_dir)
    meta = _read_json(tdir / "deployment.json")
    if meta.get("schema") != SCHEMA:
        raise ModelFileError(f"{tdir / 'deployment.json'} has schema {meta.get('schema')!r}; "
                             f"this export understands schema {SCHEMA}")
    name = str(meta.get("deployment", ""))
    if not _TOPIC_SAFE.match(name):
        raise ModelFileError(f"deployment name {name!r} must be non-empty letters, digits, "
                             "'.', '_' or '-' (it becomes an MQTT topic level)")
    report = _read_json(tdir / "report.json") if (tdir / "report.json").is_file() else {}
    students = tuple(_student(tdir, s, report) for s in _student_entries(meta))
    fusion_meta = _required(meta, "fusion", "deployment.json")
    fusion = _model(tdir, "fusion", fusion_meta, report)
    width = sum(s.width for s in students)
    if fusion.input_size != width or fusion_meta.get("input_width", width) != width:
        raise ModelFileError(f"fusion input width {fusion.input_size} does not equal "
                             f"the students' total width {width}")
    num_classes = int(meta.get("num_classes", fusion.output_size))
    if num_classes != fusion.output_size:
        raise ModelFileError(f"fusion.tflite has {fusion.output_size} outputs but "
                             f"deployment.json says {num_classes} classes")
    class_names = tuple(str(c) for c in meta.get("class_names") or range(num_classes))
    shape = tuple(int(d) for d in meta.get("input_shape") or students[0].model.input_shape[1:])
    return Deployment(Path(run_dir), tdir, name, num_classes, class_names, shape, students, fusion)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is not a JSON object")
    return data


def _required(meta: dict[str, Any], key: str, where: str) -> Any:
    if key not in meta:
        raise ModelFileError(f"{where} has no {key!r} entry")
    return meta[key]


def _student_entries(meta: dict[str, Any]) -> list[dict[str, Any]]:
    entries = _required(meta, "students", "deployment.json")
    if not entries:
        raise ModelFileError("deployment.json lists no students")
    ids = [int(_required(e, "id", "a student entry")) for e in entries]
    if sorted(ids) != list(range(len(ids))):
        raise ModelFileError(f"student ids must be 0..{len(ids) - 1}, got {ids}")
    if len(ids) > 32:
        raise ModelFileError(f"{len(ids)} students: firmware export supports at most 32")
    return sorted(entries, key=lambda e: int(e["id"]))


def _student(tdir: Path, entry: dict[str, Any], report: dict[str, Any]) -> Student:
    sid = int(entry["id"])
    model = _model(tdir, f"student_{sid}", entry, report)
    width = int(entry.get("width", model.output_size))
    if width != model.output_size:
        raise ModelFileError(f"student_{sid}.tflite outputs {model.output_size} features but "
                             f"deployment.json says width {width}")
    return Student(sid, model, width, tuple(int(f) for f in entry.get("filters", ())),
                   entry.get("board"))


def _model(tdir: Path, name: str, entry: dict[str, Any], report: dict[str, Any]) -> ModelEntry:
    path = tdir / str(entry.get("file", f"{name}.tflite"))
    if not path.is_file():
        raise ModelFileError(f"{path} is missing: run `nonn-tflite convert` again")
    data = path.read_bytes()
    info = parse_tflite(data, path.name)
    _check_firmware_model(info, path.name)
    quant_in = _checked_quant(entry, "input", info.input_tensors()[0], path.name)
    quant_out = _checked_quant(entry, "output", info.output_tensors()[0], path.name)
    return ModelEntry(name, path, data, info, quant_in, quant_out,
                      _stated_arena(entry, report, name, path.name))


def _check_firmware_model(model: TFLiteModel, what: str) -> None:
    """Refuse what the generated C cannot run: several subgraphs, custom ops, float I/O."""
    if model.num_subgraphs != 1:
        raise ModelFileError(f"{what} has {model.num_subgraphs} subgraphs; "
                             "firmware export supports exactly 1")
    if any(op.builtin_code == _CUSTOM for op in model.operators):
        raise ModelFileError(f"{what} uses a custom op, which firmware export cannot register")
    for kind, tensors in (("input", model.input_tensors()), ("output", model.output_tensors())):
        if len(tensors) != 1:
            raise ModelFileError(f"{what} has {len(tensors)} {kind}s; expected exactly 1")
        t = tensors[0]
        if t.dtype != "int8" or t.quant is None or t.quant.per_tensor is None:
            raise ModelFileError(
                f"{what} {kind} is {t.dtype}, not per-tensor int8: export needs "
                "full-integer models (run `nonn-tflite convert` with int8 quantisation)")


def _checked_quant(entry: dict[str, Any], key: str, tensor: TensorInfo, what: str) -> QParams:
    """The model's own quantisation, after checking deployment.json agrees with it."""
    actual = QParams(*qparams(tensor))
    stated = entry.get(key)
    if stated is not None:
        scale, zp = (float(stated.get("scale", actual.scale)),
                     int(stated.get("zero_point", actual.zero_point)))
        if not math.isclose(scale, actual.scale, rel_tol=1e-6) or zp != actual.zero_point:
            raise ModelFileError(
                f"{what} {key} is quantised (scale={actual.scale:.9g}, zero_point="
                f"{actual.zero_point}) but deployment.json says (scale={scale:.9g}, "
                f"zero_point={zp}): deployment.json is stale, run `nonn-tflite convert` again")
    return actual


def _stated_arena(entry: dict[str, Any], report: dict[str, Any], name: str,
                  file_name: str) -> Arena | None:
    """The host measurement: ``arena_bytes_host`` when the converter wrote one (its
    ``arena_bytes`` then already includes the 32-bit margin), else ``arena_bytes``."""
    if _positive(entry.get("arena_bytes_host")):
        return Arena(int(entry["arena_bytes_host"]), "deployment.json")
    if _positive(entry.get("arena_bytes")):
        return Arena(int(entry["arena_bytes"]), "deployment.json")
    found = report_arena(report, name, file_name)
    return Arena(found, "report.json") if found else None


def report_arena(report: Any, name: str, file_name: str) -> int | None:
    """Find ``arena_bytes`` for one model anywhere in report.json.

    Accepts a dict keyed by model name or file, or a list of records naming the model in
    "name", "model" or "file": the report's layout belongs to the conversion stage."""
    keys = {name, file_name}
    if isinstance(report, dict):
        for key, value in report.items():
            if key in keys and isinstance(value, dict) and _positive(value.get("arena_bytes")):
                return int(value["arena_bytes"])
        if any(report.get(k) in keys for k in ("name", "model", "file")) and \
                _positive(report.get("arena_bytes")):
            return int(report["arena_bytes"])
        children = report.values()
    elif isinstance(report, list):
        children = report
    else:
        return None
    for child in children:
        found = report_arena(child, name, file_name)
        if found:
            return found
    return None


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
