"""The NoNN wire format, under its historical import path.

The definitions live in :mod:`nonn_tflite.wire`, below both ``deployment.py`` and ``live/``, so
the deployment reader no longer imports the live package (the import cycle of issue 14).
"""

from nonn_tflite.wire import *  # noqa: F401,F403
from nonn_tflite.wire import __all__  # noqa: F401
