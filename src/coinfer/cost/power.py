"""Readers of real power where the hardware exposes it (torch-free, optional).

* **RAPL** (Linux powercap, Intel and recent AMD CPUs):
  ``/sys/class/powercap/intel-rapl:N/energy_uj`` is a cumulative energy
  counter per package, wrapping at ``max_energy_range_uj``. Sub-domains
  (``intel-rapl:N:M``: core, uncore, dram) are inside their package and not
  added again.
* **INA3221** (NVIDIA Jetson power monitor), two sysfs layouts:
  JetPack 4 ``/sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power<ch>_input``
  (mW) and JetPack 5+ ``/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in<ch>_input``
  (mV) with ``curr<ch>_input`` (mA). It gives instantaneous power; energy is
  the integral of samples (:func:`integrate`).

Every ``find_*`` returns ``None`` when the interface is absent or
unreadable (e.g. ``energy_uj`` is root-only on recent kernels), so callers
fall back to the cluster file's power figures. The runtime samples them
around a request to report measured energy next to the model's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path


def _read_int(p: Path) -> int | None:
    try:
        return int(p.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class RaplDomain:
    path: Path
    name: str
    max_range_uj: int


@dataclass(frozen=True)
class RaplReader:
    """Cumulative package energy from Linux powercap (RAPL)."""

    domains: tuple[RaplDomain, ...]

    def read_uj(self) -> tuple[int, ...] | None:
        vals = tuple(_read_int(d.path / "energy_uj") for d in self.domains)
        return None if any(v is None for v in vals) else vals  # type: ignore[return-value]

    def delta_j(self, before: tuple[int, ...], after: tuple[int, ...]) -> float:
        """Joules between two :meth:`read_uj` readings, counting one wrap-around per domain."""
        total = 0
        for d, a, b in zip(self.domains, before, after):
            diff = b - a
            if diff < 0:
                diff += d.max_range_uj
            total += diff
        return total / 1e6

    def measure(self, fn: Callable[[], object]) -> float | None:
        """Joules the packages used while ``fn()`` ran (None if a reading failed)."""
        a = self.read_uj()
        fn()
        b = self.read_uj()
        return None if a is None or b is None else self.delta_j(a, b)


def find_rapl(root: str | Path = "/sys/class/powercap") -> RaplReader | None:
    base = Path(root)
    if not base.is_dir():
        return None
    doms = []
    for p in sorted(base.glob("intel-rapl:*")):
        if p.name.count(":") != 1:  # a sub-domain, already inside its package
            continue
        if _read_int(p / "energy_uj") is None:
            continue
        name = (p / "name").read_text().strip() if (p / "name").is_file() else p.name
        doms.append(RaplDomain(p, name, _read_int(p / "max_energy_range_uj") or 2**32))
    return RaplReader(tuple(doms)) if doms else None


@dataclass(frozen=True)
class Ina3221Channel:
    label: str
    power_file: Path | None  # mW (JetPack 4)
    volt_file: Path | None  # mV (JetPack 5+)
    curr_file: Path | None  # mA

    def watts(self) -> float | None:
        if self.power_file is not None:
            mw = _read_int(self.power_file)
            return None if mw is None else mw / 1e3
        mv = _read_int(self.volt_file) if self.volt_file else None
        ma = _read_int(self.curr_file) if self.curr_file else None
        return None if mv is None or ma is None else mv * ma / 1e6


@dataclass(frozen=True)
class Ina3221Reader:
    """Instantaneous board power (W): the sum of the INA3221 rails."""

    channels: tuple[Ina3221Channel, ...]

    def power_w(self) -> float | None:
        vals = [c.watts() for c in self.channels]
        if any(v is None for v in vals):
            return None
        return float(sum(v for v in vals if v is not None))

    def rails(self) -> dict[str, float | None]:
        return {c.label: c.watts() for c in self.channels}


def _label(d: Path, name: str, default: str) -> str:
    p = d / name
    try:
        return p.read_text().strip() if p.is_file() else default
    except OSError:
        return default


def find_ina3221(root: str | Path = "/sys/bus/i2c/drivers") -> Ina3221Reader | None:
    base = Path(root)
    chans: list[Ina3221Channel] = []
    for dev in sorted(base.glob("ina3221x/*/iio:device*")):  # JetPack 4
        for pf in sorted(dev.glob("in_power*_input")):
            ch = pf.name[len("in_power"):-len("_input")]
            chans.append(Ina3221Channel(_label(dev, f"rail_name_{ch}", f"ch{ch}"), pf, None, None))
    for hw in sorted(base.glob("ina3221/*/hwmon/hwmon*")):  # JetPack 5+
        for vf in sorted(hw.glob("in*_input")):
            ch = vf.name[len("in"):-len("_input")]
            cf = hw / f"curr{ch}_input"
            if cf.is_file():
                chans.append(Ina3221Channel(_label(hw, f"in{ch}_label", f"ch{ch}"), None, vf, cf))
    chans = [c for c in chans if c.watts() is not None]
    return Ina3221Reader(tuple(chans)) if chans else None


def integrate(samples: list[tuple[float, float]]) -> float:
    """Energy (J) of ``[(t_s, watts), ...]`` samples by the trapezoid rule."""
    s = sorted(samples)
    return float(sum((t1 - t0) * (w0 + w1) / 2.0 for (t0, w0), (t1, w1) in pairwise(s)))


def sample_power(reader: Ina3221Reader, duration_s: float, period_s: float = 0.01) -> list[tuple[float, float]]:
    """Samples of ``reader`` for ``duration_s`` (a helper for the runtime's sampling thread)."""
    out: list[tuple[float, float]] = []
    end = time.monotonic() + duration_s
    while True:
        now = time.monotonic()
        w = reader.power_w()
        if w is not None:
            out.append((now, w))
        if now >= end:
            return out
        time.sleep(period_s)
