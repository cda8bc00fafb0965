"""``boards``: the board catalogue, a user's TOML profile, and the cost model's calibration."""

from __future__ import annotations

import json

import click

from nonn_tflite.commands.common import common_options


@click.command()
@click.argument("board", required=False, metavar="[NAME|FILE.toml]")
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON (every figure).")
@click.option("--toml", "as_toml", is_flag=True,
              help="Print BOARD as a TOML profile: a template for your own board.")
@click.option("--calibration", is_flag=True,
              help="Compare the per-MAC latency model with published MLPerf Tiny results.")
@common_options
def boards(board: str | None, as_json: bool, as_toml: bool, calibration: bool) -> None:
    """List the board profiles: memory left for a student, clock, radio, cost model, source.

    BOARD shows one built-in board or checks a profile file of your own (TOML; every field is
    validated). Latency and energy figures derived from these profiles are estimates.

    \b
    Examples:
      nonn-tflite boards
      nonn-tflite boards esp32 --toml > myboard.toml   # edit, then:
      nonn-tflite boards myboard.toml
      nonn-tflite distill runs/c10 --board myboard.toml
      nonn-tflite boards --calibration
    """
    from nonn_tflite.boards import BOARDS, board_toml, get_board
    from nonn_tflite.errors import UsageError

    if as_toml and board is None:
        raise UsageError("--toml needs a BOARD, e.g. `nonn-tflite boards esp32 --toml`")
    chosen = {b.name: b for b in [get_board(board)]} if board else BOARDS
    if calibration:
        _print_calibration(as_json)
    elif as_toml:
        click.echo(board_toml(next(iter(chosen.values()))), nl=False)
    elif as_json:
        click.echo(json.dumps({n: b.as_dict() for n, b in chosen.items()}, indent=2))
    else:
        _print_table(chosen)


def _print_table(chosen: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from nonn_tflite.boards import KB

    table = Table(title="Board profiles",
                  caption="model / arena KB: what runtime + network stack + app leave for the "
                          "student (estimates). cycles/MAC, mW and radio figures feed latency and "
                          "energy ESTIMATES; every figure and its source: --json and nonn_tflite/boards.py")
    for col in ("board", "core", "MHz", "flash KB", "RAM KB", "model KB", "arena KB",
                "radio (payload link)", "kernels, cycles/MAC", "active mW"):
        numeric = "KB" in col or col in ("MHz", "active mW")
        table.add_column(col, justify="right" if numeric else "left")
    for b in chosen.values():
        c = b.cost
        radio = b.radio if c is None or c.link == b.radio else f"{b.radio} ({c.link})"
        table.add_row(b.name, b.core, str(b.clock_mhz), f"{b.flash_bytes / KB:,.0f}",
                      f"{b.ram_bytes / KB:,.0f}", f"{b.model_flash_bytes / KB:,.0f}",
                      f"{b.model_ram_bytes / KB:,.0f}", radio,
                      f"{c.kernels}, {c.cycles_per_mac:g}" if c else "-",
                      f"{c.active_mw:g}" if c else "-")
    con = Console()
    if not con.is_terminal:  # piped or captured: keep rows readable
        con.width = max(con.width, 140)
    con.print(table)
    for b in chosen.values():
        con.print(f"[bold]{b.name}[/]: {b.title}. Sources: {b.source}", highlight=False)


def _print_calibration(as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from nonn_tflite.energy import CALIBRATION_FACTOR, RESNET8_MACS, calibration

    rows = calibration()
    if as_json:
        click.echo(json.dumps({"macs": RESNET8_MACS, "factor_bound": CALIBRATION_FACTOR,
                               "rows": rows}, indent=2))
        return
    table = Table(title=f"Per-MAC model vs MLPerf Tiny image classification (ResNet-8, "
                        f"{RESNET8_MACS:,} MACs)",
                  caption=f"estimate / published; the model is checked to stay within "
                          f"{CALIBRATION_FACTOR}x of each (tests/test_boards_energy.py)")
    for col in ("MLPerf", "submitter", "software", "published ms", "estimate ms", "factor",
                "published mJ", "estimate mJ"):
        table.add_column(col, justify="right" if ("ms" in col or "mJ" in col or col == "factor") else "left")
    for r in rows:
        p = r["published"]
        table.add_row(p["version"], p["submitter"], p["software"], f"{r['published_latency_ms']:.1f}",
                      f"{r['estimate_latency_ms']:.1f}", f"{r['latency_factor']:.2f}",
                      f"{p['energy_uj'] / 1e3:.1f}", f"{r['estimate_energy_uj'] / 1e3:.1f}")
    con = Console()
    if not con.is_terminal:
        con.width = max(con.width, 140)
    con.print(table)
