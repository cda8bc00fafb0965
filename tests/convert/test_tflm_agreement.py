"""The TFLM check agrees with TFLite Micro itself, model by model.

Each model below is judged twice: by the toolkit (the intake reader/verifier, then
:func:`nonn_tflite.quantize.tflm_problems`, what ``inspect`` and the convert gate use) and by a
real TFLM allocate + invoke in a child process (TFLM can crash on what it refuses). The set
holds converter-made models with the ``[-1, H, W, C]`` batch signature TFLM ignores, float
models TFLM runs, and models TFLM truly refuses: an op it lacks, in int8 and in float; a
hybrid model; a custom op; a tensor whose stored ``shape`` is dynamic. The verdicts must match.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nonn_tflite.errors import ModelFileError
from nonn_tflite.intake import verify_bytes
from nonn_tflite.quantize import int8_problems, tflm_notes, tflm_problems

pytestmark = pytest.mark.timeout(600)

# TFLM in a fresh interpreter: allocate with a roomy arena, invoke on zeros, say OK.
_CHILD = """
import sys, numpy as np
from tflite_micro import runtime
it = runtime.Interpreter.from_bytes(open(sys.argv[1], "rb").read(), arena_size=16 << 20)
d = it.get_input_details(0)
it.set_input(np.zeros(d["shape"], d["dtype"]), 0)
it.invoke()
print("TFLM-OK", list(it.get_output(0).shape))
"""


def tflm_runs(path: Path) -> tuple[bool, str]:
    """(True, "") when real TFLM allocates and invokes ``path`` in a child, else (False, why)."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode == 0 and "TFLM-OK" in proc.stdout:
        return True, ""
    text = (proc.stderr + proc.stdout).strip().splitlines()
    return False, next((t for t in text if "registration" in t or "support" in t or "prepare" in t),
                       text[-1] if text else f"exit {proc.returncode}")


def checker_accepts(data: bytes) -> tuple[bool, list[str]]:
    try:
        model = verify_bytes(data)
    except ModelFileError as exc:
        return False, [str(exc)]
    problems = tflm_problems(model)
    return not problems, problems


# ---- the models ----------------------------------------------------------------------------

def _net(keras, shape=(8, 8, 1), act="relu", filters=4, convs=1, reshape=False):
    inp = keras.Input(shape)
    x = inp
    for i in range(convs):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.Activation(act, name=f"act{i}")(x)
    if reshape:  # a SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE chain over dynamic H, W
        x = keras.layers.Reshape((-1, filters))(x)
        x = keras.layers.Lambda(lambda t: keras.ops.mean(t, axis=1), name="mean")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, keras.layers.Dense(10 if not reshape else 3, name="logits")(x))


def _tf_convert(model, kind: str, shape) -> bytes:
    """The converter as third parties use it: no batch-1 wrapper, so signatures keep -1."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    rng = np.random.default_rng(0)
    if kind in ("int8", "int8-float-io", "hybrid"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind in ("int8", "int8-float-io"):
        conv.representative_dataset = lambda: ([rng.random((1, *shape), dtype=np.float32)]
                                               for _ in range(16))
    if kind == "int8":
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    if kind == "custom":
        conv.allow_custom_ops = True
    return bytes(conv.convert())


def _dynamic_shape(data: bytes) -> bytes:
    """``data`` with a -1 in the stored ``shape`` of the first op's output (a dynamic tensor)."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    g = m.subgraphs[0]
    t = g.tensors[g.operators[0].outputs[0]]
    t.shape = np.array([1, -1, *list(t.shape)[2:]], dtype=np.int32)
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, bool]]:
    """name -> (file, whether TFLM should run it)."""
    import keras

    from nonn_tflite.quantize import convert_int8

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    c10 = (32, 32, 3)
    cum = keras.Input((4,))
    cumprod = keras.Model(cum, keras.layers.Lambda(lambda t: keras.ops.cumprod(t, axis=1))(cum))
    made = {
        # the third-party model: int8, signature [-1, 32, 32, 3], shape [1, 32, 32, 3]
        "int8 -1 batch (cifar-like)": (_tf_convert(_net(keras, c10, convs=3, filters=8), "int8", c10), True),
        "int8 toolkit batch-1": (convert_int8(_net(keras), rng.random((16, 8, 8, 1))), True),
        "int8 with float i/o": (_tf_convert(_net(keras), "int8-float-io", (8, 8, 1)), True),
        "float -1 batch": (_tf_convert(_net(keras), "float", None), True),
        "float dynamic H, W": (_tf_convert(_net(keras, (None, None, 1)), "float", None), True),
        "float dynamic reshape": (_tf_convert(_net(keras, (None, None, 1), reshape=True), "float", None), True),
        "int8 GELU": (_tf_convert(_net(keras, act="gelu"), "int8", (8, 8, 1)), False),
        "float GELU": (_tf_convert(_net(keras, act="gelu"), "float", None), False),
        "hybrid (int8 weights, float activations)": (
            _tf_convert(_net(keras, (8, 8, 16), filters=16, convs=2), "hybrid", None), False),
        "custom op (Cumprod)": (_tf_convert(cumprod, "custom", None), False),
    }
    made["dynamic stored shape"] = (_dynamic_shape(made["int8 toolkit batch-1"][0]), False)
    out = tmp_path_factory.mktemp("agreement")
    files = {}
    for name, (data, runs) in made.items():
        path = out / (re.sub(r"[^a-z0-9]+", "_", name.split(" (")[0].lower()) + ".tflite")
        path.write_bytes(data)
        files[name] = (path, runs)
    return files


def test_the_checker_agrees_with_tflm_on_every_model(models):
    verdicts = {}
    for name, (path, expected) in models.items():
        ran, why = tflm_runs(path)
        accepted, problems = checker_accepts(path.read_bytes())
        verdicts[name] = (ran, accepted, why, problems[:1])
        assert ran == expected, f"{name}: the test's premise about TFLM is wrong ({why})"
    disagree = {k: v for k, v in verdicts.items() if v[0] != v[1]}
    assert not disagree, json.dumps(disagree, indent=1)


def test_the_refused_ones_name_what_tflm_names(models):
    path, _ = models["int8 GELU"]
    assert any("GELU" in p and "no TFLite Micro kernel" in p for p in tflm_problems(verify_bytes(path.read_bytes())))
    path, _ = models["hybrid (int8 weights, float activations)"]
    problems = tflm_problems(verify_bytes(path.read_bytes()))
    assert problems and all("hybrid op" in p for p in problems)
    path, _ = models["custom op (Cumprod)"]
    assert "custom 'Cumprod'" in tflm_problems(verify_bytes(path.read_bytes()))[0]
    path, _ = models["dynamic stored shape"]
    with pytest.raises(ModelFileError, match="dynamic"):
        verify_bytes(path.read_bytes())


def test_a_dynamic_batch_signature_is_no_problem_and_inspect_exits_0(models):
    from nonn_tflite.cli import main

    path, _ = models["int8 -1 batch (cifar-like)"]
    model = verify_bytes(path.read_bytes())
    assert model.tensors[model.inputs[0]].shape_signature == (-1, 32, 32, 3)
    assert tflm_problems(model) == [] and int8_problems(model) == [] and tflm_notes(model) == []
    res = CliRunner().invoke(main, ["inspect", str(path), "--no-tensors"])
    assert res.exit_code == 0, res.output
    assert "TFLite Micro check: OK" in res.output and "arena:" in res.output


def test_a_float_model_tflm_runs_is_compatible_but_not_full_int8(models):
    from nonn_tflite.cli import main

    path, _ = models["float dynamic H, W"]
    res = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    facts = json.loads(res.output)
    assert facts["tflm_compatible"] and not facts["full_int8"] and facts["int8_problems"]
    assert facts["arena"]["arena_bytes"] > 0
    assert any("runs the model at its stored shape [1, 1, 1, 1]" in n for n in facts["notes"])


def test_many_problems_are_one_line_with_a_count_and_the_table_lists_them_all(models):
    from nonn_tflite.cli import main

    path, _ = models["hybrid (int8 weights, float activations)"]
    problems = tflm_problems(verify_bytes(path.read_bytes()))
    assert len(problems) >= 2
    res = CliRunner().invoke(main, ["inspect", str(path), "--no-arena"])
    assert res.exit_code == 1
    error = res.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("Error: ")
    assert problems[0] in error[0] and error[0].endswith(f"... and {len(problems) - 1} more")
    assert all(p in res.stdout for p in problems)  # the table carries the rest
