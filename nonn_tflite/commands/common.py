"""Options and error handling shared by every command.

Every command takes ``-v/-q``, ``--seed`` (where it means something) and ``--debug``. Library
errors (:class:`nonn_tflite.errors.NonnError`) become one line on stderr and exit code 1 (2 for
usage errors); a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any, Callable

import click

from nonn_tflite.errors import NonnError

F = Callable[..., Any]


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ start-up chatter hides our own output; users asked for -v get it back.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def common_options(func: F) -> F:
    """Add ``-v/--verbose``, ``-q/--quiet`` and ``--debug`` and run the command under them."""

    @click.option("-v", "--verbose", count=True, help="More output (repeat for TensorFlow logs).")
    @click.option("-q", "--quiet", is_flag=True, help="Only errors and the final result.")
    @click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
    @functools.wraps(func)
    def wrapper(*args: Any, verbose: int, quiet: bool, debug: bool, **kwargs: Any) -> Any:
        level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
        logging.basicConfig(level=level, format="%(message)s")
        if verbose < 2:
            _quiet_tensorflow()
        ctx = click.get_current_context()
        ctx.meta["quiet"] = quiet
        ctx.meta["verbose"] = verbose
        try:
            return func(*args, **kwargs)
        except NonnError as exc:
            if debug:
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            if debug:
                raise
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except Exception as exc:  # an unexpected failure: still one line unless --debug
            if debug:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"Error: {type(exc).__name__}: {first} (rerun with --debug for details)",
                       err=True)
            sys.exit(1)

    return wrapper


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with C-level stderr muted (its start-up banner ignores log levels).

    Only the import is muted; errors later still reach the terminal. With ``-vv`` nothing is.
    """
    ctx = click.get_current_context(silent=True)
    if (ctx and ctx.meta.get("verbose", 0) >= 2) or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    tf.get_logger().setLevel(logging.ERROR)  # e.g. retracing notices from predict()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def guard_interrupts(what: str, grace_s: float = 10.0,
                     kill: Callable[[], None] | None = None):
    """Ctrl-C/SIGTERM raise KeyboardInterrupt (a clean stop, exit 130 via common_options); a
    second Ctrl-C, or a clean stop still running after ``grace_s``, kills and exits at once."""
    from nonn_tflite.live.runtime import StopGuard

    def interrupt(signal_name: str) -> None:
        raise KeyboardInterrupt

    return StopGuard(what, grace_s, kill).install(interrupt)


def is_quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get("quiet"))
