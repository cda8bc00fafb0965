"""``boards``: the board catalogue."""

from __future__ import annotations

import json

import click

from nonn_tflite.commands.common import common_options


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON.")
@common_options
def boards(as_json):
    """List the built-in board profiles and the memory each leaves for a student.

    \b
    Example:
      nonn-tflite boards
      nonn-tflite distill runs/c10 --board esp32,nano33ble
    """
    from rich.console import Console
    from rich.table import Table

    from nonn_tflite.boards import BOARDS, KB

    if as_json:
        click.echo(json.dumps({n: b.as_dict() for n, b in BOARDS.items()}, indent=2))
        return
    table = Table(title="Board profiles", caption="model flash / arena = what runtime + app leave "
                  "(estimates); sources: --json")
    for col in ("board", "core", "MHz", "flash KB", "RAM KB", "model KB", "arena KB", "radio"):
        table.add_column(col, justify="right" if "KB" in col or col == "MHz" else "left")
    for b in BOARDS.values():
        table.add_row(b.name, b.core, str(b.clock_mhz), f"{b.flash_bytes / KB:,.0f}", f"{b.ram_bytes / KB:,.0f}",
                      f"{b.model_flash_bytes / KB:,.0f}", f"{b.model_ram_bytes / KB:,.0f}", b.radio)
    Console().print(table)
