"""Board cost models, user board profiles (TOML), the energy estimates and their calibration."""

from __future__ import annotations

import json
import math
import tomllib

import pytest
from click.testing import CliRunner

from nonn_tflite.boards import (
    BOARDS,
    KB,
    Board,
    CostModel,
    board_toml,
    device_budgets,
    get_board,
    load_board_file,
)
from nonn_tflite.cli import main
from nonn_tflite.energy import (
    CALIBRATION_FACTOR,
    MLPERF_TINY_IC,
    RESNET8_MACS,
    Fit,
    average_power_mw,
    calibration,
    compute_latency_ms,
    energy_markdown,
    energy_section,
    estimate,
    memory_fit,
    radio_energy_uj,
    smallest_fitting_board,
)
from nonn_tflite.errors import UsageError


def _board(link: str = "ble", factor: float | None = None, os: str = "none") -> Board:
    """100 MHz, 2 cycles/MAC, 50 mW active, 1 mW idle, 10 nJ/bit, 20 uJ/message, 100 B/message."""
    cost = CostModel("cmsis-nn", 2.0, active_mw=50.0, idle_mw=1.0, link=link, radio_nj_per_bit=10.0,
                     radio_uj_per_message=20.0, max_message_bytes=100, host_speed_factor=factor)
    return Board("hand", "hand-checked board", flash_bytes=512 * KB, ram_bytes=128 * KB,
                 reserve_flash_bytes=12 * KB, reserve_ram_bytes=28 * KB, clock_mhz=100,
                 core="Cortex-M4F", radio=link, os=os, source="test", cost=cost)


# -- the model's arithmetic, checked by hand -----------------------------------------------------

def test_estimate_arithmetic_by_hand():
    est = estimate(1_000_000, 150, _board())
    assert est.latency_ms == pytest.approx(20.0)  # 1e6 MACs * 2 cycles / 100 MHz
    assert est.compute_uj == pytest.approx(1000.0)  # 50 mW * 20 ms
    assert est.messages == 2  # 150 B over 100 B messages
    assert est.radio_uj == pytest.approx(2 * 20 + 8 * 150 * 10 / 1000)  # 52 uJ
    assert est.total_uj == pytest.approx(1052.0)
    # 1 inference/s: 1.052 mJ/s plus 1 mW idle for the 980 ms not computing
    assert average_power_mw(est, _board(), 1.0) == pytest.approx(1.052 + 0.98)


def test_radio_energy_edges():
    cost = _board().cost
    assert radio_energy_uj(100, cost) == (pytest.approx(20 + 8.0), 1)  # exactly one message
    assert radio_energy_uj(101, cost)[1] == 2
    assert radio_energy_uj(46, _board(link="none").cost) == (0.0, 0)  # no radio: nothing sent


def test_linux_board_scales_the_host_latency_else_counts_macs():
    linux = _board(factor=12.0, os="linux")
    assert compute_latency_ms(1_000_000, linux, host_latency_ms=2.0) == (24.0, "host latency x factor")
    assert compute_latency_ms(1_000_000, linux) == (pytest.approx(20.0), "macs")  # no host figure
    assert compute_latency_ms(1_000_000, _board(), host_latency_ms=2.0)[1] == "macs"  # MCU: MACs


def test_measured_instructions_times_cpi_beat_the_mac_model_on_an_emulated_core():
    b = BOARDS["nano33ble"]  # Cortex-M4F at 64 MHz: QEMU emulates its core
    cpi = b.cost.cycles_per_instruction
    assert cpi and b.cost.emulated_cpu == "cortex-m4"
    ms, basis = compute_latency_ms(1_000_000, b, instructions=3_000_000)
    assert basis == "measured instructions x CPI"
    assert ms == pytest.approx(3_000_000 * cpi / 64e6 * 1e3)
    assert compute_latency_ms(1_000_000, b, instructions=None)[1] == "macs"  # not measured
    assert compute_latency_ms(1_000_000, b, instructions=0)[1] == "macs"
    no_cpi = BOARDS["esp32"]  # Xtensa: not emulated, the cycles/MAC table stays
    assert no_cpi.cost.cycles_per_instruction is None
    assert compute_latency_ms(1_000_000, no_cpi, instructions=3_000_000)[1] == "macs"


def test_latency_is_linear_in_macs_and_inverse_in_clock():
    b = BOARDS["nano33ble"]
    one, two = estimate(10_000, 40, b), estimate(20_000, 40, b)
    assert two.latency_ms == pytest.approx(2 * one.latency_ms)
    assert two.radio_uj == one.radio_uj  # the payload, not the MACs, sets the radio energy
    assert one.latency_ms == pytest.approx(10_000 * b.cost.cycles_per_mac / 64e6 * 1e3)


def test_every_catalogue_board_has_a_sourced_cost_model():
    for b in BOARDS.values():
        c = b.cost
        assert c is not None and b.source, b.name
        assert c.cycles_per_mac > 0 and c.active_mw > c.idle_mw >= 0, b.name
        assert (c.host_speed_factor is not None) == (b.os == "linux"), b.name
    links = {b.cost.link for b in BOARDS.values()}
    assert {"ble", "wifi", "802.15.4"} <= links  # the three radios the issue names
    assert BOARDS["esp32"].cost.kernels == "esp-nn" and BOARDS["nano33ble"].cost.kernels == "cmsis-nn"


# -- MAC counts feed the model, and the calibration against MLPerf Tiny -----------------------------

def _keras_macs(model) -> int:
    """k*k*cin*cout*H*W per Conv2D plus in*out per Dense (what CONV_2D/FULLY_CONNECTED cost)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            _, h, w, cout = layer.output.shape
            total += kh * kw * layer.input.shape[-1] * cout * h * w
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


def test_resnet8_mac_count_is_what_the_calibration_uses():
    from nonn_tflite.architectures import build_teacher

    macs = _keras_macs(build_teacher("resnet-8", (32, 32, 3), 10))
    assert macs == RESNET8_MACS  # ~12.5 M, the MLPerf Tiny IC reference model
    rows = calibration(macs)
    assert rows[0]["estimate_latency_ms"] == pytest.approx(macs * 3.0 / 120e6 * 1e3)


def test_calibration_lands_within_the_stated_factor_of_mlperf_tiny():
    rows = calibration()
    assert len(rows) == len(MLPERF_TINY_IC) >= 1
    for row in rows:
        f = row["latency_factor"]
        assert 1 / CALIBRATION_FACTOR <= f <= CALIBRATION_FACTOR, row["published"]["submitter"]
        assert 1 / CALIBRATION_FACTOR <= row["energy_factor"] <= CALIBRATION_FACTOR
    ref = next(r for r in rows if r["published"]["submitter"] == "Reference")  # TFLM + CMSIS-NN
    assert ref["published_latency_ms"] == pytest.approx(1000 / 1.420)  # 704 ms, v0.5 results.txt
    assert all(r["published"]["board"] in BOARDS for r in rows)  # a board the catalogue has


# -- memory fit and the report section ---------------------------------------------------------------

def test_memory_fit_says_by_how_much():
    fit = memory_fit(600 * KB, 180 * KB, BOARDS["nano33ble"])  # 724 KiB flash, 160 KiB RAM left
    assert not fit.fits
    assert fit.problem == "does not fit nano33ble: RAM 180.0 KiB > 160.0 KiB left (over by 20.0 KiB)"
    assert fit.over == "RAM +20.0 KiB"
    both = memory_fit(800 * KB, 200 * KB, BOARDS["nano33ble"])
    assert both.over == "flash +76.0 KiB, RAM +40.0 KiB" and both.problem.count("over by") == 2
    assert memory_fit(100 * KB, 10 * KB, BOARDS["nano33ble"]) == Fit(True, None)


def test_smallest_fitting_board_needs_a_radio():
    # 600 KiB / 180 KiB: rp2040 (168 KiB RAM) and esp32 (480 KiB flash) are too small
    assert smallest_fitting_board(600 * KB, 180 * KB).name == "stm32f746"
    # nucleo-l4r5zi (no radio) is never a node; a model that fits only a Pi goes to the Pi
    assert smallest_fitting_board(1500 * KB, 500 * KB).name == "rpi-zero-2"
    assert smallest_fitting_board(10 << 30, 1 << 30) is None


def _model(macs: int, flash: int, arena: int, **extra) -> dict:
    return {"macs": macs, "flash_bytes": flash, "arena_bytes": arena, "arena_bytes_32bit": arena,
            "latency_ms": 0.5, "latency": {"default": {"median_ms": 0.1}},
            "output": {"shape": [1, 10]}, **extra}


def _report(teacher_flash: int, teacher_arena: int) -> dict:
    students = [{"id": k, **_model(20_000 + 10_000 * k, 30 * KB, 8 * KB, payload_bytes=36 + 12)}
                for k in range(2)]
    return {"teacher": _model(2_000_000, teacher_flash, teacher_arena), "students": students}


def test_energy_section_student_beside_teacher_on_the_same_board():
    sec = energy_section(_report(300 * KB, 60 * KB), [BOARDS["esp32"], BOARDS["nano33ble"]])
    d0, d1 = sec["devices"]
    assert (d0["board"], d1["board"]) == ("esp32", "nano33ble")
    # the students' MACs set their latency; their 48-byte payload their radio energy
    assert d0["estimate"]["latency_ms"] == pytest.approx(20_000 * 12.74 / 240e6 * 1e3)
    assert d1["estimate"]["latency_ms"] == pytest.approx(30_000 * 3.0 / 64e6 * 1e3)
    assert d1["estimate"]["radio_uj"] == pytest.approx(15 + 8 * 48 * 14.4 / 1e3)
    t0 = d0["teacher"]
    assert t0["fits"] and t0["payload_bytes"] == 10 + 44  # a teacher node sends its prediction
    assert d0["ratios"]["latency"] == pytest.approx(2_000_000 / 20_000)  # same board: MAC ratio
    assert d0["ratios"]["energy"] == pytest.approx(t0["estimate"]["total_uj"] / d0["estimate"]["total_uj"])
    assert sec["label"].startswith("estimate") and any("cycles_per_mac" in f for f in sec["formula"])
    s = sec["summary"]
    assert s["energy_ratio_min"] <= s["energy_ratio_max"]


def test_teacher_that_does_not_fit_is_compared_on_the_smallest_board_it_fits():
    sec = energy_section(_report(600 * KB, 180 * KB), [BOARDS["nano33ble"], None])
    d0, d1 = sec["devices"]
    t = d0["teacher"]
    assert not t["fits"] and t["estimate"] is None
    assert "does not fit nano33ble: RAM 180.0 KiB > 160.0 KiB left (over by 20.0 KiB)" == t["problem"]
    assert t["reference_board"] == "stm32f746"
    assert d0["ratios"]["teacher_board"] == "stm32f746"
    assert d0["ratios"]["latency"] == pytest.approx(
        t["reference_estimate"]["latency_ms"] / d0["estimate"]["latency_ms"])
    assert d1["estimate"] is None  # no board for student 1: not estimated
    assert set(sec["boards"]) == {"nano33ble", "stm32f746"}  # the figures used are in the report
    md = "\n".join(energy_markdown(sec))
    assert "(estimate)" in md and "does not fit nano33ble" in md and "E_radio" in md


def test_no_board_no_section_and_linux_uses_the_host_latency():
    assert energy_section(_report(30 * KB, 8 * KB), [None, None]) is None
    sec = energy_section(_report(30 * KB, 8 * KB), [BOARDS["rpi-zero-2"]] * 2)
    d = sec["devices"][0]
    assert d["estimate"]["basis"] == "host latency x factor"
    assert d["estimate"]["latency_ms"] == pytest.approx(0.1 * 12.0)  # default-delegate median x 12


# -- user board profiles (TOML) --------------------------------------------------------------------

def _write(tmp_path, text: str, name: str = "myboard.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_template_round_trips_to_the_same_board(tmp_path):
    for name in ("esp32", "rpi-zero-2"):
        path = _write(tmp_path, board_toml(BOARDS[name]), f"{name}.toml")
        assert load_board_file(path) == BOARDS[name]


def test_user_profile_feeds_budgets_and_estimates(tmp_path):
    text = board_toml(BOARDS["nano33ble"]).replace('name = "nano33ble"', 'name = "my-nrf"')
    text = text.replace("cycles_per_mac = 3.0", "cycles_per_mac = 2.5")
    path = _write(tmp_path, text)
    board = get_board(str(path))  # what `--board myboard.toml` resolves to
    assert board.name == "my-nrf" and board.cost.cycles_per_mac == 2.5
    budgets = device_budgets(2, boards=[str(path)])
    assert [b.board for b in budgets] == ["my-nrf", "my-nrf"]
    assert budgets[0].flash_bytes == BOARDS["nano33ble"].model_flash_bytes
    assert estimate(64_000, 0, board).latency_ms == pytest.approx(2.5)  # 64k MACs * 2.5 / 64 MHz


@pytest.mark.parametrize("edit, field", [
    (lambda t: t.replace("ram_bytes = 262144\n", ""), "ram_bytes"),
    (lambda t: t.replace("active_mw = 20.8", "active_mw = -5"), "cost.active_mw"),
    (lambda t: t.replace("reserve_flash_bytes = 307200", "reserve_flash_bytes = -1"), "reserve_flash_bytes"),
    (lambda t: t.replace("cycles_per_mac = 3.0\n", ""), "cost.cycles_per_mac"),
    (lambda t: t.replace("clock_mhz = 64", "clock_mhz = 0"), "clock_mhz"),
    (lambda t: t.replace("clock_mhz = 64", 'clock_mhz = "fast"'), "clock_mhz"),
    (lambda t: t.replace('link = "ble"', 'link = "lora"'), "cost.link"),
    (lambda t: t.replace("idle_mw = 0.01", "idle_mw = 0.01\nidle_mv = 3"), "cost.idle_mv"),
    (lambda t: t.split("[cost]")[0], "cost"),
])
def test_bad_profile_is_refused_naming_file_and_field(tmp_path, edit, field):
    path = _write(tmp_path, edit(board_toml(BOARDS["nano33ble"])))
    with pytest.raises(UsageError) as exc:
        get_board(str(path))
    msg = str(exc.value)
    assert f"board profile {path}" in msg and f"'{field}'" in msg and "\n" not in msg


def test_unreadable_profiles_are_refused(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        get_board(str(tmp_path / "nope.toml"))
    with pytest.raises(UsageError, match="not valid TOML"):
        get_board(str(_write(tmp_path, "flash_bytes = = 3")))
    text = board_toml(BOARDS["nano33ble"]).replace("reserve_ram_bytes = 98304", "reserve_ram_bytes = 262144")
    with pytest.raises(UsageError, match="'reserve_ram_bytes' must be less than 'ram_bytes'"):
        get_board(str(_write(tmp_path, text)))


# -- the `boards` command ---------------------------------------------------------------------------

def _invoke(*args: str):
    return CliRunner().invoke(main, ["boards", *args])


def test_boards_command_lists_catalogue_with_sources():
    res = _invoke()
    assert res.exit_code == 0, res.output
    for name, b in BOARDS.items():
        assert name in res.output and b.source.split(";")[0] in res.output
    assert "ESTIMATES" in res.output and "esp-nn, 12.74" in res.output


def test_boards_json_and_toml_and_calibration():
    data = json.loads(_invoke("--json").output)
    assert set(data) == set(BOARDS)
    assert data["esp32"]["cost"]["cycles_per_mac"] == BOARDS["esp32"].cost.cycles_per_mac
    assert data["nano33ble"]["clock_mhz"] == 64 and data["nano33ble"]["source"]
    toml_text = _invoke("nano33ble", "--toml").output
    assert tomllib.loads(toml_text)["cost"]["link"] == "ble"
    cal = json.loads(_invoke("--calibration", "--json").output)
    assert cal["macs"] == RESNET8_MACS and len(cal["rows"]) == len(MLPERF_TINY_IC)
    assert "MLPerf" in _invoke("--calibration").output


def test_boards_command_checks_a_user_profile(tmp_path):
    good = _write(tmp_path, board_toml(BOARDS["esp32"]).replace('name = "esp32"', 'name = "mine"'))
    res = _invoke(str(good), "--json")
    assert res.exit_code == 0 and set(json.loads(res.output)) == {"mine"}
    bad = _write(tmp_path, board_toml(BOARDS["esp32"]).replace("idle_mw = 2.64", "idle_mw = -1"), "bad.toml")
    res = _invoke(str(bad))
    assert res.exit_code == 2 and "'cost.idle_mw' must be >= 0" in res.output
    assert _invoke("--toml").exit_code == 2  # --toml needs a board


def test_infinite_numbers_are_refused(tmp_path):
    path = _write(tmp_path, board_toml(BOARDS["esp32"]).replace("active_mw = 165.0", "active_mw = inf"))
    with pytest.raises(UsageError, match="'cost.active_mw' must be a number"):
        load_board_file(path)
    assert math.isinf(tomllib.loads("x = inf")["x"])  # TOML does allow it, so we must check


# -- end to end: `convert --board` puts the estimates in report.json, report.md and the terminal ----

def _build_tiny_run(path):
    """The convert tests' tiny distilled digits run (tests/convert/conftest.py: build_run)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "convert_conftest", Path(__file__).parent / "convert" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_run(path)


@pytest.mark.slow
def test_convert_reports_estimates_beside_the_teacher(tmp_path):
    run = _build_tiny_run(tmp_path / "digits")
    res = CliRunner().invoke(main, ["convert", str(run), "--board", "nano33ble", "--calibration", "50",
                                    "--parity-samples", "2"])
    assert res.exit_code == 0, res.output
    assert "ESTIMATES" in res.output and "nano33ble" in res.output  # the terminal table
    rep = json.loads((run / "tflite" / "report.json").read_text())
    sec = rep["energy"]
    assert sec["label"].startswith("estimate") and len(sec["devices"]) == len(rep["students"])
    for dev, student in zip(sec["devices"], rep["students"], strict=True):
        # the converted model's MAC count is what sets the estimated latency
        assert dev["estimate"]["latency_ms"] == pytest.approx(student["macs"] * 3.0 / 64e6 * 1e3)
        assert dev["teacher"]["fits"] and dev["ratios"]["latency"] == pytest.approx(
            rep["teacher"]["macs"] / student["macs"])
    md = (run / "tflite" / "report.md").read_text()
    assert "## Latency and energy per inference (estimate)" in md and "E_compute = P_active" in md
    assert "Calibration: ResNet-8" in md
