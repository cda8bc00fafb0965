"""Filter-network density: how much structure the partition can use at each edge percentile.

The reference prunes the filter activation network to its 99th percentile of edge weights, a
threshold chosen for a 256-filter WRN-40-4. On a smaller teacher the same percentile leaves a
handful of edges; Louvain then finds mostly single filters and the balanced K-way merge cannot
keep them together. This sweep shows, on a real run's teacher and validation images, the edges,
Louvain communities and modularity of the final K parts per percentile (modularity <= 0: the
parts are no better than a random split; the partition step warns about it).

    python benchmarks/filter_graph.py --run benchmarks/work/cpu/nonn-k4 --label cpu
    python benchmarks/filter_graph.py --run models/digits-k2 --students 2 --label digits-k2

``auto`` (the default of ``partition``, first row) picks the sparsest network whose K parts have
modularity > 0 and at least 3 standard deviations above random balanced splits' (``z``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import header, print_table, write_results

PERCENTILES = ("auto", 99.0, 97.5, 95.0, 90.0, 75.0, 50.0)


def activity_of(run_path: Path, max_images: int):
    """(N, C) filter activity of the run's teacher on its validation split (as `partition` does)."""
    from nonn_tflite.partition import filter_activity
    from nonn_tflite.rundir import RunDir
    from nonn_tflite.teacher import load_keras_model, predict_features, teacher_view

    run = RunDir.open(run_path, need="teacher")
    ds = run.load_dataset()
    view = teacher_view(load_keras_model(run.file("teacher.keras")), run.manifest.get("feature_layer"))
    fmap, _ = predict_features(view, ds.x_val[:max_images])
    return filter_activity(fmap)


def sweep_row(activity, percentile: float | str, students: int) -> dict:
    from nonn_tflite.config import PartitionConfig
    from nonn_tflite.partition import louvain, modularity, partition_filters

    result = partition_filters(activity, PartitionConfig(students=students, percentile=percentile))
    g = result.graph
    comms = louvain(g, 1.0, 0)
    c = g.number_of_nodes()
    chosen = [r for r in result.search if r.get("percentile") == result.percentile]
    return {"requested": percentile, "percentile": result.percentile, "edges": g.number_of_edges(),
            "mean_degree": round(2 * g.number_of_edges() / c, 2),
            "communities": len(result.communities),
            "largest": max(len(x) for x in result.communities),
            "louvain_modularity": round(modularity(g, comms), 3),
            "parts_modularity": round(result.modularity, 3),
            "z": chosen[0].get("z") if chosen else None,
            "warned": result.warning is not None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="A run directory with a trained teacher.")
    ap.add_argument("--students", type=int, default=4, help="K, as in the run's partition.")
    ap.add_argument("--percentiles",
                    default=",".join(p if isinstance(p, str) else f"{p:g}" for p in PERCENTILES),
                    help="Comma-separated edge percentiles to try (auto: the partition step's choice).")
    ap.add_argument("--max-images", type=int, default=5000, help="Validation images (as `partition`).")
    ap.add_argument("--label", default="custom", help="Result file suffix: filter_graph-LABEL.json.")
    args = ap.parse_args(argv)
    try:
        percentiles = [p.strip() if p.strip() == "auto" else float(p)
                       for p in args.percentiles.split(",") if p.strip()]
    except ValueError:
        ap.error(f"--percentiles {args.percentiles!r}: expected auto or numbers like auto,99,95,90")
    if not (args.run / "teacher.keras").is_file():
        ap.error(f"--run {args.run}: no teacher.keras there (expected a run after `nonn-tflite teacher`)")
    doc = header("filter_graph", args.label, ["python", "benchmarks/filter_graph.py", *(argv or sys.argv[1:])])
    t0 = time.perf_counter()
    activity = activity_of(args.run, args.max_images)
    rows = [sweep_row(activity, p, args.students) for p in percentiles]
    doc.update({"wall_seconds": time.perf_counter() - t0, "run": str(args.run),
                "filters": int(activity.shape[1]), "images": int(activity.shape[0]),
                "students": args.students, "rows": rows})
    print_table(f"filter network of {args.run} ({activity.shape[1]} filters, K={args.students})", rows)
    write_results("filter_graph", args.label, doc, rows,
                  notes="requested: the --percentile given (auto: chosen by the partition step, "
                        "percentile = its choice, z = its significance against random splits). "
                        "parts_modularity: modularity of the final K parts on the pruned network "
                        "(<= 0: no better than a random split; `warned` = the partition step's warning). "
                        "communities/largest: Louvain on the pruned network before the merge.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
