"""Link emulation: bandwidth, latency and replayed bandwidth traces.

A :class:`LinkShaper` models one link as a serial pipe. A message of ``n``
bytes starts being serialised when the link is free (after the previous
message) and takes ``8 n`` bits at the link's rate; if the rate changes while
it is on the link (a replayed trace) the time is integrated across the
changes. It is *delivered* one latency after its last bit left. Latency
pipelines (a message does not wait for the previous one's latency), the rate
does not (bytes queue).

The transport holds a shaped message back until :meth:`LinkShaper.schedule`
says it is delivered and only then hands it to the socket, so the receiver
sees realistic arrival times (on loopback the real transfer adds a few ms for
megabytes). A 10 MB message at 100 Mbit/s arrives 0.8 s after it is sent.

Traces are CSV files of ``t_s,mbps`` rows (a header line is optional; ``#``
comments and blank lines are skipped): the rate of a row holds from its time
until the next row's; the last row holds for the mean step of the trace (1 s
if it has a single row); the trace then loops. Trace time 0 is ``t0`` (the
shaper's creation by default) — the first row's time is where it starts.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError


class TraceError(UserError):
    """A bandwidth trace file that cannot be used (one line: file, row, what, fix)."""


class LinkShaper:
    """One emulated link (thread-safe; share one object between senders to share the link).

    ``mbps``: the rate in Mbit/s (``math.inf``: no serialisation delay); ``latency_ms``:
    one-way delay added to every message; ``trace``: ``[(t_s, mbps), ...]`` replayed (and
    looped) instead of the fixed rate, with trace time 0 at monotonic time ``t0``.
    """

    def __init__(self, mbps: float, latency_ms: float = 0.0, trace: list[tuple[float, float]] | None = None,
                 t0: float | None = None) -> None:
        if not (mbps > 0):
            raise ValueError(f"link rate must be > 0 Mbit/s (got {mbps})")
        if not (latency_ms >= 0 and math.isfinite(latency_ms)):
            raise ValueError(f"link latency must be >= 0 ms (got {latency_ms})")
        self.mbps = float(mbps)
        self.latency_ms = float(latency_ms)
        self.t0 = time.monotonic() if t0 is None else float(t0)
        self._lock = threading.Lock()
        self._free_at = -math.inf  # when the link finishes serialising what it has
        self.trace: list[tuple[float, float]] | None = None
        if trace:
            _check_trace(trace, "trace")
            first = float(trace[0][0])
            self._times = [float(t) - first for t, _ in trace]
            self._rates = [float(r) * 1e6 for _, r in trace]  # bit/s
            step = self._times[-1] / (len(self._times) - 1) if len(self._times) > 1 else 1.0
            self._period = self._times[-1] + step
            self._ends = self._times[1:] + [self._period]
            # bits the link carries in one full period, and cumulative bits at each row start
            self._cum = [0.0]
            for a, b, r in zip(self._times, self._ends, self._rates):
                self._cum.append(self._cum[-1] + (b - a) * r)
            self.trace = [(float(t), float(r)) for t, r in trace]

    def rate_mbps(self, t: float) -> float:
        """The rate (Mbit/s) at monotonic time ``t``."""
        if self.trace is None:
            return self.mbps
        return self._rates[self._row((t - self.t0) % self._period)] / 1e6

    def _row(self, tau: float) -> int:
        return max(0, bisect.bisect_right(self._times, tau) - 1)

    def _finish(self, start: float, bits: float) -> float:
        """Monotonic time at which ``bits`` sent from ``start`` have left (integrating the trace)."""
        if bits <= 0:
            return start
        if self.trace is None:
            return start + (bits / (self.mbps * 1e6) if math.isfinite(self.mbps) else 0.0)
        rel = start - self.t0
        k, tau = divmod(rel, self._period)
        base = self.t0 + k * self._period
        full = self._cum[-1]
        # bits already "used" in this period before tau, so we can skip whole periods at once
        i = self._row(tau)
        done_before = self._cum[i] + (tau - self._times[i]) * self._rates[i]
        need = done_before + bits
        periods, need = divmod(need, full)
        if need == 0.0 and periods > 0:
            periods, need = periods - 1, full
        base += periods * self._period
        j = bisect.bisect_left(self._cum, need) - 1
        j = min(max(j, 0), len(self._rates) - 1)
        return base + self._times[j] + (need - self._cum[j]) / self._rates[j]

    def schedule(self, nbytes: int, now: float) -> float:
        """Reserve the link for ``nbytes`` sent at monotonic ``now``; return the delivery time."""
        with self._lock:
            start = max(now, self._free_at)
            end = self._finish(start, 8.0 * max(0, int(nbytes)))
            self._free_at = end
        return end + self.latency_ms / 1e3

    def reset(self) -> None:
        """Forget queued bytes (the link is idle from now on)."""
        with self._lock:
            self._free_at = -math.inf

    def __repr__(self) -> str:
        rate = "trace" if self.trace else f"{self.mbps:g} Mbit/s"
        return f"LinkShaper({rate}, {self.latency_ms:g} ms)"


def _check_trace(rows: Sequence[tuple[float, float]], where: str) -> None:
    prev = None
    for i, row in enumerate(rows):
        try:
            t, r = (float(v) for v in row)
        except (TypeError, ValueError):
            raise ValueError(f"{where}[{i}]: a row is (t_s, mbps); got {row!r}") from None
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"{where}[{i}]: t_s must be >= 0 (got {t})")
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"{where}[{i}]: rate must be > 0 Mbit/s (got {r})")
        if prev is not None and t <= prev:
            raise ValueError(f"{where}[{i}]: t_s {t:g} is not after the previous row's {prev:g}; times must increase")
        prev = t


def load_trace_csv(path: str | Path) -> list[tuple[float, float]]:
    """Read a ``t_s,mbps`` bandwidth trace; :class:`TraceError` (one line) for a bad file."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as e:
        raise TraceError(f"{p}: cannot read the trace ({e.strerror or e})") from None
    rows: list[tuple[float, float]] = []
    prev: float | None = None
    first_data = True
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
            if first_data and not rows:
                first_data = False  # a header line
                continue
            raise TraceError(f"{p}:{lineno}: {line[:60]!r} is not two numbers t_s,mbps") from None
        first_data = False
        if not (math.isfinite(t) and t >= 0):
            raise TraceError(f"{p}:{lineno}: t_s must be a finite number >= 0 (got {cells[0]})")
        if not (math.isfinite(r) and r > 0):
            raise TraceError(f"{p}:{lineno}: rate must be > 0 Mbit/s (got {cells[1]}); "
                             f"use a small positive rate for an outage")
        if prev is not None and t <= prev:
            raise TraceError(f"{p}:{lineno}: t_s {t:g} is not after the previous row's {prev:g}; "
                             f"times must increase")
        prev = t
        rows.append((t, r))
    if not rows:
        raise TraceError(f"{p}: no rows; a trace is lines of t_s,mbps (e.g. 0,100)")
    return rows
