"""Link-model arithmetic and the split-computing byte count on a hand-checked model."""

from __future__ import annotations

import pytest

from nonn_tflite.links import (HEADER_BYTES, LINKS, Link, balanced_split, cut_points, nonn_latency_ms,
                               offload_latency_ms, piece_macs, split_latency_ms, total_macs)


def test_transfer_time_by_hand():
    link = Link("test", 1_000_000, 2.0, "hand")
    assert link.transfer_ms(125) == pytest.approx(2.0 + 1.0)  # 1000 bits at 1 Mbit/s = 1 ms
    assert nonn_latency_ms([3.0, 5.0], [125, 125], link, fusion_ms=0.5) == pytest.approx(5 + 6 + 0.5)
    assert split_latency_ms([1.0, 2.0], [125 - HEADER_BYTES], link) == pytest.approx(3 + 3)
    assert offload_latency_ms(125 - HEADER_BYTES, 4.0, link) == pytest.approx(3 + 4)
    with pytest.raises(ValueError):
        split_latency_ms([1.0, 2.0], [], link)
    assert LINKS["802.15.4"].transfer_ms(0) == LINKS["802.15.4"].overhead_ms


def _hand_model():
    """8x8x1 -> conv3x3(4) -> conv3x3 s2(8) -> [residual: conv3x3(8) + add] -> GAP -> dense(10)."""
    import keras

    inp = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inp)          # 8*8*9*1*4 = 2304
    b = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="c2")(a)  # 4*4*9*4*8 = 4608
    c = keras.layers.Conv2D(8, 3, padding="same", name="c3")(b)             # 4*4*9*8*8 = 9216
    d = keras.layers.Add(name="add")([b, c])
    e = keras.layers.GlobalAveragePooling2D(name="gap")(d)
    out = keras.layers.Dense(10, name="fc")(e)                              # 8*10 = 80
    return keras.Model(inp, out)


def test_cut_points_and_bytes_by_hand():
    model = _hand_model()
    assert total_macs(model) == 2304 + 4608 + 9216 + 80
    cuts = {c.layer: c for c in cut_points(model)}
    assert set(cuts) == {"c1", "c2", "add"}  # c3 is inside the residual block: b still crosses
    assert cuts["c1"].bytes == 8 * 8 * 4 and cuts["c2"].bytes == 4 * 4 * 8 == cuts["add"].bytes
    assert cuts["c2"].macs_before == 2304 + 4608
    chosen = balanced_split(list(cuts.values()), total_macs(model), 2)
    assert [c.layer for c in chosen] == ["c2"]  # 6912 of 16208 MACs: the closest to half
    assert piece_macs(chosen, total_macs(model)) == [6912, 9296]
