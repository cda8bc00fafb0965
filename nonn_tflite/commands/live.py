"""`demo`, `device`, `fusion`, `source`: the live distributed system from the command line.

These commands import no TensorFlow or Keras (only LiteRT, numpy, paho-mqtt, click, rich), so
a Raspberry Pi needs nothing more than the base install.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from nonn_tflite.commands.common import common_options, guard_interrupts, is_quiet

F = Callable[..., Any]
PROTOCOL_CHOICE = click.Choice(["auto", "5", "3.1.1"])
FILE = click.Path(exists=True, dir_okay=False)


def tls_options(func: F) -> F:
    """TLS and protocol flags shared by every live command."""
    for decorator in reversed([
        click.option("--cafile", type=FILE, help="CA certificate(s) to verify the broker (PEM)."),
        click.option("--certfile", type=FILE, help="Client certificate for mutual TLS (PEM)."),
        click.option("--keyfile", type=FILE, help="Private key of --certfile (PEM)."),
        click.option("--insecure", is_flag=True,
                     help="TLS without checking the broker's certificate (lab use only)."),
        click.option("--protocol", type=PROTOCOL_CHOICE, default="auto", show_default=True,
                     help="MQTT version; auto tries 5 and falls back to 3.1.1."),
    ]):
        func = decorator(func)
    return func


def broker_option(default: str | None) -> F:
    return click.option(
        "--broker", "broker_url", default=default, envvar="NONN_BROKER", show_default=True,
        metavar="URL", help="mqtt://[user[:password]@]host[:port] or mqtts://... "
        "(env NONN_BROKER)." + ("" if default else " Default: an embedded broker on 127.0.0.1."))


CREDENTIALS_OPTION = click.option(
    "--credentials", type=FILE, metavar="FILE",
    help="This node's credentials.json from `nonn-tflite broker-config` (user, password or "
         "client certificate; its broker URL unless --broker is given).")


WINDOW_OPTION = click.option(
    "--window", type=click.IntRange(min=1), metavar="N",
    help="Frames the source's scoreboard remembers for scoring  [default: 4,096]: bounded "
         "memory on long runs; its counts and accuracy cover the whole run.")


def _window(window: int | None) -> dict:
    """SourceConfig/DemoConfig keyword for --window (their own default when not given)."""
    return {} if window is None else {"window": window}


def _broker(url: str, cafile, certfile, keyfile, insecure: bool, protocol: str,
            credentials: str | None = None):
    from nonn_tflite.live.mqtt import BrokerConfig

    if credentials:
        from nonn_tflite.live.secure import load_credentials

        ctx = click.get_current_context(silent=True)
        given = ctx is not None and ctx.get_parameter_source("broker_url") not in (
            None, click.core.ParameterSource.DEFAULT)
        config = load_credentials(credentials).broker_config(
            url if given else None, protocol=protocol, cafile=cafile, certfile=certfile,
            keyfile=keyfile)
        return dataclasses.replace(config, insecure=True) if insecure else config
    return BrokerConfig.from_url(url, cafile=cafile, certfile=certfile, keyfile=keyfile,
                                 insecure=insecure, protocol=protocol)


def _say(text: str) -> None:
    if not is_quiet():
        click.echo(text)


def _write_json(path: Path, data: dict) -> None:
    """Atomic: a reader never sees half a summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


RUN_ARG = click.argument("run", type=click.Path(exists=True, path_type=Path))


# ---- device ---------------------------------------------------------------------------------

@click.command()
@RUN_ARG
@click.option("--student", "-s", type=int, required=True, help="Which student this device runs.")
@broker_option("mqtt://127.0.0.1:1883")
@tls_options
@click.option("--queue", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="Images waiting for the model; when full the oldest is dropped (counted).")
@click.option("--xnnpack", is_flag=True,
              help="Use LiteRT's XNNPACK (faster; may differ from TFLite Micro by 1 LSB).")
@click.option("--client-id", help="MQTT client id (default: nonn-device-<k>-<random>).")
@click.option("--duration", type=float, metavar="S", help="Stop after S seconds.")
@CREDENTIALS_OPTION
@common_options
def device(run: Path, student: int, broker_url: str, cafile, certfile, keyfile, insecure,
           protocol, queue: int, xnnpack: bool, client_id, duration, credentials) -> None:
    """Run one student of a deployment as a device node, say on a Raspberry Pi.

    Receives image frames, runs the int8 student under LiteRT and publishes its pooled feature
    vector. Reconnects with backoff if the broker goes away.

    \b
    Example:
      nonn-tflite device runs/c10 --student 0 \\
          --broker mqtts://user:pw@gw.local:8883 --cafile ca.pem
      nonn-tflite device runs/c10 --student 0 \\
          --credentials broker/nodes/device-0/credentials.json
    """
    from nonn_tflite.live.device import DeviceConfig, DeviceNode
    from nonn_tflite.deployment import load_deployment
    from nonn_tflite.live.runtime import serve
    from nonn_tflite.wire import HEADER_SIZE

    dep = load_deployment(run)
    cfg = DeviceConfig(student=student, queue=queue, xnnpack=xnnpack, client_id=client_id)
    node = DeviceNode(dep, _broker(broker_url, cafile, certfile, keyfile, insecure, protocol,
                                   credentials), cfg)
    spec = dep.student(student)
    _say(f"{cfg.node} of {dep.name}: {spec.file}, {spec.width} values -> "
         f"{HEADER_SIZE + spec.width} B/frame, broker {node.conn.broker.url}")
    reason = serve(node, duration)
    s = node.stats()
    _say(f"{cfg.node} stopped ({reason}): {s['inferences']} inferences, {s['bytes_sent']} B "
         f"sent, p50 {s['infer_ms_p50'] or 0:.2f} ms, dropped {s['queue_dropped']}, "
         f"rejected {sum(s['rejected'].values())}")


# ---- fusion ---------------------------------------------------------------------------------

@click.command()
@RUN_ARG
@broker_option("mqtt://127.0.0.1:1883")
@tls_options
@click.option("--group", help="Share the load with other workers of this group "
              "(MQTT shared subscription $share/<group>/...).")
@click.option("--name", default="fusion", show_default=True,
              help="Node name in status/stats topics (unique per worker).")
@click.option("--deadline-ms", type=click.FloatRange(min=1), metavar="MS",
              help="Fuse a partial frame this long after its first vector "
                   "(default: adapts to the observed device spread).")
@click.option("--queue", type=click.IntRange(1, 65536), default=1024, show_default=True,
              help="Received messages waiting for the fusion thread (drop-oldest).")
@click.option("--xnnpack", is_flag=True, help="Use LiteRT's XNNPACK delegate.")
@click.option("--client-id", help="MQTT client id (default: nonn-<name>-<random>).")
@click.option("--duration", type=float, metavar="S", help="Stop after S seconds.")
@CREDENTIALS_OPTION
@common_options
def fusion(run: Path, broker_url: str, cafile, certfile, keyfile, insecure, protocol, group,
           name: str, deadline_ms, queue: int, xnnpack: bool, client_id, duration,
           credentials) -> None:
    """Run the fusion node on the gateway: K feature vectors in, predictions out.

    Missing students are zero-filled at the deadline; duplicates, late and out-of-order vectors
    are dropped and counted.

    \b
    Example:
      nonn-tflite fusion runs/c10 --broker mqtt://gw.local:1883
      nonn-tflite fusion runs/c10 --broker mqtt://gw.local:1883 --group g --name fusion-1
    """
    from nonn_tflite.live.fusion import FusionConfig, FusionNode
    from nonn_tflite.deployment import load_deployment
    from nonn_tflite.live.runtime import serve

    dep = load_deployment(run)
    cfg = FusionConfig(deadline_ms=deadline_ms, group=group, queue=queue, xnnpack=xnnpack,
                       client_id=client_id, node=name)
    node = FusionNode(dep, _broker(broker_url, cafile, certfile, keyfile, insecure, protocol,
                                   credentials), cfg)
    _say(f"{name} of {dep.name}: {len(dep.students)} students -> {dep.num_classes} classes, "
         f"broker {node.conn.broker.url}{f', group {group}' if group else ''}")
    reason = serve(node, duration)
    s = node.stats()
    _say(f"{name} stopped ({reason}): predicted {s['predicted']} (complete {s['complete']}, "
         f"partial {s['partial']}), late {s['late']}, duplicate {s['duplicate']}, "
         f"rejected {sum(s['rejected'].values())}")


# ---- source ---------------------------------------------------------------------------------

@click.command()
@RUN_ARG
@broker_option("mqtt://127.0.0.1:1883")
@tls_options
@click.option("--rate", type=click.FloatRange(min=0.01), default=20.0, show_default=True,
              help="Frames per second.")
@click.option("--frames", type=click.IntRange(min=1),
              help="Frames to send (default: every image once; more cycles through them).")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of images instead of the run's test sample "
                   "(a parent folder named like a class gives the label).")
@click.option("--npz", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An .npz with x (uint8 NHWC) and y (int) instead of the test sample.")
@click.option("--drain", type=float, default=3.0, show_default=True, metavar="S",
              help="Wait this long after the last frame for its prediction.")
@click.option("--summary", type=click.Path(dir_okay=False, path_type=Path),
              help="Write accuracy and latency as JSON.")
@click.option("--client-id", help="MQTT client id.")
@CREDENTIALS_OPTION
@WINDOW_OPTION
@common_options
def source(run: Path, broker_url: str, cafile, certfile, keyfile, insecure, protocol,
           rate: float, frames, images, npz, drain: float, summary, client_id,
           credentials, window: int | None) -> None:
    """Act as the camera: publish test images at a fixed rate and score the predictions.

    Images come from RUN/tflite/test_sample.npz unless --images or --npz is given; labels stay
    here and are used only to score.

    \b
    Example:
      nonn-tflite source runs/c10 --broker mqtt://gw.local:1883 --rate 20
    """
    from nonn_tflite.deployment import load_deployment
    from nonn_tflite.live.source import SourceConfig, SourceNode, load_images

    dep = load_deployment(run)
    data = load_images(dep, run, images, npz)
    broker = _broker(broker_url, cafile, certfile, keyfile, insecure, protocol, credentials)
    node = SourceNode(dep, broker, data, SourceConfig(rate=rate, frames=frames, drain_s=drain,
                                                      client_id=client_id, **_window(window)))
    node.start()
    from nonn_tflite.web.source_stats import SourceStats  # stats/source, for dashboards

    score_stats = SourceStats(node).start()
    _say(f"source: {node.total} frames from {data.origin} at {rate:g}/s to {node.conn.broker.url}")
    last = [0.0]

    def progress(n: int) -> None:
        if time.monotonic() - last[0] >= 1.0 and not is_quiet():
            last[0] = time.monotonic()
            acc = node.score.accuracy
            click.echo(f"  sent {n}/{node.total} predicted {node.score.answered} "
                       f"acc {'-' if acc is None else f'{acc:.3f}'}")

    guard_interrupts("source")
    try:
        score = node.run(progress)
    finally:
        score_stats.stop()  # the final figures, before the source disconnects
        node.stop()
    result = {"frames": score.frames, "predicted": score.answered, "expired": score.expired,
              "accuracy": score.accuracy, "duplicates": score.duplicates,
              "rejected": node.decoder.rejected,
              "latency_ms": {"p50": score.latency_ms.p(50), "p99": score.latency_ms.p(99)}}
    if summary:
        _write_json(summary, result)
    acc = result["accuracy"]
    click.echo(f"frames {result['frames']} predicted {result['predicted']} accuracy "
               f"{'-' if acc is None else f'{acc:.4f}'} latency p50 "
               f"{result['latency_ms']['p50'] or 0:.1f} ms p99 "
               f"{result['latency_ms']['p99'] or 0:.1f} ms")


# ---- broker-config --------------------------------------------------------------------------

@click.command("broker-config")
@RUN_ARG
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write (mosquitto.conf, acl, passwd or tls/, nodes/<user>/).")
@click.option("--tls", is_flag=True, help="A CA and one client certificate per node; the "
              "certificate's CN is the user (no passwords). Needs the openssl command.")
@click.option("--host", default="127.0.0.1", show_default=True, metavar="HOST",
              help="Where nodes reach the broker (their URL and the server certificate).")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Listener port  [default: 1883, 8883 with --tls].")
@click.option("--bind", metavar="ADDR", help="Listener address  [default: HOST if it is an "
              "IP address, else every address].")
@click.option("--name", "names", multiple=True, metavar="NAME",
              help="Another DNS name or IP of the broker for its certificate (repeatable).")
@click.option("--fusion-workers", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Fusion workers fusion-0..N-1 that share the fusion user.")
@click.option("--days", type=click.IntRange(1, 36500), default=365, show_default=True,
              help="Validity of the certificates.")
@click.option("--force", is_flag=True, help="Replace an existing --out (new secrets for all).")
@common_options
def broker_config(run: Path, out: Path, tls: bool, host: str, port, bind, names,
                  fusion_workers: int, days: int, force: bool) -> None:
    """Write a mosquitto configuration giving every node its own identity and topics.

    One user per device, one for the fusion node, the source and a read-only dashboard; an ACL
    under which a device may publish only its own feature, status and stats topics, only the
    fusion may publish predictions and only the source images. Each node gets
    nodes/<user>/credentials.json (0600) for --credentials. Passwords are never printed.

    \b
    Example:
      nonn-tflite broker-config runs/c10 --out broker --tls --host gw.local
      mosquitto -c broker/mosquitto.conf
      nonn-tflite device runs/c10 --student 0 \\
          --credentials broker/nodes/device-0/credentials.json
    """
    from nonn_tflite.deployment import load_deployment
    from nonn_tflite.live.secure import SecureConfig, write_broker_config

    dep = load_deployment(run)
    setup = write_broker_config(dep, out, SecureConfig(
        host=host, port=port, bind=bind, tls=tls, names=tuple(names),
        fusion_workers=fusion_workers, days=days), force=force)
    how = ("client certificates (CN = user), CA in tls/" if tls
           else f"passwords ({setup.hashed_by}, PBKDF2-SHA512)")
    _say(f"broker for {dep.name} at {setup.config.url}: users {', '.join(setup.users)}; "
         f"{how}; ACL {setup.acl}")
    _say(f"start it:  mosquitto -c {setup.conf}")
    _say(f"each node: --credentials {setup.folder}/nodes/<user>/credentials.json")


# ---- demo -----------------------------------------------------------------------------------

@click.command()
@RUN_ARG
@broker_option(None)
@tls_options
@click.option("--rate", type=click.FloatRange(min=0.01), default=20.0, show_default=True,
              help="Frames per second.")
@click.option("--frames", type=click.IntRange(min=1),
              help="Frames to send (default: every test image once).")
@click.option("--kill-device", "kills", multiple=True, metavar="I@T",
              help="Kill device I at time T (e.g. 1@10s, 0@500ms) to show graceful "
                   "degradation; repeatable.")
@click.option("--summary", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the summary as JSON.")
@click.option("--no-dashboard", is_flag=True, help="Plain progress lines instead of the live "
              "dashboard (automatic when stdout is not a terminal).")
@click.option("--deadline-ms", type=click.FloatRange(min=1), metavar="MS",
              help="Fusion deadline for partial frames (default: adaptive).")
@click.option("--fusion-workers", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Fusion processes sharing the load (needs a broker with shared "
                   "subscriptions, e.g. mosquitto; not the embedded one).")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of images instead of the run's test sample.")
@click.option("--npz", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An .npz with x (uint8 NHWC) and y (int) instead of the test sample.")
@click.option("--xnnpack", is_flag=True, help="Use LiteRT's XNNPACK delegate everywhere.")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the node processes write their logs (default: a temp folder).")
@click.option("--secure", is_flag=True, help="Start mosquitto with `broker-config --tls` "
              "(written to the log folder): every node connects with its own client "
              "certificate and may publish only its own topics.")
# ---- web dashboard options (nonn_tflite/web) ----
@click.option("--web", is_flag=True, help="Also serve a live dashboard page in the browser.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port of the --web page  [default: 8080; 0 picks a free one].")
@click.option("--host", default=None, metavar="ADDR",
              help="Address of the --web page  [default: 127.0.0.1; 0.0.0.0 exposes it].")
# ---- end of web dashboard options ----
@WINDOW_OPTION
@common_options
def demo(run: Path, broker_url, cafile, certfile, keyfile, insecure, protocol, rate: float,
         frames, kills, summary, no_dashboard: bool, deadline_ms, fusion_workers: int, images,
         npz, xnnpack: bool, log_dir, secure: bool, web: bool, port, host,
         window: int | None) -> None:
    """Run the whole system locally: broker, K devices, fusion, source and a live dashboard.

    Every device and fusion worker is its own process. Ends with a summary table comparing the
    accuracy over MQTT with the offline int8 accuracy on the same frames.

    \b
    Examples:
      nonn-tflite demo runs/digits-k2
      nonn-tflite demo runs/c10 --broker mqtt://127.0.0.1:1883 --rate 50 --frames 2000 \\
          --kill-device 1@10s --summary out.json
      nonn-tflite demo runs/digits-k2 --web --port 8080   # open http://127.0.0.1:8080/
      nonn-tflite demo runs/digits-k2 --secure   # mosquitto, per-node certificates + ACL
    """
    from nonn_tflite.live.demo import Demo, DemoConfig, parse_kill

    from nonn_tflite.errors import UsageError

    if secure and (broker_url or cafile or certfile or keyfile or insecure):
        raise UsageError("--secure starts its own mosquitto with per-node certificates; drop "
                         "--broker/--cafile/--certfile/--keyfile/--insecure")
    broker = (_broker(broker_url, cafile, certfile, keyfile, insecure, protocol)
              if broker_url else None)
    if broker is None and not secure and fusion_workers > 1:
        raise UsageError("--fusion-workers > 1 needs --broker with shared subscriptions "
                         "or --secure (the embedded amqtt broker has none)")
    config = DemoConfig(run=run, broker=broker, rate=rate, frames=frames,
                        kills=tuple(parse_kill(k) for k in kills), deadline_ms=deadline_ms,
                        fusion_workers=fusion_workers, xnnpack=xnnpack, images=images, npz=npz,
                        log_dir=log_dir, secure=secure, **_window(window))
    live = not no_dashboard and sys.stdout.isatty() and not is_quiet()
    d = Demo(config)
    # ---- web dashboard (--web) ----
    page = _start_web(d, web, host, port)
    try:
        result = _run_demo(d, live)
    finally:
        if page is not None:
            page.stop()
    # ---- end of web dashboard ----
    if summary:
        _write_json(summary, result)
    _print_summary(result)
    if summary:
        _say(f"summary written to {summary}")


# ---- web dashboard (--web) ----
def _start_web(d, web: bool, host: str | None, port: int | None):
    """The page's server, hooked into the demo; None without --web."""
    if not web:
        if host is not None or port is not None:
            from nonn_tflite.errors import UsageError

            raise UsageError("--host and --port are options of --web")
        return None
    from nonn_tflite.web.app import WebDashboard
    from nonn_tflite.web.state import DeploymentInfo

    page = WebDashboard(DeploymentInfo.from_deployment(d.deployment), host or "127.0.0.1",
                        8080 if port is None else port).start()
    page.attach(d)
    _say(f"web dashboard: {page.banner}")
    return page
# ---- end of web dashboard ----


def _run_demo(d, live: bool) -> dict:
    # Stopping the children takes up to ~10 s (SIGTERM, then SIGKILL); give it 15.
    guard_interrupts("demo", grace_s=15.0, kill=d.kill)
    if live:
        from rich.live import Live

        from nonn_tflite.live.dashboard import render

        with Live(refresh_per_second=4, transient=False) as screen:
            d.on_view = lambda view: screen.update(render(view))
            return d.run()
    last = [0.0]

    def plain(view) -> None:
        from nonn_tflite.live.dashboard import plain_line

        if time.monotonic() - last[0] >= 1.0 and not is_quiet():
            last[0] = time.monotonic()
            click.echo(plain_line(view))

    d.on_view = plain
    return d.run()


def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v) -> str:
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    table = Table(title=f"NoNN live demo: {s['deployment']}", show_header=False)
    rows = [("frames sent", s["frames"]), ("predicted", s["predicted"]),
            ("accuracy (MQTT)", s["accuracy"]), ("offline int8 accuracy", s["offline_accuracy"]),
            ("agreement with offline", s["agreement_with_offline"]),
            ("complete / partial frames", f"{s['complete_frames']} / {s['partial_frames']}"),
            ("late / duplicate / out of order",
             f"{s['late']} / {s['duplicates']} / {s['out_of_order']}"),
            ("rejected", s["rejected"]),
            ("end-to-end latency p50 / p99",
             " / ".join("-" if v is None else f"{v:.1f} ms"
                        for v in (s["latency_ms"]["p50"], s["latency_ms"]["p99"]))),
            ("bytes per frame", ", ".join(f"{k} {v}" for k, v in s["bytes_per_frame"].items())),
            ("killed", ", ".join(f"device {k['device']} at {k['at_s']:.1f}s"
                                 for k in s["killed"]) or "-")]
    if s.get("secure"):
        rows.append(("broker identities", "per-node client certificates + ACL"))
    for name, value in rows:
        table.add_row(name, fmt(value))
    if not is_quiet():
        Console().print(table)
