"""`nonn-tflite demo`: the whole distributed system on one machine, with a live dashboard.

Every device and fusion worker is a separate OS process (``nonn-tflite device|fusion``), as
it would be on separate boards, so the demo exercises real sockets, last wills and process
death. The source (with the ground truth) and the dashboard run in this process. At the end
the same frames go through the int8 system offline, in one process, for comparison.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nonn_tflite.errors import NonnError, UsageError
from nonn_tflite.live.broker import BrokerProcess, embedded_broker
from nonn_tflite.live.dashboard import Monitor, View, fusion_totals, rejected_total
from nonn_tflite.deployment import Deployment, load_deployment
from nonn_tflite.live.mqtt import BrokerConfig
from nonn_tflite.live.secure import BrokerSetup
from nonn_tflite.live.offline import OfflineSystem
from nonn_tflite.live.protocol import HEADER_SIZE
from nonn_tflite.live.source import WINDOW, ImageSet, SourceConfig, SourceNode, load_images

log = logging.getLogger(__name__)

GROUP = "nonn-fusion"


@dataclass(frozen=True)
class KillSpec:
    """Stop device ``device`` ``at_s`` seconds after the first frame (``1@10s``)."""

    device: int
    at_s: float


def parse_kill(text: str) -> KillSpec:
    m = re.fullmatch(r"\s*(\d+)\s*@\s*(\d+(?:\.\d*)?)\s*(ms|s)?\s*", text)
    if not m:
        raise UsageError(f"--kill-device {text!r}: expected DEVICE@TIME, e.g. 1@10s or 0@500ms")
    at = float(m.group(2)) / (1000.0 if m.group(3) == "ms" else 1.0)
    return KillSpec(int(m.group(1)), at)


@dataclass(frozen=True)
class DemoConfig:
    run: Path
    broker: BrokerConfig | None = None   # None: start the embedded amqtt broker
    rate: float = 20.0
    frames: int | None = None
    kills: tuple[KillSpec, ...] = ()
    deadline_ms: float | None = None
    fusion_workers: int = 1
    queue: int = 4
    xnnpack: bool = False
    images: Path | None = None
    npz: Path | None = None
    start_timeout_s: float = 30.0
    drain_s: float = 3.0
    log_dir: Path | None = None
    secure: bool = False  # own mosquitto: per-node client certificates and an ACL
    window: int = WINDOW  # frames the source's scoreboard remembers (its counters: whole run)


@dataclass
class OfflineTally:
    """The live answers against the offline int8 system, over the whole run (the scoreboard
    keeps only a window of frames): fed by :attr:`Scoreboard.on_answer`."""

    offline: dict[int, int]   # image index -> offline int8 class
    answered: int = 0
    agree: int = 0
    scored: int = 0           # answered frames with a label
    offline_correct: int = 0

    def add(self, index: int, label: int, cls: int) -> None:
        expected = self.offline[index]
        self.answered += 1
        self.agree += int(expected == cls)
        if label >= 0:
            self.scored += 1
            self.offline_correct += int(expected == label)

    @property
    def offline_accuracy(self) -> float | None:
        return self.offline_correct / self.scored if self.scored else None

    @property
    def agreement(self) -> float | None:
        return self.agree / self.answered if self.answered else None


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path
    killed_at: float | None = None

    def tail(self, n: int = 3) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])


# ---- hooks for other front ends (the web dashboard, `demo --web`) ----------------------------
@dataclass
class DemoHooks:
    """Optional callbacks; the terminal dashboard needs none of them."""

    broker_ready: Callable[[BrokerConfig], None] | None = None  # before any node starts
    source_ready: Callable[[SourceNode], None] | None = None    # connected, before frame 0
    closing: Callable[[], None] | None = None  # first thing in shutdown(): broker still up
# ---- end of hooks ------------------------------------------------------------------------------


@dataclass
class DemoState:
    started: float = 0.0
    first_frame: float | None = None
    sent: int = 0
    events: list[str] = field(default_factory=list)


class Demo:
    """Start broker, nodes and source; play the frames; stop everything; summarise."""

    def __init__(self, config: DemoConfig, on_view: Callable[[View], None] | None = None,
                 interval_s: float = 0.25) -> None:
        self.config = config
        self.deployment: Deployment = load_deployment(config.run)
        self.images: ImageSet = load_images(self.deployment, config.run, config.images,
                                            config.npz)
        self._check_kills()
        self.on_view = on_view
        self.interval_s = interval_s
        self.log_dir = Path(config.log_dir or tempfile.mkdtemp(prefix="nonn-demo-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.state = DemoState()
        self.children: list[Child] = []
        self.broker_proc: BrokerProcess | None = None
        self.broker: BrokerConfig | None = config.broker
        self.monitor: Monitor | None = None
        self.source: SourceNode | None = None
        self.offline: dict[int, int] = {}
        self.tally = OfflineTally(self.offline)
        self.hooks = DemoHooks()  # --web
        self.secure: BrokerSetup | None = None  # --secure: the broker-config it wrote
        if config.secure and config.broker is not None:
            raise UsageError("--secure starts its own mosquitto with per-node identities; "
                             "drop --broker (or use `nonn-tflite broker-config` for yours)")

    # ---- public ---------------------------------------------------------------------------
    def run(self) -> dict:
        """The whole demo; returns the summary. Always cleans up, also on Ctrl-C."""
        try:
            self._start()
            self._play()
            self._stop_children()
            time.sleep(0.3)  # the final stats of the nodes are on their way
            if self.on_view is not None:
                self.on_view(self.view())
            return self.summary()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Idempotent. Under Python's default Ctrl-C handling a second Ctrl-C is ignored so that
        no process is left behind; a caller with its own handler (the CLI's StopGuard, which
        kills the children itself) keeps it."""
        previous = signal.getsignal(signal.SIGINT)
        in_main = (threading.current_thread() is threading.main_thread()
                   and previous is signal.default_int_handler)
        if in_main:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.hooks.closing is not None:  # --web: final figures while MQTT still runs
                try:
                    self.hooks.closing()
                except Exception:  # noqa: BLE001 - never skip the clean-up below
                    log.exception("demo closing hook failed")
            if self.source is not None:
                self.source.stop()
            self._stop_children()
            if self.monitor is not None:
                self.monitor.stop()
            if self.broker_proc is not None:
                self.broker_proc.stop()
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)

    def kill(self) -> None:
        """SIGKILL every process this demo started, without waiting: a forced exit's last act."""
        for child in list(self.children):
            if child.proc.poll() is None:
                child.proc.kill()
        if self.broker_proc is not None:
            self.broker_proc.kill()

    # ---- start-up -------------------------------------------------------------------------
    def _check_kills(self) -> None:
        ids = {s.id for s in self.deployment.students}
        for k in self.config.kills:
            if k.device not in ids:
                raise UsageError(f"--kill-device {k.device}@...: no such device "
                                 f"(devices: {', '.join(map(str, sorted(ids)))})")

    def _start(self) -> None:
        self.state.started = time.monotonic()
        if self.config.secure:
            self._start_secure_broker()
        elif self.broker is None:
            self.broker_proc = embedded_broker(workdir=self.log_dir).start()
            # amqtt speaks MQTT 3.1.1 only; saying so saves every node a 5.0 probe.
            self.broker = BrokerConfig.from_url(self.broker_proc.url, protocol="3.1.1")
            self._event(f"embedded amqtt broker on {self.broker.url}")
        if self.hooks.broker_ready is not None:  # --web (as the read-only dashboard user)
            self.hooks.broker_ready(self.broker)
        self.monitor = Monitor(self.deployment, self.broker).start()
        t_spawn = time.time()
        for k in sorted(s.id for s in self.deployment.students):
            self._spawn(f"device-{k}", ["device", "--student", str(k), "--queue",
                                        str(self.config.queue)], user=f"device-{k}")
        for name, extra in self._fusion_args():
            self._spawn(name, ["fusion", *extra], user="fusion")
        self._compute_offline()
        self._wait_online(t_spawn)
        self.source = SourceNode(self.deployment, self._node_broker("source"), self.images,
                                 SourceConfig(
            rate=self.config.rate, frames=self.config.frames, drain_s=self.config.drain_s,
            window=self.config.window))
        self.tally = OfflineTally(self.offline)
        self.source.score.on_answer = self.tally.add
        self.source.start()
        if self.hooks.source_ready is not None:  # --web
            self.hooks.source_ready(self.source)

    def _start_secure_broker(self) -> None:
        """broker-config into the log folder (fresh CA, keys and ACL each run), then mosquitto
        with it; the demo itself watches as the read-only dashboard user."""
        from nonn_tflite.live.broker import free_port
        from nonn_tflite.live.secure import SecureConfig, write_broker_config

        self.secure = write_broker_config(self.deployment, self.log_dir / "broker-config",
                                          SecureConfig(port=free_port(), tls=True,
                                                       fusion_workers=self.config.fusion_workers),
                                          force=True)
        self.broker_proc = self.secure.broker_process(self.log_dir).start()
        self.broker = self._node_broker("dashboard")
        self._event(f"mosquitto with per-node certificates and ACL on {self.broker.url}")

    def _node_broker(self, user: str) -> BrokerConfig:
        """The connection of one role: its own credentials under --secure, else the shared."""
        if self.secure is None:
            return self.broker
        return self.secure.credentials(user).broker_config(protocol="5")  # mosquitto 2

    def _fusion_args(self) -> list[tuple[str, list[str]]]:
        extra = [] if self.config.deadline_ms is None else ["--deadline-ms",
                                                              str(self.config.deadline_ms)]
        if self.config.fusion_workers <= 1:
            return [("fusion", extra)]
        return [(f"fusion-{i}", [*extra, "--group", GROUP, "--name", f"fusion-{i}"])
                for i in range(self.config.fusion_workers)]

    def _spawn(self, name: str, args: list[str], user: str) -> None:
        b = self.broker
        argv = [sys.executable, "-m", "nonn_tflite.cli", *args[:1], str(self.config.run),
                *args[1:], "--protocol", b.protocol, "-q"]
        url = b.to_url(redact=False)  # passed in the environment: not visible in `ps`
        if self.secure is not None:  # its own identity: certificate and key, no password
            argv += ["--credentials", str(self.secure.credentials_path(user))]
            url = self.secure.config.url
        else:
            for opt, value in (("--cafile", b.cafile), ("--certfile", b.certfile),
                               ("--keyfile", b.keyfile)):
                if value:
                    argv += [opt, value]
            if b.insecure:
                argv.append("--insecure")
        if self.config.xnnpack:
            argv.append("--xnnpack")
        env = {**os.environ, "NONN_BROKER": url, "NONN_WATCH_PARENT": str(os.getpid())}
        path = self.log_dir / f"{name}.log"
        with open(path, "ab") as logf:
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        self.children.append(Child(name, proc, path))

    def _compute_offline(self) -> None:
        """Offline int8 predictions for every image the source will send (while nodes boot)."""
        total = self.config.frames if self.config.frames is not None else len(self.images)
        used = np.unique(np.arange(total) % len(self.images))
        classes = OfflineSystem(self.deployment, self.config.xnnpack).classify(self.images.x[used])
        self.offline = dict(zip(used.tolist(), classes.tolist()))

    def _wait_online(self, since: float) -> None:
        """Until every node has published stats (proof of life, not a stale retained flag)."""
        end = time.monotonic() + self.config.start_timeout_s
        while True:
            for child in self.children:
                if child.proc.poll() is not None:
                    raise NonnError(f"{child.name} exited during start-up "
                                    f"(code {child.proc.returncode}): {child.tail()}")
            _, stats = self.monitor.snapshot()
            missing = [c.name for c in self.children
                       if stats.get(c.name, {}).get("time", 0) < since - 1.0]
            if not missing:
                self._event(f"{len(self.children)} nodes online")
                return
            if time.monotonic() > end:
                raise NonnError(f"{', '.join(missing)} did not come online within "
                                f"{self.config.start_timeout_s:g} s (logs in {self.log_dir})")
            time.sleep(0.05)

    # ---- the run --------------------------------------------------------------------------
    def _play(self) -> None:
        def tick(n: int) -> None:
            self.state.sent = n
            if self.state.first_frame is None:
                self.state.first_frame = time.monotonic()

        worker = threading.Thread(target=self.source.run, args=(tick,), name="source",
                                  daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(self.interval_s)
            self._apply_kills()
            if self.on_view is not None:
                self.on_view(self.view())
        if self.on_view is not None:
            self.on_view(self.view())

    def _apply_kills(self) -> None:
        if self.state.first_frame is None:
            return
        elapsed = time.monotonic() - self.state.first_frame
        for spec in self.config.kills:
            child = self._child(f"device-{spec.device}")
            if child and child.killed_at is None and elapsed >= spec.at_s:
                child.proc.kill()  # like pulling the plug: no goodbye, the last will speaks
                child.killed_at = elapsed
                self._event(f"t={elapsed:.1f}s killed device-{spec.device}")

    def _child(self, name: str) -> Child | None:
        return next((c for c in self.children if c.name == name), None)

    def _stop_children(self) -> None:
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.terminate()
        for child in self.children:
            try:
                child.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5.0)

    def _event(self, text: str) -> None:
        self.state.events.append(text)
        log.debug(text)

    # ---- reporting ------------------------------------------------------------------------
    def view(self) -> View:
        status, stats = self.monitor.snapshot() if self.monitor else ({}, {})
        score = self.source.score if self.source else None
        devices = []
        for s in sorted(self.deployment.students, key=lambda s: s.id):
            name = f"device-{s.id}"
            child = self._child(name)
            d = {"node": name, **stats.get(name, {})}
            d["status"] = ("killed" if child and child.killed_at is not None
                           else status.get(name, "?"))
            devices.append(d)
        elapsed = time.monotonic() - (self.state.first_frame or time.monotonic())
        return View(
            deployment=self.deployment.name, broker=self.broker.url if self.broker else "-",
            elapsed_s=elapsed, sent=self.state.sent,
            total=self.source.total if self.source else 0,
            predicted=score.answered if score else 0,
            accuracy=score.accuracy if score else None,
            offline_accuracy=self.tally.offline_accuracy if score else None,
            p50_ms=score.latency_ms.p(50) if score else None,
            p99_ms=score.latency_ms.p(99) if score else None,
            devices=devices, fusion=fusion_totals(stats),
            rejected=sum(rejected_total(stats).values()) + self._source_rejected(),
            events=list(self.state.events))

    def _source_rejected(self) -> int:
        return self.source.decoder.rejected if self.source else 0

    def summary(self) -> dict:
        """Counts from the scoreboard's run counters and the offline tally (whole run), never
        from its window of per-frame records."""
        score = self.source.score
        _, stats = self.monitor.snapshot()
        fusion = fusion_totals(stats)
        by_reason = rejected_total(stats)
        for reason, n in self.source.decoder.counters.items():
            by_reason[reason] = by_reason.get(reason, 0) + n
        widths = self.deployment.feature_widths
        devices = {}
        for k in sorted(widths):
            bpf = stats.get(f"device-{k}", {}).get("bytes_per_frame")
            devices[f"device_{k}"] = round(bpf) if bpf else HEADER_SIZE + widths[k]
        return {
            "deployment": self.deployment.name,
            "broker": self.broker.url,
            "embedded_broker": self.broker_proc is not None and self.secure is None,
            "secure": self.secure is not None,
            "broker_config": str(self.secure.folder) if self.secure else None,
            "frames": score.frames,
            "predicted": score.answered,
            "accuracy": score.accuracy,
            "offline_accuracy": self.tally.offline_accuracy,   # on exactly the frames answered
            "agreement_with_offline": self.tally.agreement,
            "complete_frames": fusion["complete"],
            "partial_frames": fusion["partial"],
            "late": fusion["late"], "duplicates": fusion["duplicate"],
            "out_of_order": fusion["out_of_order"],
            "rejected": sum(by_reason.values()),
            "rejected_by_reason": by_reason,
            "dropped": {"device_queue": sum(int(s.get("queue_dropped") or 0)
                                            for n, s in stats.items() if n.startswith("device")),
                        "fusion_queue": fusion["queue_dropped"],
                        "source_unsent": self.source.send_failed,
                        "unanswered": score.frames - score.answered},
            "latency_ms": {"p50": score.latency_ms.p(50), "p99": score.latency_ms.p(99)},
            "bytes_per_frame": devices,
            "image_bytes_per_frame": HEADER_SIZE + self.deployment.image_size,
            "device_inference_ms_p50": {f"device_{k}": stats.get(f"device-{k}", {})
                                        .get("infer_ms_p50") for k in sorted(widths)},
            "fusion_deadline_ms": fusion["deadline_ms"],
            "fusion_workers": fusion["workers"],
            "killed": [{"device": int(c.name.split("-")[1]), "at_s": round(c.killed_at, 3)}
                       for c in self.children if c.killed_at is not None],
            "rate": self.config.rate,
            "duration_s": round(time.monotonic() - (self.state.first_frame or time.monotonic()),
                                3),
            "logs": str(self.log_dir),
        }
