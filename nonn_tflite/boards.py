"""Board profiles, per-device memory budgets and each board's latency/energy cost model.

A student must fit what its board leaves *after* the firmware: the TFLite Micro runtime, the
network stack (Wi-Fi/BLE + MQTT) and the application. ``model_flash_bytes`` and
``model_ram_bytes`` are that remainder, i.e. the budget for the model's flatbuffer and its
tensor arena. Figures are from the vendors' datasheets; the reserves are our estimates of a
typical Arduino/TFLM + MQTT build and are labelled as such.

Every board also carries a :class:`CostModel` (clock, cycles per int8 MAC for the kernels the
board would use, active/idle power, radio energy), which :mod:`nonn_tflite.energy` turns into
*estimated* latency and energy per inference. Each figure names its source beside it; figures
quoted from a datasheet from memory (not re-checked here) say so. A user's own board is a TOML
file (:func:`load_board_file`), so a measured figure can replace ours without code changes.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from nonn_tflite.errors import BudgetError, UsageError

KB = 1024

LINKS = ("ble", "wifi", "802.15.4", "ethernet", "none")  # radio that carries the payload
OSES = ("none", "linux")


@dataclass(frozen=True)
class CostModel:
    """What one inference costs on a board: compute time, power, and radio energy (estimates).

    Compute: ``macs * cycles_per_mac / clock`` (MCUs), or, on Linux boards with a measured
    host latency, ``host_latency * host_speed_factor``. Radio: ``8 * bytes * nj_per_bit`` plus
    ``uj_per_message`` for each message of at most ``max_message_bytes``.
    """

    kernels: str  # int8 kernels the board would run: cmsis-nn, esp-nn, reference, litert-xnnpack
    cycles_per_mac: float  # whole-network cycles per int8 conv/dense MAC with those kernels
    active_mw: float  # power while computing
    idle_mw: float  # power between inferences (the sleep mode the board would use)
    link: str  # radio that carries the payload: ble, wifi, 802.15.4, ethernet, none
    radio_nj_per_bit: float  # energy per payload bit on the link
    radio_uj_per_message: float  # fixed cost per message: wake-up, headers, ACKs
    max_message_bytes: int  # payload bytes per message; larger payloads need several
    host_speed_factor: float | None = None  # Linux boards: board latency / this host's LiteRT latency
    # Boards whose core QEMU emulates: latency = instructions measured on that core (TFLM with
    # these kernels, firmware_bridge/qemu.py) x cycles_per_instruction / clock.
    cycles_per_instruction: float | None = None
    emulated_cpu: str | None = None  # "cortex-m4", "cortex-m7", "cortex-m55"


@dataclass(frozen=True)
class Board:
    name: str
    title: str
    flash_bytes: int
    ram_bytes: int
    reserve_flash_bytes: int  # runtime + network stack + app (estimate)
    reserve_ram_bytes: int
    clock_mhz: int
    core: str
    radio: str
    os: str  # "none" (bare metal / RTOS) or "linux"
    source: str
    cost: CostModel | None = None  # None: no latency/energy estimates for this board

    @property
    def model_flash_bytes(self) -> int:
        return self.flash_bytes - self.reserve_flash_bytes

    @property
    def model_ram_bytes(self) -> int:
        return self.ram_bytes - self.reserve_ram_bytes

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(model_flash_bytes=self.model_flash_bytes, model_ram_bytes=self.model_ram_bytes)
        return d


# -- kernel throughput (cycles per int8 MAC), shared by boards with the same core ---------------
#
# Cortex-M4 (DSP extension) + CMSIS-NN: the s8 convolution inner loop
# (ARM-software/CMSIS-NN Source/ConvolutionFunctions/arm_nn_mat_mult_kernel_s8_s16.c) does 16
# MACs per iteration with 8 SMLAD, 4 LDR of the int16 im2col buffer, 2 LDR + 4 SXTB16 for the
# weights and the loop branch: ~22 cycles, i.e. ~1.4 cycles/MAC at zero wait states. im2col to
# int16, per-output requantisation, ADD/pool ops, TFLM dispatch and flash wait states on weight
# loads roughly double that: 3.0 is our whole-network estimate. It was set knowing the MLPerf
# Tiny results in energy.MLPERF_TINY_IC, so that check bounds the error; it is not blind.
CYCLES_PER_MAC_M4_CMSIS = 3.0
# Cortex-M7 (dual issue) + CMSIS-NN: M4 figure x 0.56, the M7/M4 cycles-per-MAC ratio of
# STMicroelectronics' own MLPerf Tiny v1.0 image-classification results with one toolchain
# (X-CUBE-AI 7.3): NUCLEO-H7A3ZI-Q 18.401 inf/s at 280 MHz vs NUCLEO-L4R5ZI 4.407 inf/s at
# 120 MHz (mlcommons/tiny_results_v1.0, closed/STMicroelectronics/results/*/ic/performance).
CYCLES_PER_MAC_M7_CMSIS = round(CYCLES_PER_MAC_M4_CMSIS * (280 / 18.401) / (120 / 4.407), 2)
# Cortex-M0+ (no DSP extension): CMSIS-NN falls back to the plain C loop of the same kernel,
# 4 MACs per iteration of 4 loads (2 cycles each on M0+), 4 MULS, 4 ADDS and the branch: ~5
# cycles/MAC; x1.6 for the same whole-network overheads: 8.0 (our estimate).
CYCLES_PER_MAC_M0P_CMSIS = 8.0
# ESP-NN: espressif/esp-nn README, TFLM person detection with / without ESP-NN at 240 MHz:
# ESP32 380 ms / 4084 ms, ESP32-S3 54 ms / 2300 ms. That model (MobileNet v1 0.25, 96x96x1) is
# 7,157,888 MACs by our count of keras.applications.MobileNet(alpha=0.25, input 96x96x1).
PERSON_DETECTION_MACS = 7_157_888
CYCLES_PER_MAC_ESP32_ESPNN = round(0.380 * 240e6 / PERSON_DETECTION_MACS, 2)  # 12.74
CYCLES_PER_MAC_ESP32S3_ESPNN = round(0.054 * 240e6 / PERSON_DETECTION_MACS, 2)  # 1.81


# -- cycles per instruction, for boards whose core is emulated (instructions measured on QEMU) -----
#
# Calibrated once against the one published MLPerf Tiny result that runs TFLM + CMSIS-NN on a
# Cortex-M4: the v0.5 reference submission, ResNet-8 on NUCLEO-L4R5ZI at 120 MHz, 1.420 inf/s
# (mlcommons/tiny_results_v0.5 closed/reference/results/Nucleo-L4R5ZI/ic/performance), i.e.
# 84.5 M cycles, over the 29,781,825 instructions the same model takes on the emulated
# Cortex-M4 with today's TFLM + CMSIS-NN (../shared/tflm/README.md). That gives 2.84 cycles per
# instruction: flash wait states (5 at 120 MHz, behind the ART cache), multi-cycle loads and
# SMLAD stalls, and whatever the 2020 TFLM v2.3.1 executed more than today's TFLM (so it leans
# pessimistic).
RESNET8_M4_CMSIS_INSTRUCTIONS = 29_781_825  # measured on QEMU mps2-an386
MLPERF_V05_L4R5ZI_IPS = 1.420
CPI_M4_TFLM_CMSIS = round(120e6 / MLPERF_V05_L4R5ZI_IPS / RESNET8_M4_CMSIS_INSTRUCTIONS, 2)  # 2.84
# Cortex-M7: the M4 figure x the M7/M4 cycle ratio of ST's own MLPerf Tiny v1.0 results with
# one toolchain (as CYCLES_PER_MAC_M7_CMSIS above); the instruction streams match (ResNet-8:
# 29.96 M on the emulated M7 vs 29.78 M on the M4).
CPI_M7_TFLM_CMSIS = round(CPI_M4_TFLM_CMSIS * (280 / 18.401) / (120 / 4.407), 2)  # 1.59

BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board("esp32", "ESP32-WROOM-32 (Arduino, default 1.25 MB app partition)",
              flash_bytes=1_310_720, ram_bytes=320 * KB,  # app partition; DRAM heap usable
              reserve_flash_bytes=800 * KB, reserve_ram_bytes=120 * KB,
              clock_mhz=240, core="Xtensa LX6 (dual)", radio="wifi,ble", os="none",
              source="Espressif ESP32 datasheet v4.x; arduino-esp32 default partitions.csv; "
                     "espressif/esp-nn README",
              cost=CostModel(
                  kernels="esp-nn", cycles_per_mac=CYCLES_PER_MAC_ESP32_ESPNN,
                  # ESP32 datasheet v4.x, power modes: Modem-sleep, 240 MHz dual-core 30-68 mA;
                  # 50 mA x 3.3 V (from memory of the datasheet)
                  active_mw=165.0,
                  idle_mw=2.64,  # same table: Light-sleep 0.8 mA x 3.3 V
                  # datasheet RF: TX 802.11n MCS7 +14 dBm 180 mA x 3.3 V = 594 mW over
                  # 65 Mbit/s (HT20 MCS7, long GI)
                  link="wifi", radio_nj_per_bit=9.1,
                  # our estimate: ~2.5 ms radio on (wake from modem-sleep, TX of MQTT + TCP/IP +
                  # 802.11 headers, 802.11 ACK, TCP ACK RX) at ~120 mA mean x 3.3 V ~ 1 mJ
                  radio_uj_per_message=1000.0, max_message_bytes=1400)),  # one TCP segment
        Board("esp32s3", "ESP32-S3-DevKitC-1 (Arduino, default 1.25 MB app partition)",
              flash_bytes=1_310_720, ram_bytes=512 * KB,
              reserve_flash_bytes=800 * KB, reserve_ram_bytes=192 * KB,  # Wi-Fi + BLE + app (estimate)
              clock_mhz=240, core="Xtensa LX7 (dual)", radio="wifi,ble", os="none",
              source="Espressif ESP32-S3 datasheet v1.x; arduino-esp32 default partitions.csv; "
                     "espressif/esp-nn README",
              cost=CostModel(
                  kernels="esp-nn", cycles_per_mac=CYCLES_PER_MAC_ESP32S3_ESPNN,
                  active_mw=165.0,  # ESP32-S3 datasheet Modem-sleep 240 MHz: ~50 mA x 3.3 V (approx.)
                  idle_mw=0.79,  # ESP32-S3 datasheet Light-sleep ~240 uA x 3.3 V (from memory)
                  # ESP32-S3 datasheet RF: TX 802.11n HT20 MCS7 ~290 mA x 3.3 V over 65 Mbit/s
                  link="wifi", radio_nj_per_bit=14.7,
                  radio_uj_per_message=1000.0,  # same estimate as esp32
                  max_message_bytes=1400)),
        Board("nano33ble", "Arduino Nano 33 BLE (nRF52840)",
              flash_bytes=1024 * KB, ram_bytes=256 * KB,
              reserve_flash_bytes=300 * KB, reserve_ram_bytes=96 * KB,
              clock_mhz=64, core="Cortex-M4F", radio="ble", os="none",
              source="Nordic nRF52840 product specification v1.7",
              cost=CostModel(
                  kernels="cmsis-nn", cycles_per_mac=CYCLES_PER_MAC_M4_CMSIS,
                  cycles_per_instruction=CPI_M4_TFLM_CMSIS, emulated_cpu="cortex-m4",
                  # nRF52840 PS v1.7: CPU running CoreMark from flash, cache on, 64 MHz, LDO:
                  # 6.3 mA x 3.3 V (chip only: the board's LEDs and regulator are not counted)
                  active_mw=20.8,
                  idle_mw=0.01,  # PS v1.7: System ON, full RAM retention, RTC wake ~3 uA x 3.3 V
                  # PS v1.7 radio: TX 0 dBm (DC/DC, 3 V) 4.8 mA = 14.4 mW; BLE 1M PHY 1 us/bit
                  link="ble", radio_nj_per_bit=14.4,
                  # our estimate: TX ramp-up 140 us + T_IFS/RX of the peer's packet ~230 us +
                  # 17 B LL/L2CAP/ATT header airtime 136 us at ~14 mW, plus HFXO/CPU wake
                  radio_uj_per_message=15.0,
                  max_message_bytes=244)),  # ATT MTU 247 with LE Data Length Extension
        Board("nrf52840dk", "Nordic nRF52840 DK (802.15.4 / Thread, MQTT-SN)",
              flash_bytes=1024 * KB, ram_bytes=256 * KB,
              reserve_flash_bytes=400 * KB, reserve_ram_bytes=96 * KB,  # OpenThread + app (estimate)
              clock_mhz=64, core="Cortex-M4F", radio="802.15.4,ble", os="none",
              source="Nordic nRF52840 product specification v1.7; IEEE 802.15.4 O-QPSK 250 kbit/s",
              cost=CostModel(
                  kernels="cmsis-nn", cycles_per_mac=CYCLES_PER_MAC_M4_CMSIS,
                  cycles_per_instruction=CPI_M4_TFLM_CMSIS, emulated_cpu="cortex-m4",
                  active_mw=20.8, idle_mw=0.01,  # as nano33ble (same chip)
                  # TX 0 dBm 14.4 mW (PS v1.7) over 250 kbit/s
                  link="802.15.4", radio_nj_per_bit=57.6,
                  # our estimate: CSMA-CA backoff + CCA + ACK wait ~2 ms RX at 13.8 mW (RX 4.6 mA
                  # x 3 V) + ~30 B MAC/6LoWPAN/MQTT-SN header airtime ~1 ms at 14.4 mW
                  radio_uj_per_message=42.0,
                  max_message_bytes=80)),  # 127 B PSDU minus MAC, 6LoWPAN/UDP, MQTT-SN headers
        Board("rp2040", "Raspberry Pi Pico W (RP2040)",
              flash_bytes=2048 * KB, ram_bytes=264 * KB,
              reserve_flash_bytes=600 * KB, reserve_ram_bytes=96 * KB,
              clock_mhz=133, core="Cortex-M0+ (dual)", radio="wifi", os="none",
              source="Raspberry Pi RP2040 datasheet; Pico W datasheet",
              cost=CostModel(
                  kernels="cmsis-nn (no DSP: C loops)", cycles_per_mac=CYCLES_PER_MAC_M0P_CMSIS,
                  active_mw=82.5,  # Pico W datasheet, busy: ~25 mA x 3.3 V (approx., from memory)
                  idle_mw=4.3,  # Pico datasheet, sleep ~1.3 mA x 3.3 V (approx., from memory)
                  # Infineon CYW43439 datasheet: TX 11n MCS7 ~0.28 A x 3.6 V over 65 Mbit/s
                  link="wifi", radio_nj_per_bit=15.5,
                  # our estimate: as esp32 plus the gSPI transfer and lwIP on a 133 MHz M0+
                  radio_uj_per_message=1500.0, max_message_bytes=1400)),
        Board("stm32f746", "STM32F746G-DISCO",
              flash_bytes=1024 * KB, ram_bytes=320 * KB,
              reserve_flash_bytes=200 * KB, reserve_ram_bytes=64 * KB,
              clock_mhz=216, core="Cortex-M7", radio="ethernet", os="none",
              source="ST STM32F746xx datasheet DS10916",
              cost=CostModel(
                  kernels="cmsis-nn", cycles_per_mac=CYCLES_PER_MAC_M7_CMSIS,
                  cycles_per_instruction=CPI_M7_TFLM_CMSIS, emulated_cpu="cortex-m7",
                  # DS10916: Run mode 216 MHz from flash, ART on, peripherals off ~100 mA x 3.3 V
                  # (approx., from memory; the board's LCD and SDRAM are not counted)
                  active_mw=330.0,
                  idle_mw=1.0,  # DS10916: Stop mode ~0.3 mA x 3.3 V (approx.)
                  # LAN8742A PHY ~40 mA x 3.3 V = 130 mW over 100 Mbit/s (from memory)
                  link="ethernet", radio_nj_per_bit=1.3,
                  radio_uj_per_message=20.0,  # our estimate: ~60 us of lwIP at 330 mW
                  max_message_bytes=1400)),
        Board("nucleo-l4r5zi", "ST NUCLEO-L4R5ZI (MLPerf Tiny reference platform; no radio)",
              flash_bytes=2048 * KB, ram_bytes=640 * KB,
              reserve_flash_bytes=100 * KB, reserve_ram_bytes=32 * KB,  # TFLM + app, no network
              clock_mhz=120, core="Cortex-M4F", radio="none", os="none",
              source="ST STM32L4R5xx datasheet DS12023; MLPerf Tiny v0.5 reference system",
              cost=CostModel(
                  kernels="cmsis-nn", cycles_per_mac=CYCLES_PER_MAC_M4_CMSIS,
                  cycles_per_instruction=CPI_M4_TFLM_CMSIS, emulated_cpu="cortex-m4",
                  # DS12023: Run mode, range 1 boost, ~110 uA/MHz x 120 MHz x 3.3 V (approx.,
                  # from memory). MLPerf Tiny v0.5 measured 41.5 mW for the board at 1.8 V.
                  active_mw=43.6,
                  idle_mw=0.01,  # DS12023: Stop 2 ~3 uA (approx.)
                  link="none", radio_nj_per_bit=0.0, radio_uj_per_message=0.0,
                  max_message_bytes=1)),
        Board("rpi-zero-2", "Raspberry Pi Zero 2 W (Linux, LiteRT)",
              flash_bytes=8192 * 1024 * KB, ram_bytes=512 * 1024 * KB,
              reserve_flash_bytes=4096 * 1024 * KB, reserve_ram_bytes=256 * 1024 * KB,
              clock_mhz=1000, core="Cortex-A53 (quad)", radio="wifi,ble", os="linux",
              source="Raspberry Pi Zero 2 W product brief",
              cost=CostModel(
                  # fallback when no host latency is known: A53 NEON int8 (no dot product),
                  # 1 thread, ~2 MAC/cycle achieved (our estimate)
                  kernels="litert-xnnpack", cycles_per_mac=0.5,
                  # community USB power-meter measurements: ~0.6 W idle with Wi-Fi, ~1.0 W with
                  # one core busy (approx.; measure your own and put it in a TOML profile)
                  active_mw=1000.0, idle_mw=600.0,
                  link="wifi", radio_nj_per_bit=15.5,  # CYW43436, as the CYW43439 above
                  radio_uj_per_message=1000.0,  # our estimate, as esp32
                  max_message_bytes=1400,
                  # ASSUMED, not measured: one A53 core at 1 GHz vs one x86-64 desktop core,
                  # both LiteRT + XNNPACK int8. Replace with a measured ratio (run
                  # `nonn-tflite inspect MODEL --latency 200` on the Pi and here, divide).
                  host_speed_factor=12.0)),
    )
}


# -- user profile files ---------------------------------------------------------------------------

_REQUIRED_POSITIVE = ("flash_bytes", "ram_bytes", "clock_mhz")
_REQUIRED_NONNEGATIVE = ("reserve_flash_bytes", "reserve_ram_bytes")
_COST_POSITIVE = ("cycles_per_mac", "max_message_bytes")
_COST_NONNEGATIVE = ("active_mw", "idle_mw", "radio_nj_per_bit", "radio_uj_per_message")
_INT_FIELDS = {"flash_bytes", "ram_bytes", "reserve_flash_bytes", "reserve_ram_bytes", "clock_mhz",
               "max_message_bytes"}


def load_board_file(path: str | Path) -> Board:
    """A user's board profile (TOML): the :class:`Board` fields and a ``[cost]`` table.

    Every number is required and validated, so a typo cannot silently become a default; the
    error names the file and the field. ``name`` defaults to the file name, ``title`` to the
    name, ``source`` to the path. Print a template with ``nonn-tflite boards --toml esp32``.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"board profile {p} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"board profile {p} is not valid TOML: {exc}") from None
    cost_data = data.pop("cost", None)
    if not isinstance(cost_data, dict):
        raise UsageError(f"board profile {p}: field 'cost' is missing (a [cost] table)")
    _reject_unknown(p, data, {f.name for f in fields(Board)} - {"cost"}, "")
    _reject_unknown(p, cost_data, {f.name for f in fields(CostModel)}, "cost.")
    name = _text(p, data, "name") if "name" in data else p.stem
    board_kw = {"name": name, "title": _text(p, data, "title") if "title" in data else name,
                "source": _text(p, data, "source") if "source" in data else str(p)}
    for key in ("core", "radio", "os"):
        board_kw[key] = _text(p, data, key)
    for key in _REQUIRED_POSITIVE:
        board_kw[key] = _number(p, data, key, positive=True)
    for key in _REQUIRED_NONNEGATIVE:
        board_kw[key] = _number(p, data, key, positive=False)
    _choice(p, board_kw["os"], "os", OSES)
    board = Board(**board_kw, cost=_cost_from(p, cost_data))
    for what in ("flash", "ram"):
        if getattr(board, f"model_{what}_bytes") <= 0:
            raise UsageError(f"board profile {p}: field 'reserve_{what}_bytes' must be less than "
                             f"'{what}_bytes' (nothing is left for the model)")
    return board


def _cost_from(p: Path, data: dict) -> CostModel:
    kw: dict = {"kernels": _text(p, data, "kernels", "cost."),
                "link": _text(p, data, "link", "cost.")}
    _choice(p, kw["link"], "cost.link", LINKS)
    for key in _COST_POSITIVE:
        kw[key] = _number(p, data, key, positive=True, prefix="cost.")
    for key in _COST_NONNEGATIVE:
        kw[key] = _number(p, data, key, positive=False, prefix="cost.")
    if "host_speed_factor" in data:
        kw["host_speed_factor"] = _number(p, data, "host_speed_factor", positive=True, prefix="cost.")
    if "cycles_per_instruction" in data:
        kw["cycles_per_instruction"] = _number(p, data, "cycles_per_instruction", positive=True,
                                               prefix="cost.")
    if "emulated_cpu" in data:
        kw["emulated_cpu"] = _text(p, data, "emulated_cpu", "cost.")
        _choice(p, kw["emulated_cpu"], "cost.emulated_cpu", ("cortex-m4", "cortex-m7", "cortex-m55"))
    return CostModel(**kw)


def _reject_unknown(p: Path, data: dict, known: set[str], prefix: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"board profile {p}: unknown field '{prefix}{unknown[0]}'; expected "
                         f"{', '.join(sorted(known))}")


def _text(p: Path, data: dict, key: str, prefix: str = "") -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        what = "is missing" if value is None else f"must be a non-empty string, got {value!r}"
        raise UsageError(f"board profile {p}: field '{prefix}{key}' {what}")
    return value.strip()


def _number(p: Path, data: dict, key: str, *, positive: bool, prefix: str = "") -> float | int:
    name = f"{prefix}{key}"
    if key not in data:
        raise UsageError(f"board profile {p}: field '{name}' is missing")
    value = data[key]
    is_int = key in _INT_FIELDS
    ok_type = isinstance(value, int) if is_int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        kind = "an integer" if is_int else "a number"
        raise UsageError(f"board profile {p}: field '{name}' must be {kind}, got {value!r}")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise UsageError(f"board profile {p}: field '{name}' must be {bound}, got {value!r}")
    return int(value) if is_int else float(value)


def _choice(p: Path, value: str, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"board profile {p}: field '{name}' must be one of {', '.join(allowed)}, "
                         f"got {value!r}")


def board_toml(board: Board) -> str:
    """A board as a TOML profile: the template users edit (``nonn-tflite boards --toml NAME``)."""
    def line(key: str, value) -> str:
        return f"{key} = {json.dumps(value)}"  # JSON strings and numbers are valid TOML

    top = [line(f.name, getattr(board, f.name)) for f in fields(Board) if f.name != "cost"]
    out = ["# nonn-tflite board profile (estimates: replace figures with your measurements)", *top]
    if board.cost is not None:
        out += ["", "[cost]"] + [line(f.name, getattr(board.cost, f.name)) for f in fields(CostModel)
                                 if getattr(board.cost, f.name) is not None]
    return "\n".join(out) + "\n"


def get_board(name: str) -> Board:
    """A built-in board by name, or a user's board profile given as a path to a ``.toml`` file."""
    key = name.strip().lower()
    if key in BOARDS:
        return BOARDS[key]
    if Path(name.strip()).suffix.lower() == ".toml":
        return load_board_file(name.strip())
    raise UsageError(f"unknown board {name!r}; expected one of {', '.join(BOARDS)} "
                     "or a board profile file (.toml)")


@dataclass(frozen=True)
class DeviceBudget:
    """Bytes a student may use on one device: its flatbuffer and its tensor arena."""

    flash_bytes: int
    ram_bytes: int
    board: str | None = None

    def describe(self) -> str:
        where = f" ({self.board})" if self.board else ""
        return f"{self.flash_bytes / KB:.0f} KB flash / {self.ram_bytes / KB:.0f} KB RAM{where}"


DEFAULT_FLASH_KB = 64.0
DEFAULT_RAM_KB = 32.0


def device_budgets(students: int, flash_kb: float | None = None, ram_kb: float | None = None,
                   boards: list[str] | None = None) -> list[DeviceBudget]:
    """One budget per device: explicit KB figures win, then boards (one, or one per device)."""
    boards = [b for b in (boards or []) if b]
    if boards and len(boards) not in (1, students):
        raise UsageError(f"--board lists {len(boards)} boards for {students} students; give one "
                         f"board for all or exactly one per student")
    out = []
    for k in range(students):
        board = get_board(boards[k if len(boards) > 1 else 0]) if boards else None
        flash = flash_kb * KB if flash_kb else (board.model_flash_bytes if board else DEFAULT_FLASH_KB * KB)
        ram = ram_kb * KB if ram_kb else (board.model_ram_bytes if board else DEFAULT_RAM_KB * KB)
        if flash <= 0 or ram <= 0:
            raise BudgetError(f"budget for student {k} is not positive ({flash / KB:.0f} KB flash, "
                              f"{ram / KB:.0f} KB RAM)")
        out.append(DeviceBudget(int(flash), int(ram), board.name if board else None))
    return out
