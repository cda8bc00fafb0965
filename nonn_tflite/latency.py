"""Host latency of an int8 model: LiteRT, 1 thread, median and p90 of single-image invokes.

Reference kernels (``BUILTIN_REF``, the closest a PC gets to TFLM's) and the default delegate
(XNNPACK). Host figures rank models; they are not MCU timings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from nonn_tflite.errors import ModelFileError
from nonn_tflite.interpreters import first_line as _one_line
from nonn_tflite.interpreters import litert

DEFAULT_LATENCY_RUNS = 200


@dataclass
class LatencyResult:
    kernels: str
    median_ms: float
    p90_ms: float
    runs: int
    threads: int = 1


def measure_latency(buf: bytes, runs: int = DEFAULT_LATENCY_RUNS, kernels: str = "reference",
                    sample: np.ndarray | None = None, warmup: int = 5) -> LatencyResult:
    """Median and p90 of ``runs`` single-image invokes on 1 thread."""
    it = litert(buf, kernels)
    inp = it.get_input_details()[0]
    x = sample if sample is not None else np.random.default_rng(0).integers(
        -128, 128, inp["shape"]).astype(inp["dtype"])
    x = np.asarray(x, inp["dtype"]).reshape(inp["shape"])
    times = []
    for i in range(warmup + max(1, runs)):
        it.set_tensor(inp["index"], x)
        t0 = time.perf_counter_ns()
        try:  # a model LiteRT loads may still fail here: one line, not a traceback
            it.invoke()
        except RuntimeError as exc:
            raise ModelFileError(f"LiteRT cannot run the model: {_one_line(exc)}") from None
        if i >= warmup:
            times.append((time.perf_counter_ns() - t0) / 1e6)
    return LatencyResult(kernels, round(float(np.median(times)), 5),
                         round(float(np.percentile(times, 90)), 5), len(times))
