"""The web dashboard as one object: live state + HTTP/SSE server, stand-alone or inside a demo.

``nonn-tflite dashboard`` connects it to a broker whose nodes run elsewhere;
``nonn-tflite demo --web`` hooks it into :class:`~nonn_tflite.live.demo.Demo`, which starts the
broker and the source itself, so the state connects when the broker is up and the source
publishes its score (:class:`~nonn_tflite.web.source_stats.SourceStats`) while it runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nonn_tflite.live.mqtt import BrokerConfig
from nonn_tflite.web.server import DashboardServer
from nonn_tflite.web.source_stats import SourceStats
from nonn_tflite.web.state import DeploymentInfo, LiveState

if TYPE_CHECKING:
    from nonn_tflite.live.demo import Demo
    from nonn_tflite.live.source import SourceNode

log = logging.getLogger(__name__)

FINAL_WAIT_S = 2.0  # how long the demo waits for its final score to reach the page


class WebDashboard:
    """Start with :meth:`start`; always :meth:`stop` (it ends every browser's stream cleanly)."""

    def __init__(self, info: DeploymentInfo, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.state = LiveState(info)
        self.server = DashboardServer(self.state, host, port)
        self.source_stats: SourceStats | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def banner(self) -> str:
        """The URL, and a warning when the page is reachable from other machines."""
        host = self.server.httpd.server_address[0]
        if host.startswith("127.") or host == "::1":
            return self.url
        return f"{self.url} (listening on {host}: reachable from the network)"

    def start(self) -> WebDashboard:
        self.server.start()
        return self

    def connect(self, broker: BrokerConfig) -> None:
        self.state.connect(broker)

    def stop(self, reason: str = "stopped") -> None:
        if self.state.finished is None:
            self.state.finish(reason)
        self.state.disconnect()
        self.server.stop()

    # ---- inside `demo --web` -----------------------------------------------------------------
    def attach(self, demo: Demo) -> None:
        """Set the demo's hooks: connect with its broker, publish its score, end cleanly."""
        demo.hooks.broker_ready = self.connect
        demo.hooks.source_ready = self._watch_source
        demo.hooks.closing = self._demo_closing

    def _watch_source(self, source: SourceNode) -> None:
        self.source_stats = SourceStats(source).start()

    def _demo_closing(self) -> None:
        """Publish the final score and wait until the page state holds it (MQTT still up).

        Only after a complete run: on Ctrl-C the figures are not final and the broker may be
        going down with the same signal, so nothing is waited for.
        """
        stats, self.source_stats = self.source_stats, None
        if stats is not None:
            stats.stop()
        score = stats.node.score if stats is not None else None
        complete = score is not None and score.frames == stats.node.total
        if complete and stats.node.conn.connected.is_set():
            want = (score.frames, score.answered)
            if not self.state.wait_for(lambda s: not s.connected or (
                    s.source.get("sent"), s.source.get("predicted")) == want, FINAL_WAIT_S):
                log.debug("final source stats did not reach the web state in time")
        self.state.finish("finished" if complete else "stopped")
        self.state.disconnect()
