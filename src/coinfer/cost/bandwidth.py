"""Bandwidth traces: link rate as a looping step function of time (torch-free).

A trace is a CSV of ``t_s,mbps`` rows (an optional header line, ``#``
comments and blank lines are skipped), the format of ``network.trace`` in the
cluster file. The runtime's link shaper (:class:`coinfer.runtime.shaping.LinkShaper`)
replays a trace with this class and reads it with :func:`read_trace_csv`, so a
prediction and an emulated run see the same link: times count from the first row; a row's rate
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..cluster import ClusterError
from ..errors import UserError


class TraceError(ClusterError, UserError):
    """A bandwidth trace that cannot be used (one line: file, row, what, fix)."""


def read_trace_csv(path: str | Path) -> list[tuple[float, float]]:
    """The ``(t_s, mbps)`` rows of a trace CSV (see the module docstring); :class:`TraceError` for a
    bad file. The one reader of the format: the cost model, Edgent and the runtime's link shaper."""
    from ..paths import read_user_text

    p = Path(path).expanduser()
    text = read_user_text(p, what="bandwidth trace", kind="CSV", error=TraceError,
                          fix="give a CSV of t_s,mbps rows (e.g. configs/traces/wifi.csv)")
    rows: list[tuple[float, float]] = []
    first = True  # the first non-blank line may be a header such as "t_s,mbps"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 2:
            raise TraceError(f"{p}:{lineno}: expected 2 columns t_s,mbps (got {len(cells)}: {line[:60]!r})")
        try:
            t, r = float(cells[0]), float(cells[1])
        except ValueError:
            if first:
                first = False
                continue
            raise TraceError(f"{p}:{lineno}: {line[:60]!r} is not two numbers t_s,mbps") from None
        first = False
        _check_row(t, r, rows[-1][0] if rows else None, f"{p}:{lineno}")
        rows.append((t, r))
    if not rows:
        raise TraceError(f"{p}: no rows; a trace is lines of t_s,mbps (e.g. 0,100)")
    return rows


def _check_row(t: float, r: float, prev: float | None, where: str) -> None:
    if not (math.isfinite(t) and t >= 0):
        raise TraceError(f"{where}: t_s must be a finite number >= 0 (got {t:g})")
    if not (math.isfinite(r) and r > 0):
        raise TraceError(f"{where}: rate must be > 0 Mbit/s (got {r:g}); use a small positive rate for an outage")
    if prev is not None and t <= prev:
        raise TraceError(f"{where}: t_s {t:g} is not after the previous row's {prev:g}; times must increase")


@dataclass(frozen=True)
class BandwidthTrace:
    times_s: tuple[float, ...]  # row start times, the first is 0
    mbps: tuple[float, ...]
    name: str = "trace"
    period_s: float = field(init=False)
    _cum_bits: tuple[float, ...] = field(init=False, repr=False)  # bits carried before each row

    def __post_init__(self) -> None:
        if not self.times_s or len(self.times_s) != len(self.mbps):
            raise TraceError(f"{self.name}: no rows; a trace is lines of t_s,mbps (e.g. 0,100)")
        for i, (t, b) in enumerate(zip(self.times_s, self.mbps)):
            _check_row(t, b, self.times_s[i - 1] if i else None, f"{self.name}: row {i + 1}")
        if self.times_s[0] != 0:
            raise TraceError(f"{self.name}: internal: rows must start at 0 (use from_points)")
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
    def from_points(cls, points: Sequence[tuple[float, float]], name: str = "trace") -> BandwidthTrace:
        """Rows ``[(t_s, mbps), ...]``; times are taken relative to the first row."""
        if not points:
            raise TraceError(f"{name}: no rows; a trace is lines of t_s,mbps (e.g. 0,100)")
        rows = [(float(t), float(r)) for t, r in points]
        for i, (t, r) in enumerate(rows):
            _check_row(t, r, rows[i - 1][0] if i else None, f"{name}: row {i + 1}")
        t0 = rows[0][0]
        return cls(tuple(t - t0 for t, _ in rows), tuple(r for _, r in rows), name)

    @classmethod
    def load(cls, path: str | Path) -> BandwidthTrace:
        return cls.from_points(read_trace_csv(path), Path(path).name)

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
