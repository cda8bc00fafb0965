"""Export targets: the board, its memory limits, pinned libraries and how to flash it.

Limits are what the generated firmware can give the model after its own runtime (WiFi, MQTT,
TFLM) is accounted for; they are stated in every README so a failed fit can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from nonn_tflite.errors import UsageError


@dataclass(frozen=True)
class Library:
    name: str  # as the build system names it
    version: str  # exact pin
    role: str


@dataclass(frozen=True)
class Board:
    """Memory the generated firmware leaves for one model."""

    name: str
    arena_limit: int  # bytes of static RAM for the tensor arena
    flash_limit: int  # bytes of flash for the model array
    ram_note: str
    flash_note: str


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    board: Board
    libraries: tuple[Library, ...]
    needs_wifi: bool
    default_broker: str | None
    mqtt_packet_limit: int | None = None  # largest packet the MQTT client can buffer


ESP32 = Target(
    name="esp32-platformio",
    description="ESP32 (Arduino framework) built with PlatformIO; WiFi + MQTT",
    board=Board(
        name="ESP32-WROOM-32 / ESP32 DevKitC (PlatformIO board `esp32dev`, 520 KiB SRAM, "
             "4 MiB flash)",
        arena_limit=128 * 1024,
        flash_limit=2 * 1024 * 1024,
        ram_note="static .bss tensor arena; the ESP32 keeps about 160 KiB for static data and "
                 "WiFi + MQTT need the rest as heap, so the arena may use at most 128 KiB",
        flash_note="`huge_app.csv` partition (3 MiB app); about 1 MiB of it is Arduino, WiFi, "
                   "MQTT and TFLM, leaving 2 MiB for the model array",
    ),
    libraries=(
        Library("platformio/espressif32", "6.5.0", "ESP32 platform (Arduino-ESP32 2.0.14)"),
        Library("tanakamasayuki/TensorFlowLite_ESP32", "1.0.0",
                "TensorFlow Lite Micro for ESP32 (Arduino), built from espressif/esp-tflite-micro"),
        Library("knolleary/PubSubClient", "2.8", "MQTT 3.1.1 client"),
    ),
    needs_wifi=True,
    default_broker=None,
    mqtt_packet_limit=65_535,  # PubSubClient::setBufferSize(uint16_t)
)

LINUX = Target(
    name="linux",
    description="Linux SBC (Raspberry Pi class), C++17 + CMake, TFLM and libmosquitto",
    board=Board(
        name="Raspberry Pi 3B+/4/5 or any Linux SBC (arm64, armhf or x86-64)",
        arena_limit=256 * 1024 * 1024,
        flash_limit=512 * 1024 * 1024,
        ram_note="static arena in the process image; 256 MiB is a sanity bound, not a board limit",
        flash_note="the model array is linked into the executable",
    ),
    libraries=(
        Library("tflite-micro", "8f6596d",
                "TensorFlow Lite Micro, the commit of the tflite-micro Python wheel "
                "(0.dev20261023182759) the export was verified with"),
        Library("libmosquitto", "2.0 (Debian/Raspberry Pi OS `libmosquitto-dev`)",
                "MQTT client"),
        Library("CMake", ">= 3.16", "build"),
    ),
    needs_wifi=False,
    default_broker="mqtt://localhost:1883",
)

TARGETS: dict[str, Target] = {t.name: t for t in (ESP32, LINUX)}


def get_target(name: str) -> Target:
    """The target called ``name``; a UsageError listing the valid names otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise UsageError(f"unknown target {name!r}; valid targets: "
                         f"{', '.join(TARGETS)}") from None
