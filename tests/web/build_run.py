"""Write a small converted run directory for the web tests: ``python build_run.py OUT``.

It reuses the convert tests' hand-made digits run (teacher, partition, students, fusion as the
pipeline lays them out), converts it with the real ``convert_run`` (deployment.json,
test_sample.npz, report.json/.md/.csv/.png) and draws partition.png with the real partition
code (the run's own partition over the teacher's filter network). One run serves both the
live demo and the HTML report. About 20-30 s on 2 cores; run in a subprocess so that the
pytest process never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
HERE = Path(__file__).resolve().parent


def build(out: Path) -> Path:
    sys.path.insert(0, str(HERE.parent / "convert"))
    from conftest import build_run  # tests/convert/conftest.py: the tiny distilled run

    from nonn_tflite.convert import ConvertOptions, convert_run
    from nonn_tflite.partition import (
        PartitionResult,
        activation_graph,
        cooccurrence,
        filter_activity,
        modularity,
        plot_partition,
    )
    from nonn_tflite.rundir import RunDir
    from nonn_tflite.teacher import load_keras_model, predict_features, teacher_view

    run = build_run(out)
    convert_run(run, ConvertOptions(calibration=200, seed=3, boards=[], latency_runs=20,
                                    parity_samples=16))
    rd = RunDir(run)
    view = teacher_view(load_keras_model(run / "teacher.keras"), "features")
    fmap, _ = predict_features(view, rd.load_dataset().x_val[:300])
    activity = filter_activity(fmap)
    graph = activation_graph(cooccurrence(activity), percentile=50.0)
    parts = json.loads((run / "partition.json").read_text())["partitions"]
    plot_partition(PartitionResult(parts, parts, modularity(graph, parts), activity.mean(axis=0),
                                   graph), run / "partition.png")
    return run


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
