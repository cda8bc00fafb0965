"""One exception hierarchy for every user-facing failure.

The CLI catches :class:`NonnError` once, prints its message as a single line and exits with
:attr:`NonnError.exit_code`; tracebacks appear only with ``--debug``. Messages say what was
wrong and what is expected, so a user can fix the input without reading code.
"""

from __future__ import annotations


class NonnError(Exception):
    """Base of all errors the toolkit reports to users (exit code 1: the work failed)."""

    exit_code = 1


class UsageError(NonnError):
    """The user asked for something invalid (exit code 2, like click's own usage errors)."""

    exit_code = 2


class DatasetError(UsageError):
    """A dataset is missing, malformed, or does not fit the model."""


class ModelFileError(UsageError):
    """A model file is missing, corrupt, or not the kind of model expected."""


class BudgetError(UsageError):
    """No student fits the requested per-device memory budget."""


class PartitionError(UsageError):
    """The knowledge partition cannot be built as asked (e.g. K out of range)."""


class RunDirError(UsageError):
    """A run directory is missing a stage, or a stage would overwrite finished work."""


class ConversionError(NonnError):
    """TFLite conversion or verification failed."""


class CompatibilityError(ConversionError):
    """A model would not run under TensorFlow Lite Micro (or not as full int8).

    The message is one line, the first problem and a count; ``problems`` keeps them all (the
    table ``inspect`` prints carries the rest)."""

    def __init__(self, problems: list[str], what: str = "model",
                 reason: str = "is not TFLite-Micro compatible") -> None:
        self.problems = list(problems)
        more = f" ... and {len(self.problems) - 1} more" if len(self.problems) > 1 else ""
        super().__init__(f"{what} {reason}: {self.problems[0] if self.problems else '?'}{more}")


class BoardFitError(NonnError):
    """A model does not fit the flash or RAM of its board."""


class InternalError(NonnError):
    """An internal invariant failed (a bug in the toolkit, not bad input): exit code 1."""


class ParityError(ConversionError):
    """TFLite Micro and LiteRT's reference kernels disagree beyond the stated tolerance
    (:mod:`nonn_tflite.parity`): host figures would not describe the device."""
