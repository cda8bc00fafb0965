"""Budgets pick the largest student that fits; impossible budgets say what would fit."""

from __future__ import annotations

import numpy as np
import pytest

from nonn_tflite.architectures import StudentSpec
from nonn_tflite.boards import KB, BOARDS, DeviceBudget, device_budgets, get_board
from nonn_tflite.errors import BudgetError, UsageError
from nonn_tflite.sizing import (BLOCKS, FAMILY_BLOCKS, WIDTHS, choose_student, estimate,
                                student_families)


def test_largest_fitting_student_is_chosen():
    budget = DeviceBudget(40 * KB, 16 * KB)
    best = choose_student(budget, 16, (8, 8, 1))
    assert best.fits(budget)
    for blocks in BLOCKS:  # no other candidate that fits has more parameters
        for width in WIDTHS:
            est = estimate(StudentSpec(width, blocks, 16, 2), (8, 8, 1))
            if est.fits(budget):
                assert est.params <= best.params


def test_bigger_budget_never_gives_a_smaller_student():
    small = choose_student(DeviceBudget(20 * KB, 8 * KB), 16, (8, 8, 1))
    big = choose_student(DeviceBudget(200 * KB, 64 * KB), 16, (8, 8, 1))
    assert big.params > small.params


def test_estimate_grows_with_width_and_counts_real_parameters():
    a = estimate(StudentSpec(8, 1, 16, 3), (32, 32, 3))
    b = estimate(StudentSpec(16, 1, 16, 3), (32, 32, 3))
    assert b.params > a.params and b.flash_bytes > a.flash_bytes and b.ram_bytes > a.ram_bytes
    # int8 weights dominate flash: at least one byte per parameter
    assert a.flash_bytes >= a.params


def test_impossible_budget_names_the_smallest_that_would_work():
    with pytest.raises(BudgetError, match=r"smallest student for 32 filters needs about .* \(try --flash-kb \d+ --ram-kb \d+"):
        choose_student(DeviceBudget(1 * KB, 1 * KB), 32, (32, 32, 3), index=1)


def test_board_budgets_heterogeneous_and_validated():
    budgets = device_budgets(2, boards=["esp32", "rp2040"])
    assert [b.board for b in budgets] == ["esp32", "rp2040"]
    assert budgets[0].flash_bytes == get_board("esp32").model_flash_bytes
    assert all(b.board == "nano33ble" for b in device_budgets(3, boards=["nano33ble"]))
    assert device_budgets(2, flash_kb=10, ram_kb=5)[0] == DeviceBudget(10 * KB, 5 * KB)
    with pytest.raises(UsageError, match="unknown board 'arduino-uno'"):
        device_budgets(2, boards=["arduino-uno"])
    with pytest.raises(UsageError, match="3 boards for 2 students"):
        device_budgets(2, boards=["esp32", "esp32", "esp32"])


def test_required_boards_exist_with_positive_budgets():
    for name in ("esp32", "nano33ble", "rp2040", "stm32f746", "rpi-zero-2"):
        b = BOARDS[name]
        assert b.model_flash_bytes > 0 and b.model_ram_bytes > 0 and b.source


def test_roomy_board_is_capped_by_the_teacher_share():
    roomy = get_board("esp32")
    budget = device_budgets(1, boards=["esp32"])[0]
    free = choose_student(budget, 16, (32, 32, 3))
    capped = choose_student(budget, 16, (32, 32, 3), max_params=20_000)
    assert free.params > 20_000 >= capped.params
    assert capped.fits(budget) and roomy.model_flash_bytes == budget.flash_bytes


# -- student families ------------------------------------------------------------------------

# (input shape, filters, flash KB, RAM KB): digits' default budget, CIFAR-10's cpu-profile
# budget, and a tight arena where full-resolution resnet maps hold the resnet family back
FAMILY_BUDGETS = [((8, 8, 1), 64, 64, 32), ((32, 32, 3), 16, 48, 40), ((32, 32, 3), 16, 64, 20)]


@pytest.mark.parametrize("shape,out,flash_kb,ram_kb", FAMILY_BUDGETS)
def test_auto_family_choice_fits_and_has_the_most_parameters(shape, out, flash_kb, ram_kb):
    budget = DeviceBudget(flash_kb * KB, ram_kb * KB)
    resnet = choose_student(budget, out, shape)
    auto = choose_student(budget, out, shape, families=student_families("auto"))
    assert auto.fits(budget) and resnet.fits(budget)
    assert auto.params >= resnet.params
    stages = resnet.spec.stages
    for family, blocks_list in FAMILY_BLOCKS.items():  # no candidate that fits has more
        for blocks in blocks_list:
            for width in WIDTHS:
                est = estimate(StudentSpec(width, blocks, out, stages, family), shape)
                if est.fits(budget):
                    assert est.params <= auto.params, est.spec


def test_auto_takes_mbv2_where_the_arena_holds_resnet_back():
    budget = DeviceBudget(64 * KB, 20 * KB)
    auto = choose_student(budget, 16, (32, 32, 3), families=("resnet", "mbv2"))
    resnet = choose_student(budget, 16, (32, 32, 3))
    assert auto.spec.family == "mbv2" and auto.params > resnet.params and auto.fits(budget)
    mbv2 = choose_student(budget, 16, (32, 32, 3), families=("mbv2",))
    assert mbv2 == auto


def test_default_family_is_resnet_and_names_are_checked():
    budget = DeviceBudget(64 * KB, 32 * KB)
    assert choose_student(budget, 64, (8, 8, 1)).spec.family == "resnet"
    assert student_families("resnet") == ("resnet",) and student_families("mbv2") == ("mbv2",)
    assert set(student_families("auto")) == {"resnet", "mbv2"}
    with pytest.raises(UsageError, match="unknown student family 'vit'"):
        student_families("vit")
    with pytest.raises(UsageError, match="expected one or more of resnet, mbv2"):
        choose_student(budget, 64, (8, 8, 1), families=("vit",))


def test_mbv2_flash_estimate_is_not_below_the_converted_file():
    """Depthwise weights are quantised per output channel (C x multiplier); the estimate counts
    them so, and stays at or above the real int8 file."""
    from nonn_tflite.architectures import build_student, deployable_student
    from nonn_tflite.quantize import convert_int8
    from nonn_tflite.sizing import _out_channels

    shape = (8, 8, 1)
    spec = StudentSpec(8, 2, 16, 2, "mbv2")
    model = deployable_student(build_student(spec, shape, 0, wd=0.0))
    dws = [l for l in model.layers if type(l).__name__ == "DepthwiseConv2D"]
    assert dws and all(_out_channels(l) == int(l.output.shape[-1]) == l.kernel.shape[-2] * l.kernel.shape[-1]
                       for l in dws)
    data = convert_int8(model, np.random.default_rng(0).random((8, *shape), dtype=np.float32))
    assert estimate(spec, shape).flash_bytes >= len(data)


def test_student_family_option_reaches_the_config_and_rejects_bad_values():
    from click.testing import CliRunner

    from nonn_tflite.cli import main
    from nonn_tflite.commands.pipeline import _distill_cfg

    cfg = _distill_cfg(0.9, 4.0, 10.0, 0.1, False, None, None, None, 0.125, 40, 64, 0.05, 0,
                       student_family="auto")
    assert cfg.student_arch == "auto"
    for command in ("distill", "run"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert "--student-family" in result.output and "auto" in result.output
    result = CliRunner().invoke(main, ["distill", "somewhere", "--student-family", "vit"])
    assert result.exit_code == 2
    assert "Invalid value for '--student-family'" in result.output and "Traceback" not in result.output


# -- the arena estimate against TFLM on an emulated Cortex-M4 -----------------------------------

# (width, blocks, out_channels, input shape): none of these is among the 16 students the
# arena model's constants were fitted to (nonn_tflite/arena_model.py).
ARENA_GRID = [(4, 0, 8, (28, 28, 1)), (6, 1, 12, (8, 8, 1)), (12, 2, 24, (28, 28, 1)),
              (16, 0, 16, (32, 32, 3)), (24, 1, 16, (16, 16, 3)), (32, 2, 32, (8, 8, 1)),
              (64, 1, 16, (8, 8, 1)), (8, 1, 10, (32, 32, 3)),
              (8, 1, 16, (32, 32, 3), "mbv2"), (6, 1, 12, (8, 8, 1), "mbv2")]


def _int8_student(width, blocks, out, shape, family="resnet"):
    from nonn_tflite.architectures import build_student, deployable_student, default_stages
    from nonn_tflite.quantize import convert_int8

    spec = StudentSpec(width, blocks, out, default_stages(shape), family)
    model = deployable_student(build_student(spec, shape, 0, wd=0.0))
    calib = np.random.default_rng(0).random((8, *shape), dtype=np.float32)
    return spec, convert_int8(model, calib)


@pytest.fixture(scope="module")
def int8_students():
    return [_int8_student(*cfg) for cfg in ARENA_GRID]


def test_sizer_checks_the_budget_with_the_figure_convert_checks(int8_students):
    """The sizer's RAM figure (from the untrained Keras graph) is the converted model's
    arena_bytes_32bit (from the flatbuffer), so the budget and the board fit agree; its flash
    figure is not below the file convert checks."""
    from nonn_tflite.arena_model import graph_from_keras, graph_from_tflite
    from nonn_tflite.architectures import build_student, deployable_student
    from nonn_tflite.profile import arena_32bit_min_of_tflite, arena_32bit_with_margin
    from nonn_tflite.tflite_model import parse_tflite

    for (spec, data), (_, _, _, shape, *_) in zip(int8_students, ARENA_GRID):
        est = estimate(spec, shape)
        keras_graph = graph_from_keras(deployable_student(build_student(spec, shape, 0, wd=0.0)))
        assert keras_graph == graph_from_tflite(parse_tflite(data)), spec
        assert est.arena_32bit_min_bytes == arena_32bit_min_of_tflite(data)
        assert est.ram_bytes == arena_32bit_with_margin(arena_32bit_min_of_tflite(data))
        assert est.flash_bytes >= len(data), spec  # convert checks the file's size


def test_arena_estimate_bounds_the_measured_32bit_arena(int8_students):
    """measured <= estimate <= 1.2 x measured, where measured is the smallest arena with which
    the real TFLM C++ (CMSIS-NN) allocates and invokes the student on QEMU's Cortex-M4."""
    from firmware_bridge.qemu import Config, ToolchainError, check_tools, min_arena, run_probe, tflm_tree

    try:
        check_tools()
        tflm_tree("cmsis-nn")
    except ToolchainError as exc:
        pytest.fail(str(exc))
    config = Config("cortex-m4", "cmsis-nn")
    rows = []
    for (spec, data), (_, _, _, shape, *_) in zip(int8_students, ARENA_GRID):
        x = np.random.default_rng(1).integers(-128, 128, (1, int(np.prod(shape))), dtype=np.int8)
        probe = run_probe(data, x, config)
        measured = min_arena(data, x, config, probe.arena_used_bytes)
        est = estimate(spec, shape).arena_32bit_min_bytes
        rows.append((spec.describe(), shape, measured, est, est / measured))
    bad = [r for r in rows if not r[2] <= r[3] <= 1.2 * r[2]]
    assert not bad, "\n".join(f"{d} {s}: measured {m:,} B, estimate {e:,} B ({q:.3f})"
                              for d, s, m, e, q in rows)


def test_plan_says_when_the_teacher_share_and_not_the_board_sized_a_student(tmp_path, caplog):
    """plan_students on the committed digits run's partition: the default share leaves the
    board to size the students (resnet w48 b0 at this commit); a small share caps them and
    says so, with what the budget alone would allow."""
    import logging
    import shutil
    from pathlib import Path

    from nonn_tflite.config import BudgetConfig, DistillConfig
    from nonn_tflite.pipeline import plan_students
    from nonn_tflite.rundir import RunDir

    src = Path(__file__).resolve().parents[1] / "models" / "digits-k2"
    for name in ("manifest.json", "partition.json"):
        shutil.copy(src / name, tmp_path / name)
    run = RunDir(tmp_path)
    teacher_params = run.manifest["metrics"]["teacher_params"]
    with caplog.at_level(logging.WARNING, logger="nonn_tflite"):
        default, budgets = plan_students(run, DistillConfig())
        assert all(e.spec.family == "resnet" and e.fits(b) for e, b in zip(default, budgets))
        assert "max-student-share" not in caplog.text
        capped, _ = plan_students(run, DistillConfig(budget=BudgetConfig(max_params_fraction=0.02)))
    assert all(e.params <= 0.02 * teacher_params and e.fits(b) for e, b in zip(capped, budgets))
    assert "capped by --max-student-share 0.02" in caplog.text
    assert f"would allow {default[0].params:,} params" in caplog.text
    auto, _ = plan_students(run, DistillConfig(student_arch="auto"))
    assert [e.spec for e in auto] == [e.spec for e in default]
