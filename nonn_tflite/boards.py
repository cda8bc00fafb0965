"""Board profiles and per-device memory budgets.

A student must fit what its board leaves *after* the firmware: the TFLite Micro runtime, the
network stack (Wi-Fi/BLE + MQTT) and the application. ``model_flash_bytes`` and
``model_ram_bytes`` are that remainder, i.e. the budget for the model's flatbuffer and its
tensor arena. Figures are from the vendors' datasheets; the reserves are our estimates of a
typical Arduino/TFLM + MQTT build and are labelled as such.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from nonn_tflite.errors import BudgetError, UsageError

KB = 1024


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


BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board("esp32", "ESP32-WROOM-32 (Arduino, default 1.25 MB app partition)",
              flash_bytes=1_310_720, ram_bytes=320 * KB,  # app partition; DRAM heap usable
              reserve_flash_bytes=800 * KB, reserve_ram_bytes=120 * KB,
              clock_mhz=240, core="Xtensa LX6 (dual)", radio="wifi,ble", os="none",
              source="Espressif ESP32 datasheet v4.x; arduino-esp32 default partitions.csv"),
        Board("nano33ble", "Arduino Nano 33 BLE (nRF52840)",
              flash_bytes=1024 * KB, ram_bytes=256 * KB,
              reserve_flash_bytes=300 * KB, reserve_ram_bytes=96 * KB,
              clock_mhz=64, core="Cortex-M4F", radio="ble", os="none",
              source="Nordic nRF52840 product specification v1.7"),
        Board("rp2040", "Raspberry Pi Pico W (RP2040)",
              flash_bytes=2048 * KB, ram_bytes=264 * KB,
              reserve_flash_bytes=600 * KB, reserve_ram_bytes=96 * KB,
              clock_mhz=133, core="Cortex-M0+ (dual)", radio="wifi", os="none",
              source="Raspberry Pi RP2040 datasheet; Pico W datasheet"),
        Board("stm32f746", "STM32F746G-DISCO",
              flash_bytes=1024 * KB, ram_bytes=320 * KB,
              reserve_flash_bytes=200 * KB, reserve_ram_bytes=64 * KB,
              clock_mhz=216, core="Cortex-M7", radio="ethernet", os="none",
              source="ST STM32F746xx datasheet DS10916"),
        Board("rpi-zero-2", "Raspberry Pi Zero 2 W (Linux, LiteRT)",
              flash_bytes=8192 * 1024 * KB, ram_bytes=512 * 1024 * KB,
              reserve_flash_bytes=4096 * 1024 * KB, reserve_ram_bytes=256 * 1024 * KB,
              clock_mhz=1000, core="Cortex-A53 (quad)", radio="wifi,ble", os="linux",
              source="Raspberry Pi Zero 2 W product brief"),
    )
}


def get_board(name: str) -> Board:
    """A built-in board by name."""
    key = name.strip().lower()
    if key in BOARDS:
        return BOARDS[key]
    if Path(name).suffix == ".toml":
        raise UsageError(f"board profile files ({name}) are not supported yet; use one of "
                         f"{', '.join(BOARDS)}")
    raise UsageError(f"unknown board {name!r}; expected one of {', '.join(BOARDS)}")


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
