"""Fixtures for the firmware tests: a tiny real deployment and a host C/C++ compiler.

The deployment is built here (the training pipeline is not a dependency of these tests): two
small CNN students and a Dense fusion, trained briefly on scikit-learn's 8x8 digits and
converted to full-integer int8 exactly as docs/ARCHITECTURE.md lays out a run directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

WIDTHS = (5, 6)
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


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * 255 / 16).astype(np.uint8)[..., None]
    return images, d.target.astype(np.int64)


def _student(keras, width: int, name: str):
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(12, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(width, 1, activation="relu")(h)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(h), name=name)


def _convert(tf, model, representative: np.ndarray) -> bytes:
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([r[None].astype(np.float32)] for r in representative)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def _quant(data: bytes, which: str) -> dict:
    from nonn_tflite.profile import qparams
    from nonn_tflite.tflite_model import parse_tflite

    model = parse_tflite(data)
    tensor = (model.input_tensors() if which == "inputs" else model.output_tensors())[0]
    scale, zero_point = qparams(tensor)
    return {"scale": scale, "zero_point": zero_point}


def build_run(root: Path) -> Fixture:
    """Train, convert and lay out a two-student run under ``root``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from nonn_tflite.profile import arena_with_margin, measure_arena

    images, labels = _digits()
    x = images.astype(np.float32) / 255.0
    keras.utils.set_random_seed(0)
    students = [_student(keras, w, f"s{k}") for k, w in enumerate(WIDTHS)]
    fin = keras.Input((sum(WIDTHS),))
    fusion = keras.Model(fin, keras.layers.Dense(10)(fin), name="fusion")
    inp = keras.Input((8, 8, 1))
    joint = keras.Model(inp, fusion(keras.layers.Concatenate()([s(inp) for s in students])))
    joint.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    joint.fit(x, labels, epochs=12, batch_size=64, verbose=0)

    tdir = root / "tflite"
    tdir.mkdir(parents=True)
    rep = x[:128]
    blobs = {f"student_{k}": _convert(tf, s, rep) for k, s in enumerate(students)}
    feats = np.concatenate([s.predict(rep, verbose=0) for s in students], axis=1)
    blobs["fusion"] = _convert(tf, fusion, feats)
    for name, blob in blobs.items():
        (tdir / f"{name}.tflite").write_bytes(blob)

    # Arena numbers reach the exporter as `convert` writes them: deployment.json (student 0:
    # arena_bytes with the 32-bit margin, arena_bytes_host measured), report.json only
    # (student 1), or not at all (fusion: the exporter measures it if a target needs it).
    arena0 = measure_arena(blobs["student_0"]).arena_bytes
    arena1 = measure_arena(blobs["student_1"]).arena_bytes
    meta = {
        "schema": 1, "deployment": DEPLOYMENT, "num_classes": 10,
        "class_names": [str(i) for i in range(10)], "input_shape": [8, 8, 1],
        "students": [
            {"id": k, "file": f"student_{k}.tflite", "filters": list(range(w)), "width": w,
             "input": _quant(blobs[f"student_{k}"], "inputs"),
             "output": _quant(blobs[f"student_{k}"], "outputs"), "board": "esp32",
             **({"arena_bytes": arena_with_margin(arena0), "arena_bytes_host": arena0}
                if k == 0 else {})}
            for k, w in enumerate(WIDTHS)
        ],
        "fusion": {"file": "fusion.tflite", "input_width": sum(WIDTHS),
                   "input": _quant(blobs["fusion"], "inputs"),
                   "output": _quant(blobs["fusion"], "outputs")},
        "fusion_input": "requantise",
    }
    (tdir / "deployment.json").write_text(json.dumps(meta, indent=2))
    report = {"students": [{"id": 1, "file": "student_1.tflite", "arena_bytes": arena1,
                            "arena_bytes_32bit": arena_with_margin(arena1),
                            "flash_bytes": len(blobs["student_1"])}]}
    (tdir / "report.json").write_text(json.dumps(report, indent=2))
    return Fixture(root, images, labels)


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
                into: Path | None = None) -> list[Path]:
        into = into or self.workdir
        into.mkdir(parents=True, exist_ok=True)
        objs = []
        inc = [f"-I{p}" for p in includes] + [f"-D{d}" for d in defines]
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

        from nonn_tflite.live.models import QParams
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

    def feature(self, k: int, seq: int, ts: int, vec: np.ndarray) -> bytes:
        from nonn_tflite.live import protocol

        q = self.q[f"student_{k}"]
        return protocol.encode(protocol.Frame(
            protocol.MsgType.FEATURE, deployment_id(), seq, ts, vec.astype(np.int8).tobytes(), k,
            protocol.DType.INT8, q.scale, q.zero_point))

    def prediction(self, seq: int, ts: int, parts: dict[int, np.ndarray]) -> bytes:
        """The Python fusion node's frame: requantise slices, zero-fill, int8 fusion model."""
        from nonn_tflite.live import protocol
        from nonn_tflite.live.models import requantise

        fin = self.q["fusion_in"]
        x = np.full(sum(WIDTHS), fin.zero_point, np.int8)
        for k, vec in parts.items():
            a, b = self.OFFSETS[k]
            x[a:b] = requantise(vec, self.q[f"student_{k}"], fin)
        logits = self.run("fusion", x[None])
        out = self.q["fusion"]
        return protocol.encode(protocol.Frame(protocol.MsgType.PREDICTION, deployment_id(), seq,
                                              ts, logits.tobytes(), scale=out.scale,
                                              zero_point=out.zero_point))


@pytest.fixture(scope="session")
def reference(run: Fixture) -> Reference:
    return Reference(run)
