"""Budgets pick the largest student that fits; impossible budgets say what would fit."""

from __future__ import annotations

import numpy as np
import pytest

from nonn_tflite.architectures import StudentSpec
from nonn_tflite.boards import KB, BOARDS, DeviceBudget, device_budgets, get_board
from nonn_tflite.errors import BudgetError, UsageError
from nonn_tflite.sizing import BLOCKS, WIDTHS, choose_student, estimate


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


# -- the arena estimate against TFLM on an emulated Cortex-M4 -----------------------------------

# (width, blocks, out_channels, input shape): none of these is among the 16 students the
# arena model's constants were fitted to (nonn_tflite/arena_model.py).
ARENA_GRID = [(4, 0, 8, (28, 28, 1)), (6, 1, 12, (8, 8, 1)), (12, 2, 24, (28, 28, 1)),
              (16, 0, 16, (32, 32, 3)), (24, 1, 16, (16, 16, 3)), (32, 2, 32, (8, 8, 1)),
              (64, 1, 16, (8, 8, 1)), (8, 1, 10, (32, 32, 3))]


def _int8_student(width, blocks, out, shape):
    from nonn_tflite.architectures import build_student, deployable_student, default_stages
    from nonn_tflite.quantize import convert_int8

    spec = StudentSpec(width, blocks, out, default_stages(shape))
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

    for (spec, data), (*_, shape) in zip(int8_students, ARENA_GRID):
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
    for (spec, data), (*_, shape) in zip(int8_students, ARENA_GRID):
        x = np.random.default_rng(1).integers(-128, 128, (1, int(np.prod(shape))), dtype=np.int8)
        probe = run_probe(data, x, config)
        measured = min_arena(data, x, config, probe.arena_used_bytes)
        est = estimate(spec, shape).arena_32bit_min_bytes
        rows.append((spec.describe(), shape, measured, est, est / measured))
    bad = [r for r in rows if not r[2] <= r[3] <= 1.2 * r[2]]
    assert not bad, "\n".join(f"{d} {s}: measured {m:,} B, estimate {e:,} B ({q:.3f})"
                              for d, s, m, e, q in rows)
