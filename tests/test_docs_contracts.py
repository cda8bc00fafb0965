"""The docs quote the code's own rules and keys, so they cannot drift apart silently."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _flat(path: Path) -> str:
    return re.sub(r"\s+", " ", path.read_text())


def test_parity_rule_is_quoted_verbatim():
    from nonn_tflite.parity import TOLERANCE_RULE

    for doc in ("README.md", "docs/ARCHITECTURE.md"):
        assert TOLERANCE_RULE in _flat(ROOT / doc), f"{doc} does not quote parity.TOLERANCE_RULE"


def test_report_and_partition_keys_named_in_the_docs_exist():
    from nonn_tflite import convert_outputs, partition

    source = (Path(convert_outputs.__file__).read_text()
              + Path(partition.__file__).read_text())
    arch = _flat(ROOT / "docs/ARCHITECTURE.md")
    for key in ("accuracy_int8", "accuracy_int8_litert_builtin", "accuracy_int8_litert_xnnpack",
                "int8_runtimes", "int8_runtime", "accuracy_int8_note", "parity", "percentile",
                "percentile_requested", "percentile_search"):
        assert re.search(rf'`(system\.)?{key}`|"{key}"', arch), key
        assert f'"{key}"' in source or f"{key}=" in source, key
    assert f"`MIN_Z` ({partition.MIN_Z:g})" in arch
    assert f"`NULL_SPLITS` ({partition.NULL_SPLITS})" in arch
    listed = ", ".join(f"{p:g}" for p in partition.AUTO_PERCENTILES if p is not None)
    assert f"({listed}, then every edge)" in arch
