"""Link models and the bytes each way of distributing inference puts on the network.

Three ways to classify an image with several small devices:

* **NoNN**: every device runs its student on the whole image and sends one int8 vector
  (+ the frame header); the devices work in parallel.
* **Split computing** (Neurosurgeon/DeepThings style): the teacher is cut into K consecutive
  pieces, one per device; each cut ships an int8 activation map to the next device, in series.
* **Offload**: the camera node sends the raw image to a server that runs the teacher.

Transfer time on a link = per-message overhead + bits / effective bit rate, with messages
sent one after another on a shared channel. Latencies combine measured compute with this
computed transfer; every figure is an estimate of the stated link model.
"""

from __future__ import annotations

from dataclasses import dataclass

from nonn_tflite.wire import HEADER_SIZE as HEADER_BYTES  # noqa: F401 (re-exported)


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


# -- split computing: where a teacher can be cut, and what each cut ships --------------------

@dataclass(frozen=True)
class Cut:
    layer: str
    shape: tuple[int, ...]  # activation shape without batch
    macs_before: int  # MACs of everything up to and including this layer

    @property
    def bytes(self) -> int:
        """The activation as int8, what the next device must receive."""
        n = 1
        for d in self.shape:
            n *= int(d)
        return n


def layer_macs(layer) -> int:
    """Multiply-accumulates of a Conv2D / DepthwiseConv2D / Dense layer at batch 1 (else 0)."""
    kind = type(layer).__name__
    out = layer.output.shape
    if kind == "Conv2D":
        kh, kw, cin, cout = layer.kernel.shape
        return int(kh * kw * cin * cout * out[1] * out[2])
    if kind == "DepthwiseConv2D":
        kh, kw, cin, mult = layer.kernel.shape
        return int(kh * kw * cin * mult * out[1] * out[2])
    if kind == "Dense":
        cin, cout = layer.kernel.shape
        return int(cin * cout)
    return 0


def cut_points(model) -> list[Cut]:
    """Layers whose output is the only tensor crossing from everything before to everything
    after: there a chain of devices can hand over one activation map (block outputs of a
    ResNet, not the inside of a residual block)."""
    layers = model.layers
    producers = [[t._keras_history.operation.name for t in _inputs_of(l)] for l in layers]
    position = {l.name: i for i, l in enumerate(layers)}
    total, cuts = 0, []
    for i, layer in enumerate(layers[:-1]):
        total += layer_macs(layer)
        if type(layer).__name__ == "InputLayer":
            continue
        crossing = {p for later in producers[i + 1:] for p in later if position[p] <= i}
        if crossing == {layer.name} and len(layer.output.shape) == 4:
            cuts.append(Cut(layer.name, tuple(int(d) for d in layer.output.shape[1:]), total))
    return cuts


def _inputs_of(layer) -> list:
    inp = layer.input
    if type(layer).__name__ == "InputLayer":
        return []
    return list(inp) if isinstance(inp, (list, tuple)) else [inp]


def total_macs(model) -> int:
    return sum(layer_macs(l) for l in model.layers)


def balanced_split(cuts: list[Cut], total: int, k: int) -> list[Cut]:
    """K-1 cuts that split the MACs into K nearly equal consecutive pieces."""
    chosen: list[Cut] = []
    for j in range(1, k):
        target = total * j / k
        options = [c for c in cuts if c not in chosen and (not chosen or c.macs_before > chosen[-1].macs_before)]
        if not options:
            break
        chosen.append(min(options, key=lambda c: abs(c.macs_before - target)))
    return chosen


def piece_macs(chosen: list[Cut], total: int) -> list[int]:
    bounds = [0, *(c.macs_before for c in chosen), total]
    return [b - a for a, b in zip(bounds, bounds[1:])]
