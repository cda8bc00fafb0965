"""Model intake: every .tflite is verified before any runtime sees it, with one clear line.

Each case bends one field of a real student so that the flatbuffer stays structurally sound
(the TF-free reader parses it) but the model is incoherent; the gate must name what is wrong.
Then every opener (device node, inspect, convert's arena measurement and profiling) is shown
to go through that gate.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from fuzz.corrupt_models import locate
from nonn_tflite.errors import ModelFileError
from nonn_tflite.intake import MAX_TENSOR_BYTES, verify_bytes, verify_file
from nonn_tflite.tflite_model import parse_tflite

pytestmark = pytest.mark.timeout(120)


def bend(data: bytes, what: str, value) -> bytes:
    """``data`` with the scalar named ``what`` (see fuzz.corrupt_models.locate) set to value."""
    field = next(f for f in locate(data)[1] if f.what == what)
    out = bytearray(data)
    struct.pack_into(field.fmt, out, field.pos, value)
    return bytes(out)


def first_conv(data: bytes) -> tuple[int, int, int]:
    """(input, filter, output) tensor indices of the student's first CONV_2D."""
    op = parse_tflite(data).operators[0]
    assert op.opcode == "CONV_2D"
    return op.inputs[0], op.inputs[1], op.outputs[0]


def _cases(data: bytes) -> dict[str, tuple[bytes, str]]:
    x, w, y = first_conv(data)
    m = parse_tflite(data)
    filt = m.tensors[w].shape  # [O, 3, 3, 1]
    reshaped = bend(bend(data, f"tensor {w} shape[0]", filt[0] // 2), f"tensor {w} shape[3]", 2)
    return {
        "unknown type": (bend(data, f"tensor {y} type", 99), "unknown type code 99"),
        "unknown op": (bend(data, "opcode 0 builtin_code", 1000),
                       "builtin op code 1000, which the TFLite schema does not define"),
        "nan scale": (bend(data, f"tensor {x} scale[0]", float("nan")),
                      "quantisation scale that is not finite and > 0"),
        "zero point": (bend(data, f"tensor {y} zero_point[0]", 300),
                       "zero point outside [-128, 127] for int8"),
        "per-channel": (reshaped, f"{filt[0]} per-channel scales, but dimension 0"),
        "huge tensor": (bend(data, f"tensor {y} shape[1]", 1 << 30),
                        f"(more than {MAX_TENSOR_BYTES:,})"),
        "writes constant": (bend(data, "operator 0 outputs[0]", w),
                            f"writes into tensor {w}, which holds constant data"),
        "channels": (bend(data, f"tensor {y} shape[3]", filt[0] - 1),
                     (f"has a filter for {filt[0]} output channels, but its output has "
                      f"{filt[0] - 1}")),
        "constant input": (bend(data, "subgraph inputs[0]", w),
                           f"model input tensor {w} holds constant data"),
        "reads the future": (bend(data, "operator 0 inputs[0]", m.operators[1].outputs[0]),
                             f"operator 0 (CONV_2D) reads tensor {m.operators[1].outputs[0]}, "
                             "which is no model input, no constant and no output of an earlier"),
        "name not utf-8": (_garble_name(data, m.tensors[y].name),
                           f"tensor {y} has a name that is not valid UTF-8"),
    }


def _garble_name(data: bytes, name: str) -> bytes:
    raw = name.encode()
    assert data.count(raw) == 1
    out = bytearray(data)
    out[data.find(raw)] = 0xFF
    return bytes(out)


CASES = ["unknown type", "unknown op", "nan scale", "zero point", "per-channel", "huge tensor",
         "writes constant", "channels", "constant input", "reads the future", "name not utf-8"]


@pytest.mark.parametrize("case", CASES)
def test_incoherent_model_is_refused_in_one_line_naming_the_fault(student_bytes, tmp_path, case):
    bad, phrase = _cases(student_bytes)[case]
    parse_tflite(bad)  # structurally sound: only the semantic checks can catch it
    path = tmp_path / "bent.tflite"
    path.write_bytes(bad)
    with pytest.raises(ModelFileError) as info:
        verify_file(path)
    msg = str(info.value)
    assert phrase in msg, msg
    assert msg.startswith(f"{path} is not a valid TFLite model: ") and "\n" not in msg


def test_every_model_the_toolkit_makes_passes(k4_run):
    files = sorted((k4_run / "tflite").glob("*.tflite"))
    assert len(files) == 5
    for f in files:
        data, model = verify_file(f)
        assert model.size == len(data) == f.stat().st_size


def _two_subgraph_model(second_input: int) -> bytes:
    """A minimal flatbuffer: one int8 [1, 4] tensor per subgraph, no ops; the second
    subgraph's input index is ``second_input`` (schema.fbs field slots)."""
    import flatbuffers

    b = flatbuffers.Builder(256)

    def ints(values: list[int]) -> int:
        b.StartVector(4, len(values), 4)
        for v in reversed(values):
            b.PrependInt32(v)
        return b.EndVector()

    def offsets(values: list[int]) -> int:
        b.StartVector(4, len(values), 4)
        for v in reversed(values):
            b.PrependUOffsetTRelative(v)
        return b.EndVector()

    def subgraph(inp: int) -> int:
        shape = ints([1, 4])
        b.StartObject(5)  # Tensor: shape, type, buffer
        b.PrependUOffsetTRelativeSlot(0, shape, 0)
        b.PrependInt8Slot(1, 9, 0)
        tensor = b.EndObject()
        tensors, ins, outs, ops = offsets([tensor]), ints([inp]), ints([0]), offsets([])
        b.StartObject(5)  # SubGraph: tensors, inputs, outputs, operators
        for slot, off in enumerate((tensors, ins, outs, ops)):
            b.PrependUOffsetTRelativeSlot(slot, off, 0)
        return b.EndObject()

    graphs = offsets([subgraph(0), subgraph(second_input)])
    b.StartObject(0)
    buffers = offsets([b.EndObject()])
    codes = offsets([])
    b.StartObject(5)  # Model: version, operator_codes, subgraphs, description, buffers
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(1, codes, 0)
    b.PrependUOffsetTRelativeSlot(2, graphs, 0)
    b.PrependUOffsetTRelativeSlot(4, buffers, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_other_subgraphs_are_verified_too():
    """Runtimes read every subgraph (IF/WHILE bodies), so the gate checks all of them."""
    model = verify_bytes(_two_subgraph_model(0), "two.tflite")
    assert model.num_subgraphs == 2
    with pytest.raises(ModelFileError, match="subgraph 1 inputs/outputs refer to tensor 5"):
        verify_bytes(_two_subgraph_model(5), "two.tflite")


# ---- every opener goes through the gate --------------------------------------------------------

@pytest.fixture
def bent_file(student_bytes, tmp_path) -> Path:
    """A student whose first output's zero point is 300: only the gate names that."""
    _, _, y = first_conv(student_bytes)
    path = tmp_path / "student_0.tflite"
    path.write_bytes(bend(student_bytes, f"tensor {y} zero_point[0]", 300))
    return path


def test_device_node_loading_refuses_before_litert(bent_file, k4_deployment):
    import dataclasses

    from nonn_tflite.live.models import StudentRunner

    dep = dataclasses.replace(k4_deployment, directory=bent_file.parent)
    with pytest.raises(ModelFileError, match="zero point outside") as info:
        StudentRunner(dep, 0)
    assert "\n" not in str(info.value)


def test_inspect_refuses_with_exit_2_and_one_line(bent_file):
    from nonn_tflite.cli import main

    res = CliRunner().invoke(main, ["inspect", str(bent_file)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "zero point outside" in lines[0], res.output


def test_arena_measurement_refuses_without_starting_tflm(bent_file):
    import time

    from nonn_tflite.profile import measure_arena

    t0 = time.monotonic()
    with pytest.raises(ModelFileError, match="zero point outside"):
        measure_arena(bent_file)
    with pytest.raises(ModelFileError, match="zero point outside"):
        measure_arena(bent_file.read_bytes())
    assert time.monotonic() - t0 < 1.0  # no child process was started


def test_convert_profiling_refuses(bent_file):
    from nonn_tflite.profile import profile_model

    with pytest.raises(ModelFileError, match="zero point outside"):
        profile_model(bent_file, latency_runs=0)


def test_litert_errors_reach_the_user_as_one_line(student_bytes, k4_deployment, tmp_path):
    """A model the gate lets through but LiteRT refuses (a zero-size input channel): the
    device node's error is still one line, and names the file."""
    import dataclasses

    from nonn_tflite.live.models import StudentRunner

    x, _, _ = first_conv(student_bytes)
    path = tmp_path / "student_0.tflite"
    path.write_bytes(bend(student_bytes, f"tensor {x} shape[3]", 0))
    dep = dataclasses.replace(k4_deployment, directory=tmp_path)
    with pytest.raises(ModelFileError) as info:
        StudentRunner(dep, 0)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
