"""A Linux C device that is its own camera draws a session id per boot (issue 14, "Source
sessions"): rebooted, its seq restarts at 0, and the C fusion answers it from its first frame.

The exported device_0 project is built with CMake on the real TFLM, with camera_hook.cpp (the
file users edit) replaced by one that reads raw test images; the C fusion node fuses over a
real mosquitto. Before the fix the camera path sent session 0 on every boot, so the second
boot's frames met the fusion's (session, seq) done-cache and were dropped as duplicates.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

FRAMES = 5
HOOK = r"""// Test camera: raw uint8 images from $NONN_TEST_CAMERA, served once $NONN_TEST_CAMERA_GO
// exists (so that the first frame goes out after the test listens).
#include "camera_hook.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace {
std::FILE* g_images = nullptr;
const char* g_go = nullptr;
}  // namespace

void nonn_camera_begin() {
  const char* path = std::getenv("NONN_TEST_CAMERA");
  g_go = std::getenv("NONN_TEST_CAMERA_GO");
  if (path != nullptr) g_images = std::fopen(path, "rb");
}

bool nonn_capture_image(uint8_t* pixels, size_t n) {
  if (g_images == nullptr || g_go == nullptr || access(g_go, F_OK) != 0) return false;
  return std::fread(pixels, 1, n, g_images) == n;
}
"""


def _cmake(project: Path, build: Path, *defines: str) -> None:
    for cmd in (["cmake", "-S", str(project), "-B", str(build), *defines],
                ["nice", "-n", "10", "cmake", "--build", str(build), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def camera_device(linux_fw, linux_builds, tflm_ref, tmp_path_factory) -> Path:
    """device_0 with the test camera hook, linked with the TFLM runtime linux_builds made."""
    root = tmp_path_factory.mktemp("camera-device")
    project = root / "device_0"
    shutil.copytree(linux_fw.project("device_0").path, project)
    (project / "src" / "camera_hook.cpp").write_text(HOOK)
    lib = linux_builds["device_0"].tflm_library
    _cmake(project, root / "build", f"-DNONN_TFLM_DIR={tflm_ref}",
           *([f"-DNONN_TFLM_LIBRARY={lib}"] if lib else []),
           "-DCMAKE_CXX_FLAGS=-Werror", "-DCMAKE_C_FLAGS=-Werror")
    return root / "build" / "nonn_device_0"


def test_rebooted_camera_device_is_answered_from_its_first_frame(
        mqtt_listener, camera_device, linux_builds, mosquitto, run, reference, tmp_path):
    from nonn_tflite.deployment import load_deployment
    from nonn_tflite.live.protocol import Decoder, MsgType, Topics

    dep = load_deployment(run.tflite)
    topics = Topics(dep.name)
    images = tmp_path / "images.raw"
    images.write_bytes(run.images[:FRAMES].tobytes())
    env = {**os.environ, "NONN_MQTT_HOST": "127.0.0.1", "NONN_MQTT_PORT": str(mosquitto.port),
           "NONN_TEST_CAMERA": str(images)}
    decoder = Decoder(dep.id, dep.feature_widths)
    listener = mqtt_listener(mosquitto.port, topics.prefix, client_id="camera-test")
    procs: list[subprocess.Popen] = []
    try:
        # device-1 is known to be offline: the fusion fuses device-0's slices at once
        listener.client.publish(topics.status("device-1"), b"offline", qos=1,
                                retain=True).wait_for_publish(5)
        procs.append(subprocess.Popen([str(linux_builds["fusion"].exe)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
        listener.wait(topics.status("fusion"), b"online")
        boots = []
        for boot in range(2):
            go = tmp_path / f"go-{boot}"
            device = subprocess.Popen([str(camera_device)], env={
                **env, "NONN_TEST_CAMERA_GO": str(go)}, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)
            procs.append(device)
            listener.wait(topics.status("device-0"), b"online")
            go.touch()
            features, predictions = [], []
            deadline = time.monotonic() + 20
            while len(features) < FRAMES or len(predictions) < FRAMES:
                assert time.monotonic() < deadline, f"boot {boot}: {len(features)} features, " \
                    f"{len(predictions)} predictions of {FRAMES}"
                try:
                    topic, data = listener.messages.get(timeout=0.05)
                except queue.Empty:
                    continue
                if topic == topics.feature(0):
                    frame = decoder.decode(data, MsgType.FEATURE)
                    assert frame is not None, decoder.counters
                    features.append(frame)
                elif topic == topics.prediction:
                    predictions.append(data)
            device.terminate()
            out = device.communicate(timeout=15)[0]
            assert device.returncode == 0, out
            listener.wait(topics.status("device-0"), b"offline")
            boots.append((features, predictions))
    finally:
        listener.close()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.communicate(timeout=15)
    sessions = [{f.session for f in features} for features, _ in boots]
    assert all(len(s) == 1 and 0 not in s for s in sessions), f"one non-zero id per boot: {sessions}"
    assert sessions[0] != sessions[1], "a fresh session id at every boot"
    for features, predictions in boots:
        session = features[0].session
        assert [f.seq for f in features] == list(range(FRAMES))  # seq restarts at every boot
        # every frame of this boot answered at once, exactly as the Python fusion would fuse
        # its vector with student 1's slice zero-filled (device-1 offline)
        want = [reference.prediction(f.seq, f.timestamp_us, {0: f.values()}, session=session)
                for f in features]
        assert sorted(predictions) == sorted(want)
