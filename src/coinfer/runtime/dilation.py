"""Time-dilation CPU emulation: a device ``share`` times as fast as this machine, never paused.

The cgroup quota (:mod:`coinfer.runtime.emulation`) makes a process as slow
as a ``share`` device *on average*: it runs at full speed until it has used
``share`` × period of CPU, then the kernel freezes it for the rest of the
period. A real slow device never freezes: it answers a message at once, only
slower. With a 10 ms period and share 0.35, a halo that arrives just after
the receiver spent its quota waits up to 6.5 ms, and so does one whose sender
spent it just before sending — a cost no real device has (see
``benchmarks/runtime/scaling/README.md``).

Dilation emulates the slow device from inside the worker instead. Every piece
of CPU work the worker does for a request — a compute with its input
assembly, encoding and sending a tensor, decoding a message — runs at full
speed as a *section*, and the section then lasts until ``cpu / share`` wall
seconds after it began, where ``cpu`` is the CPU time the section's thread
used (``time.thread_time``: a backend with one thread computes in the calling
thread). With more threads it is the process's CPU time, which then also
counts whatever other threads of the worker do meanwhile (little: the I/O
thread, heartbeats). A device's computes run one at a time: its CPU is
busy while one lasts. Everything else — encoding and sending, decoding a
halo, answering a ping — runs beside them, dilated too, as an operating
system would time-slice it in: it must not wait seconds for a long compute
of a slow device (its heartbeat would stop; a source computing its own tile
would stop handing tiles out). Waiting (for a halo, a request) is not a
section and costs nothing.

It is exact while every device gets at least ``share`` of a core when all of
them compute at once (4 × 0.35 on 2 cores: each gets 0.5 ≥ 0.35); CPU the
worker spends outside sections (ZeroMQ's I/O thread moving bytes, the
heartbeat, building a deployment) is not dilated — like a network card's
DMA, it is not the request's CPU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext


class Dilation:
    """Sections of CPU work that last ``cpu_time / share`` (see the module doc)."""

    def __init__(self, share: float, threads: int = 1) -> None:
        if not (share > 0 and share < float("inf")):
            raise ValueError(f"a dilated cpu_share must be > 0 (got {share})")
        self.share = float(share)
        self.threads = max(1, int(threads))
        # one thread: the section's own CPU time; more: the process's (the backend's pool works for it)
        self._clock = time.thread_time if self.threads == 1 else time.process_time
        self._cpu = threading.Lock()
        self._local = threading.local()
        self.busy_s = 0.0  # wall time the emulated CPU was busy (the sections' total)
        self.cpu_s = 0.0  # CPU time the sections used

    @contextmanager
    def section(self, exclusive: bool = True) -> Iterator[None]:
        """Dilate the CPU work inside. ``exclusive`` (computes): wait until the device's other
        computes are done first. Not exclusive (sends, message handlers): run beside a compute —
        they must not wait for one that lasts seconds on a slow device."""
        if getattr(self._local, "depth", 0):  # nested: the outer section accounts for it
            yield
            return
        with self._cpu if exclusive else nullcontext():
            self._local.depth = 1
            w0 = time.perf_counter()
            c0 = self._clock()
            try:
                yield
            finally:
                self._local.depth = 0
                cpu = self._clock() - c0
                end = w0 + cpu / self.share
                while (left := end - time.perf_counter()) > 0:
                    time.sleep(left)
                self.cpu_s += cpu
                self.busy_s += time.perf_counter() - w0


_ACTIVE: Dilation | None = None


def install(share: float | None, threads: int = 1) -> Dilation | None:
    """Make this process a dilated ``share`` device (None: undo)."""
    global _ACTIVE
    _ACTIVE = None if share is None else Dilation(share, threads)
    return _ACTIVE


def active() -> Dilation | None:
    return _ACTIVE


def section(exclusive: bool = True) -> AbstractContextManager[None]:
    """A dilated section when this process is dilated, else nothing (see :meth:`Dilation.section`)."""
    d = _ACTIVE
    return d.section(exclusive) if d is not None else nullcontext()
