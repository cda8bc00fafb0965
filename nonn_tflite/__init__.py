"""nonn-tflite: compress a Keras teacher into K tiny int8 students for TensorFlow Lite Micro.

The package imports nothing heavy at import time; each pipeline stage lives in its own module
(``data``, ``architectures``, ``teacher``, ``partition``, ``distill``, ``quantize``, ``profile``,
``report``, ``live``) and pulls in TensorFlow/Keras only when called.
"""

from __future__ import annotations

__version__ = "0.1.0"

from nonn_tflite.errors import NonnError  # noqa: E402  (light: no third-party imports)

__all__ = ["NonnError", "__version__"]
