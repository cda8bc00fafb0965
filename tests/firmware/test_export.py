"""`export`: the generated projects for every target, compiled, and every error case."""

from __future__ import annotations

import configparser
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from firmware_bridge import TARGETS, export_project
from nonn_tflite.errors import BoardFitError, ModelFileError, RunDirError, UsageError
from nonn_tflite.profile import ARENA_MARGIN_RULE, align, arena_with_margin, measure_arena

STUBS = Path(__file__).parent / "stubs"
# The targets whose nodes talk MQTT (the Cortex-M target has its own tests, test_cortex_m.py).
MQTT_TARGETS = ("esp32-platformio", "linux")
VALID = ", ".join(TARGETS)

DEVICE_FILES = {"README.md", "src/camera_hook.cpp", "src/camera_hook.h", "src/main.cpp",
                "src/model_ops.h", "src/nonn_config.h", "src/nonn_crc32.c", "src/nonn_crc32.h",
                "src/nonn_model_runner.cc", "src/nonn_model_runner.h",
                "src/nonn_node.c", "src/nonn_node.h", "src/nonn_quant.c", "src/nonn_quant.h",
                "src/nonn_wire.c", "src/nonn_wire.h"}
FUSION_FILES = {"README.md", "src/fusion_model.c", "src/fusion_model.h", "src/fusion_runner.c",
                "src/fusion_runner.h", "src/nonn_config.h", "src/nonn_crc32.c",
                "src/nonn_crc32.h", "src/nonn_node.c", "src/nonn_node.h", "src/nonn_quant.c",
                "src/nonn_quant.h", "src/nonn_wire.c", "src/nonn_wire.h"}
TREES = {
    "esp32-platformio": {
        **{f"device_{k}/{f}": None for k in (0, 1) for f in DEVICE_FILES | {"platformio.ini"}},
        **{f"fusion/{f}": None for f in FUSION_FILES | {"platformio.ini", "src/main.cpp"}},
    },
    "linux": {
        **{f"device_{k}/{f}": None for k in (0, 1)
           for f in DEVICE_FILES | {"CMakeLists.txt", "scripts/fetch_tflm.sh",
                                    "scripts/tflm_sources.py"}},
        **{f"fusion/{f}": None for f in FUSION_FILES | {"CMakeLists.txt", "src/main.c"}},
    },
}


def _fw(request, name: str):
    return request.getfixturevalue({"esp32-platformio": "esp32_fw", "linux": "linux_fw"}[name])


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _clone(run, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run.run, dst)
    return dst


def _edit_deployment(run_dir: Path, edit) -> None:
    path = run_dir / "tflite" / "deployment.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


# ---- the generated tree --------------------------------------------------------------------

@pytest.mark.parametrize("target", MQTT_TARGETS)
def test_one_project_per_student_plus_fusion_and_a_readme(request, target):
    fw = _fw(request, target)
    expected = set(TREES[target]) | {f"device_{k}/src/student_{k}_model_data.{ext}"
                                     for k in (0, 1) for ext in ("h", "cc")}
    assert _tree(fw.out) == expected | {"README.md", "export.json"}
    assert [p.name for p in fw.projects] == ["device_0", "device_1", "fusion"]
    for p in fw.projects:
        assert set(p.files) == {f for f in p.path.rglob("*") if f.is_file()}


@pytest.mark.parametrize("target", MQTT_TARGETS)
def test_top_readme_maps_boards_to_projects_and_topics(request, target):
    fw = _fw(request, target)
    text = (fw.out / "README.md").read_text()
    for k, width in ((0, 5), (1, 6)):
        assert re.search(rf"\| [^|]*#{k} \| `device_{k}/` \(student {k}\) \| "
                         rf"`nonn/digits-k2/image` \| `nonn/digits-k2/feature/{k}`: "
                         rf"44 \+ {width} B feature frame \|", text)
        assert f"cd fw/device_{k} &&" in text
    assert "`nonn/digits-k2/prediction`: 44 + 10 B prediction frame" in text
    assert "nonn-tflite fusion" in text  # the Python fusion node stays the default
    assert f"0x{fw.deployment_id:08X}" in text


def test_esp32_project_pins_its_libraries_and_sizes_the_mqtt_buffer(esp32_fw):
    ini = configparser.ConfigParser()
    ini.read(esp32_fw.project("device_0").path / "platformio.ini")
    env = ini["env:esp32dev"]
    assert env["platform"] == "espressif32 @ 6.5.0"
    assert env["framework"] == "arduino" and env["board"] == "esp32dev"
    deps = env["lib_deps"].split()
    assert " ".join(deps) == ("tanakamasayuki/TensorFlowLite_ESP32 @ 1.0.0 "
                              "knolleary/PubSubClient @ 2.8")
    buffer = int(re.search(r"-DMQTT_MAX_PACKET_SIZE=(\d+)", env["build_flags"]).group(1))
    assert buffer >= 5 + 2 + len("nonn/digits-k2/feature/0") + 44 + 64  # image frame + topic
    assert "${sysenv.NONN_WIFI_PASSWORD}" in env["build_flags"]
    fusion = configparser.ConfigParser()
    fusion.read(esp32_fw.project("fusion").path / "platformio.ini")
    assert "TensorFlowLite" not in fusion["env:esp32dev"]["lib_deps"]


@pytest.mark.parametrize("target", MQTT_TARGETS)
def test_device_readme_states_board_libraries_and_memory(request, run, target):
    fw = _fw(request, target)
    for k, source in ((0, "deployment.json"), (1, "report.json")):
        project = fw.project(f"device_{k}")
        text = (project.path / "README.md").read_text()
        assert TARGETS[target].board.name in text
        for lib in TARGETS[target].libraries:
            assert f"`{lib.name}` | {lib.version} |" in text
        assert f"{project.arena_measured:,} ({source})" in text
        assert f"{project.arena_bytes:,}" in text
        assert f"{len(run.model(f'student_{k}')):,}" in text


@pytest.mark.parametrize("target", MQTT_TARGETS)
def test_arena_constant_is_the_measurement_plus_the_stated_margin(request, run, target):
    fw = _fw(request, target)
    meta = json.loads((run.tflite / "deployment.json").read_text())
    p0 = fw.project("device_0")
    assert p0.arena_measured == meta["students"][0]["arena_bytes_host"]
    assert p0.arena_bytes == align(p0.arena_measured + max(2048, -(-p0.arena_measured // 4)))
    assert p0.arena_bytes % 16 == 0
    config = (p0.path / "src" / "nonn_config.h").read_text()
    assert f"#define NONN_ARENA_BYTES {p0.arena_bytes}\n" in config
    assert f"#define NONN_ARENA_MEASURED_BYTES {p0.arena_measured}\n" in config


def test_arena_is_measured_when_neither_json_states_it(run, tmp_path):
    run_dir = _clone(run, tmp_path)
    _edit_deployment(run_dir, lambda m: [m["students"][0].pop(k)
                                         for k in ("arena_bytes", "arena_bytes_host")])
    (run_dir / "tflite" / "report.json").unlink()
    fw = export_project(run_dir, "linux", tmp_path / "fw")
    measured = fw.project("device_0").arena_measured
    assert measured == measure_arena(run.model("student_0")).arena_bytes
    assert "measured (TFLM bisection)" in (fw.project("device_0").path / "README.md").read_text()


def test_a_plain_arena_bytes_counts_as_the_host_measurement(run, tmp_path):
    run_dir = _clone(run, tmp_path)
    _edit_deployment(run_dir, lambda m: m["students"][0].update(arena_bytes=3000,
                                                                 arena_bytes_host=None))
    fw = export_project(run_dir, "linux", tmp_path / "fw")
    assert (fw.project("device_0").arena_measured, fw.project("device_0").arena_bytes) == (
        3000, align(3000 + 2048))


def test_the_margin_rule_is_the_one_readmes_state(esp32_fw):
    """+25 %, at least 2,048 B, 16-byte aligned: what arena_with_margin does and docs say."""
    for measured in (0, 100, 2_000, 8_191, 8_192, 123_457):
        assert arena_with_margin(measured) == align(measured + max(2048, -(-measured // 4)))
    rule = "+25% (at least 2,048 B), rounded up to 16 B"
    assert ARENA_MARGIN_RULE == rule and rule in (esp32_fw.out / "README.md").read_text()


def test_measured_arena_is_the_smallest_that_works(run):
    from tflite_micro import runtime

    data = run.model("student_1")
    n = measure_arena(data).arena_bytes
    runtime.Interpreter.from_bytes(data, arena_size=n)
    with pytest.raises(RuntimeError):
        runtime.Interpreter.from_bytes(data, arena_size=n - 16)


def test_manifest_records_what_was_generated(esp32_fw, run):
    manifest = json.loads(esp32_fw.manifest.read_text())
    assert manifest["target"] == "esp32-platformio" and manifest["deployment"] == "digits-k2"
    devices = [p for p in manifest["projects"] if p["role"] == "device"]
    assert [p["ops"] for p in devices] == [["CONV_2D", "MEAN"]] * 2
    import zlib

    assert devices[1]["model_crc32"] == zlib.crc32(run.model("student_1"))


# ---- generated code compiles -------------------------------------------------------------

@pytest.mark.parametrize("target", MQTT_TARGETS)
def test_every_plain_c_and_model_source_compiles_with_werror(request, cc, target):
    fw = _fw(request, target)
    for project in fw.projects:
        src = project.path / "src"
        sources = [p for p in src.iterdir()
                   if (p.suffix == ".c" and p.name != "main.c")
                   or p.name.endswith("_model_data.cc") or p.name == "camera_hook.cpp"]
        assert sources
        cc.objects(sources, [src], into=cc.workdir / f"werror_{target}_{project.name}")


@pytest.mark.parametrize("target", MQTT_TARGETS)
def test_generated_headers_compile_as_c_and_cxx(request, cc, tmp_path, target):
    fw = _fw(request, target)
    for project in fw.projects:
        src = project.path / "src"
        headers = sorted(p.name for p in src.glob("*.h")
                         if p.name not in ("model_ops.h", "camera_hook.h")
                         and not p.name.endswith("_model_data.h"))
        unit = "\n".join(f'#include "{h}"' for h in headers) + "\nint main(void) { return 0; }\n"
        for ext in ("c", "cc"):
            tu = tmp_path / f"{project.name}_headers.{ext}"
            tu.write_text(unit)
            cc.syntax(tu, [src])


@pytest.mark.parametrize("project", ["device_0", "fusion"])
def test_esp32_glue_compiles_against_the_arduino_and_pubsub_stubs(esp32_fw, cc, project):
    """Only the Arduino, WiFi and MQTT glue is checked against stubs (their toolchains cannot be
    installed here); the model code it calls is nonn_model_runner.cc, built on real TFLM by
    test_real_tflm.py."""
    src = esp32_fw.project(project).path / "src"
    for source in sorted(src.glob("*.cpp")):
        assert "tensorflow/" not in source.read_text()
        cc.syntax(source, [src, STUBS])


def test_esp32_camera_frames_carry_a_session_drawn_at_boot(esp32_fw, cc):
    """Issue 14 follow-up: the local-camera path put session 0 on every boot, so a rebooted
    camera's seq 0, 1, ... met the fusion's (session, seq) done-cache. It now draws a session
    from the hardware RNG (esp_random); the object file must call it. Only compiled here; the
    same logic runs on the Linux device in test_linux_camera.py."""
    import subprocess

    src = esp32_fw.project("device_0").path / "src"
    text = (src / "main.cpp").read_text()
    assert "image.session = camera_session();" in text
    obj, = cc.objects([src / "main.cpp"], [src, STUBS], into=cc.workdir / "esp32_session")
    undefined = subprocess.run(["nm", "-u", "-C", str(obj)], capture_output=True, text=True,
                               check=True).stdout.split()
    assert "esp_random" in undefined


def test_linux_sources_compile_against_real_tflm_and_libmosquitto(linux_fw, cc, tflm_ref,
                                                                  need_tools):
    from firmware_bridge.tflm_tree import host_compile_flags

    need_tools("libmosquitto")
    device = linux_fw.project("device_0").path / "src"
    for source in [*sorted(device.glob("*.cpp")), device / "nonn_model_runner.cc"]:
        cc.syntax(source, [device], host_compile_flags(tflm_ref))
    fusion = linux_fw.project("fusion").path / "src"
    cc.syntax(fusion / "main.c", [fusion])


def test_templates_are_files_not_python_strings():
    root = Path(__file__).parents[2] / "firmware_bridge" / "templates"
    for target in MQTT_TARGETS:
        assert (root / target / "README.md.j2").is_file()
        assert list((root / target / "device").rglob("*.j2"))
    assert (root / "common" / "nonn_wire.c.j2").is_file()


# ---- errors ---------------------------------------------------------------------------------

def test_unknown_target_lists_the_valid_ones(run, tmp_path):
    with pytest.raises(UsageError, match=f"unknown target 'stm32'; valid targets: {VALID}"):
        export_project(run.run, "stm32", tmp_path / "fw", broker="mqtt://h")


def test_run_without_int8_models_is_refused(run, tmp_path):
    import keras
    import tensorflow as tf

    run_dir = _clone(run, tmp_path)
    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(5, 1)(inp)))
    (run_dir / "tflite" / "student_0.tflite").write_bytes(
        tf.lite.TFLiteConverter.from_keras_model(model).convert())
    with pytest.raises(ModelFileError, match=r"student_0\.tflite input is float32, not per-tensor "
                                             r"int8: .*nonn-tflite convert"):
        export_project(run_dir, "linux", tmp_path / "fw")


def test_student_that_does_not_fit_names_the_numbers(run, tmp_path):
    run_dir = _clone(run, tmp_path)
    _edit_deployment(run_dir, lambda m: m["students"][1].update(arena_bytes=200_000))
    with pytest.raises(BoardFitError) as err:
        export_project(run_dir, "esp32-platformio", tmp_path / "fw", wifi_ssid="lab",
                       broker="mqtt://192.0.2.10")
    assert str(err.value) == ("student_1.tflite needs a 250,000 B tensor arena (200,000 B measured "
                              "+ margin) but esp32-platformio allows 131,072 B; use a smaller "
                              "student (more students, fewer filters each) or another target")
    assert not (tmp_path / "fw").exists()
    export_project(run_dir, "linux", tmp_path / "fw")  # a Pi has room for it


def test_image_frames_beyond_the_mqtt_client_buffer_are_refused(run, tmp_path, monkeypatch):
    import dataclasses

    packet = 5 + 2 + len("nonn/digits-k2/status/device-0") + 44 + 64  # header, topic, image
    tight = dataclasses.replace(TARGETS["esp32-platformio"], mqtt_packet_limit=packet - 1)
    monkeypatch.setitem(TARGETS, "esp32-platformio", tight)
    with pytest.raises(BoardFitError, match=rf"student_0\.tflite: an image frame needs a {packet} "
                                            r"B MQTT packet but esp32-platformio's MQTT client "
                                            rf"handles at most {packet - 1} B"):
        export_project(run.run, "esp32-platformio", tmp_path / "fw", wifi_ssid="lab",
                       broker="mqtt://h")


@pytest.mark.parametrize("kwargs, message", [
    ({"broker": "mqtt://192.0.2.10"}, "--wifi-ssid is required for target esp32-platformio"),
    ({"wifi_ssid": "lab"}, "--broker is required for target esp32-platformio"),
    ({"wifi_ssid": "lab", "broker": "mqtts://192.0.2.10:8883"}, "only plain mqtt://"),
    ({"wifi_ssid": "lab", "broker": "mqtt://192.0.2.10:99999"}, "invalid port"),
    ({"wifi_ssid": "x" * 33, "broker": "mqtt://h"}, "longer than 32 bytes"),
])
def test_bad_options_are_one_clear_usage_error(run, tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        export_project(run.run, "esp32-platformio", tmp_path / "fw", **kwargs)


def test_missing_conversion_is_a_run_dir_error(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(RunDirError, match="no tflite/deployment.json: run `nonn-tflite convert"):
        export_project(tmp_path / "run", "linux", tmp_path / "fw")


def test_stale_deployment_json_is_caught(run, tmp_path):
    run_dir = _clone(run, tmp_path)
    _edit_deployment(run_dir, lambda m: m["students"][0]["output"].update(zero_point=5))
    with pytest.raises(ModelFileError, match="deployment.json is stale"):
        export_project(run_dir, "linux", tmp_path / "fw")


def test_existing_output_needs_force_and_force_only_replaces_exports(run, tmp_path):
    out = tmp_path / "fw"
    export_project(run.run, "linux", out)
    with pytest.raises(UsageError, match="not empty; pass --force"):
        export_project(run.run, "linux", out)
    (out / "device_0" / "stale.txt").write_text("old")
    export_project(run.run, "linux", out, force=True)
    assert not (out / "device_0" / "stale.txt").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(UsageError, match="refusing to replace it even with --force"):
        export_project(run.run, "linux", foreign, force=True)
    assert (foreign / "notes.txt").read_text() == "keep"


# ---- the command line ---------------------------------------------------------------------

def test_cli_exports_and_summarises(run, tmp_path):
    from nonn_tflite.cli import main

    out = tmp_path / "fw"
    result = CliRunner().invoke(main, ["export", str(run.run), "--target", "esp32-platformio",
                                       "--out", str(out), "--wifi-ssid", "lab",
                                       "--broker", "mqtt://192.0.2.10:1883"])
    assert result.exit_code == 0, result.output
    assert "device_1/  student 1" in result.output
    assert "-> nonn/digits-k2/prediction" in result.output
    assert (out / "device_0" / "platformio.ini").is_file()


@pytest.mark.parametrize("args, code, message", [
    (["--target", "stm32"], 2,
     f"Error: unknown target 'stm32'; valid targets: {VALID}"),
    (["--target", "esp32-platformio", "--broker", "mqtt://h"], 2,
     "Error: --wifi-ssid is required for target esp32-platformio"),
])
def test_cli_errors_are_one_line(run, tmp_path, args, code, message):
    from nonn_tflite.cli import main

    result = CliRunner().invoke(main, ["export", str(run.run), "--out", str(tmp_path / "fw"),
                                       *args])
    assert result.exit_code == code
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)


def test_cli_help_has_an_example_and_lists_targets():
    from nonn_tflite.cli import main
    from nonn_tflite.commands.export import TARGET_NAMES

    result = CliRunner().invoke(main, ["export", "--help"])
    assert "nonn-tflite export runs/c10 --target esp32-platformio --out fw/" in result.output
    assert "|".join(TARGETS) in result.output.replace("\n", "").replace(" ", "")
    assert set(TARGET_NAMES) == set(TARGETS)


def test_device_readmes_say_what_was_built_here_and_what_was_not(esp32_fw, linux_fw):
    esp32 = (esp32_fw.project("device_0").path / "README.md").read_text()
    for phrase in ("**Built and run**", "`nonn_model_runner.cc`, `model_ops.h` and the model array",
                   "**Only syntax-checked**", "`main.cpp` and `camera_hook.cpp`",
                   "**Not built here**"):
        assert phrase in esp32
    linux = (linux_fw.project("device_0").path / "README.md").read_text()
    assert "-DNONN_TFLM_DIR=/path/to/tree" in linux and "kernels of CONV_2D, MEAN" in linux
    assert "Not tested here: arm64/armhf builds" in linux
