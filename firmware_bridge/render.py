"""One Jinja2 environment over ``firmware_bridge/templates`` shared by every generator.

StrictUndefined turns a misspelt template variable into an error at export time instead of
an empty string inside C code that only fails on the user's compiler.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["c_string"] = c_string
    env.filters["c_float"] = c_float
    env.filters["hex32"] = lambda v: f"0x{int(v) & 0xFFFFFFFF:08X}u"
    env.filters["thousands"] = lambda v: f"{int(v):,}"
    return env


def render(template: str, **context: Any) -> str:
    """Render ``template`` (a path under templates/) with ``context``."""
    return environment().get_template(template).render(**context)


def c_string(value: str) -> str:
    """A C string literal for ``value`` (UTF-8, escaped), safe for any SSID or topic."""
    out = []
    for byte in str(value).encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= byte < 127 and ch != "?":  # '?' escaped: no trigraphs
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def c_float(value: float) -> str:
    """A float literal that round-trips the float32 value exactly (9 significant digits)."""
    text = f"{float(value):.9g}"
    if "e" not in text and "." not in text and "inf" not in text and "nan" not in text:
        text += ".0"
    return text + "f"
