"""Estimated latency and energy per inference: each device, and the teacher on the same board.

NoNN's third headline claim is energy per node (up to 14x below the teacher). Nothing here is
measured on a device: every figure comes from the board's :class:`~nonn_tflite.boards.CostModel`
and the model's MAC count and payload, through :data:`FORMULA`, and is labelled an estimate
wherever it is shown. :data:`MLPERF_TINY_IC` and :func:`calibration` state how far the per-MAC
model lands from published MLPerf Tiny measurements, so readers know its error band.

Image acquisition (camera, or receiving the image over the network) is the same for the
teacher and every student and is not counted; the fusion node is a host and is not estimated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from nonn_tflite.boards import BOARDS, Board, CostModel
from nonn_tflite.errors import UsageError

ESTIMATE_LABEL = "estimate (cost model, not measured on a device)"
FORMULA = (
    "t_compute = instructions * cycles_per_instruction / clock_hz   (Cortex-M4/M7 boards once "
    "`nonn-tflite measure` ran: instructions measured on QEMU, TFLM + CMSIS-NN)",
    "t_compute = MACs * cycles_per_mac / clock_hz   (other MCUs, e.g. ESP32; MACs of CONV_2D, "
    "DEPTHWISE_CONV_2D, FC)",
    "t_compute = t_host * host_speed_factor   (Linux board: LiteRT median on this host, default delegate)",
    "E_compute = P_active * t_compute",
    "E_radio = n_msg * E_msg + 8 * payload_bytes * E_bit,   n_msg = ceil(payload_bytes / max_message_bytes)",
    "E_total = E_compute + E_radio   (per inference; idle power counts only in avg_mw_at_1hz)",
)
RATE_HZ = 1.0  # inference rate at which the report quotes average power


@dataclass(frozen=True)
class Estimate:
    """One model on one board, per inference (an estimate)."""

    board: str
    latency_ms: float  # compute only
    compute_uj: float
    radio_uj: float
    messages: int
    basis: str  # "macs" or "host latency x factor"

    @property
    def total_uj(self) -> float:
        return self.compute_uj + self.radio_uj

    def as_dict(self) -> dict:
        return {**asdict(self), "total_uj": self.total_uj}


def compute_latency_ms(macs: int, board: Board, host_latency_ms: float | None = None,
                       instructions: int | None = None) -> tuple[float, str]:
    """Compute time on ``board``: instructions measured on its emulated core x cycles per
    instruction; a measured host latency scaled (Linux); else the MAC model."""
    cost = _cost(board)
    if instructions and cost.cycles_per_instruction:
        return (instructions * cost.cycles_per_instruction / (board.clock_mhz * 1e6) * 1e3,
                "measured instructions x CPI")
    if cost.host_speed_factor is not None and host_latency_ms is not None:
        return host_latency_ms * cost.host_speed_factor, "host latency x factor"
    return macs * cost.cycles_per_mac / (board.clock_mhz * 1e6) * 1e3, "macs"


def radio_energy_uj(payload_bytes: int, cost: CostModel) -> tuple[float, int]:
    """Energy to send one payload (wire header included) and the number of messages it takes."""
    if cost.link == "none" or payload_bytes <= 0:
        return 0.0, 0
    messages = math.ceil(payload_bytes / cost.max_message_bytes)
    return messages * cost.radio_uj_per_message + 8 * payload_bytes * cost.radio_nj_per_bit / 1e3, messages


def estimate(macs: int, payload_bytes: int, board: Board, host_latency_ms: float | None = None,
             instructions: int | None = None) -> Estimate:
    """Latency and energy of one inference plus sending its payload (see :data:`FORMULA`)."""
    cost = _cost(board)
    latency_ms, basis = compute_latency_ms(macs, board, host_latency_ms, instructions)
    radio_uj, messages = radio_energy_uj(payload_bytes, cost)
    return Estimate(board.name, latency_ms, cost.active_mw * latency_ms, radio_uj, messages, basis)


def average_power_mw(est: Estimate, board: Board, rate_hz: float = RATE_HZ) -> float:
    """Mean power at ``rate_hz`` inferences per second: energy per inference plus idle time."""
    busy_s = min(1.0, rate_hz * est.latency_ms / 1e3)
    return est.total_uj * rate_hz / 1e3 + _cost(board).idle_mw * (1.0 - busy_s)


def _cost(board: Board) -> CostModel:
    if board.cost is None:
        raise UsageError(f"board {board.name} has no cost model; latency and energy cannot be "
                         "estimated (add a [cost] table to its profile)")
    return board.cost


# -- memory fit and the fallback board --------------------------------------------------------------

@dataclass(frozen=True)
class Fit:
    fits: bool
    problem: str | None  # "does not fit esp32: flash 1.2 MiB > 480.0 KiB left (over by 750.0 KiB)"
    over: str | None = None  # the short form: "flash +750.0 KiB"


def memory_fit(flash_bytes: int, arena_bytes: int, board: Board) -> Fit:
    """Whether a model's flatbuffer and arena fit what ``board`` leaves, and by how much not."""
    checks = (("flash", flash_bytes, board.model_flash_bytes), ("RAM", arena_bytes, board.model_ram_bytes))
    over = [(what, need, have) for what, need, have in checks if need > have]
    if not over:
        return Fit(True, None)
    long = "; ".join(f"{w} {_kib(n)} > {_kib(h)} left (over by {_kib(n - h)})" for w, n, h in over)
    return Fit(False, f"does not fit {board.name}: {long}",
               ", ".join(f"{w} +{_kib(n - h)}" for w, n, h in over))


def smallest_fitting_board(flash_bytes: int, arena_bytes: int,
                           catalogue: dict[str, Board] | None = None) -> Board | None:
    """The catalogue board with the least RAM (then flash) that can run the model and send.

    Boards without a cost model or a radio cannot be a NoNN node, so they are skipped.
    """
    nodes = [b for b in (catalogue or BOARDS).values()
             if b.cost is not None and b.cost.link != "none"
             and memory_fit(flash_bytes, arena_bytes, b).fits]
    return min(nodes, key=lambda b: (b.model_ram_bytes, b.model_flash_bytes, b.name), default=None)


def _kib(n: int) -> str:
    return f"{n / 1024 ** 2:,.1f} MiB" if n >= 1024 ** 2 else f"{n / 1024:,.1f} KiB"


# -- the report section ---------------------------------------------------------------------------

def _arena(model: dict) -> int:
    """The arena the board must hold: the 32-bit figure with margin (as the convert fit check)."""
    return model.get("arena_bytes_32bit") or model["arena_bytes"]


def _host_latency_ms(model: dict) -> float | None:
    """LiteRT median on this host with the default delegate (what a Pi runs), else reference."""
    default = (model.get("latency") or {}).get("default") or {}
    return default.get("median_ms") or model.get("latency_ms")


def _teacher_payload(teacher: dict) -> int:
    """A teacher node sends its prediction: one int8 per class plus the wire header."""
    if teacher.get("payload_bytes"):
        return int(teacher["payload_bytes"])
    from nonn_tflite.profile import WIRE_HEADER_BYTES

    return int(teacher["output"]["shape"][-1]) + WIRE_HEADER_BYTES


def measured_instructions(model: dict, board: Board) -> int | None:
    """Instructions per inference measured on QEMU on ``board``'s core with CMSIS-NN (report
    ``measured``, written by ``nonn-tflite measure``); the M4 count stands in for an unmeasured
    M7 (same instruction stream: ResNet-8 29.96 M vs 29.78 M)."""
    cost = board.cost
    measured = model.get("measured") or {}
    if cost is None or not cost.emulated_cpu or not measured:
        return None
    for cpu in (cost.emulated_cpu, "cortex-m4" if cost.emulated_cpu == "cortex-m7" else None):
        m = measured.get(f"{cpu}-cmsis-nn") if cpu else None
        if m:
            return int(m["instructions_per_inference"])
    return None


def _model_estimate(model: dict, payload: int, board: Board) -> Estimate:
    return estimate(int(model["macs"]), payload, board, _host_latency_ms(model),
                    measured_instructions(model, board))


def teacher_on(teacher: dict, board: Board) -> dict:
    """The teacher on ``board``: its estimate, or "does not fit" and the smallest board it fits."""
    payload = _teacher_payload(teacher)
    fit = memory_fit(int(teacher["flash_bytes"]), _arena(teacher), board)
    out = {"board": board.name, "fits": fit.fits, "problem": fit.problem, "over": fit.over,
           "payload_bytes": payload,
           "estimate": _model_estimate(teacher, payload, board).as_dict() if fit.fits else None,
           "reference_board": board.name if fit.fits else None}
    if not fit.fits:
        ref = smallest_fitting_board(int(teacher["flash_bytes"]), _arena(teacher))
        if ref is not None:
            out["reference_board"] = ref.name
            out["reference_estimate"] = _model_estimate(teacher, payload, ref).as_dict()
    return out


def _ratios(teacher: dict, student: Estimate) -> dict:
    ref = teacher["estimate"] or teacher.get("reference_estimate")
    if ref is None:
        return {"latency": None, "energy": None, "teacher_board": None}
    return {"latency": ref["latency_ms"] / student.latency_ms if student.latency_ms else None,
            "energy": ref["total_uj"] / student.total_uj if student.total_uj else None,
            "teacher_board": teacher["reference_board"]}


def _device(student: dict, board: Board | None, teachers: dict[Board, dict], report: dict) -> dict:
    row = {"device": f"student {student['id']}", "board": board.name if board else None}
    if board is None or board.cost is None:
        return {**row, "estimate": None, "note": "no board or no cost model: not estimated"}
    est = _model_estimate(student, int(student["payload_bytes"]), board)
    if board not in teachers:  # one teacher estimate per distinct board
        teachers[board] = teacher_on(report["teacher"], board)
    teacher = teachers[board]
    return {**row, "kernels": board.cost.kernels, "estimate": est.as_dict(),
            "avg_mw_at_1hz": average_power_mw(est, board), "teacher": teacher,
            "ratios": _ratios(teacher, est)}


def _summary(devices: list[dict]) -> dict:
    done = [d for d in devices if d["estimate"]]
    lat = [d["ratios"]["latency"] for d in done if d["ratios"]["latency"]]
    en = [d["ratios"]["energy"] for d in done if d["ratios"]["energy"]]
    return {"students_max_latency_ms": max((d["estimate"]["latency_ms"] for d in done), default=None),
            "students_max_total_uj": max((d["estimate"]["total_uj"] for d in done), default=None),
            "latency_ratio_min": min(lat, default=None), "latency_ratio_max": max(lat, default=None),
            "energy_ratio_min": min(en, default=None), "energy_ratio_max": max(en, default=None)}


def energy_section(report: dict, boards: list[Board | None]) -> dict | None:
    """The report's ``energy`` section: per device, the student's and the teacher's estimates.

    ``report`` needs per model ``macs``, ``payload_bytes`` (students), ``flash_bytes``,
    ``arena_bytes`` (and, when present, ``arena_bytes_32bit`` and host latencies); ``boards``
    has one Board (or None) per student. None when no board is given.
    """
    if not any(b is not None for b in boards):
        return None
    teachers: dict[Board, dict] = {}
    devices = [_device(s, boards[k] if k < len(boards) else None, teachers, report)
               for k, s in enumerate(report["students"])]
    used = {b.name: b for b in boards if b is not None and b.cost is not None}
    for t in teachers.values():  # the fallback boards of a teacher that did not fit
        if t["reference_board"] in BOARDS:
            used.setdefault(t["reference_board"], BOARDS[t["reference_board"]])
    return {"label": ESTIMATE_LABEL, "formula": list(FORMULA), "rate_hz_for_avg_power": RATE_HZ,
            "devices": devices, "summary": _summary(devices),
            "boards": {n: {"clock_mhz": b.clock_mhz, "source": b.source, **asdict(b.cost)}
                       for n, b in used.items()},
            "notes": "image acquisition (camera or image RX) is equal for teacher and students and "
                     "not counted; radio energy is for sending the payload once; the fusion node "
                     "(a host) is not estimated; ratios are teacher / that device, the teacher on "
                     "the same board or, where it does not fit, on the smallest catalogue board "
                     "(least RAM, then flash, with a radio) that holds it"}


# -- calibration against published measurements ----------------------------------------------------

RESNET8_MACS = 12_501_632  # MLPerf Tiny IC ResNet-8 (CIFAR-10 32x32x3); build_teacher("resnet-8")
CALIBRATION_FACTOR = 2.5  # the per-MAC model lands within this factor of every result below


@dataclass(frozen=True)
class PublishedResult:
    """One MLPerf Tiny image-classification (ResNet-8) result, read from the public results repo."""

    version: str
    submitter: str
    system: str
    software: str
    board: str  # catalogue board with the same chip and clock
    throughput_ips: float  # median inferences per second, as published
    energy_uj: float | None  # median energy per inference (board supply at 1.8 V)
    source: str

    @property
    def latency_ms(self) -> float:
        return 1e3 / self.throughput_ips


MLPERF_TINY_IC = (
    PublishedResult("v0.5", "Reference", "Nucleo-L4R5ZI (STM32L4R5ZI, Cortex-M4F 120 MHz)",
                    "TFLite Micro v2.3.1 + CMSIS-NN, mbed-os bare metal", "nucleo-l4r5zi",
                    1.420, 29_207.0,
                    "mlcommons/tiny_results_v0.5 closed/reference/results/Nucleo-L4R5ZI/ic/"
                    "{performance,energy}/results.txt; CMSIS-NN per mlcommons/tiny v0.5 reference "
                    "setup script (TF_MAKE_TAGS=cmsis-nn)"),
    PublishedResult("v1.0", "OctoML", "NUCLEO-L4R5ZI (Cortex-M4F 120 MHz)",
                    "microTVM + CMSIS-NN kernels, Zephyr 2.7.3", "nucleo-l4r5zi", 2.567, 20_236.0,
                    "mlcommons/tiny_results_v1.0 closed/OctoML/results/microtvm_cmsis_nn/"
                    "NUCLEO_L4R5ZI/ic/{performance,energy}/results.txt"),
    PublishedResult("v1.0", "STMicroelectronics", "NUCLEO-L4R5ZI (Cortex-M4F 120 MHz)",
                    "X-CUBE-AI v7.3.0", "nucleo-l4r5zi", 4.407, 10_682.0,
                    "mlcommons/tiny_results_v1.0 closed/STMicroelectronics/results/NUCLEO_L4R5ZI/"
                    "ic/{performance,energy}/results.txt"),
)


def calibration(macs: int = RESNET8_MACS) -> list[dict]:
    """The per-MAC model's ResNet-8 estimate beside each published result, and the factor."""
    rows = []
    for r in MLPERF_TINY_IC:
        est = estimate(macs, 0, BOARDS[r.board])
        rows.append({"published": asdict(r), "published_latency_ms": r.latency_ms,
                     "estimate_latency_ms": est.latency_ms,
                     "latency_factor": est.latency_ms / r.latency_ms,
                     "estimate_energy_uj": est.compute_uj,
                     "energy_factor": est.compute_uj / r.energy_uj if r.energy_uj else None})
    return rows


# -- views: Markdown lines and a rich table ---------------------------------------------------------

def fmt_energy(uj: float | None) -> str:
    if uj is None:
        return "-"
    for unit, div in (("J", 1e6), ("mJ", 1e3)):
        if uj >= div:
            return f"{uj / div:,.3g} {unit}"
    return f"{uj:,.3g} µJ"


def fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else (f"{ms:,.3g} ms" if ms >= 0.01 else f"{ms * 1e3:,.3g} µs")


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}x"


def _span(lo: float | None, hi: float | None) -> str:
    return _x(lo) if lo == hi else f"{_x(lo)} to {_x(hi)}"


def calibration_sentence() -> str:
    """One line for report.md: how far the per-MAC model lands from MLPerf Tiny results."""
    rows = calibration()
    parts = [f"{r['published_latency_ms']:.0f} ms ({r['published']['submitter']}, "
             f"{r['published']['software'].split(',')[0]}, MLPerf Tiny {r['published']['version']})"
             for r in rows]
    factors = [r["latency_factor"] for r in rows]
    return (f"Calibration: ResNet-8 ({RESNET8_MACS:,} MACs) on NUCLEO-L4R5ZI is estimated at "
            f"{rows[0]['estimate_latency_ms']:.0f} ms; published: {'; '.join(parts)}; estimate / "
            f"published = {min(factors):.2f} to {max(factors):.2f}.")


def _teacher_cells(t: dict, short: bool = False) -> tuple[str, str, str]:
    """Where the teacher's figures come from, its latency and its total energy."""
    if t["estimate"]:
        return t["board"], fmt_ms(t["estimate"]["latency_ms"]), fmt_energy(t["estimate"]["total_uj"])
    ref = t.get("reference_estimate")
    why = f"does not fit ({t['over']})" if short else t["problem"]
    where = f"{why}; on {t['reference_board']}" if ref else f"{why}; fits no node board"
    return (where, fmt_ms(ref["latency_ms"]) if ref else "-", fmt_energy(ref["total_uj"]) if ref else "-")


def energy_markdown(section: dict) -> list[str]:
    """The report.md section: per-device table, formula and the figures used (all estimates)."""
    lines = ["## Latency and energy per inference (estimate)", "",
             f"Every figure in this section is an **{section['label']}**.", "",
             ("| device | board | kernels | compute | compute energy | radio energy (msgs) | total "
              "energy | teacher (board) | teacher compute | teacher total | latency ratio | energy "
              "ratio |"), "|" + "---|" * 12]
    for d in section["devices"]:
        if not d["estimate"]:
            lines.append(f"| {d['device']} | {d['board'] or '-'} | - | {d['note']} |" + " - |" * 8)
            continue
        e, r = d["estimate"], d["ratios"]
        where, t_ms, t_uj = _teacher_cells(d["teacher"])
        lines.append(f"| {d['device']} | {d['board']} | {d['kernels']} | {fmt_ms(e['latency_ms'])} | "
                     f"{fmt_energy(e['compute_uj'])} | {fmt_energy(e['radio_uj'])} ({e['messages']}) | "
                     f"{fmt_energy(e['total_uj'])} | {where} | {t_ms} | {t_uj} | {_x(r['latency'])} | "
                     f"{_x(r['energy'])} |")
    s = section["summary"]
    lat, en = (_span(s[f"{k}_ratio_min"], s[f"{k}_ratio_max"]) for k in ("latency", "energy"))
    lines += ["", (f"Teacher / device (estimate): latency {lat}, energy {en}. Where the teacher "
                   "runs on another board, the ratio also compares the two boards' efficiency."),
              "", "Model (estimate):", ""]
    lines += [f"    {f}" for f in section["formula"]]
    lines += ["", ("| board | clock MHz | kernels | cycles/MAC | active mW | idle mW | link | nJ/bit | "
                   "µJ/message | bytes/message | host speed factor |"), "|" + "---|" * 11]
    for name, b in section["boards"].items():
        lines.append(f"| {name} | {b['clock_mhz']} | {b['kernels']} | {b['cycles_per_mac']:g} | "
                     f"{b['active_mw']:g} | {b['idle_mw']:g} | {b['link']} | {b['radio_nj_per_bit']:g} | "
                     f"{b['radio_uj_per_message']:g} | {b['max_message_bytes']} | "
                     f"{b['host_speed_factor'] if b['host_speed_factor'] is not None else '-'} |")
    lines += ["", calibration_sentence(), "",
              (f"Notes: {section['notes']}. Sources of every figure: `nonn-tflite boards --json` "
                   "and `nonn_tflite/boards.py`; the per-MAC model against MLPerf Tiny: "
                   "`nonn-tflite boards --calibration`.")]
    return lines


def energy_table(section: dict):
    """Terminal view: per device, student beside teacher (all estimates)."""
    from rich.table import Table

    table = Table(title="Latency and energy per inference: ESTIMATES (cost model, see report.md)")
    for i, h in enumerate(("device", "board", "compute", "energy\ncompute+radio", "total",
                           "teacher\n(board)", "teacher\ncompute", "teacher\ntotal", "ratio\nt / E")):
        table.add_column(h, justify="left" if i in (0, 1, 5) else "right")
    for d in section["devices"]:
        if not d["estimate"]:
            table.add_row(d["device"], d["board"] or "-", "-", "-", "-", d["note"], "-", "-", "-")
            continue
        e, r = d["estimate"], d["ratios"]
        where, t_ms, t_uj = _teacher_cells(d["teacher"], short=True)
        table.add_row(d["device"], d["board"], fmt_ms(e["latency_ms"]),
                      f"{fmt_energy(e['compute_uj'])}+{fmt_energy(e['radio_uj'])}",
                      fmt_energy(e["total_uj"]), where, t_ms, t_uj,
                      f"{_x(r['latency'])} / {_x(r['energy'])}")
    table.caption = ("E_total = P_active * MACs * cycles/MAC / clock + n_msg * E_msg + 8 * bytes * "
                     "E_bit; teacher / device ratios")
    return table
