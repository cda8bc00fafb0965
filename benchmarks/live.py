"""Live MQTT scaling: frames/s and end-to-end latency for K devices over mosquitto on loopback,
QoS 0 and 1, against offline inference of the same int8 models in one process.

Each point is one run of the soak harness (``benchmarks/soak.py``: real node processes, a real
mosquitto, every frame accounted for) on a synthetic K-student deployment. The offline figure
runs the same LiteRT models, requantisation and wire encoding in one process with no broker;
``mqtt_overhead_x`` = live end-to-end p50 latency / offline per-frame time (what the network,
broker and process hops add), and ``kept_up`` says whether every frame sent was predicted.

    python benchmarks/live.py --profile quick          # K = 2, 4; QoS 0, 1; 8 s each
    python benchmarks/live.py --profile full           # K = 2, 4, 8, 16; QoS 0, 1; 20 s each
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, header, print_table, write_results

PROFILES = {
    "quick": {"ks": [2, 4], "qos": [0, 1], "duration": 8.0, "rate": 20.0},
    "full": {"ks": [2, 4, 8, 16], "qos": [0, 1], "duration": 20.0, "rate": 50.0},
}


def offline_fps(run: Path, images, repeats: int = 1) -> tuple[float, float]:
    """Frames/s and ms/frame of the int8 system in one process (no MQTT)."""
    from nonn_tflite.deployment import load_deployment
    from nonn_tflite.live.offline import OfflineSystem

    system = OfflineSystem(load_deployment(run))
    t0 = time.perf_counter()
    n = 0
    for _ in range(repeats):
        for x in images:
            system.logits(x)
            n += 1
    dt = time.perf_counter() - t0
    return n / dt, 1000.0 * dt / n


def point(k: int, qos: int, prof: dict, work: Path) -> dict:
    import numpy as np

    from soak import SoakConfig, build_run, run_soak

    run = work / f"k{k}"
    if not (run / "tflite" / "deployment.json").exists():
        build_run(k, run)
    doc = run_soak(SoakConfig(devices=k, rate=prof["rate"], duration_s=prof["duration"], qos=qos,
                              run=str(run), profile="live"), work / f"soak-k{k}-q{qos}")
    with np.load(run / "tflite" / "test_sample.npz") as z:
        images = z["x"][:300]
    off_fps, off_ms = offline_fps(run, images)
    frames = doc["accounting"]["frames"]
    nodes = [r for r in doc["rss"] if r.get("is_node")]
    live_fps = doc["sustained_fps"] or 0.0
    kept_up = frames["predicted"] == frames["sent"]
    return {"K": k, "qos": qos, "rate": prof["rate"], "frames": frames["sent"], "predicted": frames["predicted"],
            "partial": frames["partial"], "unaccounted": doc["accounting"]["unaccounted_total"],
            "live_fps": live_fps, "p50_ms": doc["latency_ms"]["p50"], "p99_ms": doc["latency_ms"]["p99"],
            "offline_fps": round(off_fps, 1), "offline_ms": round(off_ms, 3),
            "mqtt_overhead_x": round(doc["latency_ms"]["p50"] / off_ms, 1) if off_ms else None,
            "kept_up": kept_up,
            "max_node_rss_mib": round(max((r["rss_end_mib"] for r in nodes), default=0.0), 1),
            "max_rss_growth_mib": round(max((r["growth_mib"] for r in nodes), default=0.0), 2),
            **cpu_figures(nodes)}


def cpu_figures(nodes: list[dict]) -> dict:
    """The fusion node's CPU and the busiest and mean device's (% of one core): the fusion node
    is the one that grows with K, the devices should not."""
    devices = [r["cpu_pct"] for r in nodes if r["node"].startswith("device") and r.get("cpu_pct") is not None]
    fusion = next((r.get("cpu_pct") for r in nodes if r["node"] == "fusion"), None)
    return {"fusion_cpu_pct": fusion,
            "max_device_cpu_pct": max(devices, default=None),
            "mean_device_cpu_pct": round(sum(devices) / len(devices), 1) if devices else None}


def plot(rows: list[dict], profile: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    for qos in sorted({r["qos"] for r in rows}):
        pts = sorted((r["K"], r["p99_ms"], r["p50_ms"]) for r in rows if r["qos"] == qos)
        ax.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=f"p50, QoS {qos}")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "s--", label=f"p99, QoS {qos}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("devices K")
    ax.set_ylabel("end-to-end latency (ms, log)")
    ax.set_title(f"Live NoNN over mosquitto ({profile})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"live-{profile}.png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--work", type=Path, default=None, help="Where deployments and logs go (default: a temp dir).")
    args = ap.parse_args(argv)
    prof = PROFILES[args.profile]
    work = args.work or Path(tempfile.mkdtemp(prefix="nonn-live-"))
    t0 = time.perf_counter()
    rows = [point(k, q, prof, work) for k in prof["ks"] for q in prof["qos"]]
    doc = header("live", args.profile, ["python", "benchmarks/live.py", *argv])
    doc.update({"wall_seconds": time.perf_counter() - t0, "rows": rows, "settings": prof})
    cols = ["K", "qos", "rate", "frames", "predicted", "partial", "unaccounted", "live_fps", "p50_ms", "p99_ms",
            "offline_fps", "offline_ms", "mqtt_overhead_x", "kept_up", "max_node_rss_mib",
            "fusion_cpu_pct", "mean_device_cpu_pct"]
    print_table(f"live MQTT scaling ({args.profile})", rows, cols)
    write_results("live", args.profile, doc, rows, cols,
                  notes="Synthetic K-student digits deployments; one source at `rate` frames/s; all node "
                        "processes and mosquitto share this machine's cores, so large K measures the host.")
    plot(rows, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
