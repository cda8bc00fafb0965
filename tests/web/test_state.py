"""LiveState: real wire-format frames in, the page's JSON out (no broker needed)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from nonn_tflite.live.protocol import DType, Frame, MsgType, Topics, deployment_id, encode
from nonn_tflite.web.state import DeploymentInfo, LiveState, guess_shape, softmax_top

NAME = "digits-k2"
T0 = 1_700_000_000.0


class Clock:
    """Wall clock the test moves by hand, so ages and latencies are exact."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _info() -> DeploymentInfo:
    return DeploymentInfo(NAME, (0, 1), tuple(str(i) for i in range(10)), (8, 8, 1),
                          {0: 5, 1: 6}, reference_accuracy=0.9)


def _frame(kind: MsgType, seq: int, payload: bytes, student: int = 255, **kw) -> bytes:
    return encode(Frame(kind, deployment_id(NAME), seq, int(T0 * 1e6), payload,
                        student=student, **kw))


def _feed_one_frame(state: LiveState, clock: Clock, seq: int = 7) -> None:
    t = Topics(NAME)
    pixels = bytes(range(64))
    state.on_message(t.image, _frame(MsgType.IMAGE, seq, pixels, dtype=DType.UINT8,
                                     scale=1 / 255))
    clock.now += 0.002
    state.on_message(t.feature(0), _frame(MsgType.FEATURE, seq, bytes(5), student=0,
                                          scale=0.5, zero_point=0))
    clock.now += 0.001
    state.on_message(t.feature(1), _frame(MsgType.FEATURE, seq, bytes([2] * 6), student=1,
                                          scale=0.25, zero_point=0))
    logits = np.zeros(10, np.int8)
    logits[3], logits[8] = 40, 20
    clock.now += 0.002
    state.on_message(t.prediction, _frame(MsgType.PREDICTION, seq, logits.tobytes(),
                                          scale=0.1, zero_point=0))


def test_one_frame_becomes_image_top3_vectors_and_latency():
    clock = Clock()
    state = LiveState(_info(), clock=clock)
    _feed_one_frame(state, clock)
    snap = state.snapshot()
    f = snap["frame"]
    assert f["seq"] == 7 and [t["class"] for t in f["top3"]][:2] == [3, 8]
    assert f["top3"][0]["p"] > f["top3"][1]["p"] > f["top3"][2]["p"]
    assert f["image"] == {"w": 8, "h": 8, "c": 1, "b64": base64.b64encode(bytes(range(64)))
                          .decode()}
    assert f["vectors"] == [0, 1] and f["partial"] is False
    assert f["latency_ms"] == pytest.approx(5.0, abs=0.01)
    assert f["truth"] is None and f["correct"] is None  # the source has not told us yet
    d1 = snap["devices"][1]
    assert d1["node"] == "device-1" and d1["frame_bytes"] == 44 + 6
    assert d1["vector"] == [0.5] * 6 and d1["offset_ms"] == pytest.approx(3.0, abs=0.01)
    assert snap["reference_accuracy"] == 0.9
    json.dumps(snap, allow_nan=False)  # what the server sends must be strict JSON


def test_source_stats_bring_truth_accuracy_and_latency_headline():
    clock = Clock()
    state = LiveState(_info(), clock=clock)
    _feed_one_frame(state, clock, seq=7)
    stats = {"kind": "source", "sent": 8, "total": 100, "predicted": 8, "scored": 8,
             "correct": 6, "accuracy": 0.75, "latency_ms_p50": 4.0, "latency_ms_p99": 9.5,
             "truth": [[6, 1], [7, 3]]}
    state.on_message(Topics(NAME).stats("source"), json.dumps(stats).encode())
    snap = state.snapshot()
    assert snap["frame"]["truth"] == 3 and snap["frame"]["correct"] is True
    assert snap["progress"]["accuracy"] == 0.75 and snap["progress"]["sent"] == 8
    assert snap["progress"]["chart"][-1]["accuracy"] == 0.75
    assert (snap["latency"]["p50"], snap["latency"]["p99"]) == (4.0, 9.5)
    assert snap["latency"]["origin"] == "source"
    assert [n["node"] for n in snap["nodes"]] == ["source"]


def test_frame_waits_for_truth_while_the_source_reports():
    """With a live source, the page shows the newest frame whose ground truth is known."""
    clock = Clock()
    state = LiveState(_info(), clock=clock)
    _feed_one_frame(state, clock, seq=1)
    state.on_message(Topics(NAME).stats("source"),
                     json.dumps({"kind": "source", "truth": [[1, 3]]}).encode())
    _feed_one_frame(state, clock, seq=2)  # answered, but its label is not out yet
    assert state.snapshot()["frame"]["seq"] == 1
    clock.now += 10  # the source went quiet: show the newest answer anyway
    assert state.snapshot()["frame"]["seq"] == 2


def test_status_changes_become_tile_states_and_events():
    clock = Clock()
    state = LiveState(_info(), clock=clock)
    t = Topics(NAME)
    assert [d["status"] for d in state.snapshot()["devices"]] == ["waiting", "waiting"]
    state.on_message(t.status("device-0"), b"online")
    state.on_message(t.status("device-1"), b"online")
    state.on_message(t.status("device-1"), b"offline")   # its last will
    snap = state.snapshot()
    assert [d["status"] for d in snap["devices"]] == ["online", "offline"]
    assert snap["events"][-1].endswith("device-1 offline")


def test_hostile_messages_are_counted_never_raised():
    state = LiveState(_info())
    t = Topics(NAME)
    for topic in (t.image, t.feature(0), t.feature(9), t.prediction):
        state.on_message(topic, b"\x00garbage")
    state.on_message(t.feature(1), _frame(MsgType.FEATURE, 1, bytes(5), student=1))  # width 6
    state.on_message(t.stats("device-0"), b"{not json")
    state.on_message(t.stats("device-0"), b"[1, 2]")
    state.on_message("nonn/other/image", b"x")
    state.on_message(f"nonn/{NAME}x/image", b"x")  # a deployment whose name starts like ours
    snap = state.snapshot()
    assert snap["rejected"] == 5 and snap["frame"] is None
    assert snap["progress"]["images_seen"] == 0


def test_name_only_learns_devices_classes_and_shape():
    info = DeploymentInfo.from_name(NAME)
    state = LiveState(info)
    _feed_one_frame(state, Clock())
    snap = state.snapshot()
    assert [d["node"] for d in snap["devices"]] == ["device-0", "device-1"]
    assert snap["frame"]["top3"][0]["name"] == "3"
    assert (snap["frame"]["image"]["w"], snap["frame"]["image"]["h"]) == (8, 8)
    with pytest.raises(ValueError):
        DeploymentInfo.from_name("bad/name")


def test_guess_shape_and_softmax():
    assert guess_shape(64) == (8, 8, 1)
    assert guess_shape(32 * 32 * 3) == (32, 32, 3)
    assert guess_shape(10) == (1, 10, 1)
    top = softmax_top(np.array([0.0, 2.0, 1.0]), ("a", "b", "c"))
    assert [t["name"] for t in top] == ["b", "c", "a"]
    assert sum(t["p"] for t in top) == pytest.approx(1.0, abs=1e-3)


def test_wait_changed_wakes_on_a_message():
    import threading

    state = LiveState(_info())
    v = state.version
    threading.Timer(0.05, state.on_message, (Topics(NAME).status("device-0"), b"online")).start()
    assert state.wait_changed(v, timeout=5.0) > v
