"""The ``cortex-m`` export target: one bare-metal TFLM project per model, runnable under QEMU.

A project holds the model as an aligned array with its CRC-32 (checked at boot), the op
resolver generated from the model, the 32-bit arena measured on QEMU plus a small margin,
a few int8 test inputs, our startup code and linker scripts for the QEMU machines, and a
Makefile that builds TFLM (only the kernels the model needs; CMSIS-NN by default) and runs
the program with ``make run``. :func:`write_model_project` is also what ``measure`` links to
get a model's real flash and static RAM.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge.carrays import array_symbol, hex_lines, to_c_array
from firmware_bridge.qemu import (CPUS, RUNTIME, Config, LinkSize, build_runtime, elf_size,
                                  min_arena, run_probe)
from firmware_bridge.qemu import (TFLM_SOURCES_PY, _make, check_ops, check_tools, qemu,
                                  tflm_tree)
from firmware_bridge.render import render
from firmware_bridge.resolver import op_calls, render_resolver
from nonn_tflite import __version__
from nonn_tflite.errors import NonnError, UsageError
from nonn_tflite.tflite_model import parse_tflite

RUNTIME_FILES = ("tflm.mk", "startup.c", "nonn_platform.h", "nonn_tflm_port.cc",
                 "nonn_sections.ld", "mps2-an386.ld", "mps2-an500.ld", "mps3-an547.ld")
TEST_INPUTS = 4  # test inputs embedded in each project


def runtime_sources() -> dict[str, str]:
    """The platform files every project carries in src/ (startup, linker scripts, TFLM rules)."""
    return {name: (RUNTIME / name).read_text() for name in RUNTIME_FILES}


def _default_tree(kernels: str) -> str:
    """The tree a project falls back to when $NONN_TFLM_DIR is unset ('' when none is found)."""
    try:
        return str(tflm_tree(kernels).resolve())
    except Exception:  # noqa: BLE001  (no tree here: the user sets NONN_TFLM_DIR)
        return ""


def cm_context(model_name: str, model_file: str, data: bytes, config: Config,
               inputs: np.ndarray, arena_note: str, inputs_note: str) -> dict[str, Any]:
    """Template context of the cortex-m project (``cm`` in the templates)."""
    info = parse_tflite(data, model_file)
    check_ops(info.op_names, model_file)
    flat = np.ascontiguousarray(inputs, dtype=np.int8).reshape(len(inputs), -1)
    return {
        "model_name": model_name, "model_file": model_file, "cpu": config.cpu,
        "kernels": config.kernels, "machine": config.core.machine,
        "clock_hz": config.core.clock_hz, "boards": config.core.boards,
        "tflm_ops": list(info.op_names),
        "tree_cmsis": _default_tree("cmsis-nn"), "tree_ref": _default_tree("reference"),
        "samples": len(flat), "input_bytes": flat.shape[1],
        "input_rows": [", ".join(str(int(v)) for v in row) for row in flat],
        "arena_note": arena_note, "inputs_note": inputs_note,
    }


def project_files(model_name: str, data: bytes, cm: dict[str, Any], *, project: str,
                  arena_bytes: int) -> dict[str, str]:
    """Path (relative to the project) -> text, for a project running one model on its own."""
    symbol = array_symbol(model_name)
    header, source = to_c_array(model_name, data, source_note=cm["model_file"])
    info = parse_tflite(data)
    student = re.fullmatch(r"student_(\d+)", model_name)
    ctx = {"project": project, "symbol": symbol, "arena_bytes": arena_bytes, "cm": cm,
           "generator": f"nonn-tflite {__version__}", "model": {"name": model_name},
           "student_id": int(student.group(1)) if student else -1,
           "output_bytes": int(np.prod(info.output_tensors()[0].shape))}
    ctx["student"] = {"id": ctx["student_id"]}
    files = {"Makefile": render("cortex-m/device/Makefile.j2", **ctx),
             "src/nonn_config.h": render("cortex-m/standalone/nonn_config.h.j2", **ctx),
             "src/nonn_model_runner.h": render("common/nonn_model_runner.h.j2", **ctx),
             "src/nonn_model_runner.cc": render("common/nonn_model_runner.cc.j2", **ctx),
             "src/main.cc": render("cortex-m/device/src/main.cc.j2", **ctx),
             "src/test_inputs.h": render("cortex-m/device/src/test_inputs.h.j2", **ctx),
             f"src/{model_name}_model_data.h": header, f"src/{model_name}_model_data.cc": source,
             "src/model_ops.h": render_resolver(model_name, op_calls(parse_tflite(data), model_name)),
             "src/nonn_crc32.h": render("common/nonn_crc32.h.j2"),
             "src/nonn_crc32.c": render("common/nonn_crc32.c.j2"),
             "src/tflm_sources.py": TFLM_SOURCES_PY.read_text()}
    files.update({f"src/{k}": v for k, v in runtime_sources().items()})
    return files


def write_model_project(root: Path, model_name: str, data: bytes, config: Config,
                        inputs: np.ndarray, arena_bytes: int, *, arena_note: str = "",
                        inputs_note: str = "") -> Path:
    """Write a standalone project for one model under ``root`` (replaced if present)."""
    cm = cm_context(model_name, f"{model_name}.tflite", data, config, inputs,
                    arena_note or f"{arena_bytes:,} B tensor arena", inputs_note or "test inputs")
    if root.exists():
        shutil.rmtree(root)
    for rel, text in project_files(model_name, data, cm, project=root.name,
                                   arena_bytes=arena_bytes).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@dataclass
class FirmwareRun:
    """One exported/linked project built and run under QEMU."""

    elf: Path
    size: LinkSize
    returncode: int
    stdout: str
    arena_used_bytes: int | None
    outputs: list[list[int]]
    instructions: list[int]


def build_project(project: Path, config: Config, *, use_cached_runtime: bool = True) -> Path:
    """``make`` the project for ``config`` (reusing the cached libtflm.a); returns the ELF."""
    args = [f"CPU={config.cpu}", f"KERNELS={config.kernels}"]
    if use_cached_runtime:
        args.append(f"TFLM_LIB={build_runtime(config) / 'libtflm.a'}")
    tree = os.environ.get("NONN_TFLM_DIR") or str(tflm_tree(config.kernels))
    args.append(f"TFLM_DIR={tree}")
    _make(["-C", str(project), *args, "all"], cwd=project)
    return project / "build" / config.key / f"{project.name}.elf"


def run_project(project: Path, config: Config, timeout: float = 600) -> FirmwareRun:
    """Build and run one project under QEMU; parse what it printed."""
    import re

    elf = build_project(project, config)
    run = qemu(elf, config.cpu, project, timeout)
    arena = re.search(r"^nonn arena_used=(\d+)", run.stdout, re.M)
    outputs = [[int(v) for v in m.group(1).split(",")]
               for m in re.finditer(r"^nonn output\[\d+\]=(.*)$", run.stdout, re.M)]
    instructions = [int(m.group(1)) for m in re.finditer(r"instructions\[\d+\]=(\d+)", run.stdout)]
    return FirmwareRun(elf, elf_size(elf), run.returncode, run.stdout + run.stderr,
                       int(arena.group(1)) if arena else None, outputs, instructions)


def cpu_names() -> tuple[str, ...]:
    return tuple(CPUS)


__all__ = ["FirmwareRun", "TEST_INPUTS", "build_project", "cm_context", "cpu_names",
           "project_files", "run_project", "runtime_sources", "write_model_project", "hex_lines"]


# -- the export hook (firmware_bridge/project.py calls these for --target cortex-m) -------------

def measured_arena(tflite_dir: Path, file_name: str, config: Config | None) -> tuple[int, str] | None:
    """The QEMU-measured 32-bit arena of one model from report.json (``measure`` wrote it): the
    figure of ``config`` if measured, else the largest over the measured configurations."""
    import json

    path = Path(tflite_dir) / "report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    entries = [report.get("teacher"), report.get("fusion"), *report.get("students", [])]
    for e in entries:
        if isinstance(e, dict) and e.get("file") == file_name and e.get("measured"):
            m = e["measured"]
            if config is not None and config.key in m:
                return int(m[config.key]["arena_bytes_min"]), config.key
            key = max(m, key=lambda k: m[k]["arena_bytes_min"])
            return int(m[key]["arena_bytes_min"]), key
    return None


def device_arena(dep, model, config: Config | None) -> tuple[int, str]:
    """(bytes to reserve, why) for one student: the measured 32-bit arena plus the small margin;
    for a cortex-m export without a measurement, measured now on QEMU; otherwise the host
    figure plus the old +25 % rule, said so."""
    from nonn_tflite.profile import (ARENA_32BIT_MARGIN_RULE, ARENA_MARGIN_RULE,
                                     arena_32bit_with_margin, arena_with_margin)

    found = measured_arena(dep.tflite_dir, model.path.name, config)
    if found is None and config is not None:
        inputs = student_inputs(dep, model, 1)
        probe = run_probe(model.data, inputs, config)
        found = (min_arena(model.data, inputs, config, probe.arena_used_bytes), config.key)
    if found is not None:
        measured, key = found
        return (arena_32bit_with_margin(measured),
                f"{measured:,} B minimal arena measured on QEMU ({key}); {ARENA_32BIT_MARGIN_RULE}")
    return (arena_with_margin(model.arena.bytes),
            f"host arena {model.arena.bytes:,} B {ARENA_MARGIN_RULE} (not measured on a 32-bit "
            "target: run `nonn-tflite measure`)")


def student_inputs(dep, model, n: int = TEST_INPUTS) -> np.ndarray:
    """The first ``n`` images of the run's test sample, as the model's int8 input."""
    from nonn_tflite.int8 import images_to_int8

    with np.load(Path(dep.tflite_dir) / "test_sample.npz") as z:
        x = z["x"][:n]
    return images_to_int8(x, model.input).reshape(len(x), -1)


def device_extras(dep, student, context: dict, generated: dict, config: Config,
                  arena_note: str) -> None:
    """Add the cortex-m template context and platform files to one device project."""
    model = student.model
    inputs = student_inputs(dep, model)
    context["cm"] = cm_context(model.name, model.path.name, model.data, config, inputs,
                               arena_note, f"the first {len(inputs)} images of "
                               f"{dep.name}'s test_sample.npz, quantised to its input")
    generated.update(runtime_sources())
    generated["tflm_sources.py"] = TFLM_SOURCES_PY.read_text()


# -- measuring a converted run on the emulated cores ---------------------------------------------

DEFAULT_CONFIGS = (Config("cortex-m4", "cmsis-nn"), Config("cortex-m4", "reference"),
                   Config("cortex-m55", "cmsis-nn"), Config("cortex-m55", "reference"))
PROBE_MODEL_MAX = 1024 * 1024  # probe.cc's buffers: model, arena
PROBE_ARENA_MAX = 768 * 1024


def tflm_python_outputs(data: bytes, inputs: np.ndarray) -> np.ndarray:
    """The Python TFLM interpreter's outputs (the bit-exactness reference)."""
    from tflite_micro import runtime

    micro = runtime.Interpreter.from_bytes(bytes(data), arena_size=8 << 20)
    shape = parse_tflite(data).input_tensors()[0].shape
    out = []
    for row in np.asarray(inputs, np.int8):
        micro.set_input(row.reshape(shape), 0)
        micro.invoke()
        out.append(np.asarray(micro.get_output(0)).reshape(-1).copy())
    return np.stack(out)


def measure_model(name: str, data: bytes, inputs: np.ndarray, configs, *, link: bool = True,
                  reference: np.ndarray | None = None, work: Path | None = None) -> dict:
    """``{config.key: Measurement dict}`` for one model; ``skipped`` when it cannot fit."""
    from nonn_tflite.profile import arena_32bit_with_margin

    import logging

    from firmware_bridge.qemu import ArenaTooSmall

    log = logging.getLogger("nonn_tflite")
    if len(data) > PROBE_MODEL_MAX:
        return {"skipped": f"{len(data):,} B model > the probe's {PROBE_MODEL_MAX:,} B buffer"}
    ref = tflm_python_outputs(data, inputs) if reference is None else reference
    out: dict = {}
    for config in configs:
        try:
            probe = run_probe(data, inputs, config)
        except ArenaTooSmall:
            return {"skipped": f"needs more than the probe's {PROBE_ARENA_MAX:,} B arena "
                               f"on {config.core.machine}"}
        m = {"model": name, "cpu": config.cpu, "machine": config.core.machine,
             "kernels": config.kernels, "arena_used_bytes": probe.arena_used_bytes,
             "arena_bytes_min": min_arena(data, inputs, config, probe.arena_used_bytes),
             "instructions_per_inference": probe.instructions_median,
             "instructions": probe.instructions, "inferences": len(inputs),
             "bit_exact": bool(np.array_equal(probe.outputs.reshape(ref.shape), ref)),
             "label": config.core.label()}
        arena = arena_32bit_with_margin(m["arena_bytes_min"])
        m["arena_reserved_bytes"] = arena
        if link:
            root = (work or cache_root_links()) / f"{name}-{config.key}"
            write_model_project(root, name, data, config, inputs[:1], arena)
            try:
                size = elf_size(build_project(root, config))
            except NonnError as exc:  # e.g. a teacher whose arena overflows the core's RAM
                m["link_error"] = str(exc)[:300]
            else:
                m.update(flash_bytes=size.flash_bytes, static_ram_bytes=size.static_ram_bytes,
                         text_bytes=size.text, data_bytes=size.data, bss_bytes=size.bss)
        log.info("  %-22s %-20s %12s instructions/inference, arena %s B used, %s B min%s%s",
                 name, config.key, f"{m['instructions_per_inference']:,}",
                 f"{m['arena_used_bytes']:,}", f"{m['arena_bytes_min']:,}",
                 f", flash {m['flash_bytes']:,} B" if m.get("flash_bytes") else "",
                 "" if m["bit_exact"] else ", NOT bit-exact")
        out[config.key] = m
    return out


def cache_root_links() -> Path:
    from firmware_bridge.qemu import cache_root

    return cache_root() / "links"


def measure_run(run_dir: Path | str, configs=DEFAULT_CONFIGS, *, samples: int = TEST_INPUTS,
                link: bool = True, teacher: bool = True, write: bool = True) -> dict:
    """Measure every student, the fusion and the teacher of a converted run on the emulated
    cores; update report.json/report.md and deployment.json's arenas (unless ``write`` is
    False). Returns the report."""
    import json
    import logging

    from nonn_tflite.int8 import QParams, images_to_int8, requantise
    from nonn_tflite.measure import apply_measurements

    log = logging.getLogger("nonn_tflite")
    tdir = converted_dir(run_dir)
    check_tools()
    for kernels in dict.fromkeys(c.kernels for c in configs):
        tflm_tree(kernels)
    report = json.loads((tdir / "report.json").read_text())
    with np.load(tdir / "test_sample.npz") as z:
        x = z["x"][:samples]
    q = lambda e: QParams(e["input"]["scale"], e["input"]["zero_point"])  # noqa: E731
    results: dict = {}
    feats = []
    for s in report["students"]:
        data = (tdir / s["file"]).read_bytes()
        inputs = images_to_int8(x, q(s)).reshape(len(x), -1)
        ref = tflm_python_outputs(data, inputs)
        log.info("measuring %s on %s", s["file"], ", ".join(c.key for c in configs))
        results[s["file"]] = measure_model(s["file"].removesuffix(".tflite"), data, inputs,
                                           configs, link=link, reference=ref)
        feats.append(requantise(ref, (s["output"]["scale"], s["output"]["zero_point"]),
                                (report["fusion"]["input"]["scale"],
                                 report["fusion"]["input"]["zero_point"])))
    f = report["fusion"]
    log.info("measuring %s on %s", f["file"], ", ".join(c.key for c in configs))
    results[f["file"]] = measure_model("fusion", (tdir / f["file"]).read_bytes(),
                                       np.concatenate(feats, axis=1), configs, link=link)
    if teacher:
        t = report["teacher"]
        data = (tdir / t["file"]).read_bytes()
        log.info("measuring %s on %s", t["file"], ", ".join(c.key for c in configs))
        results[t["file"]] = measure_model("teacher", data,
                                           images_to_int8(x, q(t)).reshape(len(x), -1),
                                           configs, link=link)
    meta = {"toolchain": _toolchain(), "configs": [{"cpu": c.cpu, "kernels": c.kernels,
                                                    "machine": c.core.machine,
                                                    "clock_hz": c.core.clock_hz,
                                                    "label": c.core.label()} for c in configs]}
    apply_measurements(report, results, meta)
    if write:
        _write_measured(tdir, report)
    return report


def converted_dir(run_dir: Path | str) -> Path:
    """The folder holding report.json, test_sample.npz and the .tflite files of a converted
    run (RUN/tflite, or that folder itself); a UsageError saying to convert first otherwise."""
    run = Path(run_dir)
    for tdir in (run / "tflite", run):
        if (tdir / "report.json").is_file() and (tdir / "test_sample.npz").is_file():
            return tdir
    if not run.exists():
        raise UsageError(f"{run} does not exist; expected a run folder converted by "
                         "`nonn-tflite convert`")
    raise UsageError(f"{run} has no tflite/report.json and test_sample.npz; run "
                     f"`nonn-tflite convert {run}` first")


def _toolchain() -> dict:
    import subprocess

    def first(cmd):
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        return out.splitlines()[0] if out else None

    tree = tflm_tree("cmsis-nn")
    versions = (tree / "VERSIONS.txt").read_text().split() if (tree / "VERSIONS.txt").is_file() else []
    return {"gcc": first(["arm-none-eabi-gcc", "--version"]),
            "qemu": first(["qemu-system-arm", "--version"]),
            "tflm": " ".join(versions[:2]) if versions else str(tree)}


def _write_measured(tdir: Path, report: dict) -> None:
    """report.{json,md,...} and deployment.json's per-model arena (key kept: arena_bytes)."""
    import json

    from nonn_tflite.report import write_report
    from nonn_tflite.rundir import write_json

    write_report(report, tdir)
    dep_path = tdir / "deployment.json"
    dep = json.loads(dep_path.read_text())
    by_file = {e["file"]: e for e in [report["fusion"], *report["students"]]}
    for entry in [dep["fusion"], *dep["students"]]:
        r = by_file.get(entry["file"])
        if r and r.get("arena_bytes_32bit_measured"):
            entry["arena_bytes"] = r["arena_bytes_32bit"]
            entry["arena_bytes_32bit_measured"] = r["arena_bytes_32bit_measured"]
    write_json(dep_path, dep)
