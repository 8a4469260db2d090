"""Compare a measured trace with a simulated one, instruction by instruction (torch-free).

The runtime and the simulator execute the same lowered programs and name
their trace events by the same instruction texts, so the two timelines can
be matched event by event: ``(device, lane, name)``, in order of occurrence
when a name repeats. :func:`compare_traces` lists every matched compute and
recv event with its measured and predicted end and duration; :func:`summary`
aggregates where the prediction goes wrong: per device, compute time
(measured vs predicted), how late messages become available relative to
their sending, and the end-to-end drift. Recv events are compared by their
*ends* (the runtime's span from the sender's send; the simulator's from the
first bit) — when the program had the data.

``python -m coinfer.sim.compare MEASURED.json SIMULATED.json [--device d0]``
prints the table (traces written by ``coinfer run --trace`` /
``coinfer simulate --trace`` / ``coinfer bench --validate --traces DIR``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from ..trace import Event, Trace, TraceFileError


@dataclass(frozen=True)
class Pair:
    device: str
    lane: str
    name: str
    measured: Event
    predicted: Event

    @property
    def end_error_ms(self) -> float:
        return self.predicted.end_ms - self.measured.end_ms

    @property
    def dur_error_ms(self) -> float:
        return self.predicted.dur_ms - self.measured.dur_ms


def _key_events(t: Trace, lanes: tuple[str, ...]) -> dict[tuple[str, str, str, int], Event]:
    seen: dict[tuple[str, str, str], int] = defaultdict(int)
    out = {}
    for e in sorted(t.events, key=lambda e: (e.device, e.start_ms)):
        if e.lane not in lanes:
            continue
        k = (e.device, e.lane, e.name)
        key = (*k, seen[k])  # (mypy reads a starred tuple inside [] as 3.11-only syntax)
        out[key] = e
        seen[k] += 1
    return out


def compare_traces(measured: Trace, simulated: Trace, lanes: tuple[str, ...] = ("compute", "recv")) -> list[Pair]:
    """Matched events of both traces, by device then measured end."""
    m = _key_events(measured, lanes)
    s = _key_events(simulated, lanes)
    pairs = [Pair(k[0], k[1], k[2], m[k], s[k]) for k in m if k in s]
    return sorted(pairs, key=lambda p: (p.device, p.measured.end_ms))


def summary(measured: Trace, simulated: Trace) -> dict[str, Any]:
    """Where the prediction differs: per device compute totals and message delays, and the latency."""
    pairs = compare_traces(measured, simulated)
    per: dict[str, dict[str, float]] = {}
    for p in pairs:
        d = per.setdefault(p.device, {"compute_meas_ms": 0.0, "compute_pred_ms": 0.0, "n_compute": 0,
                                      "recv_late_meas_ms": 0.0, "recv_late_pred_ms": 0.0, "n_recv": 0,
                                      "last_end_error_ms": 0.0})
        if p.lane == "compute":
            d["compute_meas_ms"] += p.measured.dur_ms
            d["compute_pred_ms"] += p.predicted.dur_ms
            d["n_compute"] += 1
        else:
            d["recv_late_meas_ms"] += p.measured.dur_ms
            d["recv_late_pred_ms"] += p.predicted.dur_ms
            d["n_recv"] += 1
        d["last_end_error_ms"] = p.end_error_ms
    lat_m = float(measured.meta.get("latency_ms") or measured.span_ms)
    lat_s = float(simulated.meta.get("latency_ms") or simulated.span_ms)
    return {"latency_meas_ms": round(lat_m, 3), "latency_pred_ms": round(lat_s, 3),
            "error": round((lat_s - lat_m) / lat_m, 4) if lat_m else None, "matched": len(pairs),
            "devices": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in sorted(per.items())}}


def format_pairs(pairs: list[Pair], device: str | None = None) -> str:
    head = (f"{'device':<6} {'lane':<7} {'instruction':<52} {'meas end':>9} {'pred end':>9} "
            f"{'meas dur':>9} {'pred dur':>9}")
    lines = [head]
    for p in pairs:
        if device and p.device != device:
            continue
        lines.append(f"{p.device:<6} {p.lane:<7} {p.name[:52]:<52} {p.measured.end_ms:9.2f} {p.predicted.end_ms:9.2f} "
                     f"{p.measured.dur_ms:9.2f} {p.predicted.dur_ms:9.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - a thin CLI
    ap = argparse.ArgumentParser(description="compare a measured and a simulated trace step by step")
    ap.add_argument("measured")
    ap.add_argument("simulated")
    ap.add_argument("--device")
    a = ap.parse_args(argv)
    try:
        m, s = Trace.load(a.measured), Trace.load(a.simulated)
    except TraceFileError as e:
        ap.exit(2, f"error: {e}\n")
    print(format_pairs(compare_traces(m, s), a.device))
    import json

    print(json.dumps(summary(m, s), indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
