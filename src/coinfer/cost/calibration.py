"""Host calibration: how fast *this* machine's CPU runs coinfer's kernels (torch-free).

The analytic cost model prices a node as ``FLOPs / throughput + bytes /
memory bandwidth + per-node overhead`` (see :mod:`coinfer.cost.model`). The
three figures come from a :class:`HostCalibration`, measured once per machine
by :func:`coinfer.cost.calibrate.measure_host` (torch, one thread) and cached
as JSON under :func:`coinfer.paths.cache_dir`; :data:`BUILTIN` holds sensible
defaults when nothing has been measured. An emulated device with
``cpu_share`` *s* runs at *s* times the calibration (a cgroup quota throttles
arithmetic, memory traffic and interpreter overhead alike).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

FORMAT = "coinfer.calibration/1"
FILENAME = "calibration.json"


class CalibrationError(UserError):
    """A calibration file that cannot be used."""


@dataclass(frozen=True)
class HostCalibration:
    """Throughputs of one full core (one torch thread) of a machine.

    ``gemm_gflops``: dense conv / linear GFLOP/s; ``dwconv_gflops``: depthwise
    and grouped conv GFLOP/s (far lower on CPUs); ``pool_gops``: pooled
    output elements per ns (G/s) of max / avg pooling (the IR gives pools no
    FLOPs, yet a CPU pool costs tens of ns per output); ``mem_gbps``: GB/s of activation traffic (bytes
    read + written); ``weight_gbps``: GB/s of streaming parameters (a batch-1
    linear layer is bound by it); ``node_overhead_us``: fixed cost per
    executed node (dispatch, slicing, allocation).
    """

    gemm_gflops: float = 80.0
    dwconv_gflops: float = 21.0
    pool_gops: float = 0.033
    mem_gbps: float = 70.0
    weight_gbps: float = 16.0
    node_overhead_us: float = 8.0
    source: str = "builtin"  # builtin | measured
    machine: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in ("gemm_gflops", "dwconv_gflops", "pool_gops", "mem_gbps", "weight_gbps"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and v > 0):
                raise CalibrationError(f"calibration {k} must be > 0 (got {v!r}); re-measure with "
                                       f"coinfer simulate --calibrate")
        if not self.node_overhead_us >= 0:
            raise CalibrationError(f"calibration node_overhead_us must be >= 0 (got {self.node_overhead_us!r})")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    def scaled(self, factor: float) -> HostCalibration:
        """Every throughput divided by ``factor`` (and the overhead multiplied): a slower machine."""
        return HostCalibration(self.gemm_gflops / factor, self.dwconv_gflops / factor, self.pool_gops / factor,
                               self.mem_gbps / factor, self.weight_gbps / factor,
                               self.node_overhead_us * factor, self.source, dict(self.machine))

    @classmethod
    def from_dict(cls, d: Any, where: str = "calibration") -> HostCalibration:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CalibrationError(f"{where} is not a {FORMAT} document; re-measure with coinfer simulate --calibrate")
        allowed = {"format", "gemm_gflops", "dwconv_gflops", "pool_gops", "mem_gbps", "weight_gbps",
                   "node_overhead_us", "source", "machine"}
        extra = set(d) - allowed
        if extra:
            raise CalibrationError(f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(allowed)}")
        body = {k: v for k, v in d.items() if k != "format"}
        try:
            return cls(**body)
        except TypeError as e:
            raise CalibrationError(f"{where}: {e}") from None


#: Defaults: one core (one torch thread, fp32) of the AMD EPYC VM coinfer is
#: developed on, torch 2.13 CPU, rounded (docs/cost-model.md has the command).
BUILTIN = HostCalibration()


def default_path() -> Path:
    from ..paths import cache_dir

    return cache_dir() / FILENAME


def load_calibration(path: str | Path | None = None) -> HostCalibration:
    """The cached measured calibration, else :data:`BUILTIN` (never measures)."""
    p = Path(path) if path is not None else default_path()
    if not p.is_file():
        if path is not None:
            raise CalibrationError(f"calibration file {str(p)!r} does not exist; measure one with "
                                   f"coinfer simulate --calibrate")
        return BUILTIN
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CalibrationError(f"calibration file {str(p)!r} is unreadable ({e}); delete it or re-measure "
                               f"with coinfer simulate --calibrate") from None
    return HostCalibration.from_dict(d, str(p))


def save_calibration(cal: HostCalibration, path: str | Path | None = None) -> Path:
    p = Path(path) if path is not None else default_path()
    p.write_text(json.dumps(cal.to_dict(), indent=1) + "\n")
    return p
