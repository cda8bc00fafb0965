"""`dashboard` and `report`: the browser views, a live page and a self-contained HTML report."""

from __future__ import annotations

import time
from pathlib import Path

import click

from nonn_tflite.commands.common import common_options, guard_interrupts, is_quiet
from nonn_tflite.commands.live import CREDENTIALS_OPTION, _broker, broker_option, tls_options


def _say(text: str) -> None:
    if not is_quiet():
        click.echo(text)


@click.command()
@click.argument("run", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--deployment", "name", metavar="NAME",
              help="Watch deployment NAME without its run directory (classes are then "
                   "numbered and devices learned from the traffic).")
@broker_option("mqtt://127.0.0.1:1883")
@tls_options
@click.option("--host", default="127.0.0.1", show_default=True, metavar="ADDR",
              help="Address to serve the page on (0.0.0.0 exposes it to the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port of the page (0 picks a free one).")
@click.option("--duration", type=click.FloatRange(min=0), metavar="S",
              help="Stop after S seconds (default: until Ctrl-C).")
@CREDENTIALS_OPTION
@common_options
def dashboard(run: Path | None, name: str | None, broker_url: str, cafile, certfile, keyfile,
              insecure, protocol, host: str, port: int, duration: float | None,
              credentials: str | None) -> None:
    """Serve a live dashboard page for a deployment whose nodes run anywhere.

    The page learns everything from the broker: the image of each frame, the top-3 prediction,
    every device's status, inference time and bytes per frame, the fusion's partial frames,
    and the source's ground truth, running accuracy and latency (from stats/source). On a
    broker from `nonn-tflite broker-config`, connect as its read-only dashboard user.

    \b
    Examples:
      nonn-tflite dashboard runs/c10 --broker mqtt://gw.local:1883
      nonn-tflite dashboard --deployment digits-k2 --broker mqtt://127.0.0.1:1883 --port 9000
      nonn-tflite dashboard runs/c10 --credentials cfg/nodes/dashboard/credentials.json
    """
    from nonn_tflite.web.app import WebDashboard

    info = _deployment_info(run, name)
    broker = _broker(broker_url, cafile, certfile, keyfile, insecure, protocol, credentials)
    page = WebDashboard(info, host, port).start()
    try:
        page.connect(broker)
        _say(f"dashboard of {info.name} from {broker.url}: {page.banner}; Ctrl-C stops it")
        _serve(duration)
    finally:
        page.stop()
    _say("dashboard stopped")


def _deployment_info(run: Path | None, name: str | None):
    """From RUN (classes, image shape, devices) or only --deployment NAME; exactly one."""
    from nonn_tflite.errors import UsageError
    from nonn_tflite.web.state import DeploymentInfo

    if (run is None) == (name is None):
        raise UsageError("give a RUN directory or --deployment NAME (one of them)")
    if run is not None:
        from nonn_tflite.deployment import load_deployment

        return DeploymentInfo.from_deployment(load_deployment(run))
    try:
        return DeploymentInfo.from_name(name)
    except ValueError as exc:
        raise UsageError(f"--deployment: {exc}") from None


def _serve(duration: float | None) -> None:
    """Until Ctrl-C/SIGTERM (a normal way to stop a server: exit 0) or ``duration``."""
    guard_interrupts("dashboard")
    end = None if duration is None else time.monotonic() + duration
    try:
        while end is None or time.monotonic() < end:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--html", "as_html", is_flag=True,
              help="Write one self-contained HTML page (pictures embedded; works offline).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the HTML goes  [default: RUN/report.html].")
@common_options
def report(run: Path, as_html: bool, out: Path | None) -> None:
    """Show a run's conversion report; with --html, write it as one page for a browser.

    The page holds the partition picture, the report's tables (tflite/report.json, or the
    manifest's metrics before `convert`) and its plots, all embedded: no internet needed.

    \b
    Examples:
      nonn-tflite report runs/digits-k2
      nonn-tflite report runs/digits-k2 --html --out /tmp/digits.html
    """
    if not as_html:
        if out is not None:
            from nonn_tflite.errors import UsageError

            raise UsageError("--out is an option of --html")
        from nonn_tflite.report import load_report, print_report
        from nonn_tflite.web.html_report import check_run

        print_report(load_report(check_run(run)))
        return
    from nonn_tflite.web.html_report import write_html_report

    path = write_html_report(run, out)
    click.echo(f"wrote {path}")
