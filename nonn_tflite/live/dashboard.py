"""What the demo shows: node status and counters, collected from the broker itself.

The dashboard learns everything from MQTT (retained ``status/<node>`` and periodic
``stats/<node>`` JSON), so it shows what an operator on another machine would see, including a
device that vanished without saying goodbye (its last will turns it ``offline``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from nonn_tflite.deployment import Deployment
from nonn_tflite.live.mqtt import (
    BrokerConfig,
    Connection,
    ConnectionConfig,
    make_client_id,
)
from nonn_tflite.live.protocol import Topics

FUSION_COUNTERS = ("predicted", "complete", "partial", "late", "duplicate", "out_of_order",
                   "evicted", "queue_dropped")


class Monitor:
    """Subscribes to every node's status and stats topics of one deployment."""

    def __init__(self, deployment: Deployment, broker: BrokerConfig) -> None:
        topics = deployment.topics
        self.status: dict[str, str] = {}
        self.stats: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.conn = Connection(broker, ConnectionConfig(
            client_id=make_client_id("monitor"),
            subscriptions=(topics.status_all, topics.stats_all)), on_message=self._on_message)

    def start(self) -> Monitor:
        self.conn.start()
        return self

    def stop(self) -> None:
        self.conn.stop()

    def _on_message(self, topic: str, payload: bytes, t: float) -> None:
        node = Topics.last_level(topic)
        kind = topic.rsplit("/", 2)[-2]
        with self._lock:
            if kind == "status":
                self.status[node] = payload.decode("utf-8", "replace")[:16]
            elif kind == "stats":
                try:
                    self.stats[node] = json.loads(payload)
                except (ValueError, UnicodeDecodeError):
                    pass

    def snapshot(self) -> tuple[dict[str, str], dict[str, dict]]:
        with self._lock:
            return dict(self.status), {k: dict(v) for k, v in self.stats.items()}


@dataclass
class View:
    """Everything one dashboard frame shows; built by the demo, rendered here."""

    deployment: str
    broker: str
    elapsed_s: float
    sent: int
    total: int
    predicted: int
    accuracy: float | None
    offline_accuracy: float | None
    p50_ms: float | None
    p99_ms: float | None
    devices: list[dict] = field(default_factory=list)   # per device: stats + "status"
    fusion: dict = field(default_factory=dict)           # summed fusion counters
    rejected: int = 0
    events: list[str] = field(default_factory=list)


def fusion_totals(stats: dict[str, dict]) -> dict:
    """Sum counters over fusion workers (one, or several sharing a group)."""
    out = {k: 0 for k in FUSION_COUNTERS}
    deadlines = []
    for s in stats.values():
        if s.get("kind") != "fusion":
            continue
        for k in FUSION_COUNTERS:
            out[k] += int(s.get(k) or 0)
        deadlines.append(s.get("deadline_ms"))
    out["deadline_ms"] = max((d for d in deadlines if d is not None), default=None)
    out["workers"] = len(deadlines)
    return out


def rejected_total(stats: dict[str, dict]) -> dict[str, int]:
    """Rejections by reason over all nodes."""
    out: dict[str, int] = {}
    for s in stats.values():
        for reason, n in (s.get("rejected") or {}).items():
            out[reason] = out.get(reason, 0) + int(n)
    return out


def _fmt(v: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def render(view: View):
    """A rich renderable: a header line, a per-node table and recent events."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text.assemble(
        (f"NoNN live  {view.deployment}", "bold"), f"  broker {view.broker}  ",
        f"t={view.elapsed_s:5.1f}s  frames {view.sent}/{view.total}  predicted {view.predicted}\n",
        "accuracy ", (_fmt(view.accuracy, ".3f"), "bold green"),
        f" (offline int8 {_fmt(view.offline_accuracy, '.3f')})  ",
        f"end-to-end p50 {_fmt(view.p50_ms, '.1f', ' ms')}  p99 {_fmt(view.p99_ms, '.1f', ' ms')}")
    table = Table(expand=False, header_style="bold")
    for col in ("node", "status", "inferences", "infer p50", "bytes sent", "B/frame",
                "dropped", "rejected"):
        table.add_column(col, justify="left" if col in ("node", "status") else "right")
    for d in view.devices:
        status = d.get("status", "?")
        style = {"online": "green", "offline": "red", "killed": "red"}.get(status, "yellow")
        table.add_row(d["node"], Text(status, style=style), str(d.get("inferences", 0)),
                      _fmt(d.get("infer_ms_p50"), ".2f", " ms"), str(d.get("bytes_sent", 0)),
                      _fmt(d.get("bytes_per_frame"), ".0f"), str(d.get("queue_dropped", 0)),
                      str(sum((d.get("rejected") or {}).values())))
    f = view.fusion
    fusion = Text(
        f"fusion x{f.get('workers', 0)}: predicted {f.get('predicted', 0)}  complete "
        f"{f.get('complete', 0)}  partial {f.get('partial', 0)}  late {f.get('late', 0)}  "
        f"duplicate {f.get('duplicate', 0)}  out-of-order {f.get('out_of_order', 0)}  "
        f"deadline {_fmt(f.get('deadline_ms'), '.0f', ' ms')}  rejected (all nodes) "
        f"{view.rejected}")
    events = Text("\n".join(view.events[-4:]), style="dim")
    return Group(head, table, fusion, events)


def plain_line(view: View) -> str:
    """One progress line for logs and non-TTY output."""
    f = view.fusion
    devices = " ".join(f"{d['node']}={d.get('status', '?')}" for d in view.devices)
    return (f"t={view.elapsed_s:.1f}s frames {view.sent}/{view.total} predicted {view.predicted} "
            f"acc {_fmt(view.accuracy, '.3f')} p50 {_fmt(view.p50_ms, '.1f')}ms "
            f"p99 {_fmt(view.p99_ms, '.1f')}ms partial {f.get('partial', 0)} "
            f"rejected {view.rejected} {devices}")
