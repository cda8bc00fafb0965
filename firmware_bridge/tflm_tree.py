"""Which TensorFlow Lite Micro sources a model needs, read from the TFLM tree itself.

A TFLM tree (made by TFLM's ``create_tflm_tree.py``) holds every kernel; a model needs the core
runtime and the kernels of its ops. Compiling only those (about 70 files instead of 300) gives
the same binary under ``--gc-sections`` in a fraction of the time. The op -> kernel mapping is
read from the tree, not from a table: ``micro_mutable_op_resolver.h`` names each op's
``Register_*`` function, and the kernel sources say which file defines it. So a newer TFLM
with moved kernels still builds.

This is the one place that selects TFLM sources. It uses the standard library only, because
exported projects ship it verbatim as ``scripts/tflm_sources.py`` and CMake runs it at configure
time (``python3 tflm_sources.py TREE OP...`` prints one source per line); host tests, Linux
builds and Cortex-M builds therefore compile the same files.

Trees: ``$NONN_TFLM_DIR`` (a tree, or a folder holding ``tree-ref/`` and ``tree-cmsis/`` like
``scripts/fetch_tflm.sh`` writes), else ``../shared/tflm`` beside the repository.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ENV = "NONN_TFLM_DIR"
# ../shared/tflm relative to the repository (this file is <repo>/firmware_bridge/tflm_tree.py).
SHARED = Path(__file__).resolve().parents[2] / "shared" / "tflm"
KINDS = {"ref": "tree-ref", "cmsis": "tree-cmsis"}
FETCH_HINT = (f"run scripts/fetch_tflm.sh DIR (needs git and internet) and set {ENV}=DIR, "
              f"or set {ENV} to an existing TFLM tree")
# Defines TFLM's own Makefile uses for TARGET=linux (host builds, reference kernels).
HOST_DEFINES = ("TF_LITE_STATIC_MEMORY", "TF_LITE_DISABLE_X86_NEON")

MICRO = Path("tensorflow/lite/micro")
KERNELS = MICRO / "kernels"
CMSIS_KERNELS = KERNELS / "cmsis_nn"
CMSIS_NN = Path("third_party/cmsis_nn")
RESOLVER_HEADER = MICRO / "micro_mutable_op_resolver.h"
# Core folders compiled whole; test helpers excluded (they pull in test-only code).
CORE_DIRS = (Path("tensorflow/lite/core"), Path("tensorflow/lite/kernels"),
             Path("tensorflow/compiler/mlir/lite"), MICRO / "arena_allocator",
             MICRO / "memory_planner", MICRO / "tflite_bridge")
CORE_EXCLUDE = {"test_helpers.cc", "test_helper_custom_ops.cc", "mock_micro_graph.cc",
                "fake_micro_context.cc"}
CORE_KERNELS = ("kernel_util.cc",)  # micro/kernels files every kernel uses
PLATFORM_DIRS = ("cortex_m_generic",)  # a tree's platform files override the generic ones

try:  # inside nonn-tflite the CLI reports it as one line; standalone it is a plain error
    from nonn_tflite.errors import NonnError as _Base
except ImportError:  # pragma: no cover - the exported script
    _Base = Exception


class TflmTreeError(_Base):
    """No usable TFLM tree, or a model op the tree has no kernel for."""


# ---- finding a tree ---------------------------------------------------------------------------

def is_tree(path: Path) -> bool:
    return (Path(path) / MICRO / "micro_interpreter.h").is_file()


def find_tree(kind: str = "ref", explicit: Path | str | None = None) -> Path:
    """The TFLM tree of ``kind`` ("ref": reference kernels, "cmsis": with CMSIS-NN).

    ``explicit``, else ``$NONN_TFLM_DIR``, else ``../shared/tflm``; each may be a tree or a
    folder holding ``tree-ref/`` and ``tree-cmsis/``. A tree without CMSIS-NN never serves
    "cmsis". Raises TflmTreeError naming what was looked at and how to get a tree.
    """
    if kind not in KINDS:
        raise TflmTreeError(f"unknown TFLM tree kind {kind!r}; valid: {', '.join(KINDS)}")
    env = os.environ.get(ENV)
    candidates = [Path(p) for p in (explicit, env) if p] or [SHARED]
    looked = []
    for base in candidates:
        for path in (base / KINDS[kind], base):
            looked.append(str(path))
            if is_tree(path) and (kind == "ref" or has_cmsis_nn(path)):
                return path.resolve()
    raise TflmTreeError(f"no TensorFlow Lite Micro tree ({kind}) found (looked in "
                        f"{', '.join(dict.fromkeys(looked))}): {FETCH_HINT}")


def has_cmsis_nn(tree: Path) -> bool:
    return (Path(tree) / CMSIS_KERNELS).is_dir()


def fingerprint(tree: Path) -> str:
    """Short hash of a tree's identity (its VERSIONS/options files and path), for build caches."""
    tree = Path(tree).resolve()
    h = hashlib.sha256(str(tree).encode())
    for name in ("VERSIONS.txt", "MAKEFILE_OPTIONS.txt"):
        p = tree / name
        h.update(p.read_bytes() if p.is_file() else b"-")
    h.update(str((tree / RESOLVER_HEADER).stat().st_mtime_ns).encode())
    return h.hexdigest()[:16]


# ---- ops -> registration functions -> kernel files --------------------------------------------

_ADD_METHOD = re.compile(
    r"TfLiteStatus\s+(Add\w+)\s*\((.*?)\)\s*\{(.*?)\n\s*\}", re.S)
_BUILTIN = re.compile(r"BuiltinOperator_(\w+)")
_REGISTER_CALL = re.compile(r"(?:tflite::)?(Register_\w+)\s*\(\s*\)")
_REGISTER_DEF = re.compile(r"^\s*TFLMRegistration\s*\*?\s*(?:tflite::)?(Register_\w+)\s*\(\s*\)"
                           r"\s*\{", re.M)
_KERNEL_INCLUDE = re.compile(r'#include\s+"tensorflow/lite/micro/kernels/(\w+)\.h"')


@functools.cache
def resolver_methods(tree: Path) -> dict[str, tuple[str, str]]:
    """Builtin op -> (MicroMutableOpResolver Add method, Register_* function it calls), as the
    tree's ``micro_mutable_op_resolver.h`` spells them."""
    text = (Path(tree) / RESOLVER_HEADER).read_text()
    out: dict[str, tuple[str, str]] = {}
    for method, params, body in _ADD_METHOD.findall(text):
        builtin = _BUILTIN.search(body)
        register = _REGISTER_CALL.search(params) or _REGISTER_CALL.search(body)
        if builtin and register and "AddBuiltin" in body:
            out.setdefault(builtin.group(1), (method, register.group(1)))
    return out


def add_methods(tree: Path) -> set[str]:
    """Every ``Add*`` method the tree's MicroMutableOpResolver declares."""
    text = (Path(tree) / RESOLVER_HEADER).read_text()
    return set(re.findall(r"TfLiteStatus\s+(Add\w+)\s*\(", text))


@functools.cache
def _definitions(tree: Path, optimized: bool) -> dict[str, Path]:
    """Register_* function -> the kernel file defining it (CMSIS-NN files win if optimized)."""
    tree = Path(tree)
    dirs = [tree / KERNELS]
    if optimized and has_cmsis_nn(tree):
        dirs.append(tree / CMSIS_KERNELS)
    found: dict[str, Path] = {}
    for d in dirs:  # later folders override: the optimised kernel replaces the reference one
        for src in sorted(d.glob("*.cc")):
            for name in _REGISTER_DEF.findall(src.read_text(errors="replace")):
                found[name] = src
    return found


def _kernel_file(tree: Path, op: str, optimized: bool) -> Path:
    methods = resolver_methods(tree)
    if op not in methods:
        raise TflmTreeError(f"op {op} has no MicroMutableOpResolver method in the TFLM tree "
                            f"{tree}")
    register = methods[op][1]
    try:
        return _definitions(tree, optimized)[register]
    except KeyError:
        hint = (" (a CMSIS-NN tree holds only the optimised version: use the reference tree for "
                "reference kernels)" if not optimized and has_cmsis_nn(tree) else "")
        raise TflmTreeError(f"op {op}: no kernel source in {tree} defines "
                            f"{register}(){hint}") from None


def _kernel_headers(tree: Path, text: str, seen: set[str]) -> set[str]:
    """Stems of the kernel headers ``text`` includes, followed through those headers (e.g.
    depthwise_conv.h includes conv.h, whose constants live in conv_common.cc)."""
    for stem in _KERNEL_INCLUDE.findall(text):
        header = Path(tree) / KERNELS / f"{stem}.h"
        if stem not in seen:
            seen.add(stem)
            if header.is_file():
                _kernel_headers(tree, header.read_text(errors="replace"), seen)
    return seen


def _companions(tree: Path, src: Path, registers: set[Path]) -> list[Path]:
    """Kernel-folder sources ``src`` needs besides itself: ``<h>_common.cc`` for every kernel
    header it includes (directly or through other kernel headers), and ``<h>.cc`` when that
    file is a helper (defines no op)."""
    out = []
    for stem in sorted(_kernel_headers(tree, src.read_text(errors="replace"), set())):
        for name in (f"{stem}_common.cc", f"{stem}.cc"):
            path = Path(tree) / KERNELS / name
            if path.is_file() and path != src and path not in registers:
                out.append(path)
    return out


def kernel_sources(tree: Path, ops: list[str], *, optimized: bool = True) -> list[Path]:
    """The kernel files for ``ops`` plus the helpers they include, transitively."""
    tree = Path(tree)
    defining = set(_definitions(tree, optimized).values()) | set(_definitions(tree, False).values())
    todo = [_kernel_file(tree, op, optimized) for op in dict.fromkeys(ops)]
    todo += [tree / KERNELS / n for n in CORE_KERNELS]
    seen: dict[Path, None] = {}
    while todo:
        src = todo.pop(0)
        if src in seen or not src.is_file():
            continue
        seen[src] = None
        todo += _companions(tree, src, defining)
    return list(seen)


# ---- CMSIS-NN: the library functions the chosen kernels call, transitively ----------------------

_ARM_CALL = re.compile(r"\b(arm_\w+)\s*\(")
_ARM_DEF = re.compile(r"^[A-Za-z_][\w \t\*]*?\b(arm_\w+)\s*\([^;]*?$", re.M)


@functools.cache
def _cmsis_index(tree: Path) -> dict[str, Path]:
    """CMSIS-NN function -> the .c file defining it."""
    index: dict[str, Path] = {}
    for src in sorted((Path(tree) / CMSIS_NN / "Source").rglob("*.c")):
        for name in _ARM_DEF.findall(src.read_text(errors="replace")):
            index.setdefault(name, src)
    return index


def cmsis_nn_sources(tree: Path, kernels: list[Path]) -> list[Path]:
    """The CMSIS-NN library files ``kernels`` call, and those they call in turn. (The inline
    helpers in CMSIS-NN's headers call no library function, so sources suffice.)"""
    index = _cmsis_index(Path(tree))
    seen: dict[Path, None] = {}
    todo = [k.read_text(errors="replace") for k in kernels]
    while todo:
        for name in _ARM_CALL.findall(todo.pop()):
            src = index.get(name)
            if src is not None and src not in seen:
                seen[src] = None
                todo.append(src.read_text(errors="replace"))
    return sorted(seen)


# ---- everything ---------------------------------------------------------------------------------

def core_sources(tree: Path) -> list[Path]:
    """The runtime every model needs: interpreter, allocator, planner, flatbuffer parsing and
    the platform's debug log / timer (``cortex_m_generic/`` where the tree has it)."""
    tree = Path(tree)
    out = [p for p in sorted((tree / MICRO).glob("*.cc")) if p.name not in CORE_EXCLUDE]
    for d in CORE_DIRS:
        out += sorted(p for p in (tree / d).rglob("*.cc") if p.name not in CORE_EXCLUDE)
    for plat in PLATFORM_DIRS:
        override = {p.name: p for p in sorted((tree / MICRO / plat).glob("*.cc"))}
        out = [p for p in out if not (p.parent == tree / MICRO and p.name in override)]
        out += override.values()
    return out


def tflm_sources(tree: Path, ops: list[str], *, optimized: bool = True) -> list[Path]:
    """Every TFLM source to compile for a model using builtin ``ops`` (e.g. ["CONV_2D",
    "MEAN"]): core + the ops' kernels (CMSIS-NN ones where the tree has them and
    ``optimized``) + the CMSIS-NN library functions they call."""
    tree = Path(tree)
    kernels = kernel_sources(tree, ops, optimized=optimized)
    out = core_sources(tree) + kernels
    if optimized and has_cmsis_nn(tree):
        out += cmsis_nn_sources(tree, kernels)
    return list(dict.fromkeys(out))


def include_dirs(tree: Path) -> list[Path]:
    """Include path for the tree's headers (those that exist in it)."""
    tree = Path(tree)
    dirs = [tree, tree / "third_party/flatbuffers/include", tree / "third_party/gemmlowp",
            tree / "third_party/ruy", tree / "third_party/kissfft",
            tree / CMSIS_NN, tree / CMSIS_NN / "Include",
            tree / "third_party/cmsis/CMSIS/Core/Include"]
    return [d for d in dirs if d.is_dir()]


# ---- building a runtime library, cached ------------------------------------------------------

CACHE_ENV = "NONN_TFLM_CACHE"
HOST_FLAGS = ("-O2", "-ffunction-sections", "-fdata-sections", "-w",
              *(f"-D{d}" for d in HOST_DEFINES))
CXX_ONLY = ("-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics")
C_ONLY = ("-std=c11",)


def cache_root() -> Path:
    """``$NONN_TFLM_CACHE``, else ``~/.cache/nonn-tflite/tflm``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "nonn-tflite" / "tflm"


def _is_kernel(tree: Path, src: Path) -> bool:
    rel = src.relative_to(tree).as_posix()
    return rel.startswith((KERNELS.as_posix(), CMSIS_NN.as_posix()))


def _tool_id(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise TflmTreeError(f"compiler {tool} not found: install it (Debian: build-essential, "
                            "or gcc-arm-none-eabi for Cortex-M)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    return f"{path}\n{version.splitlines()[0] if version else ''}"


def build_library(tree: Path, ops: Sequence[str], *, cxx: str = "g++", cc: str = "gcc",
                  ar: str = "ar", flags: Sequence[str] = HOST_FLAGS,
                  kernel_flags: Sequence[str] = (), optimized: bool = True,
                  cache: Path | None = None, jobs: int = 2, nice: int = 10) -> Path:
    """``libtflm.a`` for a model using ``ops``, compiled once and cached.

    Objects are cached per (tree, compilers, flags), so models with other op sets reuse the
    core; the archive per op set. ``kernel_flags`` are added for kernel and CMSIS-NN files
    (TFLM's Cortex-M builds use ``-Os`` for the core and ``-O2`` for kernels).
    """
    tree = Path(tree).resolve()
    sources = tflm_sources(tree, list(ops), optimized=optimized)
    config = "\n".join([fingerprint(tree), _tool_id(cxx), _tool_id(cc), *flags, "|",
                        *kernel_flags, str(optimized)])
    base = Path(cache or cache_root()) / hashlib.sha256(config.encode()).hexdigest()[:16]
    key = hashlib.sha256("\n".join(str(s) for s in sources).encode()).hexdigest()[:16]
    lib = base / f"libtflm-{key}.a"
    if lib.is_file():
        return lib
    objs = base / "obj"
    objs.mkdir(parents=True, exist_ok=True)
    (base / "config.txt").write_text(config + "\n")
    includes = [f"-I{d}" for d in include_dirs(tree)]
    prefix = ["nice", "-n", str(nice)] if nice and shutil.which("nice") else []

    def compile_one(src: Path) -> Path:
        rel = src.relative_to(tree).as_posix()
        obj = objs / (rel.replace("/", "__") + ".o")
        if obj.is_file():
            return obj
        lang = CXX_ONLY if src.suffix == ".cc" else C_ONLY
        extra = list(kernel_flags) if _is_kernel(tree, src) else []
        tmp = obj.with_name(f"{obj.name}.{os.getpid()}.tmp")
        cmd = [*prefix, cxx if src.suffix == ".cc" else cc, *lang, *flags, *extra, *includes,
               "-c", str(src), "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise TflmTreeError(f"compiling {rel} failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}")
        tmp.replace(obj)
        return obj

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        built = list(pool.map(compile_one, sources))
    tmp = lib.with_name(f"{lib.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    proc = subprocess.run([ar, "rcs", str(tmp), *map(str, built)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise TflmTreeError(f"{ar} failed: {proc.stderr}")
    tmp.replace(lib)
    (lib.with_suffix(".sources")).write_text("\n".join(str(s) for s in sources) + "\n")
    return lib


def host_compile_flags(tree: Path) -> list[str]:
    """Flags for code that includes the tree's headers on the host: TFLM's defines (which
    change TfLiteTensor's layout, so they must match the library's) and the include path as
    system headers (so ``-Werror`` judges only the including code)."""
    flags = [f"-D{d}" for d in HOST_DEFINES]
    for d in include_dirs(tree):
        flags += ["-isystem", str(d)]
    return flags


def main(argv: list[str] | None = None) -> int:
    """``tflm_sources.py TREE [--reference] [--includes] OP...``: one path per line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(main.__doc__)
        return 2
    tree, rest = Path(args[0]), args[1:]
    optimized = "--reference" not in rest
    ops = [a for a in rest if not a.startswith("--")]
    try:
        if not is_tree(tree):
            raise TflmTreeError(f"{tree} is not a TFLM tree (no {MICRO}/micro_interpreter.h): "
                                f"{FETCH_HINT}")
        paths = include_dirs(tree) if "--includes" in rest else tflm_sources(
            tree, ops, optimized=optimized)
    except TflmTreeError as err:
        print(f"tflm_sources: {err}", file=sys.stderr)
        return 1
    print("\n".join(p.as_posix() for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
