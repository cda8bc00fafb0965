"""Coverage-guided fuzzing (atheris/libFuzzer) of the wire decoder and the nodes' handlers.

Every input is (1) decoded raw by a :class:`~nonn_tflite.live.protocol.Decoder` for each
expected type, which must accept or count a rejection, never raise; and (2) turned into one
MQTT message by :func:`fuzz.frames.build_message` and handed to a real fusion node and device
node (:class:`fuzz.frames.NodeProbe`), which check after every message that nothing escaped,
everything was counted once and memory stayed bounded. A broken rule raises, and libFuzzer
reports the input that broke it (``crash-*`` file) and exits non-zero.

    pip install atheris
    python fuzz/frames_atheris.py -runs=1000000 --summary fuzz/results/frames-1e6.json
    python fuzz/frames_atheris.py -runs=1000 --run runs/digits-k2   # any converted run

Arguments starting with ``-`` and no ``--`` are libFuzzer's (``-runs``, ``-seed``,
``-max_len``, a corpus folder); ``--run DIR`` picks the deployment (default: a synthetic
2-student one, built in ~15 s) and ``--summary FILE`` writes the verdict counts at the end.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["nonn_tflite.live", "fuzz.frames"]):
    from fuzz.frames import NodeProbe, build_message
    from nonn_tflite.deployment import load_deployment
    from nonn_tflite.live.protocol import Decoder, MsgType


def _own_args(argv: list[str]) -> tuple[dict, list[str]]:
    """Split ``--run DIR`` / ``--summary FILE`` from libFuzzer's own arguments."""
    own, rest, it = {}, [argv[0]], iter(argv[1:])
    for arg in it:
        if arg in ("--run", "--summary"):
            own[arg[2:]] = next(it)
        else:
            rest.append(arg)
    return own, rest


def _runs(argv: list[str]) -> int | None:
    for arg in argv:
        if arg.startswith("-runs="):
            return int(arg.split("=", 1)[1])
    return None


def _deployment_dir(own: dict) -> Path:
    if "run" in own:
        return Path(own["run"])
    import tempfile

    from nonn_tflite.synthetic import build_in_subprocess

    return build_in_subprocess(Path(tempfile.mkdtemp(prefix="nonn-atheris-")) / "k2")


class Harness:
    """The fuzz target: both checks per input, verdicts tallied for the summary."""

    def __init__(self, run_dir: Path, runs: int | None, summary: Path | None) -> None:
        self.deployment = load_deployment(run_dir)
        d = self.deployment
        self.decoders = {t: Decoder(d.id, d.feature_widths, image_size=d.image_size,
                                    num_classes=d.num_classes) for t in MsgType}
        self.probe = NodeProbe(d)
        self.verdicts: Counter[str] = Counter()
        self.runs, self.summary, self.t0 = runs, summary, time.monotonic()

    def __call__(self, data: bytes) -> None:
        for expect, decoder in self.decoders.items():
            before = decoder.accepted + decoder.rejected
            decoder.decode(data, expect=expect)
            if decoder.accepted + decoder.rejected != before + 1:
                raise AssertionError(f"decoder did not count input {data[:48]!r}")
        message = build_message(data, self.deployment)
        self.verdicts[self.probe.feed(message)] += 1
        if self.runs is not None and self.probe.seen == self.runs:
            self.report()

    def report(self) -> None:
        doc = {"inputs": self.probe.seen, "seconds": round(time.monotonic() - self.t0, 1),
               "verdicts": dict(self.verdicts.most_common()),
               "fusion_rejected": dict(self.probe.fusion.decoder.counters),
               "fusion_counters": dict(self.probe.fusion.core.counters),
               "device_rejected": dict(self.probe.device.decoder.counters),
               "device_inferences": self.probe.device.inferences,
               "raw_decoder_rejected": {t.name: dict(d.counters) for t, d in self.decoders.items()},
               "handler_errors": self.probe.fusion.decoder.counters["handler_error"]}
        print(json.dumps(doc, indent=2), flush=True)
        if self.summary is not None:
            self.summary.parent.mkdir(parents=True, exist_ok=True)
            self.summary.write_text(json.dumps(doc, indent=2) + "\n")


def main() -> None:
    own, argv = _own_args(sys.argv)
    harness = Harness(_deployment_dir(own), _runs(argv),
                      Path(own["summary"]) if "summary" in own else None)
    atheris.Setup(argv, harness)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
