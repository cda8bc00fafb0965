"""Link models and the bytes each way of distributing inference puts on the network.

Three ways to classify an image with several small devices:

* **NoNN**: every device runs its student on the whole image and sends one int8 vector
  (+ the 36-byte frame header); the devices work in parallel.
* **Split computing** (Neurosurgeon/DeepThings style): the teacher is cut into K consecutive
  pieces, one per device; each cut ships an int8 activation map to the next device, in series.
* **Offload**: the camera node sends the raw image to a server that runs the teacher.

Transfer time on a link = per-message overhead + bits / effective bit rate, with messages
sent one after another on a shared channel. Latencies combine measured compute with this
computed transfer; every figure is an estimate of the stated link model.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER_BYTES = 36  # wire format header (docs/ARCHITECTURE.md)


@dataclass(frozen=True)
class Link:
    name: str
    bits_per_second: float  # effective application throughput, not the PHY rate
    overhead_ms: float  # per message: connection event / MAC / MQTT framing
    source: str

    def transfer_ms(self, payload_bytes: int) -> float:
        return self.overhead_ms + payload_bytes * 8 / self.bits_per_second * 1000.0


LINKS = {
    "ble": Link("ble", 1_000_000 * 0.7, 7.5, "BLE 4.2+ 1M PHY; ~70 % goodput, 7.5 ms connection interval"),
    "802.15.4": Link("802.15.4", 250_000 * 0.5, 5.0, "IEEE 802.15.4 250 kbit/s O-QPSK; ~50 % goodput after CSMA/ACK"),
    "wifi": Link("wifi", 10_000_000, 2.0, "802.11n station, ~10 Mbit/s effective on a busy 2.4 GHz channel"),
}


def nonn_latency_ms(compute_ms: list[float], payload_bytes: list[int], link: Link,
                    fusion_ms: float = 0.0) -> float:
    """Devices compute in parallel; their vectors then share the channel; then fusion runs."""
    transfers = sum(link.transfer_ms(b) for b in payload_bytes)
    return max(compute_ms) + transfers + fusion_ms


def split_latency_ms(piece_compute_ms: list[float], cut_bytes: list[int], link: Link) -> float:
    """Pieces run one after another; each cut's activations cross the link in between."""
    if len(cut_bytes) != len(piece_compute_ms) - 1:
        raise ValueError("a split into K pieces has K-1 cuts")
    return sum(piece_compute_ms) + sum(link.transfer_ms(b + HEADER_BYTES) for b in cut_bytes)


def offload_latency_ms(image_bytes: int, server_ms: float, link: Link) -> float:
    return link.transfer_ms(image_bytes + HEADER_BYTES) + server_ms
