"""Model bytes as a C array, the way TFLM examples ship models.

``alignas(16)``: TFLM reads flatbuffer tables in place, and the schema's 16-byte aligned
buffers are only aligned in memory if the array itself is. The size is a ``constexpr`` in the
header so callers can size things at compile time without seeing the array.
"""

from __future__ import annotations

import re
import zlib

from firmware_bridge.render import render
from nonn_tflite.errors import UsageError

BYTES_PER_LINE = 12
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def array_symbol(name: str) -> str:
    """``g_<name>_model_data``: the array's C name (TFLM convention)."""
    check_identifier(name)
    return f"g_{name}_model_data"


def check_identifier(name: str) -> None:
    if not _IDENTIFIER.match(name):
        raise UsageError(f"{name!r} is not a valid C identifier for a model array name")


def hex_lines(data: bytes, per_line: int = BYTES_PER_LINE) -> list[str]:
    """Rows of ``0x..,`` literals; precomputed here because a Jinja loop per byte is slow."""
    return [", ".join(f"0x{b:02x}" for b in data[i:i + per_line]) + ","
            for i in range(0, len(data), per_line)]


def crc32(data: bytes, crc: int = 0) -> int:
    """CRC-32 as zlib computes it (the same polynomial as nonn_crc32.c and the wire format);
    pass the previous result as ``crc`` to continue over several pieces."""
    return zlib.crc32(data, crc) & 0xFFFFFFFF


def to_c_array(name: str, data: bytes, *, source_note: str = "") -> tuple[str, str]:
    """Return (header, source) text defining ``g_<name>_model_data`` and its size/CRC."""
    if not data:
        raise UsageError(f"model {name!r} is empty")
    context = {
        "name": name,
        "symbol": array_symbol(name),
        "size": len(data),
        "crc32": crc32(data),
        "lines": hex_lines(data),
        "source_note": source_note,
    }
    return render("common/model_data.h.j2", **context), render("common/model_data.cc.j2", **context)
