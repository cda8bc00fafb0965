"""Soak/load: K device nodes at R image frames/s each through mosquitto, every frame accounted for.

One source publishes R images/s; each of the K device processes (a K-student deployment, one
student per device) runs its student on every image and publishes its vector; one fusion
process fuses. The soak's own tap (a second MQTT client here) sees every vector, so each frame's
fate is known: predicted (complete or partial), unsent (the broker was away: the source's
publish failed), dropped before any device produced a vector, or dropped after. Every node
reports exact counters when it stops, and the hops must add up:

* source:   frames = published + unsent
* device k: published = received + undelivered (the broker's loss: QoS 0 drops, an outage);
  received = inferences + queue_dropped + replayed + rejected + errors + leftover;
  inferences = vectors_sent + publish_failed
* fusion:   vectors sent by all devices = received by fusion + undelivered;
  predicted = complete + partial = predictions_sent + publish_failed;
  predictions_sent = predictions at the source + predictions lost on the way

``unaccounted`` counts frames and messages no counter explains; it must be 0. RSS and CPU time
of every process are sampled each second (psutil): RSS at start (after warm-up) and end, CPU as
the mean % of one core over that window. With
``--outage DOWN@AT`` mosquitto is stopped DOWN s at AT s into the run and restarted on the same
port: every node must reconnect (paho backoff 0.1 s doubling to 2 s), resubscribe, and process
frames again.

    python benchmarks/soak.py                         # 16 devices x 50 frames/s, 60 s, QoS 0
    python benchmarks/soak.py --qos 1 --outage 5@20   # QoS 1, mosquitto down 5 s at t=20 s
    python benchmarks/soak.py --quick                 # CI: 4 devices, 10 s

Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LOOPBACK = "127.0.0.1"
WARMUP_S = 3.0           # RSS "start" is sampled this long after the first frame
QUIET_S = 2.5            # drain ends when no prediction arrived for this long ...
DRAIN_MAX_S = 12.0       # ... or after this long
START_TIMEOUT_S = 120.0  # 16 Python nodes importing LiteRT on 2 cores take a while
OUTAGE_TAIL_S = 3.0      # after the broker is back: reconnects, resubscriptions, QoS 1 resends
RSS_FLAT_MIB = 8.0       # "flat": grew less than this (and less than RSS_FLAT_FRACTION)
RSS_FLAT_FRACTION = 0.10


@dataclass(frozen=True)
class SoakConfig:
    devices: int = 16
    rate: float = 50.0
    duration_s: float = 60.0
    qos: int = 0
    queue: int = 64          # device queue (drop-oldest)
    tap_qos: int = 0         # the soak's observer: QoS 0 so that measuring adds no QoS 1 load
    outage: tuple[float, float] | None = None  # (down seconds, at seconds)
    run: str | None = None   # a deployment with `devices` students; default: build one
    profile: str = "full"


# ==== node processes (the same script, `--node`) ================================================

def node_main(args: argparse.Namespace) -> int:
    """A device or fusion node as `nonn-tflite device|fusion` runs it, at the soak's QoS; its
    exact final counters and connection history go to ``--final`` (JSON) when it stops."""
    from dataclasses import replace

    from nonn_tflite.live.device import DeviceConfig, DeviceNode
    from nonn_tflite.live.fusion import FusionConfig, FusionNode
    from nonn_tflite.deployment import load_deployment
    from nonn_tflite.live.mqtt import BrokerConfig
    from nonn_tflite.live.runtime import serve

    dep = load_deployment(args.run)
    broker = BrokerConfig.from_url(args.broker, protocol="5")
    if args.node == "fusion":
        node = FusionNode(dep, broker, FusionConfig(queue=4096))
    else:
        node = DeviceNode(dep, broker, DeviceConfig(student=args.student, queue=args.queue))
    node.conn.config = replace(node.conn.config, qos=args.qos)
    watch = ConnectionWatch(node.conn)
    reason = serve(node)
    watch.stop()
    Path(args.final).write_text(json.dumps(_final(node, watch, reason)))
    return 0


class ConnectionWatch:
    """Records (wall time, connected) transitions of a connection every 20 ms, for the
    reconnect delays after an outage."""

    def __init__(self, conn) -> None:
        self.conn, self.events, self._stop = conn, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        state = None
        while not self._stop.wait(0.02):
            now = self.conn.connected.is_set()
            if now != state:
                self.events.append((time.time(), now))
                state = now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)


def _final(node, watch: ConnectionWatch, reason: str) -> dict:
    queue = node.queue if hasattr(node, "queue") else node.inbox
    extra = {"accepted": node.decoder.accepted, "leftover": len(queue),
             "connects": node.conn.connects, "disconnects": node.conn.disconnects,
             "connection_events": watch.events, "stopped": reason}
    if hasattr(node, "core") and hasattr(node.core, "pending"):
        extra["pending_at_stop"] = len(node.core.pending)
    return {**node.stats(), **extra}


# ==== the broker ===============================================================================

def start_broker(workdir: Path):
    """mosquitto on a free loopback port, no persistence, $SYS every second (its own count of
    the messages it dropped is part of the accounting)."""
    from nonn_tflite.live.broker import BrokerProcess, free_port

    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    import pwd

    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join([
        f"listener {port} {LOOPBACK}", f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        "allow_anonymous true", "persistence false", "set_tcp_nodelay true",
        "sys_interval 1", "log_dest stderr", "log_type error", "log_type warning"]) + "\n")
    return BrokerProcess([exe, "-c", str(conf)], LOOPBACK, port, workdir / "mosquitto.log").start()


# ==== the soak's own clients: source and tap ===================================================

class Source:
    """Publishes frame i at t0 + i/rate (no drift, no skipping) and times the predictions."""

    def __init__(self, deployment, url: str, qos: int, images) -> None:
        from nonn_tflite.live.mqtt import BrokerConfig, Connection, ConnectionConfig
        from nonn_tflite.live.protocol import Decoder

        self.deployment, self.images = deployment, images
        self.decoder = Decoder(deployment.id, num_classes=deployment.num_classes)
        self.sent_ok: list[bool] = []
        self.sent_at: list[float] = []       # wall clock
        self.latency_ms: dict[int, float] = {}
        self.duplicates = 0
        self.last_prediction = time.monotonic()
        self._lock = threading.Lock()
        self.conn = Connection(BrokerConfig.from_url(url, protocol="5"), ConnectionConfig(
            client_id="soak-source", subscriptions=(deployment.topics.prediction,), qos=qos,
            status_topic=deployment.topics.status("source")), on_message=self._on_prediction)

    def run(self, frames: int, rate: float, stop: threading.Event) -> float:
        """Send ``frames`` frames at ``rate``; returns the seconds it took."""
        from nonn_tflite.live.protocol import encode
        from nonn_tflite.live.runtime import now_us
        from nonn_tflite.live.source import image_frame, new_session

        topic, t0, session = self.deployment.topics.image, time.monotonic(), new_session()
        for i in range(frames):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            data = encode(image_frame(self.deployment, i, now_us(), self.images[i % len(self.images)],
                                      session))
            self.sent_at.append(time.time())
            self.sent_ok.append(self.conn.publish(topic, data))
        return time.monotonic() - t0

    def _on_prediction(self, topic: str, payload: bytes, t: float) -> None:
        from nonn_tflite.live.protocol import MsgType
        from nonn_tflite.live.runtime import now_us

        frame = self.decoder.decode(payload, expect=MsgType.PREDICTION)
        if frame is None:
            return
        with self._lock:
            if frame.seq in self.latency_ms:
                self.duplicates += 1
                return
            self.latency_ms[frame.seq] = (now_us() - frame.timestamp_us) / 1e3
            self.last_prediction = time.monotonic()


class Tap:
    """Sees every vector (which students answered which frame) and the broker's drop count."""

    SYS_DROPPED = "$SYS/broker/publish/messages/dropped"

    def __init__(self, deployment, url: str, qos: int) -> None:
        from nonn_tflite.live.mqtt import BrokerConfig, Connection, ConnectionConfig

        self.vectors: dict[int, set[int]] = {}
        self.messages = 0
        self.sys_dropped: list[tuple[float, int]] = []  # (wall time, broker's running count)
        self.stats: dict[str, dict] = {}
        self._lock = threading.Lock()
        t = deployment.topics
        self.conn = Connection(BrokerConfig.from_url(url, protocol="5"), ConnectionConfig(
            client_id="soak-tap", subscriptions=(t.features, t.stats_all, self.SYS_DROPPED),
            qos=qos), on_message=self._on_message)

    def _on_message(self, topic: str, payload: bytes, t: float) -> None:
        if topic == self.SYS_DROPPED:
            with self._lock:
                self.sys_dropped.append((time.time(), int(payload or b"0")))
            return
        if "/stats/" in topic:
            with self._lock:
                self.stats[topic.rsplit("/", 1)[-1]] = json.loads(payload)
            return
        from nonn_tflite.wire import HEADER_SIZE, OFFSETS

        if len(payload) >= HEADER_SIZE:
            at = OFFSETS["seq"]
            seq = int.from_bytes(payload[at:at + 4], "little")
            student = payload[OFFSETS["student"]]
            with self._lock:
                self.messages += 1
                self.vectors.setdefault(seq, set()).add(student)

    def broker_dropped(self) -> int:
        """Messages mosquitto says it dropped, summed over its incarnations (it restarts at 0)."""
        total, last = 0, 0
        with self._lock:
            for _, value in self.sys_dropped:
                if value < last:
                    total += last
                last = value
        return total + last


# ==== processes, memory, outage ================================================================

@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    final: Path
    log: Path
    died_at: float | None = None


def spawn_nodes(cfg: SoakConfig, run: Path, url: str, workdir: Path) -> list[Node]:
    """The fusion process and one process per device; each exits if this process dies."""
    nodes = []
    specs = [("fusion", None)] + [(f"device-{k}", k) for k in range(cfg.devices)]
    env = {**os.environ, "NONN_WATCH_PARENT": str(os.getpid()),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for name, k in specs:
        argv = [sys.executable, str(Path(__file__).resolve()), "--node",
                "fusion" if k is None else "device", "--run", str(run), "--broker", url,
                "--qos", str(cfg.qos), "--queue", str(cfg.queue), "--student", str(k or 0),
                "--final", str(workdir / f"{name}.json")]
        log = workdir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        nodes.append(Node(name, proc, workdir / f"{name}.json", log))
    return nodes


def wait_online(nodes: list[Node], tap: Tap, since: float) -> float:
    """Until every node has published stats after ``since`` (proof of life); seconds taken."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < START_TIMEOUT_S:
        dead = [n.name for n in nodes if n.proc.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited during start-up (see logs)")
        with tap._lock:
            fresh = {k for k, v in tap.stats.items() if v.get("time", 0) >= since}
        if all(n.name in fresh for n in nodes):
            return time.monotonic() - t0
        time.sleep(0.1)
    raise RuntimeError(f"nodes not online within {START_TIMEOUT_S:.0f} s")


class ProcSampler:
    """psutil RSS and CPU time of every node (and broker, soak) once a second; notes any node
    that died. ``procs`` maps a name to a function giving its current pid (mosquitto's changes
    when an outage restarts it). CPU is the mean over the measured window, in % of one core, so
    a node's share of a 2-core host reads directly."""

    def __init__(self, procs: dict[str, Callable[[], int | None]], nodes: list[Node]) -> None:
        self.procs = procs
        self.nodes = nodes
        # name -> [(monotonic time, rss bytes, cpu seconds user+system)]
        self.samples: dict[str, list[tuple[float, int, float]]] = {name: [] for name in procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ProcSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(1.0):
            now = time.monotonic()
            for name, pid in self.procs.items():
                try:
                    with (proc := psutil.Process(pid())).oneshot():
                        cpu = proc.cpu_times()
                        self.samples[name].append((now, proc.memory_info().rss, cpu.user + cpu.system))
                except (psutil.Error, TypeError, ValueError):  # gone, or between restarts
                    pass
            for n in self.nodes:
                if n.died_at is None and n.proc.poll() is not None:
                    n.died_at = now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def table(self, first_frame: float) -> list[dict]:
        rows = []
        for name, samples in self.samples.items():
            after = [s for s in samples if s[0] >= first_frame + WARMUP_S] or samples
            if not after:
                continue
            start, end = after[0][1] / 2**20, after[-1][1] / 2**20
            middle = after[len(after) // 2][1] / 2**20
            span = after[-1][0] - after[0][0]
            # CPU seconds restart with the process (mosquitto after an outage): a drop means a
            # new process, so its window is not one process's and the figure is left out.
            used = after[-1][2] - after[0][2]
            cpu = round(100.0 * used / span, 1) if span > 0 and used >= 0 else None
            rows.append({"node": name, "is_node": name == "fusion" or name.startswith("device"),
                         "rss_start_mib": round(start, 1),
                         "rss_end_mib": round(end, 1), "growth_mib": round(end - start, 2),
                         "second_half_growth_mib": round(end - middle, 2),
                         "peak_mib": round(max(s[1] for s in after) / 2**20, 1),
                         "cpu_pct": cpu,
                         "flat": end - start < max(RSS_FLAT_MIB, RSS_FLAT_FRACTION * start)})
        return rows


class Outage:
    """Stops the broker ``down`` s at ``at`` s after the first frame, then restarts it."""

    def __init__(self, broker, down: float, at: float) -> None:
        self.broker, self.down, self.at = broker, down, at
        self.t_down: float | None = None
        self.t_up: float | None = None
        self._thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> Outage:
        self._thread = threading.Thread(target=self._run, args=(stop,), daemon=True)
        self._thread.start()
        return self

    def _run(self, stop: threading.Event) -> None:
        if stop.wait(self.at):
            return
        self.t_down = time.time()
        self.broker.stop()
        time.sleep(self.down)
        self.broker.start()
        self.t_up = time.time()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(self.at + self.down + 30)


# ==== the run ==================================================================================

def run_soak(cfg: SoakConfig, workdir: Path | None = None) -> dict:
    """One soak; returns the result document (accounting, latency, RSS, reconnects)."""
    import numpy as np

    from nonn_tflite.deployment import load_deployment

    workdir = Path(workdir or tempfile.mkdtemp(prefix="nonn-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run = Path(cfg.run) if cfg.run else build_run(cfg.devices, workdir / "run")
    dep = load_deployment(run)
    if len(dep.students) != cfg.devices:
        raise SystemExit(f"{run} has {len(dep.students)} students, --devices is {cfg.devices}")
    with np.load(run / "tflite" / "test_sample.npz") as z:
        images = z["x"]
    broker = start_broker(workdir)
    nodes: list[Node] = []
    try:
        tap = Tap(dep, broker.url, cfg.tap_qos)
        tap.conn.start()
        since = time.time()
        nodes = spawn_nodes(cfg, run, broker.url, workdir)
        startup_s = wait_online(nodes, tap, since)
        source = Source(dep, broker.url, cfg.qos, images)
        source.conn.start()
        return _play(cfg, dep, broker, nodes, tap, source, startup_s, workdir)
    finally:
        _stop_nodes(nodes)
        broker.stop()


def _play(cfg, dep, broker, nodes, tap, source, startup_s, workdir) -> dict:
    procs = {n.name: (lambda pid=n.proc.pid: pid) for n in nodes}
    procs["mosquitto"] = lambda: broker.proc.pid if broker.proc else None
    procs["soak (source+tap)"] = os.getpid
    rss = ProcSampler(procs, nodes).start()
    stop = threading.Event()
    outage = Outage(broker, *cfg.outage).start(stop) if cfg.outage else None
    first_frame = time.monotonic()
    frames = round(cfg.duration_s * cfg.rate)
    send_s = source.run(frames, cfg.rate, stop)
    if outage:
        outage.join()
    drain_s = _drain(source, frames)
    rss.stop()
    finals = _stop_nodes(nodes)
    time.sleep(1.2)  # mosquitto's last $SYS update
    source.conn.stop()
    tap.conn.stop()
    return {
        "config": asdict(cfg), "deployment": dep.name, "frames": frames,
        "startup_s": round(startup_s, 1), "send_s": round(send_s, 2), "drain_s": round(drain_s, 2),
        "sustained_fps": round(frames / send_s, 1) if send_s else None,
        "accounting": account(dep, source, tap, finals, outage, cfg),
        "latency_ms": _latency(source),
        "rss": rss.table(first_frame),
        "reconnects": _reconnects(finals, outage),
        "processes": {n.name: {"exit_code": n.proc.returncode, "died_during_run": n.died_at is not None}
                      for n in nodes},
        "outage": None if not outage else {"down_s": cfg.outage[0], "at_s": cfg.outage[1],
                                           "t_down": outage.t_down, "t_up": outage.t_up},
        "workdir": str(workdir),
    }


def _drain(source: Source, frames: int) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < DRAIN_MAX_S:
        if len(source.latency_ms) >= frames or time.monotonic() - source.last_prediction > QUIET_S:
            break
        time.sleep(0.1)
    return time.monotonic() - t0


def _stop_nodes(nodes: list[Node]) -> dict[str, dict]:
    """SIGTERM every node (clean stop: final counters written), kill any that hangs."""
    for n in nodes:
        if n.proc.poll() is None:
            n.proc.send_signal(signal.SIGTERM)
    finals = {}
    for n in nodes:
        try:
            n.proc.wait(20)
        except subprocess.TimeoutExpired:
            n.proc.kill()
            n.proc.wait(10)
        if n.final.exists():
            finals[n.name] = json.loads(n.final.read_text())
    return finals


def build_run(devices: int, out: Path) -> Path:
    from nonn_tflite.synthetic import build_in_subprocess, k_students

    return build_in_subprocess(out, k_students(devices))


# ==== accounting ===============================================================================

def account(dep, source: Source, tap: Tap, finals: dict, outage: Outage | None,
            cfg: SoakConfig) -> dict:
    """Every frame's fate, every hop's counters, and what no counter explains (must be 0)."""
    n = len(source.sent_ok)
    published = sum(source.sent_ok)
    predicted = {s for s in source.latency_ms if s < n}
    k_all = {s.id for s in dep.students}
    in_window = _outage_window(source, outage)
    lost = [s for s in range(n) if source.sent_ok[s] and s not in predicted]
    in_outage = [s for s in lost if s in in_window]
    no_vector = [s for s in lost if s not in in_window and not tap.vectors.get(s)]
    after_vectors = [s for s in lost if s not in in_window and tap.vectors.get(s)]
    devices = {name: _device_hop(f, published) for name, f in finals.items()
               if name.startswith("device")}
    fusion = _fusion_hop(finals.get("fusion", {}), devices, len(predicted))
    broker_dropped = tap.broker_dropped()
    network_lost = (sum(d["undelivered"] for d in devices.values()) + fusion["undelivered"]
                    + fusion["predictions_lost"])
    allowance = len(in_window) * (2 * len(k_all) + 1)  # per frame: K images, K vectors, 1 answer
    device_loss = min((d["lost"] - d["undelivered"] for d in devices.values()), default=0)
    fusion_loss = (fusion["queue_dropped"] + fusion["undelivered"] + fusion["publish_failed"]
                   + fusion["predictions_lost"] + fusion["pending_at_stop"])
    unaccounted = {
        # frames that went out and never came back: a device (every device, for a frame with no
        # vector at all), the fusion node or the broker must have counted at least that many
        # (the classes no vector / after vectors come from the tap, which may miss vectors)
        "frames_lost": max(0, len(no_vector) + len(after_vectors)
                           - device_loss - fusion_loss - broker_dropped),
        # messages that vanished between nodes: the broker's own drop count or the outage
        "messages_lost_in_network": max(0, network_lost - broker_dropped - allowance),
        "missing_node_reports": len(k_all) + 1 - len(finals),
        "unbalanced_nodes": sum(not h["balanced"] for h in (*devices.values(), fusion)),
    }
    identity = len(predicted) + (n - published) + len(in_outage) + len(no_vector) + len(after_vectors)
    unaccounted["frame_identity"] = abs(n - identity)
    return {
        "frames": {"sent": n, "published": published, "unsent": n - published,
                   "predicted": len(predicted), "complete": fusion["complete"],
                   "partial": fusion["partial"], "lost_in_outage_window": len(in_outage),
                   "dropped_no_vector": len(no_vector),
                   "dropped_after_vectors": len(after_vectors),
                   "complete_after_outage": _complete_after(source, tap, k_all, outage)},
        "devices": devices, "fusion": fusion,
        "network": {"lost_messages": network_lost, "broker_dropped": broker_dropped,
                    "frames_published_in_outage_window": len(in_window),
                    "tap_saw_vectors": tap.messages,
                    "vectors_sent": sum(d["vectors_sent"] for d in devices.values())},
        "unaccounted": unaccounted, "unaccounted_total": sum(unaccounted.values()),
        "source_duplicates": source.duplicates,
    }


def _device_hop(f: dict, published: int) -> dict:
    rejected = dict(f.get("rejected", {}))
    replayed = rejected.pop("replayed", 0)
    errors = rejected.pop("handler_error", 0)
    decode_rejected = sum(rejected.values())
    received = f["accepted"] + decode_rejected
    lost = published - f["frames_sent"]
    return {"published_to_it": published, "received": received,
            "undelivered": published - received, "accepted": f["accepted"],
            "decode_rejected": decode_rejected, "replayed": replayed, "handler_error": errors,
            "inferences": f["inferences"], "queue_dropped": f["queue_dropped"],
            "leftover": f["leftover"], "vectors_sent": f["frames_sent"],
            "publish_failed": f["publish_failed"], "lost": lost,
            "balanced": (f["accepted"] == replayed + f["inferences"] + errors
                         + f["queue_dropped"] + f["leftover"]
                         and f["inferences"] == f["frames_sent"] + f["publish_failed"]),
            "reconnects": f["reconnects"], "infer_ms_p50": f.get("infer_ms_p50")}


def _fusion_hop(f: dict, devices: dict, predicted_at_source: int) -> dict:
    if not f:
        return {"missing": True, "complete": 0, "partial": 0, "queue_dropped": 0,
                "undelivered": 0, "predictions_lost": 0, "pending_at_stop": 0, "balanced": False,
                "publish_failed": 0}
    rejected = dict(f.get("rejected", {}))
    vectors_sent = sum(d["vectors_sent"] for d in devices.values())
    # topic_mismatch comes after the decoder accepted a vector; bad_status is no vector at all
    decode_rejected = sum(v for r, v in rejected.items()
                          if r not in ("topic_mismatch", "bad_status", "handler_error"))
    received = f["accepted"] + decode_rejected
    return {"vectors_sent_to_it": vectors_sent, "received": received,
            "queue_dropped": f["queue_dropped"], "leftover": f["leftover"],
            "undelivered": max(0, vectors_sent - received - f["queue_dropped"] - f["leftover"]),
            "predicted": f["predicted"], "complete": f["complete"], "partial": f["partial"],
            "balanced": f["predicted"] == f["complete"] + f["partial"],
            "late": f["late"], "duplicate": f["duplicate"], "out_of_order": f["out_of_order"],
            "evicted": f["evicted"], "rejected": rejected,
            "predictions_sent": f["predictions_sent"],
            "publish_failed": f["predicted"] - f["predictions_sent"],  # paho's queue was full
            "predictions_lost": max(0, f["predictions_sent"] - predicted_at_source),
            "pending_at_stop": f.get("pending_at_stop", 0), "deadline_ms": f["deadline_ms"],
            "reconnects": f["reconnects"]}


def _outage_window(source: Source, outage: Outage | None) -> set[int]:
    """Frames published (publish() said yes) from 1 s before the broker died until 3 s after
    it was back (paho notices a dead socket late, and resends QoS 1 before subscribers are
    back): those can vanish in flight, and only the outage itself accounts for them."""
    if not outage or outage.t_down is None:
        return set()
    end = (outage.t_up or time.time()) + OUTAGE_TAIL_S
    return {s for s, (ok, t) in enumerate(zip(source.sent_ok, source.sent_at))
            if ok and outage.t_down - 1.0 <= t <= end}


def _complete_after(source: Source, tap: Tap, k_all: set[int], outage: Outage | None) -> dict | None:
    """After an outage (and its window): frames with a vector from every device, predicted."""
    if not outage or outage.t_up is None:
        return None
    late = [s for s, t in enumerate(source.sent_at) if t > outage.t_up + OUTAGE_TAIL_S]
    every = {k: sum(k in tap.vectors.get(s, ()) for s in late) for k in k_all}
    return {"frames": len(late), "predicted": sum(s in source.latency_ms for s in late),
            "vectors_per_device_min": min(every.values(), default=0)}


def _latency(source: Source) -> dict:
    import numpy as np

    v = np.array(list(source.latency_ms.values()))
    if not v.size:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(float(np.percentile(v, 50)), 2),
            "p90": round(float(np.percentile(v, 90)), 2),
            "p99": round(float(np.percentile(v, 99)), 2), "max": round(float(v.max()), 2)}


def _reconnects(finals: dict, outage: Outage | None) -> dict:
    """Per node: reconnect count, and seconds from the broker's return to being connected."""
    out = {}
    for name, f in sorted(finals.items()):
        back = None
        if outage and outage.t_up:
            ups = [t for t, up in f.get("connection_events", []) if up and t >= outage.t_down]
            back = round(ups[0] - outage.t_up, 2) if ups else None
        out[name] = {"reconnects": f["reconnects"], "disconnects": f["disconnects"],
                     "seconds_after_broker_back": back}
    return out


# ==== reporting ================================================================================

def summary_rows(doc: dict) -> list[dict]:
    a = doc["accounting"]
    fr = a["frames"]
    return [
        {"figure": "devices x rate", "value": f"{doc['config']['devices']} x {doc['config']['rate']:g}/s"},
        {"figure": "QoS", "value": doc["config"]["qos"]},
        {"figure": "frames sent", "value": fr["sent"]},
        {"figure": "sustained send rate /s", "value": doc["sustained_fps"]},
        {"figure": "predicted (complete / partial)",
         "value": f"{fr['predicted']} ({fr['complete']} / {fr['partial']})"},
        {"figure": "unsent (broker away)", "value": fr["unsent"]},
        {"figure": "lost in outage window", "value": fr["lost_in_outage_window"]},
        {"figure": "dropped: no vector / after vectors",
         "value": f"{fr['dropped_no_vector']} / {fr['dropped_after_vectors']}"},
        {"figure": "device queue drops / publish failures (all)",
         "value": f"{sum(d['queue_dropped'] for d in a['devices'].values())} / "
                  f"{sum(d['publish_failed'] for d in a['devices'].values())}"},
        {"figure": "fusion queue drops / prediction publish failures",
         "value": f"{a['fusion']['queue_dropped']} / {a['fusion']['publish_failed']}"},
        {"figure": "messages lost in network / broker says dropped",
         "value": f"{a['network']['lost_messages']} / {a['network']['broker_dropped']}"},
        {"figure": "unaccounted", "value": a["unaccounted_total"]},
        {"figure": "latency p50 / p99 / max ms",
         "value": f"{doc['latency_ms']['p50']} / {doc['latency_ms']['p99']} / {doc['latency_ms']['max']}"},
        {"figure": "node RSS growth max MiB (all flat)",
         "value": f"{max(r['growth_mib'] for r in doc['rss'] if r['is_node'])} "
                  f"({all(r['flat'] for r in doc['rss'] if r['is_node'])})"},
        {"figure": "reconnects (min over nodes)",
         "value": min(r["reconnects"] for r in doc["reconnects"].values())},
        {"figure": "processes died", "value": sum(p["died_during_run"] or p["exit_code"] != 0
                                                  for p in doc["processes"].values())},
    ]


def write(doc: dict, argv: list[str]) -> Path:
    from common import RESULTS, header, print_table, write_results

    profile = doc["config"]["profile"]
    full = {**header("soak", profile, ["python", "benchmarks/soak.py", *argv]), **doc}
    # the measured phases: start-up, sending, drain (building the deployment and stopping excluded)
    full["wall_seconds"] = round(doc["startup_s"] + doc["send_s"] + doc["drain_s"], 1)
    rows = summary_rows(doc)
    print_table(f"soak ({profile})", rows)
    print_table("RSS (MiB) and CPU (% of one core) per process", doc["rss"])
    notes = ("Accounting: frames sent = predicted + unsent + dropped (no vector / after vectors); "
             "each drop class is covered by node counters (device queue, publish failures, "
             "fusion queue) or by the broker's own $SYS drop count / the outage window. "
             "'unaccounted' counts what nothing covers.\n\n"
             + "RSS (MiB) and CPU (% of one core, mean after warm-up) per process:\n\n" + _rss_md(doc["rss"]))
    path = write_results("soak", profile, full, rows, notes=notes)
    if profile == "full":  # the names: benchmarks/results/soak.json and soak.md
        for ext in ("json", "md"):
            path.with_suffix(f".{ext}").replace(RESULTS / f"soak.{ext}")
        path = RESULTS / "soak.json"
    return path


def _rss_md(rows: list[dict]) -> str:
    from common import markdown_table

    return markdown_table(rows)


def parse_outage(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    down, _, at = text.partition("@")
    return float(down.rstrip("s")), float(at.rstrip("s") or 10)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, help="Device nodes (students); default 16, quick 4.")
    ap.add_argument("--rate", type=float, default=50.0, help="Image frames per second.")
    ap.add_argument("--duration", type=float, help="Seconds of sending; default 60, quick 10.")
    ap.add_argument("--qos", type=int, choices=(0, 1), default=0)
    ap.add_argument("--queue", type=int, default=64, help="Device queue length (drop-oldest).")
    ap.add_argument("--tap-qos", type=int, choices=(0, 1), default=0,
                    help="QoS of the soak's own observer of all vectors (default 0: measuring "
                         "should not add QoS 1 load to the system under test).")
    ap.add_argument("--outage", metavar="DOWN@AT", help="Stop mosquitto DOWN s at AT s, e.g. 5@20.")
    ap.add_argument("--quick", action="store_true", help="CI: 4 devices, 10 s.")
    ap.add_argument("--profile", help="Result file name part (default: full, or quick).")
    ap.add_argument("--run", help="A deployment with --devices students (default: build one).")
    ap.add_argument("--workdir", type=Path, help="Logs and node reports (default: a temp dir).")
    # the node processes (internal)
    ap.add_argument("--node", choices=("device", "fusion"), help=argparse.SUPPRESS)
    ap.add_argument("--student", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--broker", help=argparse.SUPPRESS)
    ap.add_argument("--final", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.node:
        return node_main(args)
    signal.signal(signal.SIGTERM, _interrupt)  # a terminated soak still stops broker and nodes
    cfg = SoakConfig(devices=args.devices or (4 if args.quick else 16), rate=args.rate,
                     duration_s=args.duration or (10.0 if args.quick else 60.0), qos=args.qos,
                     queue=args.queue, tap_qos=args.tap_qos, outage=parse_outage(args.outage),
                     run=args.run,
                     profile=args.profile or ("quick" if args.quick else "full"))
    doc = run_soak(cfg, args.workdir)
    path = write(doc, argv)
    print(f"wrote {path}")
    return 0 if verdict(doc) else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def verdict(doc: dict) -> bool:
    """The soak's pass criteria: nothing unaccounted, no process died, RSS flat, and (QoS 1
    without an outage) nothing lost."""
    a = doc["accounting"]
    ok = a["unaccounted_total"] == 0 and all(
        not p["died_during_run"] and p["exit_code"] == 0 for p in doc["processes"].values())
    ok = ok and all(r["flat"] for r in doc["rss"] if r["is_node"])
    if doc["config"]["qos"] == 1 and not doc["config"]["outage"]:  # the network loses nothing
        ok = ok and a["network"]["lost_messages"] == 0 and a["network"]["broker_dropped"] == 0
    return ok


if __name__ == "__main__":
    sys.exit(main())
