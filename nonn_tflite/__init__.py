"""nonn-tflite: compress a Keras teacher into K tiny int8 students for TensorFlow Lite Micro.

The library API, importable without the CLI::

    from nonn_tflite import DataConfig, TeacherConfig, PartitionConfig, DistillConfig
    from nonn_tflite import run_teacher, run_partition, run_distill, convert_run, RunDir

    run = run_teacher("runs/digits-k2", DataConfig(), TeacherConfig())
    run_partition(run, PartitionConfig(students=2))
    run_distill(RunDir("runs/digits-k2"), DistillConfig())
    convert_run("runs/digits-k2")

Nothing heavy is imported here: each name is loaded from its pipeline-stage module on first
use, and TensorFlow/Keras only when a stage runs.
"""

from __future__ import annotations

import importlib
from typing import Any

from nonn_tflite.errors import NonnError

__version__ = "0.1.0"

_EXPORTS = {
    "DataConfig": "config", "TeacherConfig": "config", "PartitionConfig": "config",
    "DistillConfig": "config", "TrainConfig": "config", "BudgetConfig": "config",
    "load_dataset": "data", "Dataset": "data",
    "run_teacher": "pipeline", "run_partition": "pipeline", "run_distill": "pipeline",
    "import_teacher": "pipeline",
    "partition_filters": "partition", "filter_activity": "partition",
    "convert_run": "convert", "ConvertOptions": "convert",
    "RunDir": "rundir", "get_board": "boards", "BOARDS": "boards",
    "read_tflite": "tflite_model",
}

__all__ = ["NonnError", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nonn_tflite' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nonn_tflite.{module}"), name)
