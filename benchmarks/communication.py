"""Communication: NoNN's bytes and latency per inference against split computing and offload.

* NoNN: each device sends its int8 vector + 36-byte header; devices compute in parallel.
* Split computing: the same teacher cut at block boundaries into K consecutive pieces with
  balanced MACs, one per device; each cut ships its int8 activation map (+ header) in series.
* Offload: the camera sends the uint8 image to a server that runs the teacher.

Compute is taken two ways: measured LiteRT latency on this host (int8, reference kernels,
1 thread; split pieces get the teacher's measured latency in proportion to their MACs), and the
board cost model's estimate for an MCU (``--board``, default nano33ble). Transfer time comes from
the link models in ``nonn_tflite.links``. Every latency is therefore an estimate built from
measured compute and modelled links; bytes are exact.

    python benchmarks/communication.py --from cifar10-cpu       # uses the cifar10 benchmark's runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import ROOT, header, print_table, write_results


def load_system(run_dir: Path) -> dict:
    rep = json.loads((run_dir / "tflite" / "report.json").read_text())
    return rep


def analyse(teacher_keras: Path, runs: dict[int, Path], board_name: str, image_bytes: int) -> tuple[list, dict]:
    from nonn_tflite.boards import get_board
    from nonn_tflite.energy import compute_latency_ms
    from nonn_tflite.links import (HEADER_BYTES, LINKS, balanced_split, cut_points, nonn_latency_ms,
                                   offload_latency_ms, piece_macs, split_latency_ms, total_macs)
    from nonn_tflite.teacher import load_keras_model

    board = get_board(board_name)
    teacher = load_keras_model(teacher_keras)
    cuts, total = cut_points(teacher), total_macs(teacher)
    rows, detail = [], {"board": board.name, "cut_candidates": [c.__dict__ for c in cuts],
                        "teacher_macs": total}
    for k, run_dir in sorted(runs.items()):
        rep = load_system(run_dir)
        t_ms_host = rep["teacher"]["latency_ms"]
        students = rep["students"]
        payloads = [s["payload_bytes"] for s in students]
        chosen = balanced_split(cuts, total, k)
        pieces = piece_macs(chosen, total)
        cut_bytes = [c.bytes for c in chosen]
        compute = {
            "host": ([s["latency_ms"] for s in students], [t_ms_host * m / total for m in pieces], t_ms_host,
                     rep["fusion"]["latency_ms"] or 0.0),
            board.name: ([compute_latency_ms(s["macs"], board)[0] for s in students],
                         [compute_latency_ms(m, board)[0] for m in pieces], t_ms_host,
                         compute_latency_ms(rep["fusion"]["macs"], board)[0]),
        }
        detail[f"k{k}"] = {"cuts": [c.__dict__ for c in chosen], "piece_macs": pieces,
                           "nonn_payloads": payloads}
        for where, (dev_ms, piece_ms, server_ms, fusion_ms) in compute.items():
            for name, link in LINKS.items():
                nonn = nonn_latency_ms(dev_ms, payloads, link, fusion_ms)
                split = split_latency_ms(piece_ms, cut_bytes, link) if len(chosen) == k - 1 else None
                off = offload_latency_ms(image_bytes, server_ms, link)
                rows.append({"K": k, "compute": where, "link": name,
                             "nonn_bytes": sum(payloads), "split_bytes": sum(b + HEADER_BYTES for b in cut_bytes),
                             "offload_bytes": image_bytes + HEADER_BYTES,
                             "nonn_ms": round(nonn, 3), "split_ms": round(split, 3) if split else None,
                             "offload_ms": round(off, 3),
                             "split_over_nonn": round(split / nonn, 2) if split else None,
                             "offload_over_nonn": round(off / nonn, 2)})
    return rows, detail


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", default="cifar10-cpu",
                    help="cifar10-<profile>[-stand-in]: reuse that benchmark's teacher and NoNN runs.")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    ap.add_argument("--board", default="nano33ble", help="MCU whose cost model estimates compute.")
    ap.add_argument("--profile-name", default=None, help="Name of the results file (default: the source).")
    args = ap.parse_args(argv)
    key = args.source.removeprefix("cifar10-")
    work = args.work / key
    teacher = work / "teacher" / "teacher.keras"
    runs = {int(p.name.split("-k")[1]): p for p in sorted(work.glob("nonn-k*")) if (p / "tflite" / "report.json").exists()}
    if not teacher.exists() or not runs:
        sys.exit(f"error: {work} has no teacher and converted NoNN runs; run benchmarks/cifar10.py "
                 f"--profile {key.split('-')[0]} first")
    t0 = time.perf_counter()
    shape = json.loads((runs[min(runs)] / "manifest.json").read_text())["dataset"]["input_shape"]
    image_bytes = int(shape[0] * shape[1] * shape[2])
    rows, detail = analyse(teacher, runs, args.board, image_bytes)
    profile = args.profile_name or key
    doc = header("communication", profile, ["python", "benchmarks/communication.py", *argv])
    doc.update({"wall_seconds": time.perf_counter() - t0, "source": args.source, "rows": rows, "detail": detail,
                "paper": {"total_latency_vs_baseline_x": 33}})
    cols = ["K", "compute", "link", "nonn_bytes", "split_bytes", "offload_bytes", "nonn_ms", "split_ms",
            "offload_ms", "split_over_nonn", "offload_over_nonn"]
    print_table(f"communication ({profile})", rows, cols)
    from nonn_tflite.links import LINKS

    notes = ("Latency = compute + transfer; transfer = per-message overhead + bits / goodput, messages in "
             "series on one channel. Links: " + "; ".join(f"{l.name}: {l.bits_per_second / 1e3:.0f} kbit/s, "
                                                          f"{l.overhead_ms} ms/message ({l.source})"
                                                          for l in LINKS.values())
             + ". Split pieces: teacher latency x piece MACs / total MACs (host) or the board's cost model.")
    write_results("communication", profile, doc, rows, cols, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
