"""Summaries of measured runs: per-device busy/transfer time and energy from a trace."""

from __future__ import annotations

from typing import Any

from ..cluster import Cluster
from ..trace import Trace


def summarize(trace: Trace, cluster: Cluster) -> dict[str, Any]:
    """latency, per-device busy/tx/rx ms, bytes moved and energy (cluster power figures).

    Energy per device = busy_w·compute + tx_w·send + rx_w·recv + idle_w·(span − compute),
    the same accounting the simulator uses, over the request's span.
    """
    span = float(trace.meta.get("latency_ms") or trace.span_ms)
    busy, tx, rx, energy = {}, {}, {}, 0.0
    for dev in cluster.names:
        b = trace.busy_ms(dev, "compute")
        t = trace.busy_ms(dev, "send")
        r = trace.busy_ms(dev, "recv")
        busy[dev], tx[dev], rx[dev] = round(b, 3), round(t, 3), round(r, 3)
        if dev not in trace.devices:
            continue
        p = cluster.device(dev).power
        energy += (p.busy_w * b + p.tx_w * t + p.recv_w * r + p.idle_w * max(0.0, span - b)) / 1e3
    moved = sum(int(e.args.get("bytes", 0)) for e in trace.events if e.lane == "send")
    return {"latency_ms": round(span, 3), "busy_ms": busy, "tx_ms": tx, "rx_ms": rx,
            "bytes_moved": moved, "energy_j": round(energy, 6)}
