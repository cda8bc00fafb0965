"""Partition scaling: time and peak memory of filter network + Louvain + K-way merge.

Inputs are synthetic activity matrices with planted co-firing groups (so the result can also be
checked: the fraction of filters placed with their planted group is reported as ``recovery``).
Peak memory is Python-visible allocation (tracemalloc, numpy included).

    python benchmarks/partition.py --profile quick
    python benchmarks/partition.py --profile full      # 64..2048 filters x 1k..10k images
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

import numpy as np

from common import header, print_table, timed, write_results

PROFILES = {
    "quick": {"filters": [64, 128], "images": [1000], "students": 4},
    "full": {"filters": [64, 128, 256, 512, 1024, 2048], "images": [1000, 5000, 10000], "students": 4},
}


def planted_activity(c: int, n: int, groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    owner = rng.permutation(c) % groups
    a = rng.uniform(0.0, 0.1, (n, c)).astype(np.float32)
    for g in range(groups):
        rows = np.flatnonzero(np.arange(n) % groups == g)
        cols = np.flatnonzero(owner == g)
        a[np.ix_(rows, cols)] = rng.uniform(0.3, 1.0, (len(rows), len(cols)))
    return a / a.max(axis=1, keepdims=True), owner


def recovery(parts: list[list[int]], owner: np.ndarray) -> float:
    """Share of filters that sit in the part where most of their planted group sits."""
    hits = 0
    for p in parts:
        hits += np.bincount(owner[p], minlength=owner.max() + 1).max()
    return hits / len(owner)


def measure(c: int, n: int, k: int) -> dict:
    from nonn_tflite.config import PartitionConfig
    from nonn_tflite.partition import partition_filters

    a, owner = planted_activity(c, n, groups=k)
    tracemalloc.start()
    with timed() as t:
        result = partition_filters(a, PartitionConfig(students=k))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sizes = [len(p) for p in result.partitions]
    return {"filters": c, "images": n, "students": k, "seconds": round(t["seconds"], 3),
            "peak_mb": round(peak / 2**20, 1), "communities": len(result.communities),
            "edges": result.graph.number_of_edges(), "modularity": round(result.modularity, 3),
            "size_spread": max(sizes) - min(sizes), "recovery": round(float(recovery(result.partitions, owner)), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--out-dir", default=None, help="Where results go (default benchmarks/results).")
    args = ap.parse_args(argv)
    prof = PROFILES[args.profile]
    doc = header("partition", args.profile, ["python", "benchmarks/partition.py", *(argv or sys.argv[1:])])
    t0 = time.perf_counter()
    rows = [measure(c, n, prof["students"]) for n in prof["images"] for c in prof["filters"]]
    doc["wall_seconds"] = time.perf_counter() - t0
    doc["rows"] = rows
    print_table(f"partition scaling ({args.profile})", rows)
    from pathlib import Path

    write_results("partition", args.profile, doc, rows,
                  notes="Synthetic activity with K planted co-firing groups; recovery = share of "
                        "filters placed with the majority of their planted group.",
                  out_dir=Path(args.out_dir) if args.out_dir else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
