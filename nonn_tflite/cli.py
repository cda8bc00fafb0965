"""The ``nonn-tflite`` command line: a thin porch over the library.

Commands parse options, call one library function, and print. Nothing heavy is imported here,
so ``nonn-tflite --help`` answers at once; each command imports TensorFlow only when it runs.
"""

from __future__ import annotations

import importlib

import click

from nonn_tflite import __version__

# command name -> "module:attribute" (modules under nonn_tflite.commands)
COMMANDS = {
    "run": "pipeline:run",
    "teacher": "pipeline:teacher",
    "partition": "pipeline:partition",
    "distill": "pipeline:distill",
    "info": "pipeline:info",
    "boards": "boards:boards",
    "convert": "convert:convert",
    "inspect": "convert:inspect",
    "export": "export:export",
    "measure": "measure:measure",
    "demo": "live:demo",
    "device": "live:device",
    "fusion": "live:fusion",
    "source": "live:source",
    "broker-config": "live:broker_config",
    "dashboard": "web:dashboard",
    "report": "web:report",
}


class LazyGroup(click.Group):
    """Imports a command's module only when that command is used (keeps --help fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(f"nonn_tflite.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"nonn_tflite.commands.{module_name}":
                return None  # that area is not built yet
            raise
        return getattr(module, attr, None)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nonn-tflite")
def main() -> None:
    """Split a Keras teacher CNN into K tiny int8 students for TensorFlow Lite Micro.

    \b
    Example (offline, a few minutes on a laptop):
      nonn-tflite run --students 2 --out runs/digits-k2
      nonn-tflite info runs/digits-k2
    """


if __name__ == "__main__":
    main()
