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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_bridge.carrays import crc32
from nonn_tflite.deployment import Deployment as DeploymentSpec
from nonn_tflite.deployment import StudentSpec
from nonn_tflite.deployment import load_deployment as read_deployment
from nonn_tflite.errors import ModelFileError
from nonn_tflite.int8 import QParams
from nonn_tflite.profile import measure_arena, qparams
from nonn_tflite.tflite_model import TensorInfo, TFLiteModel, parse_tflite

log = logging.getLogger(__name__)
MAX_STUDENTS = 32  # the C fusion node's bitmask of present students
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
    """A deployment as the firmware generators need it: the toolkit's one
    :class:`nonn_tflite.deployment.Deployment` (``spec``: names, classes, shapes, ids, all
    read by its one reader) plus every model read back from its .tflite and checked."""

    run_dir: Path
    tflite_dir: Path
    spec: DeploymentSpec
    students: tuple[Student, ...]
    fusion: ModelEntry

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.spec.input_shape

    @property
    def deployment_id(self) -> int:
        """The id every frame carries (CRC-32 of the UTF-8 name)."""
        return self.spec.id

    def slices(self) -> list[tuple[int, int]]:
        """(offset, width) of each student's vector inside the fusion input."""
        out, offset = [], 0
        for s in self.students:
            out.append((offset, s.width))
            offset += s.width
        return out


def load_deployment(run_dir: Path) -> Deployment:
    """deployment.json through the toolkit's one reader (so export accepts exactly what the live
    nodes accept), then every model read back and checked against it; report.json supplies the
    arenas convert did not put into the JSON."""
    spec = read_deployment(run_dir)
    tdir = spec.directory
    ids = sorted(s.id for s in spec.students)
    if ids != list(range(len(ids))):
        raise ModelFileError(f"student ids must be 0..{len(ids) - 1} for firmware export, got {ids}")
    if len(ids) > MAX_STUDENTS:
        raise ModelFileError(f"{len(ids)} students: firmware export supports at most {MAX_STUDENTS}")
    report = _read_json(tdir / "report.json") if (tdir / "report.json").is_file() else {}
    students = tuple(_student(tdir, s, report) for s in sorted(spec.students, key=lambda s: s.id))
    f = spec.fusion
    fusion = _model(tdir, "fusion", f.file, (f.input, f.output), None, report)
    if fusion.input_size != f.input_width:
        raise ModelFileError(f"fusion input width {fusion.input_size} does not equal "
                             f"the students' total width {f.input_width}")
    if spec.num_classes != fusion.output_size:
        raise ModelFileError(f"fusion.tflite has {fusion.output_size} outputs but "
                             f"deployment.json says {spec.num_classes} classes")
    return Deployment(Path(run_dir), tdir, spec, students, fusion)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from exc


def _student(tdir: Path, spec: StudentSpec, report: Any) -> Student:
    model = _model(tdir, f"student_{spec.id}", spec.file, (spec.input, spec.output),
                   spec.arena_bytes_host or spec.arena_bytes, report)
    if spec.width != model.output_size:
        raise ModelFileError(f"student_{spec.id}.tflite outputs {model.output_size} features but "
                             f"deployment.json says width {spec.width}")
    return Student(spec.id, model, spec.width, spec.filters, spec.board)


def _model(tdir: Path, name: str, file: str, stated: tuple[QParams, QParams],
           stated_arena: int | None, report: Any) -> ModelEntry:
    path = tdir / file
    if not path.is_file():
        raise ModelFileError(f"{path} is missing: run `nonn-tflite convert` again")
    data = path.read_bytes()
    info = parse_tflite(data, path.name)
    _check_firmware_model(info, path.name)
    quant_in = _checked_quant(stated[0], "input", info.input_tensors()[0], path.name)
    quant_out = _checked_quant(stated[1], "output", info.output_tensors()[0], path.name)
    if stated_arena:  # the host measurement (convert's arena_bytes_host, else arena_bytes)
        arena = Arena(stated_arena, "deployment.json")
    else:
        found = report_arena(report, name, path.name)
        arena = Arena(found, "report.json") if found else None
    return ModelEntry(name, path, data, info, quant_in, quant_out, arena)


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


def _checked_quant(stated: QParams, key: str, tensor: TensorInfo, what: str) -> QParams:
    """The model's own quantisation, after checking deployment.json agrees with it."""
    actual = qparams(tensor)
    if not math.isclose(stated.scale, actual.scale, rel_tol=1e-6) or stated.zero_point != actual.zero_point:
        raise ModelFileError(
            f"{what} {key} is quantised (scale={actual.scale:.9g}, zero_point="
            f"{actual.zero_point}) but deployment.json says (scale={stated.scale:.9g}, "
            f"zero_point={stated.zero_point}): deployment.json is stale, run `nonn-tflite convert` again")
    return actual


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
