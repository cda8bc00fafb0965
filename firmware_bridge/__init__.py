"""firmware_bridge: turn a converted NoNN run into flashable firmware projects.

One project per student device plus a fusion node, for a named target (``TARGETS``). Public
entry points: :func:`export_project` (the ``nonn-tflite export`` command),
:func:`firmware_bridge.carrays.to_c_array` and :func:`firmware_bridge.resolver.ops_of`.
"""

from __future__ import annotations

from firmware_bridge.project import ExportResult, ProjectResult, export_project
from firmware_bridge.targets import TARGETS, get_target

__all__ = ["TARGETS", "ExportResult", "ProjectResult", "export_project", "get_target"]
