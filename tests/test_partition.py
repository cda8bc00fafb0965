"""Knowledge partitioning: properties on real matrices and recovery of planted communities."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nonn_tflite.config import PartitionConfig
from nonn_tflite.errors import InternalError, PartitionError, UsageError
from nonn_tflite.partition import (AUTO_PERCENTILES, activation_graph, check_cover,
                                   choose_percentile, cooccurrence, filter_activity, modularity,
                                   null_modularity, partition_filters, plot_partition,
                                   structure_warning, top_filters)


def loop_cooccurrence(activity, top_k=50, rule="hebbian-difference"):
    """The per-image loop ``cooccurrence`` used to be (kept verbatim as the oracle)."""
    n, c = activity.shape
    k = max(2, min(top_k, c))
    w = np.zeros((c, c), dtype=np.float64)
    top = np.argsort(-activity, axis=1, kind="stable")[:, :k]
    for i in range(n):
        idx = top[i]
        v = activity[i, idx].astype(np.float64)
        block = np.outer(v, v)
        if rule == "hebbian-difference":
            block *= np.abs(v[:, None] - v[None, :])
        w[np.ix_(idx, idx)] += block
    np.fill_diagonal(w, 0.0)
    return w / w.max() if w.max() > 0 else w


def planted(k: int, per: int, n: int = 600, seed: int = 0):
    """Activity where filters of one hidden group fire together and never with other groups."""
    rng = np.random.default_rng(seed)
    c = k * per
    perm = rng.permutation(c)
    groups = [sorted(perm[i * per:(i + 1) * per].tolist()) for i in range(k)]
    a = rng.uniform(0.0, 0.05, (n, c))
    for i in range(n):
        g = groups[i % k]
        a[i, g] = rng.uniform(0.3, 1.0, len(g))
    return a / a.max(axis=1, keepdims=True), groups


@pytest.mark.parametrize("k,per", [(2, 16), (3, 20), (4, 16), (8, 32)])
@pytest.mark.parametrize("percentile", [None, 99.0])
def test_planted_communities_are_recovered(k, per, percentile):
    a, groups = planted(k, per)
    result = partition_filters(a, PartitionConfig(students=k, percentile=percentile))
    assert sorted(result.partitions) == sorted(groups)
    assert result.modularity > 0.4 * (1 - 1 / k)  # a random split scores about 0
    assert result.warning is None


@pytest.mark.parametrize("rule", ["hebbian-difference", "hebbian"])
def test_both_rules_recover_planted_groups(rule):
    a, groups = planted(3, 12)
    result = partition_filters(a, PartitionConfig(students=3, rule=rule, percentile=None))
    assert sorted(result.partitions) == sorted(groups)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 16])
def test_disjoint_complete_exact_k_and_balanced(k):
    rng = np.random.default_rng(k)
    a = filter_activity(rng.random((300, 4, 4, 128)))
    result = partition_filters(a, PartitionConfig(students=k, seed=3))
    parts = result.partitions
    assert len(parts) == k
    flat = [f for p in parts for f in p]
    assert sorted(flat) == list(range(128))  # complete and disjoint
    sizes = [len(p) for p in parts]
    target = 128 / k
    # balance tolerance: counts within 10 % of C/K (at least +-1 filter)
    assert max(sizes) <= max(np.ceil(target * 1.1), np.ceil(target) + 1)
    assert min(sizes) >= min(np.floor(target * 0.9), np.floor(target) - 1)
    acts = [a.mean(axis=0)[p].sum() for p in parts]
    if k > 1:  # activity within 10 % of the mean (+ one filter's worth of slack)
        assert max(acts) - min(acts) <= 0.1 * np.mean(acts) + a.mean(axis=0).max()


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    a = filter_activity(rng.random((200, 2, 2, 64)) ** 3)
    cfg = PartitionConfig(students=3, seed=7)
    assert partition_filters(a, cfg).partitions == partition_filters(a.copy(), cfg).partitions


def test_k_out_of_range_is_refused():
    a = filter_activity(np.random.default_rng(0).random((20, 2, 2, 8)))
    with pytest.raises(PartitionError, match="between 1 and 8"):
        partition_filters(a, PartitionConfig(students=9))
    with pytest.raises(PartitionError, match="between 1 and 8"):
        partition_filters(a, PartitionConfig(students=0))


def test_filter_activity_is_relu_spatial_mean_over_image_max():
    fm = np.zeros((1, 2, 2, 3), dtype=np.float32)
    fm[0, :, :, 0] = 4.0
    fm[0, :, :, 1] = [[2.0, -2.0], [0.0, 0.0]]  # ReLU drops the negative
    a = filter_activity(fm)
    np.testing.assert_allclose(a, [[1.0, 0.125, 0.0]])


def test_edge_rules_on_a_hand_checked_case():
    a = np.array([[1.0, 0.5, 0.0]])
    w = cooccurrence(a, top_k=3, rule="hebbian")
    assert w[0, 1] == pytest.approx(1.0) and w[0, 2] == 0.0  # 0.5 normalised by itself
    w = cooccurrence(np.array([[1.0, 0.5, 0.25]]), top_k=3, rule="hebbian-difference")
    raw = {(0, 1): 1 * 0.5 * 0.5, (0, 2): 1 * 0.25 * 0.75, (1, 2): 0.5 * 0.25 * 0.25}
    top = max(raw.values())
    for (i, j), v in raw.items():
        assert w[i, j] == pytest.approx(v / top)
    with pytest.raises(UsageError, match="unknown --rule"):
        cooccurrence(a, rule="nope")


def test_percentile_pruning_keeps_only_strong_edges():
    rng = np.random.default_rng(1)
    w = cooccurrence(rng.random((100, 32)), top_k=10)
    full = activation_graph(w, None)
    pruned = activation_graph(w, 90.0)
    assert pruned.number_of_nodes() == full.number_of_nodes() == 32
    assert 0 < pruned.number_of_edges() < full.number_of_edges() * 0.2


def test_plot_and_json(tmp_path):
    a, _ = planted(2, 8)
    cfg = PartitionConfig(students=2)
    result = partition_filters(a, cfg)
    plot_partition(result, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(json.dumps(result.to_json(cfg, "features", len(a))))
    for key in ("num_filters", "partitions", "modularity", "rule", "seed"):
        assert key in doc
    assert doc["num_filters"] == 16


@pytest.mark.parametrize("method", ["random", "contiguous"])
def test_ablation_baselines_are_balanced_and_complete(method):
    a = filter_activity(np.random.default_rng(0).random((50, 2, 2, 30)))
    result = partition_filters(a, PartitionConfig(students=4, method=method, seed=1))
    assert sorted(f for p in result.partitions for f in p) == list(range(30))
    assert sorted(len(p) for p in result.partitions) == [7, 7, 8, 8]
    if method == "contiguous":
        assert result.partitions[0] == list(range(8))
    with pytest.raises(UsageError, match="unknown partition method"):
        partition_filters(a, PartitionConfig(students=2, method="spectral"))


def test_a_partition_that_cuts_the_network_is_flagged():
    """A star (one hub tied to 20 filters: what a sparse 99th-percentile graph of a small teacher
    looks like) cannot fit in one of 4 parts of 16: the parts keep less than chance."""
    w = np.zeros((64, 64))
    w[0, 1:21] = w[1:21, 0] = 1.0
    graph = activation_graph(w, None)
    parts = [list(range(i, i + 16)) for i in range(0, 64, 16)]
    q = modularity(graph, parts)
    assert q <= 0
    text = structure_warning(graph, q, 4, 99.0)
    assert "no better than a random one" in text and "20 edges for 64 filters" in text
    assert "--percentile" in text
    assert structure_warning(graph, q, 1, 99.0) is None  # K=1: nothing to cut
    assert structure_warning(graph, 0.3, 4, 99.0) is None


@pytest.mark.parametrize("rule", ["hebbian-difference", "hebbian"])
@pytest.mark.parametrize("n,c,top_k,dtype", [(700, 96, 50, np.float32), (300, 40, 7, np.float64),
                                             (50, 2, 50, np.float32), (80, 5, 1, np.float64),
                                             (3000, 64, 50, np.float32)])
def test_chunked_cooccurrence_is_bit_identical_to_the_loop(rule, n, c, top_k, dtype):
    rng = np.random.default_rng(n + c)
    a = rng.random((n, c)).astype(dtype)
    a[::3] = np.round(a[::3], 1)  # many ties at the k-th value
    a[1::7, : c // 2] = 0.0  # and zero activity
    a = a / np.maximum(a.max(axis=1, keepdims=True), 1e-12)
    expected = loop_cooccurrence(a, top_k, rule)
    for chunk in (1, 977, 1 << 17):  # one pair at a time, ragged chunks, the default
        assert np.array_equal(cooccurrence(a, top_k, rule, chunk=chunk), expected)


def test_top_filters_is_the_stable_argsort_set():
    rng = np.random.default_rng(0)
    a = np.round(rng.random((400, 30)), 1)  # ties everywhere
    for k in (1, 5, 29, 30, 31):
        want = np.sort(np.argsort(-a, axis=1, kind="stable")[:, :k], axis=1)
        assert np.array_equal(top_filters(a, k), want)


def star_and_groups(seed: int = 0) -> np.ndarray:
    """64 filters in 4 planted groups of 16 (ties 0.3-0.5), a faint background on every pair,
    and a hub tied at full strength to 20 filters across the groups: the top 1 % of edges is
    then the star alone, which no part of 16 can hold (a sparse 99th-percentile network)."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.01, 0.05, (64, 64))
    for g in range(4):
        idx = np.arange(g * 16, g * 16 + 16)
        w[np.ix_(idx, idx)] = rng.uniform(0.3, 0.5, (16, 16))
    spokes = rng.choice(np.arange(1, 64), 20, replace=False)
    w[0, spokes] = 1.0
    w = np.triu(w, 1)
    return w + w.T


def test_auto_percentile_lowers_until_the_parts_keep_structure():
    w = star_and_groups()
    cfg = PartitionConfig(students=4)
    chosen, search = choose_percentile(w, np.full(64, 0.5), cfg)
    assert search[0]["percentile"] == 99.0 and not search[0]["accepted"]
    assert 20 <= search[0]["edges"] <= 22  # the star (and a strong group tie or two)
    assert search[-1]["accepted"] and search[-1]["percentile"] == chosen
    assert chosen is not None and chosen < 99.0
    assert all(not row["accepted"] for row in search[:-1])
    assert search[-1]["modularity"] > 0 and search[-1]["z"] >= 3.0
    assert [r["percentile"] for r in search] == list(AUTO_PERCENTILES[: len(search)])


def test_auto_keeps_the_reference_percentile_when_it_works():
    a, groups = planted(4, 16)
    result = partition_filters(a, PartitionConfig(students=4))  # default: auto
    assert result.percentile == 99.0 and len(result.search) == 1 and result.search[0]["accepted"]
    assert sorted(result.partitions) == sorted(groups)
    doc = result.to_json(PartitionConfig(students=4), "features", len(a))
    assert doc["percentile"] == 99.0 and doc["percentile_requested"] == "auto"
    assert doc["percentile_search"][0]["z"] > 3


def test_percentile_override_is_used_as_given():
    a, _ = planted(2, 8)
    for p in (99.0, 90.0, None):
        result = partition_filters(a, PartitionConfig(students=2, percentile=p))
        assert result.percentile == p and result.search == []
        assert result.to_json(PartitionConfig(students=2, percentile=p), "f", len(a))["percentile"] == p


def test_null_modularity_of_random_splits_is_about_zero():
    w = star_and_groups(1)
    graph = activation_graph(w, None)
    mean, std = null_modularity(graph, 64, 4, seed=0)
    assert -0.05 < mean < 0.01 and 0 < std < 0.05
    sparse = activation_graph(w, 99.0)  # 20 edges: a random split's modularity spreads widely
    assert null_modularity(sparse, 64, 4, seed=0)[1] > 2 * std


def test_zero_edge_network_warns():
    """Every image has one active filter: nothing co-fires, the network has no edges, and the
    split can only be by index."""
    a = np.zeros((40, 12))
    a[np.arange(40), np.arange(40) % 12] = 1.0
    for p in ("auto", 99.0, None):
        result = partition_filters(a, PartitionConfig(students=3, percentile=p))
        assert result.graph.number_of_edges() == 0
        assert result.warning and "no edges" in result.warning and "12 filters" in result.warning
        assert sorted(f for part in result.partitions for f in part) == list(range(12))
    assert partition_filters(a, PartitionConfig(students=1)).warning is None


def test_cover_check_raises_an_internal_error():
    check_cover([[0, 2], [1, 3]], 4, 2)
    for parts, k in [([[0, 1], [1, 3]], 2), ([[0, 1], [3]], 2), ([[0, 1, 2, 3]], 2),
                     ([[0, 1, 2, 3], []], 2), ([[0, 1], [2, 3, 4]], 2)]:
        with pytest.raises(InternalError, match="do not cover the 4 filters exactly once"):
            check_cover(parts, 4, k)
    assert InternalError.exit_code == 1 and not issubclass(InternalError, UsageError)


def test_percentile_option_parses_auto_and_numbers():
    from nonn_tflite.commands.pipeline import _partition_cfg

    assert _partition_cfg(2, "louvain", "hebbian", 50, "auto", 1.0, None, 100, 0).percentile == "auto"
    assert _partition_cfg(2, "louvain", "hebbian", 50, "AUTO", 1.0, None, 100, 0).percentile == "auto"
    assert _partition_cfg(2, "louvain", "hebbian", 50, "97.5", 1.0, None, 100, 0).percentile == 97.5
    assert _partition_cfg(2, "louvain", "hebbian", 50, "0", 1.0, None, 100, 0).percentile is None
    for bad in ("high", "100", "-1"):
        with pytest.raises(UsageError, match="--percentile .* must be auto or a number in"):
            _partition_cfg(2, "louvain", "hebbian", 50, bad, 1.0, None, 100, 0)
