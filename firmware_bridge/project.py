"""Write one firmware project per student plus the fusion node, for one target.

Everything is rendered into a sibling ``<out>.partial-<pid>`` folder and renamed into place at
the end, so a failed export never leaves a half-written tree that looks flashable.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_bridge.carrays import array_symbol, to_c_array
from firmware_bridge.cfusion import flash_bytes, params_crc32, render_fusion
from firmware_bridge.deployment import Deployment, ModelEntry, Student, load_deployment
from firmware_bridge.render import TEMPLATES, render
from firmware_bridge.resolver import op_calls, render_resolver
from firmware_bridge.targets import Target, get_target
from nonn_tflite import __version__
from nonn_tflite.errors import BoardFitError, UsageError
from nonn_tflite.profile import ARENA_MARGIN_RULE, align, arena_with_margin
from nonn_tflite.wire import HEADER_SIZE

log = logging.getLogger(__name__)

MANIFEST = "export.json"
FUSION_TIMEOUT_MS = 500
FUSION_SLOTS = 4  # frames the C fusion assembles at once (RAM: slots x fusion input width)
# Rendered into every project's src/ (fusion projects add the fusion_* pair).
COMMON_SOURCES = ("nonn_wire.h", "nonn_wire.c", "nonn_crc32.h", "nonn_crc32.c", "nonn_quant.h",
                  "nonn_quant.c", "nonn_node.h", "nonn_node.c", "nonn_config.h")
# The model-running part of a device (TFLM setup, op resolver, arena, CRC check, invoke) is one
# source for every target; the host tests build it against the real TFLM.
DEVICE_SOURCES = ("camera_hook.h", "nonn_model_runner.h", "nonn_model_runner.cc")
# Copied verbatim into device projects that build TFLM themselves (CMake runs it at configure).
TFLM_SOURCES_SCRIPT = Path(__file__).with_name("tflm_tree.py")
SHIPS_TFLM_SELECTOR = ("linux",)
FUSION_SOURCES = ("fusion_runner.h", "fusion_runner.c")


@dataclass(frozen=True)
class Broker:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@dataclass(frozen=True)
class ExportOptions:
    """Settings baked into the generated firmware."""

    wifi_ssid: str | None = None
    broker: str | None = None
    force: bool = False
    fusion_timeout_ms: int = FUSION_TIMEOUT_MS


@dataclass(frozen=True)
class ProjectResult:
    """One generated project: which board gets it and what it needs."""

    name: str  # directory under out/: device_<k> or fusion
    role: str  # "device" or "fusion"
    path: Path
    student: int | None
    files: tuple[Path, ...]
    arena_measured: int | None
    arena_bytes: int | None
    flash_bytes: int
    ops: tuple[str, ...] = ()
    publishes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportResult:
    out: Path
    target: str
    deployment: str
    deployment_id: int
    broker: str
    projects: tuple[ProjectResult, ...]
    readme: Path
    manifest: Path

    def project(self, name: str) -> ProjectResult:
        for p in self.projects:
            if p.name == name:
                return p
        raise KeyError(f"no project {name!r}; have {', '.join(p.name for p in self.projects)}")


@dataclass
class _Plan:
    """A project before it is written: its name, role and template context."""

    name: str
    role: str
    context: dict[str, Any]
    generated: dict[str, str] = field(default_factory=dict)  # src/<file> -> text
    result: dict[str, Any] = field(default_factory=dict)


def parse_broker(url: str | None, target: Target) -> Broker:
    """``mqtt://host[:port]`` (or bare ``host[:port]``) -> Broker; TLS schemes are refused."""
    url = url or target.default_broker
    if not url:
        raise UsageError(f"--broker is required for target {target.name} "
                         "(e.g. --broker mqtt://192.0.2.10:1883)")
    parsed = urllib.parse.urlsplit(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme != "mqtt":
        raise UsageError(f"broker {url!r}: only plain mqtt://host:port is supported by the "
                         "generated firmware (no TLS or websockets)")
    try:
        port = parsed.port or 1883
    except ValueError:
        raise UsageError(f"broker {url!r} has an invalid port") from None
    if not parsed.hostname or parsed.path not in ("", "/"):
        raise UsageError(f"broker {url!r} must look like mqtt://host:port")
    return Broker(parsed.hostname, port)


def topics(deployment: str) -> dict[str, str]:
    """The MQTT topics of docs/ARCHITECTURE.md for one deployment."""
    prefix = f"nonn/{deployment}"
    return {"image": f"{prefix}/image", "features": f"{prefix}/feature/+",
            "prediction": f"{prefix}/prediction", "prefix": prefix}


def export_project(run_dir: Path | str, target: str, out: Path | str, *,
                   wifi_ssid: str | None = None, broker: str | None = None,
                   force: bool = False, fusion_timeout_ms: int = FUSION_TIMEOUT_MS,
                   cpu: str = "cortex-m4", kernels: str = "cmsis-nn") -> ExportResult:
    """Export ``run_dir``'s int8 models as flashable projects for ``target`` under ``out``
    (``cpu``/``kernels``: the cortex-m target only)."""
    tgt = get_target(target)
    options = ExportOptions(wifi_ssid, broker, force, fusion_timeout_ms)
    address = parse_broker(options.broker, tgt)
    _check_wifi(tgt, options.wifi_ssid)
    dep = load_deployment(Path(run_dir))
    base = _base_context(dep, tgt, address, options, Path(run_dir))
    if tgt.name == "cortex-m":  # firmware_bridge/cortex_m.py: QEMU-runnable bare-metal projects
        from firmware_bridge.qemu import Config

        base["cm_config"] = Config(cpu, kernels)
    plans = [_device_plan(dep, s, tgt, base) for s in dep.students]
    plans.append(_fusion_plan(dep, tgt, base))
    out = Path(out)
    _check_out(out, options.force)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        results = tuple(_write_project(tmp, plan, tgt, out) for plan in plans)
        result = ExportResult(out, tgt.name, dep.name, dep.deployment_id, address.url, results,
                              out / "README.md", out / MANIFEST)
        _write(tmp / "README.md", render(f"{tgt.name}/README.md.j2", **base,
                                         projects=results, out_name=out.name))
        _write(tmp / MANIFEST, json.dumps(_manifest(result, dep), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.debug("exported %d projects for %s to %s", len(results), tgt.name, out)
    return result


def _check_wifi(target: Target, ssid: str | None) -> None:
    if not target.needs_wifi:
        return
    if not ssid:
        raise UsageError(f"--wifi-ssid is required for target {target.name} (the WiFi "
                         "password is read from $NONN_WIFI_PASSWORD when you build)")
    if len(ssid.encode("utf-8")) > 32:
        raise UsageError(f"WiFi SSID {ssid!r} is longer than 32 bytes")


def _check_out(out: Path, force: bool) -> None:
    """Refuse to overwrite: anything without --force, and non-export folders even with it."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if not force:
        raise UsageError(f"--out {out} is not empty; pass --force to replace a previous export")
    if not (out / MANIFEST).is_file():
        raise UsageError(f"--out {out} has no {MANIFEST}, so it was not written by "
                         "`nonn-tflite export`; refusing to replace it even with --force")


def _base_context(dep: Deployment, tgt: Target, broker: Broker, options: ExportOptions,
                  run_dir: Path) -> dict[str, Any]:
    return {
        "deployment": dep,
        "target": tgt,
        "broker": broker,
        "wifi_ssid": options.wifi_ssid or "",
        "generator": f"nonn-tflite {__version__}",
        "run_label": run_dir.as_posix(),
        "margin_text": ARENA_MARGIN_RULE,
        "fusion_timeout_ms": options.fusion_timeout_ms,
        "fusion_slots": FUSION_SLOTS,
        "slices": dep.slices(),
        "all_topics": topics(dep.name),
        "header_size": HEADER_SIZE,
    }


def _device_plan(dep: Deployment, student: Student, tgt: Target,
                 base: dict[str, Any]) -> _Plan:
    model = student.model
    from firmware_bridge.cortex_m import device_arena  # measured 32-bit arena, if any

    arena, arena_note = device_arena(dep, model, base.get("cm_config"))
    _check_fit(model, arena, tgt)
    name = f"device_{student.id}"
    node = f"device-{student.id}"  # the Python device's node name: same status topic
    t = topics(dep.name)
    project_topics = {"image": t["image"], "feature": f"{t['prefix']}/feature/{student.id}",
                      "status": f"{t['prefix']}/status/{node}"}
    ops = op_calls(model.info, model.path.name)
    header, source = to_c_array(model.name, model.data, source_note=model.path.name)
    longest = max(len(v) for v in project_topics.values())
    packet = _mqtt_packet(longest, max(model.input_size, student.width))
    _check_mqtt(tgt, model.path.name, packet)
    context = {
        **base, "project": name, "node": node, "role": "device", "student": student,
        "model": model,
        "topics": project_topics, "arena_bytes": arena, "ops": ops,
        "symbol": array_symbol(model.name), "input_hwc": _hwc(model),
        "client_id": f"nonn-{dep.name}-{node}", "mqtt_buffer": _mqtt_buffer(packet, tgt),
    }
    generated = {f"{model.name}_model_data.h": header, f"{model.name}_model_data.cc": source,
                 "model_ops.h": render_resolver(model.name, ops)}
    if "cm_config" in base:
        from firmware_bridge.cortex_m import device_extras

        device_extras(dep, student, context, generated, base["cm_config"], arena_note)
    result = {"student": student.id, "arena_measured": model.arena.bytes, "arena_bytes": arena,
              "flash_bytes": len(model.data), "ops": tuple(op for op, _ in ops),
              "publishes": (project_topics["feature"], project_topics["status"])}
    return _Plan(name, "device", context, generated, result)


def _fusion_plan(dep: Deployment, tgt: Target, base: dict[str, Any]) -> _Plan:
    header, source, layers = render_fusion(dep.fusion.info)
    flash = flash_bytes(layers)
    if flash > tgt.board.flash_limit:
        raise BoardFitError(f"the C fusion needs {flash:,} B of flash but {tgt.name} leaves "
                            f"{tgt.board.flash_limit:,} B for model data")
    t = topics(dep.name)
    project_topics = {"features": t["features"], "prediction": t["prediction"],
                      "status": f"{t['prefix']}/status/fusion"}
    longest = max(len(v) for v in project_topics.values()) + 3  # '+' -> student id
    packet = _mqtt_packet(longest, max([dep.num_classes] + [s.width for s in dep.students]))
    context = {**base, "project": "fusion", "node": "fusion", "role": "fusion",
               "topics": project_topics,
               "layers": layers, "fusion": dep.fusion, "client_id": f"nonn-{dep.name}-fusion",
               "crc": params_crc32(layers), "fusion_flash": flash,
               "mqtt_buffer": _mqtt_buffer(packet, tgt)}
    result = {"student": None, "arena_measured": None, "arena_bytes": None,
              "flash_bytes": flash, "ops": tuple(dep.fusion.info.op_names),
              "publishes": (project_topics["prediction"], project_topics["status"])}
    return _Plan("fusion", "fusion", context,
                 {"fusion_model.h": header, "fusion_model.c": source}, result)


def _hwc(model: ModelEntry) -> tuple[int, int, int]:
    """(H, W, C) of an NHWC image input; any other input counts as 1 x N x 1."""
    dims = model.input_shape[1:]
    if len(dims) == 3:
        return int(dims[0]), int(dims[1]), int(dims[2])
    return 1, model.input_size, 1


def _mqtt_packet(topic_len: int, payload: int) -> int:
    """Bytes of the largest MQTT PUBLISH: 5-byte fixed header, 2 + topic, frame header + payload."""
    return 5 + 2 + topic_len + HEADER_SIZE + payload


def _mqtt_buffer(packet: int, tgt: Target) -> int:
    """The client buffer: the largest packet plus 64 B of slack, within the client's limit."""
    buffer = align(packet + 64, 64)
    return min(buffer, tgt.mqtt_packet_limit) if tgt.mqtt_packet_limit else buffer


def _check_mqtt(tgt: Target, what: str, packet: int) -> None:
    limit = tgt.mqtt_packet_limit
    if limit is not None and packet > limit:
        raise BoardFitError(f"{what}: an image frame needs a {packet:,} B MQTT packet but "
                            f"{tgt.name}'s MQTT client handles at most {limit:,} B")


def _check_fit(model: ModelEntry, arena: int, tgt: Target) -> None:
    board = tgt.board
    if arena > board.arena_limit:
        raise BoardFitError(
            f"{model.path.name} needs a {arena:,} B tensor arena ({model.arena.bytes:,} B "
            f"measured + margin) but {tgt.name} allows {board.arena_limit:,} B; use a smaller "
            "student (more students, fewer filters each) or another target")
    if len(model.data) > board.flash_limit:
        raise BoardFitError(
            f"{model.path.name} is {len(model.data):,} B but {tgt.name} leaves "
            f"{board.flash_limit:,} B of flash for the model")


def _write_project(root: Path, plan: _Plan, tgt: Target, out: Path) -> ProjectResult:
    project_dir = root / plan.name
    written: list[Path] = []
    for template, rel in _target_templates(tgt.name, plan.role):
        written.append(_write(project_dir / rel, render(template, **plan.context)))
    common = COMMON_SOURCES + (FUSION_SOURCES if plan.role == "fusion" else DEVICE_SOURCES)
    for name in common:
        written.append(_write(project_dir / "src" / name,
                              render(f"common/{name}.j2", **plan.context)))
    for name, text in plan.generated.items():
        written.append(_write(project_dir / "src" / name, text))
    if plan.role == "device" and tgt.name in SHIPS_TFLM_SELECTOR:
        written.append(_write(project_dir / "scripts" / "tflm_sources.py",
                              TFLM_SOURCES_SCRIPT.read_text()))
    for path in written:
        if path.suffix in (".sh", ".py"):
            path.chmod(0o755)
    final = out / plan.name
    files = tuple(sorted(final / p.relative_to(project_dir) for p in written))
    return ProjectResult(plan.name, plan.role, final, files=files, **plan.result)


def _target_templates(target: str, role: str) -> list[tuple[str, Path]]:
    """(template name, output path) for every file under templates/<target>/<role>/."""
    base = TEMPLATES / target / role
    pairs = []
    for path in sorted(base.rglob("*.j2")):
        rel = path.relative_to(base)
        pairs.append((path.relative_to(TEMPLATES).as_posix(), rel.with_name(rel.stem)))
    return pairs


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _manifest(result: ExportResult, dep: Deployment) -> dict[str, Any]:
    """What was generated, for tools and for `--force` to recognise its own output."""
    models = {s.id: s.model for s in dep.students}
    return {
        "schema": 1,
        "generator": f"nonn-tflite {__version__}",
        "target": result.target,
        "deployment": result.deployment,
        "deployment_id": result.deployment_id,
        "broker": result.broker,
        "projects": [
            {
                "name": p.name, "role": p.role, "student": p.student,
                "arena_measured": p.arena_measured, "arena_bytes": p.arena_bytes,
                "flash_bytes": p.flash_bytes, "ops": list(p.ops), "publishes": list(p.publishes),
                "model_crc32": models[p.student].crc32 if p.student is not None else None,
            }
            for p in result.projects
        ],
    }
