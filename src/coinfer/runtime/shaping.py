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

import math
import threading
import time

from ..cost.bandwidth import BandwidthTrace, TraceError
from ..cost.bandwidth import read_trace_csv as load_trace_csv

__all__ = ["LinkShaper", "TraceError", "load_trace_csv"]


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
        self._replay: BandwidthTrace | None = None  # the same integration as the cost model's
        if trace:
            self._replay = BandwidthTrace.from_points(trace, "trace")
            self.trace = [(float(t), float(r)) for t, r in trace]

    def rate_mbps(self, t: float) -> float:
        """The rate (Mbit/s) at monotonic time ``t``."""
        if self._replay is None:
            return self.mbps
        return self._replay.mbps_at(t - self.t0)

    def _finish(self, start: float, bits: float) -> float:
        """Monotonic time at which ``bits`` sent from ``start`` have left (integrating the trace)."""
        if bits <= 0:
            return start
        if self._replay is None:
            return start + (bits / (self.mbps * 1e6) if math.isfinite(self.mbps) else 0.0)
        return start + self._replay.transfer_s(bits, start - self.t0)

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
