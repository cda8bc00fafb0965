"""The two runtimes every measurement goes through: LiteRT (host) and TFLite Micro (device).

One place opens them, so every caller gets the same verification (no unverified flatbuffer
reaches a runtime), the same kernel choice and the same one-line errors.

LiteRT kernel sets (``kernels``):

* ``reference``: ``BUILTIN_REF``, LiteRT's reference kernels. Bit-exact with TFLM on every op
  measured here except FULLY_CONNECTED, where LiteRT rounds the requantisation once and TFLM
  twice (see :mod:`nonn_tflite.parity`).
* ``builtin``: ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``, the optimised builtin kernels without a
  delegate: what the live nodes run. Faster; a few CONV_2D values may differ by 1 LSB.
* ``default``: ``AUTO``, with the XNNPACK delegate (what LiteRT does out of the box).
"""

from __future__ import annotations

import contextlib

import numpy as np

from nonn_tflite.errors import ModelFileError
from nonn_tflite.intake import one_line, verify_bytes
from nonn_tflite.quantize import captured_output

KERNELS = ("reference", "builtin", "default")


def litert(buf: bytes, kernels: str = "reference", threads: int = 1, *,
           what: str | None = None, preserve_all_tensors: bool = False, quiet: bool = True):
    """A LiteRT interpreter over ``buf``, tensors allocated.

    ``what`` names the model in the error (``"{what} is not a loadable .tflite model: ..."``,
    the runtime's whole message on one line); without it the message is ``"LiteRT cannot load
    the model: <first line>"``. ``quiet`` swallows LiteRT's fd-2 banner while loading (it
    briefly redirects the process's stderr: the live nodes, with other threads running, pass
    False).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, not {kernels!r}")
    verify_bytes(bytes(buf))  # never hand a runtime an unverified flatbuffer
    resolver = {"reference": OpResolverType.BUILTIN_REF,
                "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                "default": OpResolverType.AUTO}[kernels]
    try:
        # "INFO: Created TensorFlow Lite XNNPACK delegate" on fd 2
        with captured_output((2,)) if quiet else contextlib.nullcontext():
            it = Interpreter(model_content=bytes(buf), num_threads=threads,
                             experimental_op_resolver_type=resolver,
                             experimental_preserve_all_tensors=preserve_all_tensors)
            it.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        if what:
            raise ModelFileError(f"{what} is not a loadable .tflite model: {one_line(exc)}") from None
        raise ModelFileError(f"LiteRT cannot load the model: {first_line(exc)}") from None
    return it


def first_line(exc: Exception) -> str:
    """The first non-empty line of a runtime's message (they run to pages)."""
    lines = [s for s in str(exc).strip().splitlines() if s.strip()]
    return lines[0] if lines else type(exc).__name__


def tflm(buf: bytes, arena_bytes: int, *, preserve_all_tensors: bool = False):
    """A TFLite Micro interpreter (the Python wrapper of the reference-kernel build).

    Only call it with a verified model and an arena known to be large enough: for some
    too-small arenas TFLM segfaults instead of raising (so :mod:`nonn_tflite.arena` probes in
    a child process).
    """
    from tflite_micro import runtime

    kwargs = {}
    if preserve_all_tensors:  # sic: the wrapper's keyword is spelt "intrepreter_config"
        kwargs["intrepreter_config"] = runtime.InterpreterConfig.kPreserveAllTensors
    return runtime.Interpreter.from_bytes(bytes(buf), arena_size=int(arena_bytes), **kwargs)


class Int8Runner:
    """Run a batch-1 int8 model over many inputs with LiteRT (LiteRT resizes the batch; int8
    kernels treat rows independently, so results equal single-image runs; tests check that)."""

    def __init__(self, buf: bytes, kernels: str = "builtin", chunk: int = 256) -> None:
        self.buf, self.kernels, self.chunk = buf, kernels, chunk
        self._it = litert(buf, kernels)
        self.input = self._it.get_input_details()[0]
        self.output = self._it.get_output_details()[0]
        self._batch = 1

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=self.input["dtype"])
        try:
            outs = [self._run(x[i:i + self.chunk]) for i in range(0, len(x), self.chunk)]
        except RuntimeError:  # a RESHAPE with a fixed batch-1 shape cannot take a batch
            if self.chunk == 1:
                raise
            self._it, self._batch, self.chunk = litert(self.buf, self.kernels), 1, 1
            outs = [self._run(x[i:i + 1]) for i in range(len(x))]
        return np.concatenate(outs) if outs else np.zeros((0, *self.output["shape"][1:]), np.int8)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if len(x) != self._batch:
            self._it.resize_tensor_input(self.input["index"], [len(x), *self.input["shape"][1:]],
                                         strict=False)
            self._it.allocate_tensors()
            self._batch = len(x)
        self._it.set_tensor(self.input["index"], x)
        self._it.invoke()
        return self._it.get_tensor(self.output["index"]).copy()


class MicroRunner:
    """Run a batch-1 int8 model over many inputs with TFLite Micro itself, one row at a time
    (TFLM cannot resize inputs): the numbers a device computes."""

    def __init__(self, buf: bytes, arena_bytes: int) -> None:
        verify_bytes(bytes(buf))
        with captured_output((2,)):
            self._it = tflm(buf, arena_bytes)
        d = self._it.get_input_details(0)
        self.input_shape, self.input_dtype = tuple(d["shape"]), d["dtype"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        xs = np.asarray(x, dtype=self.input_dtype).reshape(-1, *self.input_shape)
        outs = []
        for row in xs:
            self._it.set_input(row, 0)
            self._it.invoke()
            outs.append(np.asarray(self._it.get_output(0)).reshape(-1).copy())
        return np.stack(outs) if outs else np.zeros((0, 0), np.int8)


__all__ = ["KERNELS", "Int8Runner", "MicroRunner", "first_line", "litert", "one_line", "tflm"]
