"""int8 maths, deployment.json checks, and the fusion node's frame assembly (real models)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from nonn_tflite.errors import ModelFileError, RunDirError
from nonn_tflite.live.device import DeviceCore, ReplayGuard
from nonn_tflite.live.fusion import FusionConfig, FusionCore
from nonn_tflite.deployment import load_deployment
from nonn_tflite.int8 import QParams, requantise, round_half_away
from nonn_tflite.live.models import IMAGE_SCALE, image_to_input
from nonn_tflite.live.offline import OfflineSystem
from nonn_tflite.live.protocol import DType, Frame, MsgType
from nonn_tflite.live.source import image_frame, load_images

pytestmark = pytest.mark.timeout(120)


# ---- arithmetic -----------------------------------------------------------------------------

def test_requantise_matches_the_architecture_formula() -> None:
    q = np.array([-128, -100, 0, 50, 127], np.int8)
    src, dst = QParams(0.05, -128), QParams(0.1, -20)
    expected = [min(127, max(-128, int(round_half_away(np.float64((v + 128) * 0.05 / 0.1)))
                             - 20)) for v in q.tolist()]
    assert requantise(q, src, dst).tolist() == expected
    assert requantise(q, src, dst).dtype == np.int8
    # saturation, and C-style rounding of halves away from zero
    assert requantise(np.array([127], np.int8), QParams(1.0, 0), QParams(0.01, 0)).item() == 127
    assert round_half_away(np.array([0.5, 1.5, -0.5, -2.5])).tolist() == [1, 2, -1, -3]


def test_device_quantises_with_the_models_own_input_params(deployment) -> None:
    core = DeviceCore(deployment, 0)
    model = core.runner.model  # the interpreter the device runs
    assert model.input_q == deployment.student(0).input  # read from the model itself
    pixels = np.arange(64, dtype=np.uint8) * 4
    x = image_to_input(pixels, QParams(IMAGE_SCALE, 0), model.input_q)
    # the model input convention (ARCHITECTURE.md): scale 1/255, zp -128 -> int8 = uint8 - 128
    assert model.input_q.zero_point == -128 and abs(model.input_q.scale - 1 / 255) < 1e-9
    assert x.tolist() == (pixels.astype(np.int16) - 128).tolist()
    feature = core.process(image_frame(deployment, 3, 42, pixels.reshape(8, 8, 1)))
    assert (feature.msg_type, feature.student, feature.seq, feature.timestamp_us) == \
        (MsgType.FEATURE, 0, 3, 42)
    assert feature.payload == model.run(x).tobytes()
    assert (feature.scale, feature.zero_point) == (model.output_q.scale,
                                                   model.output_q.zero_point)


def test_offline_system_is_a_useful_classifier(deployment, tiny_run) -> None:
    images = load_images(deployment, tiny_run)
    pred = OfflineSystem(deployment).classify(images.x)
    assert (pred == images.y).mean() > 0.8
    # dropping a student (zero-filled slice) still runs, with worse accuracy
    dropped = OfflineSystem(deployment, drop=frozenset({1})).classify(images.x)
    assert (dropped == images.y).mean() < (pred == images.y).mean()


# ---- deployment.json ------------------------------------------------------------------------

def _edited(tiny_run, tmp_path, edit) -> object:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    path = run / "tflite" / "deployment.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    return run


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(schema=2), "schema"),
    (lambda d: d["fusion"].update(input_width=12), "sum to 11"),
    (lambda d: d["students"][0].pop("output"), "output"),
    (lambda d: d["students"][1].update(id=0), "unique"),
    (lambda d: d.update(deployment="a/b"), "topic"),
])
def test_bad_deployment_json_is_explained(tiny_run, tmp_path, edit, match) -> None:
    with pytest.raises((RunDirError, ModelFileError, ValueError), match=match):
        load_deployment(_edited(tiny_run, tmp_path, edit))


def test_width_mismatch_with_model_is_caught(tiny_run, tmp_path) -> None:
    def edit(d):
        d["students"][0]["width"], d["students"][1]["width"] = 6, 5
    dep = load_deployment(_edited(tiny_run, tmp_path, edit))
    with pytest.raises(ModelFileError, match="output width 5"):
        DeviceCore(dep, 0)


def test_missing_run_is_explained(tmp_path) -> None:
    with pytest.raises(RunDirError, match="convert"):
        load_deployment(tmp_path)


# ---- fusion frame assembly ------------------------------------------------------------------

def _feature(dep, k: int, seq: int, ts: int = 1000, session: int = 0) -> Frame:
    w = dep.student(k).width
    return Frame(MsgType.FEATURE, dep.id, seq, ts, bytes(range(w)), k, DType.INT8,
                 dep.student(k).output.scale, dep.student(k).output.zero_point,
                 session=session)


def test_complete_frames_are_fused_at_once(deployment) -> None:
    core = FusionCore(deployment, FusionConfig(deadline_ms=100))
    assert core.add_feature(_feature(deployment, 0, 1), 0.0) == []
    out = core.add_feature(_feature(deployment, 1, 1), 0.01)
    assert [f.seq for f in out] == [1] and out[0].msg_type == MsgType.PREDICTION
    assert len(out[0].payload) == 10 and core.counters["complete"] == 1


def test_partial_frame_at_deadline_is_zero_filled(deployment) -> None:
    core = FusionCore(deployment, FusionConfig(deadline_ms=100))
    core.add_feature(_feature(deployment, 0, 5), 0.0)
    assert core.expire(0.05) == []
    out = core.expire(0.11)
    assert [f.seq for f in out] == [5] and core.counters["partial"] == 1
    x = core.runner.fusion_input({0: (np.arange(5, dtype=np.int8),
                                      deployment.student(0).output)})
    assert (x[5:] == core.runner.model.input_q.zero_point).all()  # student 1's slice = 0.0
    # identical logits to fusing the same single slice directly
    assert out[0].payload == core.fuse({0: _feature(deployment, 0, 5)}).tobytes()


def test_duplicates_late_and_out_of_order_are_dropped(deployment) -> None:
    core = FusionCore(deployment, FusionConfig(deadline_ms=100))
    core.add_feature(_feature(deployment, 0, 10, ts=10), 0.0)
    assert core.add_feature(_feature(deployment, 0, 10, ts=10), 0.01) == []   # duplicate
    core.expire(1.0)                                                       # partial, done
    assert core.add_feature(_feature(deployment, 1, 10, ts=10), 1.1) == []    # late
    assert core.add_feature(_feature(deployment, 0, 10, ts=10), 1.1) == []    # replay
    assert core.add_feature(_feature(deployment, 0, 9, ts=9), 1.2) == []      # out of order
    assert core.add_feature(_feature(deployment, 0, 11, ts=11), 1.3) == []    # fine, pending
    c = core.counters
    assert (c["duplicate"], c["late"], c["out_of_order"], c["partial"]) == (2, 1, 1, 1)
    assert list(core.pending) == [(0, 11)]


def test_restarted_source_is_not_out_of_order(deployment) -> None:
    """The restart meets the done-cache: seq 0..4 of the first run are finished, and the second
    run starts at seq 0 again (with a clock that even went back). Keyed by (session, seq), none
    of its frames is a duplicate, late or out of order."""
    core = FusionCore(deployment, FusionConfig(deadline_ms=100))
    for seq in range(5):
        for k in (0, 1):
            core.add_feature(_feature(deployment, k, seq, ts=100 + seq, session=0xAAAA), 0.0)
    assert core.counters["predicted"] == 5
    out = [p for seq in range(5) for k in (0, 1)
           for p in core.add_feature(_feature(deployment, k, seq, ts=10 + seq, session=0xBBBB),
                                     0.1)]
    assert [(f.session, f.seq) for f in out] == [(0xBBBB, s) for s in range(5)]
    c = core.counters
    assert (c["predicted"], c["duplicate"], c["late"], c["out_of_order"]) == (10, 0, 0, 0)
    # within one session the old rules still hold: a replay is a duplicate
    assert core.add_feature(_feature(deployment, 0, 3, ts=13, session=0xBBBB), 0.2) == []
    assert c["duplicate"] == 1


def test_stale_model_frames_are_refused_and_logged_once_per_device(deployment, caplog) -> None:
    """A device running another student (other hash, scale or dtype) is not fused silently."""
    from dataclasses import replace

    from nonn_tflite.live.fusion import FusionNode
    from nonn_tflite.live.models import feature_identities, student_hash
    from nonn_tflite.live.mqtt import BrokerConfig
    from nonn_tflite.live.protocol import encode

    assert deployment.student(0).model_crc32 == student_hash(deployment, 0)  # in the JSON
    node = FusionNode(deployment, BrokerConfig(), FusionConfig(deadline_ms=10_000))
    topic = deployment.topics.feature(0)
    good = replace(_feature(deployment, 0, 1), model=feature_identities(deployment)[0].model)
    stale = [replace(good, seq=2, model=good.model ^ 1), replace(good, seq=3, model=0),
             replace(good, seq=4, scale=good.scale * 2), replace(good, seq=5, dtype=DType.UINT8)]
    with caplog.at_level("WARNING", logger="nonn_tflite.live.fusion"):
        for frame in [good, *stale]:
            node._receive(topic, encode(frame), 0.0)
    assert node.decoder.counters == {"stale_model": 4} and node.stats()["stale_model"] == 4
    assert list(node.core.pending) == [(0, 1)]  # only the good frame waits for student 1
    warnings = [r for r in caplog.records if "stale_model" in r.getMessage()]
    assert len(warnings) == 1 and "device-0" in warnings[0].getMessage()


def test_device_frames_carry_session_and_model_hash(deployment) -> None:
    from nonn_tflite.live.models import student_hash

    core = DeviceCore(deployment, 1)
    image = image_frame(deployment, 7, 42, np.zeros((8, 8, 1), np.uint8), session=0xC0FFEE)
    feature = core.process(image)
    assert (feature.session, feature.seq, feature.model) == (0xC0FFEE, 7,
                                                             student_hash(deployment, 1))


def test_group_worker_fuses_only_claimed_frames(deployment) -> None:
    core = FusionCore(deployment, FusionConfig(deadline_ms=100, group="g"))
    for k in (0, 1):
        assert core.add_feature(_feature(deployment, k, 1), 0.0) == []  # not claimed yet
    assert [f.seq for f in core.add_claim(1, 0.01)] == [1]
    for k in (0, 1):
        core.add_feature(_feature(deployment, k, 2), 0.02)
    assert core.expire(0.5) == [] and core.counters["not_owned"] == 1


def test_pending_frames_are_bounded(deployment) -> None:
    core = FusionCore(deployment, FusionConfig(deadline_ms=10_000, max_pending=8))
    for seq in range(20):
        core.add_feature(_feature(deployment, 0, seq, ts=seq), seq * 0.001)
    assert len(core.pending) == 8 and core.counters["evicted"] == 12


def test_adaptive_deadline_follows_device_spread(deployment) -> None:
    core = FusionCore(deployment)
    assert core.deadline.seconds == 0.5
    for seq in range(30):
        core.add_feature(_feature(deployment, 0, seq, ts=seq), seq)
        core.add_feature(_feature(deployment, 1, seq, ts=seq), seq + 0.004)
    assert core.deadline.seconds == 0.25  # 3 x 4 ms + 20 ms, raised to the 250 ms floor
    for seq in range(30, 60):
        core.add_feature(_feature(deployment, 0, seq, ts=seq), seq)
        core.add_feature(_feature(deployment, 1, seq, ts=seq), seq + 0.2)
    assert 0.6 <= core.deadline.seconds <= 0.63  # 3 x 200 ms + 20 ms


def test_replay_guard() -> None:
    g = ReplayGuard()
    assert g.accept(1, 100) and g.accept(2, 200)
    assert not g.accept(2, 200) and not g.accept(1, 100)   # replay / reorder
    assert g.accept(0, 300)                                # source restarted
    assert g.accept(0xFFFFFFFF, 400) and g.accept(0, 500)  # wrap


def test_offline_device_is_not_waited_for(deployment) -> None:
    core = FusionCore(deployment, FusionConfig(deadline_ms=10_000))
    core.add_feature(_feature(deployment, 0, 1, ts=1), 0.0)
    out = core.set_online(1, False, 0.01)  # device-1's last will: finish what waits for it
    assert [f.seq for f in out] == [1] and core.counters["partial"] == 1
    assert [f.seq for f in core.add_feature(_feature(deployment, 0, 2, ts=2), 0.02)] == [2]
    assert core.set_online(1, True, 0.03) == []
    assert core.add_feature(_feature(deployment, 0, 3, ts=3), 0.04) == []  # waits again
    assert core.set_online(9, False, 0.05) == []                          # unknown: ignored


# ---- image sources --------------------------------------------------------------------------

def test_images_folder_labels_from_class_folders(deployment, tmp_path) -> None:
    from PIL import Image

    from nonn_tflite.errors import DatasetError

    for label in ("3", "7"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / label / "a.png")
    (tmp_path / "unlabelled.png").write_bytes((tmp_path / "3" / "a.png").read_bytes())
    images = load_images(deployment, images=tmp_path)
    assert images.x.shape == (3, 8, 8, 1) and images.x.dtype == np.uint8  # resized, grey
    assert sorted(images.y.tolist()) == [-1, 3, 7]
    with pytest.raises(DatasetError, match="expects"):
        np.savez(tmp_path / "bad.npz", x=np.zeros((2, 9, 9, 1), np.uint8), y=[0, 1])
        load_images(deployment, npz=tmp_path / "bad.npz")
