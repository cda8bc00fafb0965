"""The source's running score on ``nonn/<deployment>/stats/source``, for dashboards.

The source is the only node with labels. Every other node publishes its counters on
``stats/<node>``; this adds the source's: frames sent, predictions scored, running accuracy,
end-to-end latency p50/p99 (its own clock, as in the demo summary) and the labels of the last
few frames it sent, so a dashboard on another machine can show ground truth beside each
prediction. Labels go out only after their frames were sent, never with the image.

No ``rejected`` key: the demo sums ``rejected`` over all stats topics and already counts the
source's decoder itself.
"""

from __future__ import annotations

import json
import threading
import time
from itertools import islice

from nonn_tflite.live.source import SourceNode

INTERVAL_S = 0.5
RECENT_LABELS = 64


class SourceStats:
    """Publishes a :class:`SourceNode`'s score every ``interval_s`` on its own connection."""

    def __init__(self, node: SourceNode, interval_s: float = INTERVAL_S,
                 recent: int = RECENT_LABELS) -> None:
        self.node = node
        self.interval_s = interval_s
        self.recent = recent
        self.topic = node.topics.stats(node.config.node)
        self.published = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SourceStats:
        self._thread = threading.Thread(target=self._loop, name="source-stats", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the timer and publish the final figures (before the source disconnects)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.publish()

    def publish(self) -> bool:
        ok = self.node.conn.publish(self.topic, json.dumps(self.payload()).encode())
        self.published += int(ok)
        return ok

    def payload(self) -> dict:
        score = self.node.score
        with score._lock:  # the scoreboard's own lock: one consistent set of counters
            truth = [[seq, label] for seq, label in islice(reversed(score.labels.items()),
                                                            self.recent)]
            # run counters, not the scoreboard's window (its dicts hold the latest frames only)
            out = {"node": self.node.config.node, "kind": "source", "sent": score.frames,
                   "total": self.node.total, "predicted": score.answered,
                   "expired": score.expired, "scored": score.scored, "correct": score.correct, "accuracy": score.accuracy,
                   "duplicates": score.duplicates, "latency_ms_p50": score.latency_ms.p(50),
                   "latency_ms_p99": score.latency_ms.p(99)}
        return {**out, "send_failed": self.node.send_failed, "truth": truth[::-1],
                "time": time.time()}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.publish()
