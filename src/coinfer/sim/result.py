"""What a simulation returns (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..trace import Trace


@dataclass
class SimResult:
    """Predicted behaviour of one request of a plan.

    Times in ms over the request's makespan ``latency_ms`` (from the input
    arriving at the source to the output assembled there). ``busy_ms``:
    computing; ``idle_ms = latency_ms - busy_ms``; ``tx_ms`` / ``rx_ms``: the
    time the device's transfers occupied a link (sum over transfers, which may
    overlap on different links). ``bytes_moved``: expected on-wire bytes
    (after the plan's codec / quantisation); ``raw_bytes``: their fp32 size.
    ``energy_j`` sums every participating device's
    busy_w·busy + idle_w·idle + tx_w·tx + rx_w·rx; ``dynamic_energy_j`` leaves
    idle out (CoEdge's Ec + Ex).
    """

    latency_ms: float
    busy_ms: dict[str, float]
    idle_ms: dict[str, float]
    tx_ms: dict[str, float]
    rx_ms: dict[str, float]
    bytes_moved: int
    raw_bytes: int
    energy_j: float
    dynamic_energy_j: float
    device_energy_j: dict[str, float]
    trace: Trace
    costs: dict[str, Any] = field(default_factory=dict)

    @property
    def devices(self) -> list[str]:
        return list(self.busy_ms)

    def summary(self, digits: int = 3) -> dict[str, Any]:
        """A JSON-able summary (the ``--json`` contract: latency_ms, energy_j, bytes_moved, busy_ms...)."""

        def r(x: float) -> float:
            return round(float(x), digits)

        def rd(d: dict[str, float]) -> dict[str, float]:
            return {k: r(v) for k, v in d.items()}

        return {
            "latency_ms": r(self.latency_ms),
            "energy_j": round(self.energy_j, 6),
            "dynamic_energy_j": round(self.dynamic_energy_j, 6),
            "bytes_moved": self.bytes_moved,
            "raw_bytes": self.raw_bytes,
            "busy_ms": rd(self.busy_ms),
            "critical_compute_ms": r(self.trace.critical_compute_ms()),
            "idle_ms": rd(self.idle_ms),
            "tx_ms": rd(self.tx_ms),
            "rx_ms": rd(self.rx_ms),
            "device_energy_j": {k: round(v, 6) for k, v in self.device_energy_j.items()},
        }
