"""Rewrite the README's generated sections (never typed by hand):

* "What you get", between ``<!-- what-you-get:start/end -->``, from the committed reference
  deployment ``models/digits-k2`` (its ``tflite/report.json`` and ``manifest.json``) and the live
  demo summaries ``benchmarks/results/demo-digits-k2*.json``, all written by
  ``python benchmarks/digits_k2.py`` (which then calls this);
* Results, between ``<!-- results:start/end -->``, from the latest benchmark JSON.

    python benchmarks/readme_results.py            # prefers the cpu profile, else quick
"""

from __future__ import annotations

import json
import sys

from common import RESULTS, ROOT, markdown_table

START, END = "<!-- results:start -->", "<!-- results:end -->"
WYG_START, WYG_END = "<!-- what-you-get:start -->", "<!-- what-you-get:end -->"
MEASURED_START, MEASURED_END = "<!-- measured:start -->", "<!-- measured:end -->"
REFERENCE = ROOT / "models" / "digits-k2"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _kib(b: int) -> str:
    return f"{b / 1024:.1f} KiB"


def _count(v: int) -> str:
    return f"{v / 1e6:.2f} M" if v >= 1e6 else f"{v / 1e3:.1f} k"


def _pct(a: float | None) -> str:
    return "-" if a is None else f"{100 * a:.2f}"


def what_you_get_section(ref: Path = REFERENCE, results: Path | None = None) -> list[str]:
    """The README's "What you get" table and sentences, from the reference deployment's
    report.json + manifest.json and the demo summaries (no figure typed by hand)."""
    results = results or RESULTS
    rep = json.loads((ref / "tflite" / "report.json").read_text())
    man = json.loads((ref / "manifest.json").read_text())
    sysm, t, f = rep["system"], rep["teacher"], rep["fusion"]
    arch = man["config"]["teacher"]["arch"].upper()
    n_test = rep["dataset"]["test_images"]

    def row(name: str, m: dict, payload: str, acc: str) -> str:
        return (f"| {name} | {_kib(m['flash_bytes'])} | {m['arena_bytes'] / 1024:.1f} / "
                f"{_kib(m['arena_bytes_32bit'])} | {_count(m['params'])} | {_count(m['macs'])} | "
                f"{m['latency_ms']:.3f} | {payload} | {acc} |")

    lines = ["| model | flash | TFLM arena (host / 32-bit) | params | MACs | LiteRT ms p50 | "
             "payload B | test acc float / int8 |", "|---|---|---|---|---|---|---|---|",
             row(f"teacher ({arch})", t, "-",
                 f"{_pct(sysm['teacher_accuracy_float'])} / {_pct(sysm['teacher_accuracy_int8'])} %")]
    for s in rep["students"]:
        lines.append(row(f"student {s['id']}", s, str(s["payload_bytes"]), "-"))
    lines.append(row("fusion", f, "-", f"**{_pct(sysm['accuracy_float'])} / "
                                         f"{_pct(sysm['accuracy_int8'])} %** (NoNN system)"))
    r = rep["ratios"]
    widest = max(rep["students"], key=lambda s: s["payload_bytes"])
    header = widest["payload_bytes"] - widest["width"]
    part = json.loads((ref / "partition.json").read_text())
    chosen = part.get("percentile")
    how = (f"chosen by `--percentile auto`" if part.get("percentile_requested") == "auto"
           else "`--percentile`")
    lines += ["", f"Teacher / largest student: flash {r['flash']:.1f}x, arena {r['arena']:.1f}x, latency "
                  f"{r['latency']:.1f}x, MACs {r['macs']:.1f}x, params {r['params']:.1f}x; each device "
                  f"sends {widest['payload_bytes']} bytes per inference ({widest['width']} int8 features + "
                  f"{header}-byte header). Accuracies on the {n_test} test images. The partition keeps "
                  f"the {part['edges']} strongest edges of the filter network (the "
                  f"{chosen:g}th percentile, {how}); its {len(part['sizes'])} parts have modularity "
                  f"{part['modularity']:.2f}" + (f" (warning: {part['warning']})" if part.get("warning") else
                                                 ", no structure warning") + "."]
    lines += _demo_lines(results, ref.name)
    made_on = _load("digits-k2-reference.json") if results == RESULTS else None
    on = f" on {_machine_words(made_on['machine'])}" if made_on else ""
    lines += ["", f"(Made {man['created'][:10]}{on} by `python benchmarks/digits_k2.py`: one run of "
                  "the command above, copied to `models/digits-k2`; the table is its "
                  "`tflite/report.md`.)"]
    lines += _other_machine_lines(results, rep, n_test)
    return lines


def _machine_words(m: dict) -> str:
    isa = m.get("isa")
    kind = ("" if isa is None else ", AMX" if "amx_tile" in isa else
            ", AVX-512" if "avx512f" in isa else ", AVX2")
    return f"{m['cpu']} ({m['cpu_count']} CPUs{kind})"


def report_sizes(rep: dict) -> dict:
    """Every size in a report.json, per model: what must not differ between machines."""
    keys = ("flash_bytes", "arena_bytes", "arena_bytes_32bit", "params", "macs")
    return {m: {k: rep[m][k] for k in keys} for m in ("teacher", "fusion")} | {
        f"student_{s['id']}": {k: s[k] for k in (*keys, "payload_bytes")} for s in rep["students"]}


def _other_machine_lines(results: Path, rep: dict, n_test: int) -> list[str]:
    """What the same command gave on other CPUs (``digits_k2.py --other-machine``), against the
    table above: the README shows each machine it was run on, not only the one that made it."""
    lines = []
    for path in sorted(results.glob("digits-k2-machine-*.json")):
        d = json.loads(path.read_text())
        s, part = d["system"], d["partition"]
        diff = max(abs(s[k] - rep["system"][k]) for k in ("accuracy_float", "accuracy_int8",
                                                           "teacher_accuracy_float",
                                                           "teacher_accuracy_int8"))
        sizes = "identical sizes" if d["sizes"] == report_sizes(rep) else "other sizes (a bug: report it)"
        lines.append(
            f"On {_machine_words(d['machine'])}, the same command gives teacher "
            f"{_pct(s['teacher_accuracy_float'])} / {_pct(s['teacher_accuracy_int8'])} %, NoNN "
            f"{_pct(s['accuracy_float'])} / {_pct(s['accuracy_int8'])} %, modularity "
            f"{part['modularity']:.2f}" + (f" (warning: {part['warning']})" if part.get("warning")
                                           else "") +
            f", in {d['run_seconds']:.0f} s: at most {round(diff * n_test)} test images from the "
            f"table, with {sizes} (`python benchmarks/digits_k2.py --other-machine`, "
            f"{d['date'][:10]}).")
    return ["", *lines] if lines else []


def _demo_lines(results: Path, name: str) -> list[str]:
    live = results / f"demo-{name}.json"
    kill = results / f"demo-{name}-kill.json"
    if not live.exists():
        return []
    d = json.loads(live.read_text())
    lat = d["latency_ms"]
    cmd = d.get("command", "nonn-tflite demo")
    text = (f"Live over MQTT (`{cmd}`): accuracy {d['accuracy']:.4f} "
            f"{'==' if d['accuracy'] == d['offline_accuracy'] else 'vs'} offline int8 "
            f"{d['offline_accuracy']:.4f}, end-to-end p50 {lat['p50']:.1f} ms / p99 {lat['p99']:.1f} ms")
    if kill.exists():
        k = json.loads(kill.read_text())
        dead = ", ".join(f"device {x['device']}" for x in k["killed"]) or "no device"
        text += (f"; with `{k.get('kill_flag', '--kill-device')}`, {k['partial_frames']} of {k['frames']} "
                 f"frames arrive partial ({dead} zero-filled) and accuracy holds at {k['accuracy']:.4f}")
    return ["", text + "."]


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
             markdown_table(doc["rows"], cols), *_missing_one_note(doc)]
    if doc.get("missing"):
        lines.append(f"Steps not run yet: {', '.join(doc['missing'])}.\n")
    png = f"benchmarks/results/cifar10-{profile}.png"
    if (ROOT / png).exists():
        lines.append(f"![accuracy vs memory per device]({png})\n")
    return lines


LEGACY_MISSING_ONE_IMAGES = 2000  # benchmarks/cifar10.py: parts from before missing_one_images


def _missing_one_note(doc: dict) -> list[str]:
    """Say which test images ``missing_one`` scored (older runs: only the first 2,000)."""
    counts = sorted({r.get("missing_one_images") or LEGACY_MISSING_ONE_IMAGES
                     for r in doc["rows"] if r.get("missing_one")})
    if not counts:
        return []
    test_images = 10000 if doc.get("dataset") == "cifar10" else max(counts)
    if counts == [test_images]:
        return [f"`missing_one`: int8 accuracy with each single device zero-filled, on the same "
                f"{test_images:,} test images as the accuracy columns.", ""]
    return [f"`missing_one`: int8 accuracy with each single device zero-filled, **on the first "
            f"{', '.join(f'{c:,}' for c in counts)} test images only** in this run, while the accuracy "
            f"columns use all {test_images:,} (`benchmarks/cifar10.py` now scores it on the whole "
            "test split; these steps predate that).", ""]


def comm_section() -> list[str]:
    doc = next((d for d in map(_load, ("communication-full.json", "communication-cpu.json",
                                        "communication-quick.json")) if d), None)
    if not doc:
        return []
    rows = [r for r in doc["rows"] if r["compute"] != "host"]
    for r in rows:  # older results lack the column; it is a ratio of two columns they do have
        if r.get("offload_over_nonn") is None and r.get("nonn_ms"):
            r["offload_over_nonn"] = round(r["offload_ms"] / r["nonn_ms"], 2)
    cols = ["K", "compute", "link", "nonn_bytes", "split_bytes", "offload_bytes", "nonn_ms", "split_ms",
            "offload_ms", "split_over_nonn", "offload_over_nonn"]
    return [f"### Communication per inference (`{doc['command']}`)", "",
            "Bytes are exact; latencies combine the board cost model's compute estimate with link models.", "",
            markdown_table(rows, cols), *_offload_lines(doc, rows)]


def _offload_lines(doc: dict, rows: list[dict]) -> list[str]:
    """Say plainly where offload beats NoNN, and on what assumption."""
    wins = [r for r in rows if r["offload_over_nonn"] < 1]
    if not wins:
        return ["NoNN is faster than offload on every row above.", ""]
    links = sorted({r["link"] for r in wins})
    best = min(wins, key=lambda r: r["offload_over_nonn"])
    return [f"**Offload wins on {len(wins)} of {len(rows)} rows** ({', '.join(links)}; "
            f"`offload_over_nonn` < 1, down to {best['offload_over_nonn']:g} = "
            f"{1 / best['offload_over_nonn']:.1f}x faster on {best['link']} at K={best['K']}). That is by "
            "construction: offload assumes a host next to the camera that runs the *whole teacher* (at "
            "this host's measured LiteRT time) and only pays for sending the image once, while NoNN's "
            f"students run on the {best['compute']} itself (its cost model). "
            "Where there is no such host, or the image must not leave the device, offload is not an "
            "option; NoNN sends "
            f"{best['nonn_bytes']} B instead of {best['offload_bytes']} B per inference"
            + (f", and split computing (the teacher cut across the devices) is "
               f"{min(r['split_over_nonn'] for r in rows if r.get('split_over_nonn')):g}x or more slower "
               "than NoNN." if any(r.get("split_over_nonn") for r in rows) else "."), ""]


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
    lines = [f"### Partition scaling (`{doc['command']}`)", "",
             f"{biggest['filters']} filters x {biggest['images']} images: {biggest['seconds']} s, "
             f"{biggest['peak_mb']} MB peak, planted groups recovered {biggest['recovery']:.0%}. "
             "Full table: `benchmarks/results/partition-full.md`.", ""]
    ref = _load("partition-reference.json")
    for r in (ref or {}).get("reference", {}).get("rows", []):
        lines += [f"Against the NoNN reference (`{ref['command']}`, same planted maps, "
                  f"{r['images']:,} images x {r['filters']} filters): its network build alone takes "
                  f"{r['reference_build_s']:.2f} s; our whole partition (network, percentile choice, "
                  f"Louvain, K-way merge) {r['ours_partition_s']:.3f} s, **{r['whole_vs_ref_build_x']:g}x "
                  f"faster** (the network alone {r['ours_build_s']:.3f} s, {r['build_speedup_x']:g}x), "
                  f"{'the same network' if r['same_network'] else 'a DIFFERENT network'}, ARI "
                  f"{r['ari']:g} against the planted groups, {r['filters_used']} of {r['filters']} "
                  "filters used.", ""]
    return lines


def measured_section(name: str = "measured-digits-k2.json") -> list[str]:
    """The QEMU figures of ``models/digits-k2`` (benchmarks/measure_qemu.py), in two sentences."""
    doc = _load(name)
    if not doc:
        return []
    rows = {(r["model"], r["config"]): r for r in doc["measured"]["rows"]}
    students = [r for r in doc["measured"]["rows"] if r["model"].startswith("student_")]
    biggest = max(students, key=lambda r: r["instructions_per_inference"])["model"]
    inst = lambda cfg: rows[(biggest, cfg)]["instructions_per_inference"] / 1e6  # noqa: E731
    ratio = doc["measured"]["teacher_student_instruction_ratio"].get("cortex-m4-cmsis-nn")
    report = json.loads((ROOT / "models" / "digits-k2" / "tflite" / "report.json").read_text())
    macs = report["teacher"]["macs"] / max(s["macs"] for s in report["students"])
    m4 = rows[(biggest, "cortex-m4-cmsis-nn")]
    host = next(s["arena_bytes"] for s in doc["students"] if s["file"] == biggest)
    exact = all(r["bit_exact"] for r in doc["measured"]["rows"])
    side = "*more* than" if m4["arena_bytes_min"] > host else "less than"
    return [f"There ({doc['date'][:10]}, commit {doc['commit']}), "
            f"{'every model is bit-exact on every core and kernel set' if exact else 'NOT every model is bit-exact'}; "
            f"a student takes {inst('cortex-m4-cmsis-nn'):.2f} M instructions on the M4 with CMSIS-NN "
            f"({inst('cortex-m4-reference'):.1f} M with the reference kernels) and "
            f"{inst('cortex-m55-cmsis-nn'):.2f} M on the M55, the teacher {ratio:.1f}x a student's on "
            f"the M4 (the MAC ratio is {macs:.1f}x). The student's minimal 32-bit arena with CMSIS-NN "
            f"is {m4['arena_bytes_min']:,} B, {side} its {host:,} B host arena (CMSIS-NN's scratch "
            f"buffers), so the host figure is no bound either way; it reserves "
            f"{m4['arena_reserved_bytes']:,} B."]


def render(text: str) -> str:
    """``text`` (the README) with its generated sections rewritten."""
    wyg = "\n".join([WYG_START, "", *what_you_get_section(), "", WYG_END])
    if WYG_START not in text or WYG_END not in text:
        raise SystemExit(f"error: README.md has no {WYG_START} ... {WYG_END} markers")
    text = text[: text.index(WYG_START)] + wyg + text[text.index(WYG_END) + len(WYG_END):]
    if MEASURED_START in text and MEASURED_END in text:
        measured = "\n".join([MEASURED_START, *measured_section(), MEASURED_END])
        text = (text[: text.index(MEASURED_START)] + measured
                + text[text.index(MEASURED_END) + len(MEASURED_END):])
    body = "\n".join([START, "", *cifar_section(), *comm_section(), *live_section(), *partition_section(), END])
    if START in text and END in text:
        return text[: text.index(START)] + body + text[text.index(END) + len(END):]
    return text.rstrip() + "\n\n## Results\n\n" + body + "\n"


def main() -> int:
    readme = ROOT / "README.md"
    readme.write_text(render(readme.read_text()))
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
