"""The exported Linux device on the real TensorFlow Lite Micro C++ (../shared/tflm/tree-ref or
$NONN_TFLM_DIR), built with its own CMakeLists.txt: bit-exact with the Python TFLM interpreter,
and a deployment made only of C nodes that predicts exactly what the offline int8 system does.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge import tflm_tree
from firmware_bridge.targets import TFLM_COMMIT

REPO = Path(__file__).resolve().parents[2]
STUDENTS = (0, 1)
SESSION = 0x5EED


# ---- the tree and the source selection -----------------------------------------------------

def test_the_pinned_commit_is_the_one_the_tests_build(tflm_ref, linux_fw):
    versions = tflm_ref / "VERSIONS.txt"
    if versions.is_file():  # ../shared/tflm trees; a user's own tree may not say
        assert f"tflite-micro {TFLM_COMMIT}" in versions.read_text().splitlines()
    assert f"TFLM_COMMIT={TFLM_COMMIT}" in (REPO / "scripts" / "fetch_tflm.sh").read_text()
    exported = (linux_fw.project("device_0").path / "scripts" / "fetch_tflm.sh").read_text()
    assert f'TFLM_COMMIT="{TFLM_COMMIT}"' in exported


def test_a_missing_tree_is_an_error_saying_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(tflm_tree.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(tflm_tree.TflmTreeError, match=r"no TensorFlow Lite Micro tree \(ref\) "
                                                      r"found .*scripts/fetch_tflm.sh"):
        tflm_tree.find_tree("ref")


def test_nonn_tflm_dir_may_name_a_tree_or_the_folder_of_trees(tflm_ref, monkeypatch, tmp_path):
    monkeypatch.setenv(tflm_tree.ENV, str(tflm_ref))
    assert tflm_tree.find_tree("ref") == tflm_ref
    (tmp_path / "tree-ref").symlink_to(tflm_ref)  # the layout scripts/fetch_tflm.sh writes
    monkeypatch.setenv(tflm_tree.ENV, str(tmp_path))
    assert tflm_tree.find_tree("ref") == tflm_ref
    with pytest.raises(tflm_tree.TflmTreeError, match=r"\(cmsis\)"):
        tflm_tree.find_tree("cmsis")  # a reference tree never serves as the CMSIS-NN one


def test_every_op_the_exporter_maps_has_a_kernel_in_the_tree(tflm_ref):
    from firmware_bridge.resolver import TFLM_ADD_METHODS

    methods = tflm_tree.resolver_methods(tflm_ref)
    for op, method in TFLM_ADD_METHODS.items():
        assert methods[op][0] == method, op  # the header's own spelling
        files = tflm_tree.kernel_sources(tflm_ref, [op])
        assert files[0].parent == tflm_ref / tflm_tree.KERNELS


def test_only_the_sources_the_ops_need_are_selected(tflm_ref):
    every = [p for p in tflm_ref.rglob("*") if p.suffix in (".c", ".cc")]
    conv_mean = tflm_tree.tflm_sources(tflm_ref, ["CONV_2D", "MEAN"])
    names = {p.relative_to(tflm_ref / tflm_tree.KERNELS).as_posix()
             for p in conv_mean if p.parent == tflm_ref / tflm_tree.KERNELS}
    assert names == {"conv.cc", "conv_common.cc", "reduce.cc", "reduce_common.cc",
                     "kernel_util.cc"}
    assert len(conv_mean) < len(every) / 3
    assert not any("test_helper" in p.name or p.parts[-3:-1] == ("signal", "src")
                   for p in conv_mean)
    with pytest.raises(tflm_tree.TflmTreeError, match="op NOT_AN_OP has no "):
        tflm_tree.tflm_sources(tflm_ref, ["NOT_AN_OP"])


def test_the_exported_selector_is_this_module_verbatim(linux_fw, tflm_ref):
    script = linux_fw.project("device_0").path / "scripts" / "tflm_sources.py"
    assert script.read_text() == Path(tflm_tree.__file__).read_text()
    out = subprocess.run(["python3", "-I", str(script), str(tflm_ref), "CONV_2D", "MEAN"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [p.as_posix() for p in tflm_tree.tflm_sources(tflm_ref, ["CONV_2D", "MEAN"])]
    bad = subprocess.run(["python3", "-I", str(script), "/nonexistent", "CONV_2D"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "fetch_tflm.sh" in bad.stderr and not bad.stdout


# ---- the device project, built with CMake -------------------------------------------------

def test_cmake_builds_the_runtime_from_only_the_selected_sources(linux_builds, linux_fw,
                                                                 tflm_ref):
    first = linux_builds["device_0"]
    assert first.exe.is_file() and first.tflm_library is not None
    members = subprocess.run(["ar", "t", str(first.tflm_library)], capture_output=True,
                             text=True, check=True).stdout.split()
    wanted = tflm_tree.tflm_sources(tflm_ref, list(linux_fw.project("device_0").ops))
    assert sorted(members) == sorted(f"{p.name}.o" for p in wanted)
    # device_1 has the same ops: it links the runtime device_0 built (one compile per session)
    assert linux_builds["device_1"].tflm_library is None
    assert linux_builds["device_1"].exe.is_file()


def test_esp32_and_linux_devices_run_the_same_model_source(esp32_fw, linux_fw):
    for k in STUDENTS:
        for name in ("nonn_model_runner.cc", "nonn_model_runner.h", "model_ops.h",
                     f"student_{k}_model_data.cc"):
            esp32 = (esp32_fw.project(f"device_{k}").path / "src" / name).read_text()
            linux = (linux_fw.project(f"device_{k}").path / "src" / name).read_text()
            assert esp32 == linux, name
        main = (esp32_fw.project(f"device_{k}").path / "src" / "main.cpp").read_text()
        assert "tflite::" not in main and "nonn_model_begin(" in main


@pytest.fixture(scope="module")
def runner_driver(linux_fw, linux_builds, tflm_ref, cc, c_drivers):
    """tests/firmware/c/model_driver.cc with each device's nonn_model_runner.cc, on real TFLM."""
    lib = linux_builds["device_0"].tflm_library
    drivers = {}
    for k in STUDENTS:
        src = linux_fw.project(f"device_{k}").path / "src"
        objs = cc.objects([c_drivers / "model_driver.cc", src / "nonn_model_runner.cc",
                           src / f"student_{k}_model_data.cc", src / "nonn_crc32.c"], [src],
                          defines=[f'MODEL_HEADER="student_{k}_model_data.h"',
                                   f"MODEL=g_student_{k}_model_data", "NONN_WITH_RUNNER"],
                          into=cc.workdir / f"runner_{k}", extra=tflm_tree.host_compile_flags(tflm_ref))
        exe = cc.workdir / f"runner_{k}" / "driver"
        subprocess.run(["g++", *map(str, objs), str(lib), "-Wl,--gc-sections", "-lm", "-o",
                        str(exe)], check=True)
        drivers[k] = exe
    return drivers


def _python_tflm(model: bytes, inputs: np.ndarray) -> np.ndarray:
    from tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(model, arena_size=64 * 1024)
    out = []
    for x in inputs:
        interp.set_input(x[None], 0)
        interp.invoke()
        out.append(interp.get_output(0).reshape(-1).copy())
    return np.stack(out)


def _student_inputs(run) -> np.ndarray:
    return (run.images.astype(np.int16) - 128).astype(np.int8)  # scale 1/255 -> zp -128


@pytest.mark.parametrize("k", STUDENTS)
def test_model_runner_is_bit_exact_with_python_tflm_on_the_test_sample(runner_driver, run,
                                                                       linux_fw, k):
    xs = _student_inputs(run)
    proc = subprocess.run([str(runner_driver[k]), "infer"],
                          input="\n".join(x.tobytes().hex() for x in xs) + "\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-500:] + proc.stderr
    head, *lines = proc.stdout.splitlines()
    ready, used, size = head.split()
    assert ready == "READY" and 0 < int(used) <= int(size)
    assert int(size) == linux_fw.project(f"device_{k}").arena_bytes
    got = np.stack([np.frombuffer(bytes.fromhex(line), np.int8) for line in lines])
    want = _python_tflm(run.model(f"student_{k}"), xs)
    assert len(got) == len(run.images) > 100
    assert np.array_equal(got, want)


@pytest.mark.parametrize("index", [0, 4, 1000])
def test_model_runner_refuses_a_corrupted_model(runner_driver, index):
    proc = subprocess.run([str(runner_driver[0]), "corrupt", str(index)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3
    assert re.fullmatch(r"model CRC-32 is 0x[0-9A-F]{8}, expected 0x[0-9A-F]{8}: refusing to "
                        r"run a corrupted model \(re-flash the firmware\)\n", proc.stdout)


# ---- a deployment made only of C nodes, over a real mosquitto --------------------------------

@pytest.fixture(scope="module")
def c_deployment(mqtt_listener, linux_builds, run, tmp_path_factory):
    """Both C devices and the C fusion node on one mosquitto; Python only publishes the test
    sample's images (as `nonn-tflite source` would) and records what the nodes publish."""
    from nonn_tflite.deployment import load_deployment
    from nonn_tflite.live.broker import mosquitto_broker
    from nonn_tflite.live.protocol import Topics, encode
    from nonn_tflite.live.source import image_frame

    dep = load_deployment(run.tflite)
    topics = Topics(dep.name)
    broker = mosquitto_broker(tmp_path_factory.mktemp("mosquitto")).start()
    env = {**os.environ, "NONN_MQTT_HOST": "127.0.0.1", "NONN_MQTT_PORT": str(broker.port)}
    listener = mqtt_listener(broker.port, topics.prefix, client_id="c-only-test")
    nodes = {}
    try:
        for name in ("fusion", "device_0", "device_1"):
            nodes[name] = subprocess.Popen([str(linux_builds[name].exe)], env=env,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True)
        try:
            listener.wait_all({(topics.status(node), b"online")
                               for node in ("fusion", "device-0", "device-1")})
        except AssertionError as e:
            exited = {n: p.returncode for n, p in nodes.items() if p.poll() is not None}
            raise AssertionError(f"{e}; nodes that exited (return code): {exited}") from None
        predictions: dict[int, bytes] = {}
        for seq, pixels in enumerate(run.images):
            frame = image_frame(dep, seq, 1_700_000_000_000_000 + seq, pixels, session=SESSION)
            listener.client.publish(topics.image, encode(frame), qos=0)
            predictions[seq] = listener.wait(topics.prediction, timeout=10)
        time.sleep(0.2)
        log = list(listener.log)
    finally:
        listener.close()
        outputs = {}
        for name, proc in nodes.items():
            proc.terminate()
            outputs[name] = (proc.communicate(timeout=15)[0], proc.returncode)
        broker.stop()
    features = {k: [p for t, p in log if t == topics.feature(k)] for k in STUDENTS}
    return dep, features, predictions, outputs


def test_c_nodes_start_on_real_tflm_and_stop_cleanly(c_deployment):
    *_, outputs = c_deployment
    for k in STUDENTS:
        out, rc = outputs[f"device_{k}"]
        assert rc == 0, out
        assert re.search(r"model CRC-32 0x[0-9A-F]{8} ok; student \d ready: arena \d+ of \d+ B "
                         r"used", out), out
    assert outputs["fusion"][1] == 0, outputs["fusion"][0]


@pytest.mark.parametrize("k", STUDENTS)
def test_c_device_nodes_publish_bit_exact_tflm_vectors_over_mqtt(c_deployment, run, k):
    from nonn_tflite.live.protocol import Decoder, MsgType

    dep, features, _, _ = c_deployment
    decoder = Decoder(dep.id, dep.feature_widths, image_size=dep.image_size)
    frames = [decoder.decode(f, MsgType.FEATURE) for f in features[k]]
    assert all(f is not None for f in frames), decoder.counters
    assert [f.seq for f in frames] == list(range(len(run.images)))
    assert {(f.student, f.session) for f in frames} == {(k, SESSION)}
    got = np.stack([f.values() for f in frames])
    assert np.array_equal(got, _python_tflm(run.model(f"student_{k}"), _student_inputs(run)))


def _offline_tflm_logits(run, dep) -> np.ndarray:
    """The offline int8 system as `convert` scores it (accuracy_int8): every model on TFLite
    Micro itself, each student's vector requantised into the fusion input, absent none."""
    from nonn_tflite.int8 import images_to_int8, requantise
    from nonn_tflite.interpreters import MicroRunner
    from nonn_tflite.profile import qparams
    from nonn_tflite.tflite_model import parse_tflite

    fusion = run.model("fusion")
    fusion_in = qparams(parse_tflite(fusion).input_tensors()[0])
    slices = []
    for k in STUDENTS:
        buf = run.model(f"student_{k}")
        m = parse_tflite(buf)
        q = MicroRunner(buf, 64 * 1024)(images_to_int8(run.images, qparams(m.input_tensors()[0])))
        slices.append(requantise(q, qparams(m.output_tensors()[0]), fusion_in))
    return MicroRunner(fusion, 64 * 1024)(np.concatenate(slices, axis=1))


def test_c_only_deployment_predicts_exactly_what_the_offline_int8_system_does(c_deployment,
                                                                              run):
    from nonn_tflite.live.protocol import Decoder, MsgType

    dep, _, predictions, _ = c_deployment
    decoder = Decoder(dep.id, dep.feature_widths, image_size=dep.image_size)
    assert sorted(predictions) == list(range(len(run.images)))
    frames = [decoder.decode(predictions[seq], MsgType.PREDICTION) for seq in sorted(predictions)]
    assert all(f is not None for f in frames), decoder.counters
    assert [(f.seq, f.session) for f in frames] == [(i, SESSION) for i in range(len(frames))]
    got = np.stack([f.values() for f in frames])
    want = _offline_tflm_logits(run, dep)
    assert np.array_equal(got, want)  # the int8 logits, bit for bit, on every sample
    assert np.array_equal(np.argmax(got, axis=1), np.argmax(want, axis=1))
