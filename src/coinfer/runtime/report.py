"""Summaries of measured runs: per-device busy/transfer time and energy from a trace."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from ..cluster import Cluster
from ..trace import Trace

T = TypeVar("T")
_PEER = re.compile(r" to (\S+?)(?: \(|$)")


def _link_ms(trace: Trace, cluster: Cluster) -> tuple[dict[str, float], dict[str, float]]:
    """Time each device's transfers occupied their links: bytes x 8 / link rate (the radio on-time)."""
    tx = {d: 0.0 for d in cluster.names}
    rx = {d: 0.0 for d in cluster.names}
    for e in trace.events:
        if e.lane != "send":
            continue
        m = _PEER.search(e.name)
        nb = int(e.args.get("bytes", 0))
        if m is None or nb <= 0 or m.group(1) not in rx or e.device not in tx:
            continue
        ms = nb * 8 / (cluster.link(e.device, m.group(1))[0] * 1e3)
        tx[e.device] += ms
        rx[m.group(1)] += ms
    return tx, rx


def measure_energy(fn: Callable[[], T]) -> tuple[T, float | None, str]:
    """Run ``fn`` and read real energy around it where the hardware has a reader.

    Returns ``(result, joules or None, source)``: ``rapl`` (Linux powercap
    packages, :func:`coinfer.cost.power.find_rapl`), ``ina3221`` (Jetson
    power monitor, sampled while ``fn`` runs and integrated) or ``model``
    (no reader: None). Pass the joules and source to :func:`summarize`.
    """
    import threading

    from ..cost.power import find_ina3221, find_rapl, integrate, sample_power

    rapl = find_rapl()
    if rapl is not None:
        a = rapl.read_uj()
        out = fn()
        b = rapl.read_uj()
        if a is not None and b is not None:
            return out, rapl.delta_j(a, b), "rapl"
        return out, None, "model"
    ina = find_ina3221()
    if ina is not None:
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sampler() -> None:
            while not stop.is_set():
                samples.extend(sample_power(ina, 0.0))
                stop.wait(0.005)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        try:
            out = fn()
        finally:
            stop.set()
            th.join(timeout=1.0)
        if len(samples) >= 2:
            return out, integrate(samples), "ina3221"
        return out, None, "model"
    return fn(), None, "model"


def summarize(trace: Trace, cluster: Cluster, *, measured_energy_j: float | None = None,
              energy_source: str | None = None) -> dict[str, Any]:
    """latency, per-device busy/tx/rx ms, the compute on the critical path
    (:meth:`~coinfer.trace.Trace.critical_compute_ms`), bytes moved and energy.

    Model energy per device = busy_w·compute + tx_w·tx + rx_w·rx + idle_w·(span − compute),
    the same accounting the simulator uses, over the request's span; tx/rx
    are the times the device's transfers occupied their links (bytes × 8 /
    the link's rate). With a real reading (``measured_energy_j`` from
    :func:`measure_energy`) ``energy_j`` is the reading, ``energy_source``
    names the reader (``rapl`` / ``ina3221``) and ``model_energy_j`` keeps the
    model's figure; otherwise ``energy_source`` is ``model``.
    """
    span = float(trace.meta.get("latency_ms") or trace.span_ms)
    busy, energy = {}, 0.0
    tx, rx = _link_ms(trace, cluster)
    for dev in cluster.names:
        b = trace.busy_ms(dev, "compute")
        busy[dev] = round(b, 3)
        if dev not in trace.devices:
            continue
        p = cluster.device(dev).power
        energy += (p.busy_w * b + p.tx_w * tx[dev] + p.recv_w * rx[dev] + p.idle_w * max(0.0, span - b)) / 1e3
    moved = sum(int(e.args.get("bytes", 0)) for e in trace.events if e.lane == "send")
    out: dict[str, Any] = {"latency_ms": round(span, 3), "busy_ms": busy,
                           "critical_compute_ms": round(trace.critical_compute_ms(), 3),
                           "tx_ms": {d: round(v, 3) for d, v in tx.items()},
                           "rx_ms": {d: round(v, 3) for d, v in rx.items()},
                           "bytes_moved": moved, "energy_j": round(energy, 6), "energy_source": "model"}
    if measured_energy_j is not None:
        out.update(energy_j=round(float(measured_energy_j), 6), model_energy_j=round(energy, 6),
                   energy_source=energy_source or "measured")
    return out
