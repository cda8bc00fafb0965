"""Fixtures for the firmware tests: a tiny real deployment and a host C/C++ compiler.

The deployment is :mod:`nonn_tflite.synthetic`'s ``DIGITS_K2`` (the training pipeline is not a
dependency of these tests): two small CNN students and a Dense fusion, trained briefly on the 8x8
digits and converted to full-integer int8 exactly as docs/ARCHITECTURE.md lays out a run
directory.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

WIDTHS = (5, 6)  # DIGITS_K2.widths
DEPLOYMENT = "digits-k2"
HERE = Path(__file__).parent


@dataclass(frozen=True)
class Fixture:
    run: Path
    images: np.ndarray  # uint8 (N, 8, 8, 1)
    labels: np.ndarray

    @property
    def tflite(self) -> Path:
        return self.run / "tflite"

    def model(self, name: str) -> bytes:
        return (self.tflite / f"{name}.tflite").read_bytes()


def build_run(root: Path) -> Fixture:
    """The tests' two-student deployment (``nonn_tflite.synthetic.DIGITS_K2``) under ``root``,
    with arena figures placed as ``convert`` writes them."""
    from nonn_tflite.profile import arena_with_margin, measure_arena
    from nonn_tflite.synthetic import DIGITS_K2, build_in_subprocess

    tdir = build_in_subprocess(root, replace(DIGITS_K2, board="esp32")) / "tflite"
    meta = json.loads((tdir / "deployment.json").read_text())
    # Arena numbers reach the exporter as `convert` writes them: deployment.json (student 0:
    # arena_bytes with the 32-bit margin, arena_bytes_host measured), report.json only
    # (student 1), or not at all (fusion: the exporter measures it if a target needs it).
    arena0 = measure_arena((tdir / "student_0.tflite").read_bytes()).arena_bytes
    arena1 = measure_arena((tdir / "student_1.tflite").read_bytes()).arena_bytes
    meta["students"][0].update(arena_bytes=arena_with_margin(arena0), arena_bytes_host=arena0)
    del meta["students"][1]["arena_bytes"]
    (tdir / "deployment.json").write_text(json.dumps(meta, indent=2))
    report = {"students": [{"id": 1, "file": "student_1.tflite", "arena_bytes": arena1,
                            "arena_bytes_32bit": arena_with_margin(arena1),
                            "flash_bytes": (tdir / "student_1.tflite").stat().st_size}]}
    (tdir / "report.json").write_text(json.dumps(report, indent=2))
    with np.load(tdir / "test_sample.npz") as z:
        return Fixture(root, z["x"], z["y"])


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return build_run(tmp_path_factory.mktemp("runs") / "c10")


@pytest.fixture(scope="session")
def esp32_fw(run: Fixture, tmp_path_factory: pytest.TempPathFactory):
    from firmware_bridge import export_project

    out = tmp_path_factory.mktemp("fw-esp32") / "fw"
    return export_project(run.run, "esp32-platformio", out, wifi_ssid="lab",
                          broker="mqtt://192.0.2.10:1883")


@pytest.fixture(scope="session")
def linux_fw(run: Fixture, tmp_path_factory: pytest.TempPathFactory):
    from firmware_bridge import export_project

    out = tmp_path_factory.mktemp("fw-linux") / "fw"
    return export_project(run.run, "linux", out, broker="mqtt://127.0.0.1:1883")


# ---- host compiler ---------------------------------------------------------------------

C_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1"]
CXX_FLAGS = ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-O1"]


@dataclass(frozen=True)
class HostCompiler:
    """gcc/g++ with warnings as errors: generated code must build cleanly, not just build."""

    workdir: Path

    def objects(self, sources: list[Path], includes: list[Path], defines: list[str] = (),
                into: Path | None = None, extra: list[str] = ()) -> list[Path]:
        into = into or self.workdir
        into.mkdir(parents=True, exist_ok=True)
        objs = []
        inc = [f"-I{p}" for p in includes] + [f"-D{d}" for d in defines] + list(extra)
        for src in sources:
            obj = into / f"{src.name}.o"
            cxx = src.suffix in (".cc", ".cpp")
            cmd = (["g++", *CXX_FLAGS] if cxx else ["gcc", *C_FLAGS]) + inc + ["-c", str(src),
                                                                               "-o", str(obj)]
            _run(cmd)
            objs.append(obj)
        return objs

    def program(self, name: str, sources: list[Path], includes: list[Path] = (),
                defines: list[str] = ()) -> Path:
        """Compile every source (C as C99, C++ as C++17), link, return the executable."""
        objs = self.objects(list(sources), list(includes), list(defines), self.workdir / name)
        exe = self.workdir / name / name
        _run(["g++", *(str(o) for o in objs), "-lm", "-o", str(exe)])
        return exe

    def run(self, exe: Path, lines: list[str], *args: str, check: bool = True
            ) -> subprocess.CompletedProcess:
        """Feed ``lines`` on stdin; returns the finished process (stdout as text)."""
        proc = subprocess.run([str(exe), *args], input="\n".join(lines) + "\n",
                              capture_output=True, text=True, timeout=60, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{exe.name} exited {proc.returncode}: {proc.stderr}")
        return proc

    def syntax(self, source: Path, includes: list[Path], extra: list[str] = ()) -> None:
        cxx = source.suffix in (".cc", ".cpp")
        cmd = (["g++", *CXX_FLAGS] if cxx else ["gcc", *C_FLAGS]) + list(extra)
        _run(cmd + [f"-I{p}" for p in includes] + ["-fsyntax-only", str(source)])


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


@pytest.fixture(scope="session")
def cc(tmp_path_factory: pytest.TempPathFactory) -> HostCompiler:
    if not (shutil.which("gcc") and shutil.which("g++")):
        pytest.skip("gcc/g++ not installed")
    return HostCompiler(tmp_path_factory.mktemp("cc"))


@pytest.fixture(scope="session")
def c_drivers() -> Path:
    """Test-only C drivers that exercise the generated sources from stdin/stdout."""
    return HERE / "c"


def deployment_id(name: str = DEPLOYMENT) -> int:
    return zlib.crc32(name.encode()) & 0xFFFFFFFF


# ---- Python reference for the nodes ---------------------------------------------------------

class Reference:
    """What the Python nodes compute, via TFLM: student vectors, feature and prediction frames."""

    OFFSETS: ClassVar[dict[int, tuple[int, int]]] = {0: (0, WIDTHS[0]),
                                                      1: (WIDTHS[0], sum(WIDTHS))}

    def __init__(self, fx: Fixture) -> None:
        from tflite_micro import runtime

        from nonn_tflite.int8 import QParams
        from nonn_tflite.profile import qparams
        from nonn_tflite.tflite_model import parse_tflite

        self.fx = fx
        self.interp = {n: runtime.Interpreter.from_bytes(fx.model(n), arena_size=64 * 1024)
                       for n in ("student_0", "student_1", "fusion")}
        info = {n: parse_tflite(fx.model(n)) for n in self.interp}
        self.q = {n: QParams(*qparams(i.output_tensors()[0])) for n, i in info.items()}
        self.q["fusion_in"] = QParams(*qparams(info["fusion"].input_tensors()[0]))

    def run(self, name: str, x: np.ndarray) -> np.ndarray:
        it = self.interp[name]
        it.set_input(x, 0)
        it.invoke()
        return it.get_output(0).reshape(-1).copy()

    def vectors(self, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Both students' int8 vectors for the first n digits (input = uint8 - 128)."""
        out = []
        for image in self.fx.images[:n]:
            x = (image.astype(np.int16) - 128).astype(np.int8)[None]
            out.append((self.run("student_0", x), self.run("student_1", x)))
        return out

    def model_hash(self, name: str) -> int:
        """The ``model`` field of the frames a model makes (CRC-32 of its .tflite)."""
        return zlib.crc32(self.fx.model(name))

    def feature(self, k: int, seq: int, ts: int, vec: np.ndarray, session: int = 0,
                model: int | None = None) -> bytes:
        from nonn_tflite.live import protocol

        q = self.q[f"student_{k}"]
        return protocol.encode(protocol.Frame(
            protocol.MsgType.FEATURE, deployment_id(), seq, ts, vec.astype(np.int8).tobytes(), k,
            protocol.DType.INT8, q.scale, q.zero_point, session=session,
            model=self.model_hash(f"student_{k}") if model is None else model))

    def prediction(self, seq: int, ts: int, parts: dict[int, np.ndarray],
                   session: int = 0) -> bytes:
        """The Python fusion node's frame: requantise slices, zero-fill, int8 fusion model."""
        from nonn_tflite.live import protocol
        from nonn_tflite.int8 import requantise

        fin = self.q["fusion_in"]
        x = np.full(sum(WIDTHS), fin.zero_point, np.int8)
        for k, vec in parts.items():
            a, b = self.OFFSETS[k]
            x[a:b] = requantise(vec, self.q[f"student_{k}"], fin)
        logits = self.run("fusion", x[None])
        out = self.q["fusion"]
        return protocol.encode(protocol.Frame(protocol.MsgType.PREDICTION, deployment_id(), seq,
                                              ts, logits.tobytes(), scale=out.scale,
                                              zero_point=out.zero_point, session=session,
                                              model=self.model_hash("fusion")))


@pytest.fixture(scope="session")
def reference(run: Fixture) -> Reference:
    return Reference(run)


# ---- the real TensorFlow Lite Micro ---------------------------------------------------------

@pytest.fixture(scope="session")
def tflm_ref() -> Path:
    """The reference-kernel TFLM tree: $NONN_TFLM_DIR, else ../shared/tflm/tree-ref. Missing, the
    tests fail (never skip) with what to do."""
    from firmware_bridge.tflm_tree import TflmTreeError, find_tree

    try:
        return find_tree("ref")
    except TflmTreeError as err:
        pytest.fail(str(err), pytrace=False)


def require_tools(*tools: str) -> None:
    """Fail (not skip) when a build tool is missing, saying which Debian package has it."""
    packages = {"cmake": "cmake", "pkg-config": "pkg-config", "mosquitto": "mosquitto",
                "g++": "g++", "gcc": "gcc"}
    missing = [t for t in tools if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if "libmosquitto" in tools:
        missing = [t for t in missing if t != "libmosquitto"]
        if not Path("/usr/include/mosquitto.h").is_file():
            missing.append("libmosquitto-dev")
    if missing:
        pytest.fail("missing build tools: apt-get install "
                    + " ".join(packages.get(t, t) for t in missing), pytrace=False)


@pytest.fixture(scope="session")
def need_tools():
    """``need_tools("cmake", ...)``: fail unless every tool is installed."""
    return require_tools


@dataclass(frozen=True)
class LinuxBuild:
    """An exported Linux project built with its own CMakeLists.txt."""

    exe: Path
    build: Path
    tflm_library: Path | None  # the libtflm.a CMake compiled (None when a prebuilt was given)


def cmake_build(project: Path, build: Path, *defines: str) -> None:
    for cmd in (["cmake", "-S", str(project), "-B", str(build), *defines],
                ["nice", "-n", "10", "cmake", "--build", str(build), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}\n{proc.stdout[-6000:]}{proc.stderr[-6000:]}")


@pytest.fixture(scope="session")
def linux_builds(linux_fw, tflm_ref, tmp_path_factory) -> dict[str, LinuxBuild]:
    """Every project of the Linux export, built with CMake against the real TFLM.

    The TFLM runtime is compiled once per op set and session: the first device builds it from
    the tree (the user's path, only the sources its ops need); devices with the same ops link
    that libtflm.a through NONN_TFLM_LIBRARY."""
    require_tools("cmake", "pkg-config", "g++", "gcc", "libmosquitto")
    root = tmp_path_factory.mktemp("linux-builds")
    built: dict[str, LinuxBuild] = {}
    libraries: dict[tuple[str, ...], Path] = {}
    for p in linux_fw.projects:
        build = root / p.name
        if p.role == "fusion":
            cmake_build(p.path, build, "-DCMAKE_C_FLAGS=-Werror")
            built[p.name] = LinuxBuild(build / "nonn_fusion", build, None)
            continue
        defines = [f"-DNONN_TFLM_DIR={tflm_ref}", "-DCMAKE_CXX_FLAGS=-Werror",
                   "-DCMAKE_C_FLAGS=-Werror"]
        prebuilt = libraries.get(p.ops)
        if prebuilt is not None:
            defines.append(f"-DNONN_TFLM_LIBRARY={prebuilt}")
        cmake_build(p.path, build, *defines)
        lib = None if prebuilt else build / "libtflm.a"
        if lib is not None:
            libraries[p.ops] = lib
        built[p.name] = LinuxBuild(build / f"nonn_{p.name}", build, lib)
    return built


# ---- one MQTT test client for the C-node tests ------------------------------------------------

class Listener:
    """A paho client subscribed to ``prefix/#`` on a local broker: records every message of a
    deployment (in order, and as a queue to wait on) and publishes like a node would."""

    def __init__(self, port: int, prefix: str = "nonn/digits-k2", client_id: str = "test-listener") -> None:
        import paho.mqtt.client as mqtt

        self.log: list[tuple[str, bytes]] = []
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{prefix}/#", qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        item = (msg.topic, bytes(msg.payload))
        self.log.append(item)
        self.messages.put(item)

    def wait(self, topic: str, payload: bytes | None = None, timeout: float = 15.0) -> bytes:
        """The next message on ``topic`` (equal to ``payload`` if given); earlier ones are used up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got, data = self.messages.get(timeout=0.05)
            except queue.Empty:
                continue
            if got == topic and (payload is None or data == payload):
                return data
        raise AssertionError(f"nothing{'' if payload is None else f' = {payload!r}'} on "
                             f"{topic} within {timeout} s")

    def wait_all(self, expected: set[tuple[str, bytes]], timeout: float = 15.0) -> None:
        """Until every (topic, payload) in ``expected`` has arrived, in any order: nodes started
        together come online in whatever order the scheduler gives them."""
        missing = set(expected)
        deadline = time.monotonic() + timeout
        while missing and time.monotonic() < deadline:
            try:
                missing.discard(self.messages.get(timeout=0.05))
            except queue.Empty:
                continue
        if missing:
            raise AssertionError(f"within {timeout} s, nothing on: "
                                 + ", ".join(f"{t} = {p!r}" for t, p in sorted(missing)))

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="session")
def mqtt_listener() -> type[Listener]:
    """The Listener class (test modules cannot import each other under --import-mode=importlib)."""
    return Listener
