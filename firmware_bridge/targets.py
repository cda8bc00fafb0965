"""Export targets: the board, its memory limits, pinned libraries and how to flash it.

Limits are what the generated firmware can give the model after its own runtime (WiFi, MQTT,
TFLM) is accounted for; they are stated in every README so a failed fit can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from nonn_tflite.errors import UsageError

# The TFLM commit exported Linux projects fetch (scripts/fetch_tflm.sh) and the tests build
# against: the one ../shared/tflm/VERSIONS pins.
TFLM_COMMIT = "90b983c2b3f1480642e040bbd2ddb37b998f3424"


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
        Library("tflite-micro", TFLM_COMMIT,
                "TensorFlow Lite Micro source tree (create_tflm_tree.py, reference kernels); "
                "the exported device is tested bit-exact with the Python tflite-micro wheel"),
        Library("libmosquitto", "2.0 (Debian/Raspberry Pi OS `libmosquitto-dev`)",
                "MQTT client"),
        Library("CMake", ">= 3.16", "build"),
    ),
    needs_wifi=False,
    default_broker="mqtt://localhost:1883",
)

CORTEX_M = Target(
    name="cortex-m",
    description="bare-metal Cortex-M4/M7/M55 (TFLM + CMSIS-NN, newlib-nano), runs under QEMU",
    board=Board(
        name="QEMU mps2-an386 (M4) / mps2-an500 (M7) / mps3-an547 (M55); see README.md for boards",
        arena_limit=448 * 1024,
        flash_limit=2 * 1024 * 1024,
        ram_note="static .bss arena in the data RAM (mps3-an547: 512 KiB DTCM, less stack and "
                 "newlib's buffers)",
        flash_note="the model array goes to code memory (mps3-an547: its 2 MiB SRAM)",
    ),
    libraries=(
        Library("tflite-micro", "90b983c2b3f1480642e040bbd2ddb37b998f3424",
                "TensorFlow Lite Micro (../shared/tflm/VERSIONS), CMSIS-NN 4ab83cc"),
        Library("arm-none-eabi-gcc", "12.2 (Debian gcc-arm-none-eabi)", "cross compiler"),
        Library("qemu-system-arm", "7.2 (Debian)", "emulator for `make run`"),
    ),
    needs_wifi=False,
    default_broker="mqtt://localhost:1883",  # unused: the Cortex-M projects have no network
)

TARGETS: dict[str, Target] = {t.name: t for t in (ESP32, LINUX, CORTEX_M)}


def get_target(name: str) -> Target:
    """The target called ``name``; a UsageError listing the valid names otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise UsageError(f"unknown target {name!r}; valid targets: "
                         f"{', '.join(TARGETS)}") from None
