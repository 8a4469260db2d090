"""What coinfer's own runtime costs on a device, beyond the layers (torch-free).

The simulator predicts what the runtime measures, and on small devices the
runtime's software path is not free: every message is packed, validated,
queued, woken up for, received, unpacked and handed over by Python code, and
every compute instruction assembles its input from received pieces. On a
device emulated with a cgroup quota of ``cpu_share`` *s* all of that runs at
*s* of a core too (a 0.15-share device spends 6.7x longer per message than
the host does). Two pieces describe it:

* :class:`RuntimeCosts` — CPU time (µs of one full core) per send (the
  program thread's part and the transport I/O thread's part), per receive,
  per KB copied, per compute instruction; plus the transport's delivery
  granularity (its poll timeout is whole milliseconds). The defaults were
  measured on the development VM (two worker processes over loopback ZeroMQ,
  process CPU time per message); ``coinfer profile`` measures them on every
  device through the runtime (``profile.runtime``).
* :class:`CpuQuota` / :class:`CpuBucket` — the emulated device's CPU: a
  quota of ``share x period`` CPU-ms per period (CFS bandwidth control, as
  the launcher sets it). After idling, a device runs at full speed until the
  period's quota is used, then waits for the next period — a short layer
  after a wait runs up to 1/share faster than the steady-state figure, and
  per-message work draws on the same quota.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import UserError

#: The launcher's cgroup period (coinfer.runtime.emulation: 10 ms, longer when the quota would be < 1 ms).
PERIOD_MS = 10.0
MIN_QUOTA_MS = 1.0


class RuntimeCostsError(UserError):
    pass


@dataclass(frozen=True)
class RuntimeCosts:
    """CPU costs of the runtime per message / instruction, in µs of one full core of the device.

    ``send_us``: the program thread's part of a send (assemble the region,
    encode, pack, validate, enqueue); ``send_io_us``: the transport I/O
    thread's part (wake-up at the delivery time, hand to ZeroMQ, its I/O
    thread); ``recv_us``: receiving one message up to the program (ZeroMQ,
    unpack and validate, decode, hand-off to the request); ``per_kb_us``:
    extra per KB of payload in the transport on each side (the kernel's
    loopback copies, ZeroMQ); ``send_per_kb_us``: per KB in the program
    thread (assembling the region to send); ``compute_us``: per compute
    instruction (assemble the input from pieces, store the output);
    ``delivery_ms``: mean extra delay of a shaped message (the transport polls
    with whole-millisecond timeouts); ``loopback_gbps``: the unshaped hop
    between the coordinator and the source.
    """

    send_us: float = 110.0
    send_io_us: float = 280.0
    recv_us: float = 265.0
    per_kb_us: float = 1.4
    send_per_kb_us: float = 0.1
    compute_us: float = 40.0
    delivery_ms: float = 0.5
    loopback_gbps: float = 2.0
    source: str = "builtin"

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "source":
                continue
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise RuntimeCostsError(f"runtime cost {f.name} must be a number >= 0 (got {v!r}); "
                                        f"re-run coinfer profile")
        if not self.loopback_gbps > 0:
            raise RuntimeCostsError("runtime cost loopback_gbps must be > 0; re-run coinfer profile")

    def send_ms(self, nbytes: float) -> float:
        """Program-thread CPU ms of sending ``nbytes``."""
        return (self.send_us + self.send_per_kb_us * nbytes / 1024.0) / 1e3

    def send_io_ms(self, nbytes: float) -> float:
        """Transport-side CPU ms of sending ``nbytes`` (after the program thread's part)."""
        return (self.send_io_us + self.per_kb_us * nbytes / 1024.0) / 1e3

    def recv_ms(self, nbytes: float) -> float:
        return (self.recv_us + self.per_kb_us * nbytes / 1024.0) / 1e3

    def compute_ms(self, in_bytes: float = 0.0) -> float:
        return (self.compute_us + self.per_kb_us * 0.25 * in_bytes / 1024.0) / 1e3

    def loopback_ms(self, nbytes: float) -> float:
        return nbytes / (self.loopback_gbps * 1e6)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "runtime") -> RuntimeCosts:
        if not isinstance(d, dict):
            raise RuntimeCostsError(f"{where} must be a JSON object")
        names = {f.name for f in fields(cls)}
        extra = set(d) - names
        if extra:
            raise RuntimeCostsError(f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(names)}")
        try:
            kwargs: dict[str, Any] = {k: (str(v) if k == "source" else float(v)) for k, v in d.items()}
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise RuntimeCostsError(f"{where}: {e}; re-run coinfer profile") from None


#: Measured on the development VM (2 vCPU AMD EPYC, Python 3.11, pyzmq): see docs/simulator.md.
BUILTIN_RUNTIME = RuntimeCosts()


@dataclass(frozen=True)
class CpuQuota:
    """An emulated device's CPU: ``share`` of one core, enforced per ``period_ms`` (cgroup quota)."""

    share: float
    period_ms: float = PERIOD_MS

    @classmethod
    def for_share(cls, share: float) -> CpuQuota:
        """The launcher's period for ``share`` (coinfer.runtime.emulation._period)."""
        period = PERIOD_MS
        if share * period < MIN_QUOTA_MS:
            period = min(1000.0, math.ceil(MIN_QUOTA_MS / share * 1000.0) / 1000.0)
        return cls(share, period)

    @property
    def bucket_ms(self) -> float:
        return max(MIN_QUOTA_MS, self.share * self.period_ms)


class CpuBucket:
    """The CPU of one device in the simulator: one core under a CFS bandwidth quota (or none).

    The kernel gives an emulated device ``quota = share x period`` of CPU per
    period and refills it at every period boundary (unused quota is lost).
    A job of ``c`` CPU-ms after an idle spell therefore runs at full speed
    up to the quota, then waits for the next boundary — 1 ms after idling
    takes 1 ms on a 0.15 share, 2 ms takes ~6 ms, 20 ms ~124 ms (measured
    on the development VM; the fluid ``c / share`` would say 6.7, 13.3 and
    133). The periods start at ``phase`` (half a period: requests start at
    random phases, and one mid-period phase averages the waits of the many
    throttling events of a request).

    All the device's threads draw on one quota: :meth:`run` is a job of the
    program thread (one at a time, in program order), :meth:`side` a job of
    another thread (the transport receiving a message, or waking up to send
    one when its link says so) that runs from a given time. A side job is
    short and the kernel favours a thread that has been sleeping: it runs at
    once — unless the period's quota is already spent at that moment (then
    at the start of the next period) — and the program thread pays for the
    CPU it took (its next job is that much longer, or its bookings in that
    period leave that much less).

    ``speed``: the host's cores shared with other devices' processes, as
    ``(breakpoints, speeds)`` — ``speeds[i]`` of a core from
    ``breakpoints[i]`` to the next breakpoint (the last to infinity), 1
    before the first (see :func:`core_share`). ``record``: keep the running
    spans in ``runs``. Without a quota a job takes ``c`` (at the speed the
    host's cores allow).
    """

    __slots__ = ("bp", "debt", "free", "period", "phase", "quota", "runs", "share", "sp", "spent", "used")

    def __init__(self, quota: CpuQuota | None, speed: tuple[list[float], list[float]] | None = None,
                 record: bool = False) -> None:
        self.share = 1.0 if quota is None else min(1.0, quota.share)
        self.period = PERIOD_MS if quota is None else quota.period_ms
        self.quota = math.inf if quota is None or self.share >= 1.0 else quota.bucket_ms
        self.phase = self.period / 2.0
        self.used: dict[int, float] = {}  # period index -> CPU-ms booked in it
        self.spent: dict[int, float] = {}  # period index -> when its quota ran out
        self.debt = 0.0  # CPU side jobs took from program bookings already made
        self.free = 0.0  # when the program thread is free
        self.bp, self.sp = speed if speed is not None else ([], [])
        self.runs: list[tuple[float, float]] | None = [] if record else None

    @property
    def limited(self) -> bool:
        return self.share < 1.0

    def run(self, t: float, c: float) -> float:
        """A program-thread job of ``c`` CPU-ms, ready at ``t``: returns its end."""
        c += self.debt
        self.debt = 0.0
        self.free = self._fill(max(t, self.free), c)
        return self.free

    def side(self, t: float, c: float) -> float:
        """Another thread's job of ``c`` CPU-ms from ``t``: returns its end (see the class doc)."""
        if c <= 0:
            return t
        if not self.limited:
            if not self.bp:
                return t + c
            return self._fill(t, c)  # the host's cores may be shared
        P, q = self.period, self.quota
        k, _ = self._period(t)
        spent = self.spent.get(k)
        if spent is not None and spent <= t:
            t = self.phase + (k + 1) * P  # throttled now: the next period, first in line
            k += 1
        u = self.used.get(k, 0.0) + c
        self.used[k] = u
        if u >= q - 1e-12 and k not in self.spent:
            self.spent[k] = t + c
        if self.free > t:  # the program already booked this time: it pays the CPU taken from it
            self.debt += c
        return t + c

    def _period(self, t: float) -> tuple[int, float]:
        """The index of the quota period ``t`` falls in, and that period's end. A time set to a period's
        end is in the next period: ``floor((end - phase) / P)`` can round back into the period just
        ended (periods like 33.334 ms for a 0.03 share), and a throttled job then waited at that
        boundary forever (QA stop 26: `coinfer plan` never returned for such a device)."""
        P = self.period
        k = math.floor((t - self.phase) / P)
        if self.phase + (k + 1) * P <= t:
            k += 1
        elif self.phase + k * P > t:
            k -= 1
        return k, self.phase + (k + 1) * P

    def _fill(self, t: float, c: float) -> float:
        if c <= 0:
            return t
        bp = self.bp
        if not self.limited and not bp:
            if self.runs is not None:
                self.runs.append((t, t + c))
            return t + c
        q, used, runs = self.quota, self.used, self.runs
        limited = self.limited
        sp = self.sp
        nb = len(bp)
        i = bisect.bisect_right(bp, t) - 1 if nb else -1
        while c > 1e-12:
            if limited:
                k, end = self._period(t)
                avail = q - used.get(k, 0.0)
                if avail <= 1e-12:
                    t = end
                    continue
            else:
                k, end, avail = 0, math.inf, math.inf
            if nb:
                while i + 1 < nb and bp[i + 1] <= t:
                    i += 1
                if i < 0:
                    v, change = 1.0, bp[0]
                else:
                    v, change = sp[i], (bp[i + 1] if i + 1 < nb else math.inf)
            else:
                v, change = 1.0, math.inf
            stop = min(change, end)
            wall = stop - t
            if wall <= 1e-12:  # at a boundary
                t = stop
                continue
            step = min(c, avail, v * wall)
            w = step / v
            if runs is not None:
                runs.append((t, t + w))
            t += w
            if limited:
                u = used.get(k, 0.0) + step
                used[k] = u
                if u >= q - 1e-12 and k not in self.spent:
                    self.spent[k] = t
            c -= step
        return t


def core_share(runs: list[list[tuple[float, float]]], cores: float) -> tuple[list[float], list[float]]:
    """The speed of a running thread when the devices' running spans ``runs`` share ``cores`` cores.

    With ``n`` threads running at once on ``cores`` cores each gets
    ``min(1, cores / n)`` of a core (the kernel shares fairly; quotas decide
    *whether* a device runs, not how fast). Returns ``(breakpoints,
    speeds)`` for :class:`CpuBucket` — only where the speed is below 1.
    """
    ev: list[tuple[float, int]] = []
    for spans in runs:
        for a, b in spans:
            if b > a:
                ev.append((a, 1))
                ev.append((b, -1))
    if not ev:
        return [], []
    ev.sort()
    bp: list[float] = []
    sp: list[float] = []
    n = 0
    i = 0
    while i < len(ev):
        t = ev[i][0]
        while i < len(ev) and ev[i][0] == t:
            n += ev[i][1]
            i += 1
        v = 1.0 if n <= cores else cores / n
        if sp and sp[-1] == v:
            continue
        if not sp and v == 1.0:
            continue
        bp.append(t)
        sp.append(v)
    return bp, sp  # speeds[i] holds on [bp[i], bp[i+1]); the last (1.0: every span ends) to infinity
