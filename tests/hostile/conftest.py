"""Fixtures for the hostile-input tests: a real synthetic int8 deployment and real brokers.

The deployment (4 TFLite-Micro-clean students, Dense fusion) is built once per session in a
child process (``nonn_tflite.synthetic``, about 15 s), so pytest itself never imports TensorFlow.
Counts scale with environment variables, so CI runs small and the documented commands run big:
``NONN_FUZZ_MODELS`` (corrupted models, default 60), ``NONN_FUZZ_FRAMES`` (hypothesis examples
per frame property, default 1500).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

STUDENTS = 4


@pytest.fixture(scope="session")
def k4_run(tmp_path_factory) -> Path:
    """Run directory of a synthetic 4-student int8 deployment (tflite/deployment.json etc.)."""
    from nonn_tflite.synthetic import build_in_subprocess, k_students

    return build_in_subprocess(tmp_path_factory.mktemp("runs") / "synthetic-k4", k_students(STUDENTS))


@pytest.fixture(scope="session")
def k4_deployment(k4_run):
    from nonn_tflite.deployment import load_deployment

    return load_deployment(k4_run)


@pytest.fixture(scope="session")
def student_bytes(k4_run) -> bytes:
    return (k4_run / "tflite" / "student_0.tflite").read_bytes()
