"""Real TFLite Micro on emulated Cortex-M cores: build once, run any model, measure it.

Every figure here is *measured* on QEMU, not estimated:

* instructions per inference: SysTick counts the core clock, and under ``-icount shift=0`` one
  guest instruction is 1 ns of virtual time, so instructions = ticks x 1e9 / clock (checked
  exact with a 10 M-instruction loop, ../shared/tflm/README.md). These are instruction counts,
  not cycles: an SMLAD or an MVE instruction does several MACs;
* ``arena_used_bytes()``: TFLM's own figure from the 32-bit build with the chosen kernels;
* linked flash (text + rodata + data, the TFLM runtime included) and static RAM, from a
  per-model link with the generated op resolver (``arm-none-eabi-size``).

One *probe* program per (cpu, kernels) registers every op the toolkit's models use and reads
the model and its inputs through semihosting, so measuring a new model costs a QEMU run (well
under a second) instead of a build. The TFLM library (minutes to compile on 2 cores) is built
once per configuration and cached under ``~/.cache/nonn-tflite/cortex-m`` (``NONN_CACHE_DIR``
overrides). Linked flash needs a per-model link, which is seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from firmware_bridge.render import TEMPLATES
from nonn_tflite.errors import NonnError, UsageError

RUNTIME = TEMPLATES / "cortex-m" / "runtime"
TFLM_SOURCES_PY = Path(__file__).resolve().parent / "tflm_tree.py"  # shipped as scripts/tflm_sources.py
REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = ("install the Cortex-M toolchain and QEMU: sudo apt-get install gcc-arm-none-eabi "
                "libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm make")
MEASURED_LABEL = "measured on QEMU {machine} (instruction counts, not cycles)"


class ToolchainError(NonnError):
    """A tool the Cortex-M build or run needs is missing (exit 1; the message says what to
    install)."""


@dataclass(frozen=True)
class Cpu:
    """One emulated core: the QEMU machine that has it and the clock its SysTick counts."""

    name: str
    machine: str
    clock_hz: int
    boards: str  # real boards with this core (README text)

    def instructions(self, ticks: int) -> int:
        return round(ticks * 1e9 / self.clock_hz)

    def label(self) -> str:
        return MEASURED_LABEL.format(machine=self.machine)


CPUS: dict[str, Cpu] = {c.name: c for c in (
    Cpu("cortex-m4", "mps2-an386", 25_000_000, "nRF52840 (Arduino Nano 33 BLE), NUCLEO-L4R5ZI"),
    Cpu("cortex-m7", "mps2-an500", 25_000_000, "STM32F746G-DISCO"),
    Cpu("cortex-m55", "mps3-an547", 32_000_000, "Arm Corstone-300 (MPS3 AN547), Alif Ensemble"),
)}
KERNEL_SETS = ("cmsis-nn", "reference")

# Every op the probe registers: what the toolkit's students, fusion and teachers use. Each op
# costs compile time once per configuration (2 shared cores), so add ops only as models need.
# DEPTHWISE_CONV_2D: the mbv2 student family; MAX_POOL_2D: the airbench teacher.
PROBE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "MEAN", "MAX_POOL_2D")
TREE_KIND = {"cmsis-nn": "cmsis", "reference": "ref"}


@dataclass(frozen=True)
class Config:
    """One build configuration: a core and a kernel set."""

    cpu: str
    kernels: str = "cmsis-nn"

    def __post_init__(self) -> None:
        if self.cpu not in CPUS:
            raise UsageError(f"--cpu {self.cpu!r}: expected one of {', '.join(CPUS)}")
        if self.kernels not in KERNEL_SETS:
            raise UsageError(f"--kernels {self.kernels!r}: expected one of {', '.join(KERNEL_SETS)}")

    @property
    def core(self) -> Cpu:
        return CPUS[self.cpu]

    @property
    def key(self) -> str:
        return f"{self.cpu}-{self.kernels}"


# -- tools and trees ------------------------------------------------------------------------------

def check_tools() -> None:
    """Fail with what to install when the cross compiler, make or QEMU is missing."""
    missing = [t for t in ("arm-none-eabi-gcc", "arm-none-eabi-g++", "arm-none-eabi-size", "make",
                           "qemu-system-arm") if shutil.which(t) is None]
    if missing:
        raise ToolchainError(f"{', '.join(missing)} not found; {INSTALL_HINT}")


def tflm_tree(kernels: str) -> Path:
    """The TFLM tree for ``kernels`` (tflm_tree.find_tree: $NONN_TFLM_DIR, else ../shared/tflm;
    tree-cmsis for CMSIS-NN, tree-ref for the reference kernels)."""
    from firmware_bridge.tflm_tree import TflmTreeError, find_tree

    try:
        return find_tree(TREE_KIND[kernels])
    except TflmTreeError as exc:
        raise ToolchainError(str(exc)) from None


def cache_root() -> Path:
    base = os.environ.get("NONN_CACHE_DIR") or Path.home() / ".cache" / "nonn-tflite"
    return Path(base) / "cortex-m"


def check_ops(ops, what: str = "model") -> None:
    """Refuse a model with an op the probe does not register (one line naming it)."""
    unknown = [op for op in ops if op not in PROBE_OPS]
    if unknown:
        raise UsageError(f"{what} uses op {unknown[0]}, which the Cortex-M probe does not register "
                         f"(it runs {', '.join(PROBE_OPS)})")


def _make(args: list[str], cwd: Path, timeout: float = 3600) -> str:
    cmd = ["nice", "-n", "10", "make", f"-j{os.environ.get('NONN_MAKE_JOBS', '2')}", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        raise NonnError("Cortex-M build failed: " + " | ".join(tail))
    return proc.stdout


def _digest(*parts: str | bytes | Path) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            h.update(p.read_bytes() if p.is_file() else str(p).encode())
        else:
            h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _toolchain_version() -> str:
    out = subprocess.run(["arm-none-eabi-gcc", "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0] if out.stdout else "?"


@contextlib.contextmanager
def _locked(path: Path):
    """One builder per cache folder (parallel tests and sessions share ~/.cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def runtime_dir(config: Config) -> Path:
    """The cache folder of one configuration's TFLM library (keyed by tree, flags, toolchain)."""
    tree = tflm_tree(config.kernels)
    versions = tree / "VERSIONS.txt"
    key = _digest(str(tree.resolve()), versions, RUNTIME / "tflm.mk", RUNTIME / "probe.mk",
                  _toolchain_version(), " ".join(PROBE_OPS))
    return cache_root() / f"{config.key}-{key}"


def build_runtime(config: Config) -> Path:
    """libtflm.a and the probe ELF for ``config`` (built once, then cached); returns the folder."""
    check_tools()
    tree = tflm_tree(config.kernels)
    build = runtime_dir(config)
    elf = build / "probe.elf"
    stamp = build / "probe.stamp"  # the platform files the probe was linked from
    app = _digest(*sorted(RUNTIME.iterdir()))
    with _locked(build.with_suffix(".lock")):
        if elf.is_file() and stamp.is_file() and stamp.read_text() == app:
            return build
        elf.unlink(missing_ok=True)  # relink only: the cached libtflm.a objects stay
        build.mkdir(parents=True, exist_ok=True)
        (build / "probe_ops.h").write_text(probe_ops_header())
        _make(["-f", str(RUNTIME / "probe.mk"), f"RUNTIME_DIR={RUNTIME}/", f"CPU={config.cpu}",
               f"KERNELS={config.kernels}", f"TFLM_DIR={tree}", f"BUILD={build}",
               f"TFLM_OPS={' '.join(PROBE_OPS)}", f"TFLM_SOURCES_PY={TFLM_SOURCES_PY}",
               str(elf)], cwd=build)
        stamp.write_text(app)
    return build


def probe_ops_header() -> str:
    from firmware_bridge.resolver import add_method

    methods = sorted({add_method(op, "probe") for op in PROBE_OPS})
    lines = ["// Generated by nonn-tflite (firmware_bridge/qemu.py): every op the probe runs.",
             "#pragma once", '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"',
             "namespace nonn {", f"using ProbeOpResolver = tflite::MicroMutableOpResolver<{len(methods)}>;",
             "inline TfLiteStatus RegisterProbeOps(ProbeOpResolver& r) {"]
    lines += [f"  if (r.{m}() != kTfLiteOk) return kTfLiteError;" for m in methods]
    lines += ["  return kTfLiteOk;", "}", "}  // namespace nonn", ""]
    return "\n".join(lines)


# -- running -----------------------------------------------------------------------------------

@dataclass
class QemuRun:
    """What one QEMU run printed and returned."""

    returncode: int
    stdout: str
    stderr: str


def qemu(elf: Path, cpu: str, cwd: Path, timeout: float = 600) -> QemuRun:
    """Run ``elf`` on the QEMU machine of ``cpu`` with semihosting and instruction counting."""
    check_tools()
    core = CPUS[cpu]
    cmd = ["qemu-system-arm", "-M", core.machine, "-nographic", "-monitor", "none", "-serial", "none",
           "-semihosting-config", "enable=on,target=native", "-icount", "shift=0",
           "-kernel", str(elf)]
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NonnError(f"QEMU {core.machine} did not finish {elf.name} within {timeout:.0f} s") from None
    return QemuRun(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class ProbeResult:
    """One model on one configuration, measured with the probe."""

    config: Config
    arena_used_bytes: int
    instructions: list[int]  # per inference
    outputs: np.ndarray  # (N, *output bytes) as the output tensor's dtype

    @property
    def instructions_median(self) -> int:
        return int(np.median(self.instructions))


_LINE = re.compile(r"^nonn-probe (\w+)=(.*)$", re.M)


class ArenaTooSmall(NonnError):
    """The probe's AllocateTensors or Invoke failed at the arena size it was given."""


def run_probe(model: bytes, inputs: np.ndarray, config: Config, *, out_dtype=np.int8,
              arena: int | None = None, timeout: float = 600) -> ProbeResult:
    """Run ``model`` on ``inputs`` (N samples, the input tensor's dtype) on the emulated core,
    with an ``arena``-byte tensor arena (default: the probe's largest)."""
    build = build_runtime(config)
    inputs = np.ascontiguousarray(inputs)
    with tempfile.TemporaryDirectory(prefix="nonn-probe-") as tmp:
        work = Path(tmp)
        (work / "probe_model.tflite").write_bytes(model)
        (work / "probe_input.bin").write_bytes(inputs.tobytes())
        if arena is not None:
            (work / "probe_arena.txt").write_text(str(int(arena)))
        run = qemu(build / "probe.elf", config.cpu, work, timeout)
        if run.returncode == 4 and "arena_too_small=" in run.stdout:
            raise ArenaTooSmall(f"arena {arena} B too small")
        if arena is not None and run.returncode != 0 and "nonn-probe arena_used=" not in run.stdout:
            # A trial arena below the minimum can also crash inside AllocateTensors instead of
            # failing it (seen: CMSIS-NN FULLY_CONNECTED on the M55, "All temp buffers must be
            # freed before calling ResetTempAllocations()", then a hard fault). The model ran
            # with the full arena before min_arena tries smaller ones, so this is "too small".
            raise ArenaTooSmall(f"arena {arena} B too small (AllocateTensors crashed: "
                                f"{(run.stdout + run.stderr).strip()[-160:]})")
        facts = _LINE.findall(run.stdout)
        errors = [v for k, v in facts if k == "error"]
        if run.returncode != 0 or errors or "nonn-probe done" not in run.stdout:
            why = errors[0] if errors else (run.stdout + run.stderr).strip()[-300:]
            raise NonnError(f"TFLM probe on {config.core.machine} ({config.key}) failed "
                            f"(exit {run.returncode}): {why}")
        raw = (work / "probe_output.bin").read_bytes()
    arena = int(next(v for k, v in facts if k == "arena_used"))
    ticks = [int(v.split("ticks=")[1]) for k, v in facts if k == "invoke"]
    n = len(inputs)
    outputs = np.frombuffer(raw, dtype=out_dtype).reshape(n, -1) if n else np.zeros((0, 0), out_dtype)
    return ProbeResult(config, arena, [config.core.instructions(t) for t in ticks], outputs.copy())


def min_arena(model: bytes, inputs: np.ndarray, config: Config, arena_used: int) -> int:
    """The smallest arena (16-byte steps) with which TFLM allocates *and* invokes ``model`` on
    the 32-bit build. ``arena_used_bytes()`` alone is not enough: it leaves out the temporary
    allocations of Prepare (seen here: 1,072 B used, 1,136 B failed in AllocateTensors)."""
    def ok(size: int) -> bool:
        try:
            run_probe(model, inputs[:1], config, arena=size)
            return True
        except ArenaTooSmall:
            return False

    lo, hi = max(16, arena_used - 16), arena_used + max(256, arena_used // 8)
    while not ok(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 16:  # invariant: lo fails (or is a lower bound), hi works
        mid = (lo + hi) // 2 // 16 * 16
        if mid <= lo:
            break
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


# -- per-model link: flash and static RAM -----------------------------------------------------

@dataclass
class LinkSize:
    """``arm-none-eabi-size`` of a model's own firmware (its resolver, the TFLM it links)."""

    text: int
    data: int
    bss: int

    @property
    def flash_bytes(self) -> int:  # text (code + rodata, the model array included) + data
        return self.text + self.data

    @property
    def static_ram_bytes(self) -> int:  # data + bss (the tensor arena included)
        return self.data + self.bss


def elf_size(elf: Path) -> LinkSize:
    out = subprocess.run(["arm-none-eabi-size", "-A", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    sections = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\.\S+)\s+(\d+)\s+\d+", out, re.M)}
    text = sum(v for k, v in sections.items() if k in (".text", ".ARM.exidx", ".model"))
    return LinkSize(text, sections.get(".data", 0), sections.get(".bss", 0))


@dataclass
class Measurement:
    """One model measured on one configuration (what report.json's ``measured`` holds)."""

    model: str
    cpu: str
    machine: str
    kernels: str
    arena_used_bytes: int
    instructions_per_inference: int
    inferences: int
    bit_exact: bool | None = None  # against the Python TFLM interpreter, when checked
    flash_bytes: int | None = None
    static_ram_bytes: int | None = None
    label: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d
