"""``nonn-tflite export``: a converted run -> one firmware project per board."""

from __future__ import annotations

from pathlib import Path

import click

from nonn_tflite.commands.common import common_options, is_quiet

TARGET_NAMES = ("esp32-platformio", "linux", "cortex-m")  # firmware_bridge.targets.TARGETS, without importing


@click.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("-t", "--target", required=True, metavar="|".join(TARGET_NAMES),
              help="Board family: " + ", ".join(TARGET_NAMES) + ".")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the projects (device_<k>/, fusion/, README.md).")
@click.option("--wifi-ssid", help="WiFi network the boards join (ESP32). The password is read "
                                  "from $NONN_WIFI_PASSWORD at build time, never stored.")
@click.option("--broker", help="MQTT broker as mqtt://host[:port] (default port 1883).")
@click.option("--fusion-timeout-ms", type=click.IntRange(1, 60_000), default=500,
              show_default=True, help="C fusion node: fuse a frame with missing students after "
                                      "this long.")
@click.option("--cpu", type=click.Choice(["cortex-m4", "cortex-m7", "cortex-m55"]),
              default="cortex-m4", show_default=True,
              help="cortex-m target: the core (QEMU mps2-an386, mps2-an500, mps3-an547).")
@click.option("--kernels", type=click.Choice(["cmsis-nn", "reference"]), default="cmsis-nn",
              show_default=True, help="cortex-m target: TFLM kernels (CMSIS-NN or reference).")
@click.option("--force", is_flag=True, help="Replace a previous export in --out.")
@common_options
def export(run_dir: Path, target: str, out: Path, wifi_ssid: str | None, broker: str | None,
           fusion_timeout_ms: int, cpu: str, kernels: str, force: bool) -> None:
    """Generate flashable firmware for a converted run: one project per student device plus
    the fusion node, and a README saying which board gets which project.

    \b
    Example:
      nonn-tflite export runs/c10 --target esp32-platformio --out fw/ \\
          --wifi-ssid lab --broker mqtt://192.0.2.10:1883
      cd fw/device_0 && pio run -t upload     # board plugged in
      nonn-tflite export runs/c10 --target cortex-m --cpu cortex-m55 --out fw-m55/
      make -C fw-m55/device_0 run             # runs under qemu-system-arm
    """
    from firmware_bridge import export_project

    result = export_project(run_dir, target, out, wifi_ssid=wifi_ssid, broker=broker,
                            force=force, fusion_timeout_ms=fusion_timeout_ms, cpu=cpu,
                            kernels=kernels)
    if is_quiet():
        click.echo(str(result.out))
        return
    click.echo(f"{result.target} firmware for deployment {result.deployment!r} "
               f"(id 0x{result.deployment_id:08X}, broker {result.broker}) in {result.out}/")
    for p in result.projects:
        if p.role == "device":
            click.echo(f"  {p.name}/  student {p.student}: arena {p.arena_bytes:,} B "
                       f"({p.arena_measured:,} measured), model {p.flash_bytes:,} B, "
                       f"ops {', '.join(p.ops)} -> {p.publishes[0]}")
        else:
            click.echo(f"  {p.name}/    C fusion: {p.flash_bytes:,} B of weights -> "
                       f"{p.publishes[0]}")
    click.echo(f"Next: read {result.readme}")
