"""Knowledge partitioning: properties on real matrices and recovery of planted communities."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nonn_tflite.config import PartitionConfig
from nonn_tflite.errors import PartitionError, UsageError
from nonn_tflite.partition import (activation_graph, cooccurrence, filter_activity, modularity,
                                   partition_filters, plot_partition, structure_warning)


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
