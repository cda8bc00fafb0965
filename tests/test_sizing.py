"""Budgets pick the largest student that fits; impossible budgets say what would fit."""

from __future__ import annotations

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
