"""Bandwidth traces: link rate as a looping step function of time (torch-free).

A trace is a CSV of ``t_s,mbps`` rows (an optional header line, ``#``
comments and blank lines are skipped), the format of ``network.trace`` in the
cluster file. Its semantics are those of the runtime's link shaper
(:class:`coinfer.runtime.shaping.LinkShaper`), so a prediction and an
emulated run see the same link: times count from the first row; a row's rate
holds until the next row; the last row holds for the trace's mean step (1 s
for a single row); then the trace loops. While a trace is active it *is* the
rate of every link (the configured bandwidths are replaced); latency is
unchanged. A transfer of *b* bits starting at *t0* ends when the integral of
the rate from *t0* reaches *b* (Edgent's dynamic-bandwidth setting, TWC
version). Trace time 0 is the request's start plus the simulator's
``trace_start_s``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..cluster import ClusterError


@dataclass(frozen=True)
class BandwidthTrace:
    times_s: tuple[float, ...]  # row start times, the first is 0
    mbps: tuple[float, ...]
    name: str = "trace"
    period_s: float = field(init=False)
    _cum_bits: tuple[float, ...] = field(init=False, repr=False)  # bits carried before each row

    def __post_init__(self) -> None:
        if not self.times_s or len(self.times_s) != len(self.mbps):
            raise ClusterError(f"{self.name}: a bandwidth trace needs at least one (t_s, mbps) row")
        for i, (t, b) in enumerate(zip(self.times_s, self.mbps)):
            if not (math.isfinite(t) and t >= 0):
                raise ClusterError(f"{self.name}: row {i + 1}: t_s must be >= 0 (got {t})")
            if not (math.isfinite(b) and b > 0):
                raise ClusterError(f"{self.name}: row {i + 1}: bandwidth must be > 0 Mbit/s (got {b}); "
                                   f"use a small positive rate for an outage")
        if any(b <= a for a, b in zip(self.times_s, self.times_s[1:])):
            raise ClusterError(f"{self.name}: t_s must increase strictly from row to row")
        if self.times_s[0] != 0:
            raise ClusterError(f"{self.name}: internal: rows must start at 0 (use from_points)")
        n = len(self.times_s)
        step = self.times_s[-1] / (n - 1) if n > 1 else 1.0
        period = self.times_s[-1] + step
        ends = (*self.times_s[1:], period)
        cum = [0.0]
        for a, b, r in zip(self.times_s, ends, self.mbps):
            cum.append(cum[-1] + (b - a) * r * 1e6)
        object.__setattr__(self, "period_s", period)
        object.__setattr__(self, "_cum_bits", tuple(cum))

    @classmethod
    def from_points(cls, points: list[tuple[float, float]], name: str = "trace") -> BandwidthTrace:
        """Rows ``[(t_s, mbps), ...]``; times are taken relative to the first row."""
        if not points:
            raise ClusterError(f"{name}: a bandwidth trace needs at least one (t_s, mbps) row")
        t0 = float(points[0][0])
        if not (math.isfinite(t0) and t0 >= 0):
            raise ClusterError(f"{name}: row 1: t_s must be >= 0 (got {t0})")
        return cls(tuple(float(t) - t0 for t, _ in points), tuple(float(b) for _, b in points), name)

    @classmethod
    def load(cls, path: str | Path) -> BandwidthTrace:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ClusterError(f"bandwidth trace {str(p)!r} does not exist; give a CSV of t_s,mbps rows")
        pts: list[tuple[float, float]] = []
        first = True
        for ln, raw in enumerate(p.read_text().splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            cells = [c.strip() for c in line.split(",")]
            try:
                if len(cells) != 2:
                    raise ValueError
                pts.append((float(cells[0]), float(cells[1])))
            except ValueError:
                if first:  # a header line such as "t_s,mbps"
                    first = False
                    continue
                raise ClusterError(f"{p.name}: line {ln}: expected 't_s,mbps' numbers, got {line[:60]!r}") from None
            first = False
        return cls.from_points(pts, p.name)

    def _row(self, tau: float) -> int:
        return max(0, bisect.bisect_right(self.times_s, tau) - 1)

    def mbps_at(self, t_s: float) -> float:
        return self.mbps[self._row(t_s % self.period_s)]

    def transfer_s(self, bits: float, t0_s: float) -> float:
        """Seconds to send ``bits`` starting at trace time ``t0_s``."""
        if bits <= 0:
            return 0.0
        k, tau = divmod(t0_s, self.period_s)
        i = self._row(tau)
        need = self._cum_bits[i] + (tau - self.times_s[i]) * self.mbps[i] * 1e6 + bits
        full = self._cum_bits[-1]
        periods, need = divmod(need, full)
        if need == 0.0 and periods > 0:
            periods, need = periods - 1, full
        j = min(max(bisect.bisect_left(self._cum_bits, need) - 1, 0), len(self.mbps) - 1)
        end = (k + periods) * self.period_s + self.times_s[j] + (need - self._cum_bits[j]) / (self.mbps[j] * 1e6)
        return max(0.0, end - t0_s)
