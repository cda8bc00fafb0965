"""The benchmarks' quick profiles on a tiny synthetic stand-in: the whole path and the JSON
schema. They claim nothing (the stand-in is random shapes, not CIFAR-10)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _stand_in(folder: Path) -> Path:
    """16x16 RGB images whose class sets which quadrant is bright: learnable in one epoch."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name, n in (("train", 360), ("test", 120)):
        y = np.arange(n) % 4
        x = rng.integers(0, 60, (n, 16, 16, 3), dtype=np.uint8)
        for i, c in enumerate(y):
            r, q = divmod(int(c), 2)
            x[i, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] += 150
        np.savez(folder / f"{name}.npz", x=x, y=y)
    return folder


def _run(script: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=1500)


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, NONN_BENCH_RESULTS=str(base / "results"), TF_CPP_MIN_LOG_LEVEL="2")
    return base, env


def test_cifar10_refuses_data_that_is_not_cifar10(bench_env):
    base, env = bench_env
    data = _stand_in(base / "refused")
    out = _run("cifar10.py", "--profile", "quick", "--data-dir", str(data), env=env)
    assert out.returncode != 0 and "not the real CIFAR-10" in out.stderr


def test_cifar10_quick_and_communication_on_a_stand_in(bench_env):
    base, env = bench_env
    data = _stand_in(base / "data")
    work = base / "work"
    args = ["--profile", "quick", "--data-dir", str(data), "--stand-in", "--work", str(work)]
    listed = _run("cifar10.py", *args, "--list", env=env)
    assert listed.returncode == 0 and "todo  nonn-k2" in listed.stdout
    out = _run("cifar10.py", *args, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    results = Path(env["NONN_BENCH_RESULTS"])
    doc = json.loads((results / "cifar10-quick.json").read_text())
    assert doc["claims"] is False and doc["dataset"] == "stand-in" and not doc["missing"]
    for key in ("machine", "versions", "commit", "wall_seconds", "rows"):
        assert key in doc
    names = {r["system"] for r in doc["rows"]}
    assert {"teacher", "nonn-k2", "nonn-k4", "kd-single", "kdat-single", "fair-total-k4", "resnet8",
            "random-k4", "contiguous-k4", "nodrop-k4", "dense-k4"} <= names
    for r in doc["rows"]:
        assert 0.0 <= r["acc_int8"] <= 1.0 and r["flash_kb"] > 0
    # every system's latency re-measured side by side in the assembling run
    assert set(doc["latency"]["ms"]) == names and not doc["latency"]["own_step_only"]
    assert all(r["latency_ms"] == doc["latency"]["ms"][r["system"]] > 0 for r in doc["rows"])
    k4 = doc["systems"]["nonn-k4"]
    assert len(k4["missing_one"]) == 4 and len(k4["students"]) == 4
    # missing_one scores the same (whole) test split as the accuracy columns: 120 stand-in images
    assert k4["missing_one_images"] == 120
    assert next(r for r in doc["rows"] if r["system"] == "nonn-k4")["missing_one_images"] == 120
    assert (results / "cifar10-quick.md").exists() and (results / "cifar10-quick.png").exists()
    again = _run("cifar10.py", *args, env=env)  # resumable: every step is skipped now
    assert again.returncode == 0 and "== " not in again.stdout

    comm = _run("communication.py", "--from", "cifar10-quick-stand-in", "--work", str(work), env=env)
    assert comm.returncode == 0, comm.stderr[-3000:]
    cdoc = json.loads((results / "communication-quick-stand-in.json").read_text())
    row = cdoc["rows"][0]
    assert row["nonn_bytes"] < row["split_bytes"] and row["offload_bytes"] == 16 * 16 * 3 + 44

    runs = sorted(work.glob("*/nonn-k4"))
    assert runs, list(work.iterdir())
    graph = _run("filter_graph.py", "--run", str(runs[0]), "--percentiles", "99,90,0",
                 "--label", "quick", env=env)
    assert graph.returncode == 0, graph.stderr[-3000:]
    gdoc = json.loads((results / "filter_graph-quick.json").read_text())
    edges = [r["edges"] for r in gdoc["rows"]]
    assert [r["percentile"] for r in gdoc["rows"]] == [99.0, 90.0, 0.0]
    assert edges[0] <= edges[1] <= edges[2] and edges[2] > 0   # a lower percentile keeps more
    assert all(isinstance(r["warned"], bool) for r in gdoc["rows"])
    bad = _run("filter_graph.py", "--run", str(work), env=env)
    assert bad.returncode == 2 and "no teacher.keras" in bad.stderr


def test_partition_quick_recovers_planted_groups(bench_env):
    base, env = bench_env
    out = _run("partition.py", "--profile", "quick", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((Path(env["NONN_BENCH_RESULTS"]) / "partition-quick.json").read_text())
    assert {r["filters"] for r in doc["rows"]} == {64, 128}
    assert all(r["seconds"] > 0 and r["peak_mb"] > 0 and r["recovery"] >= 0.9 for r in doc["rows"])
    # side by side with the reference's network build: the same network, the planted groups
    (ref,) = doc["reference"]["rows"]
    assert ref["same_network"] and ref["ari"] == 1.0 and ref["filters_used"] == ref["filters"]
    assert ref["reference_build_s"] > 0 and ref["ours_partition_s"] > 0


def test_readme_generated_sections_are_up_to_date():
    """README's "What you get" and Results are exactly what readme_results renders from the
    committed models/digits-k2 and benchmark JSON: no figure there is typed or stale."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import readme_results

    readme = (ROOT / "README.md").read_text()
    assert readme_results.render(readme) == readme, \
        "README is stale: run python benchmarks/readme_results.py (or benchmarks/digits_k2.py)"
    rep = json.loads((ROOT / "models" / "digits-k2" / "tflite" / "report.json").read_text())
    section = readme[readme.index(readme_results.WYG_START):readme.index(readme_results.WYG_END)]
    acc = rep["system"]["accuracy_int8"]
    assert f"{100 * acc:.2f} %**" in section and f"{rep['teacher']['flash_bytes'] / 1024:.1f} KiB" in section
    assert f"sends {rep['students'][0]['payload_bytes']} bytes" in section
    comm = readme[readme.index("### Communication per inference"):]
    assert "offload_over_nonn" in comm.splitlines()[4] and "whole teacher" in comm


@pytest.mark.skipif(not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists(),
                    reason="needs mosquitto (.ci/run installs it)")
def test_live_quick_through_mosquitto(bench_env):
    base, env = bench_env
    out = _run("live.py", "--profile", "quick", "--work", str(base / "live"), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    results = Path(env["NONN_BENCH_RESULTS"])
    doc = json.loads((results / "live-quick.json").read_text())
    assert {(r["K"], r["qos"]) for r in doc["rows"]} == {(2, 0), (2, 1), (4, 0), (4, 1)}
    for r in doc["rows"]:
        assert r["unaccounted"] == 0 and r["predicted"] > 0.9 * r["frames"]
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["offline_ms"] > 0 and r["mqtt_overhead_x"] > 1
        assert r["max_node_rss_mib"] > 10 and r["fusion_cpu_pct"] > 0 and r["mean_device_cpu_pct"] > 0
    assert (results / "live-quick.md").exists() and (results / "live-quick.png").exists()
