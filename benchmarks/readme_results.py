"""Rewrite the README's Results section from the latest benchmark JSON (never typed by hand).

    python benchmarks/readme_results.py            # prefers the cpu profile, else quick
"""

from __future__ import annotations

import json
import sys

from common import RESULTS, ROOT, markdown_table

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def cifar_section() -> list[str]:
    for profile in ("full", "cpu", "quick"):
        doc = _load(f"cifar10-{profile}.json")
        if doc:
            break
    else:
        return ["No CIFAR-10 run yet."]
    cols = ["system", "K", "acc_float", "acc_int8", "flash_kb", "arena_kb", "params", "latency_ms",
            "payload_b", "memory_x", "latency_x", "missing_one"]
    lines = [f"### CIFAR-10, `{profile}` profile ({'claimed' if doc.get('claims') else 'not claimed: smoke test'})",
             "", f"`{doc['command']}` — commit {doc['commit']}, {doc['machine']['cpu_count']} CPUs, {doc['date'][:10]}.",
             "Per-device figures (largest student); `_x` = teacher / per-device (memory = flash + arena); "
             "latencies re-measured side by side in the assembling run.", "",
             markdown_table(doc["rows"], cols)]
    if doc.get("missing"):
        lines.append(f"Steps not run yet: {', '.join(doc['missing'])}.\n")
    png = f"benchmarks/results/cifar10-{profile}.png"
    if (ROOT / png).exists():
        lines.append(f"![accuracy vs memory per device]({png})\n")
    return lines


def comm_section() -> list[str]:
    doc = next((d for d in map(_load, ("communication-full.json", "communication-cpu.json",
                                        "communication-quick.json")) if d), None)
    if not doc:
        return []
    rows = [r for r in doc["rows"] if r["compute"] != "host"]
    cols = ["K", "compute", "link", "nonn_bytes", "split_bytes", "offload_bytes", "nonn_ms", "split_ms",
            "offload_ms", "split_over_nonn"]
    return [f"### Communication per inference (`{doc['command']}`)", "",
            "Bytes are exact; latencies combine the board cost model's compute estimate with link models.", "",
            markdown_table(rows, cols)]


def live_section() -> list[str]:
    doc = _load("live-full.json") or _load("live-quick.json")
    lines = []
    if doc:
        cols = ["K", "qos", "rate", "frames", "predicted", "p50_ms", "p99_ms", "offline_ms", "mqtt_overhead_x",
                "max_node_rss_mib", "fusion_cpu_pct", "mean_device_cpu_pct"]
        lines += [f"### Live over mosquitto (`{doc['command']}`)", "", markdown_table(doc["rows"], cols)]
    for name in ("soak", "soak-qos1"):
        soak = _load(f"{name}.json")
        if soak:
            fr, lat = soak["accounting"]["frames"], soak["latency_ms"]
            lines.append(f"Soak `{soak.get('command', name)}`: {soak['config']['devices']} devices x "
                         f"{soak['config']['rate']:g} frames/s, QoS {soak['config']['qos']}: {fr['predicted']} of "
                         f"{fr['sent']} predicted, {soak['accounting']['unaccounted_total']} unaccounted, "
                         f"p50/p99 {lat['p50']}/{lat['p99']} ms.\n")
    return lines


def partition_section() -> list[str]:
    doc = _load("partition-full.json")
    if not doc:
        return []
    biggest = max(doc["rows"], key=lambda r: (r["filters"], r["images"]))
    return [f"### Partition scaling (`{doc['command']}`)", "",
            f"{biggest['filters']} filters x {biggest['images']} images: {biggest['seconds']} s, "
            f"{biggest['peak_mb']} MB peak, planted groups recovered {biggest['recovery']:.0%}. "
            "Full table: `benchmarks/results/partition-full.md`.", ""]


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    body = "\n".join([START, "", *cifar_section(), *comm_section(), *live_section(), *partition_section(), END])
    if START in text and END in text:
        text = text[: text.index(START)] + body + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + body + "\n"
    readme.write_text(text)
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
