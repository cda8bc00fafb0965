"""The generated op resolver registers exactly the model's ops, with methods TFLM has."""

from __future__ import annotations

import re

import pytest

from firmware_bridge.resolver import TFLM_ADD_METHODS, add_method, ops_of, resolver_header
from firmware_bridge.tflm_tree import add_methods, host_compile_flags
from nonn_tflite.errors import ModelFileError

MODELS = ("student_0", "student_1", "fusion")


def _ops_via_tflm_schema(data: bytes) -> set[str]:
    """An independent reader: the flatbuffer classes shipped inside tflite-micro."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    model = fb.Model.GetRootAsModel(data, 0)
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    return {names[max(c.BuiltinCode(), c.DeprecatedBuiltinCode())] for c in codes}


def _registered(header: str) -> list[str]:
    return re.findall(r"resolver\.(Add\w+)\(\)", header)


@pytest.mark.parametrize("name", MODELS)
def test_ops_of_matches_an_independent_flatbuffer_reader(run, name):
    data = run.model(name)
    ops = ops_of(data)
    assert len(ops) == len(set(ops))
    assert set(ops) == _ops_via_tflm_schema(data)


def test_students_use_conv_and_mean_fusion_uses_fully_connected(run):
    assert set(ops_of(run.model("student_0"))) == {"CONV_2D", "MEAN"}
    assert ops_of(run.model("fusion")) == ["FULLY_CONNECTED"]


@pytest.mark.parametrize("k", [0, 1])
def test_exported_resolver_registers_exactly_the_models_ops(run, esp32_fw, k):
    header = (esp32_fw.project(f"device_{k}").path / "src" / "model_ops.h").read_text()
    data = run.model(f"student_{k}")
    registered = _registered(header)
    assert sorted(registered) == sorted(TFLM_ADD_METHODS[op] for op in _ops_via_tflm_schema(data))
    count = int(re.search(r"kOpCount = (\d+);", header).group(1))
    assert count == len(registered) == len(set(registered))
    assert "MicroMutableOpResolver<kOpCount>" in header
    assert "AllOpsResolver" not in header


def test_resolver_header_compiles_against_the_tflm_api(run, cc, tmp_path, tflm_ref):
    """Every Add method the generator may emit exists in TFLM's MicroMutableOpResolver."""
    (tmp_path / "model_ops.h").write_text(resolver_header("student_0", run.model("student_0")))
    main = tmp_path / "use.cc"
    main.write_text('#include "model_ops.h"\n'
                    "int main() { nonn::OpResolver r;\n"
                    "  return nonn::RegisterOps(r) == kTfLiteOk; }\n")
    cc.syntax(main, [tmp_path], host_compile_flags(tflm_ref))


def test_every_mapped_method_exists_in_tflm(tflm_ref):
    """Against the real micro_mutable_op_resolver.h of the tree the tests build with."""
    header = (tflm_ref / "tensorflow/lite/micro/micro_mutable_op_resolver.h").read_text()
    api = set(re.findall(r"TfLiteStatus\s+(Add\w+)\s*\(", header))
    assert len(api) > 100
    assert set(TFLM_ADD_METHODS.values()) <= api
    assert set(TFLM_ADD_METHODS.values()) <= add_methods(tflm_ref)


def test_an_op_tflm_cannot_register_is_refused_with_its_name():
    with pytest.raises(ModelFileError, match="NON_MAX_SUPPRESSION_V5"):
        add_method("NON_MAX_SUPPRESSION_V5", "student_0.tflite")


def test_a_file_that_is_not_a_flatbuffer_is_refused():
    with pytest.raises(ModelFileError, match="not a valid TFLite model"):
        ops_of(b"\x00" * 64)
