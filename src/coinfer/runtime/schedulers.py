"""Tile schedulers for ``schedule: dynamic`` stages (pure policy, torch-free).

The source asks ``next_tile(device)`` whenever a participant has room (fewer
than ``depth`` tiles in flight) and reports ``done(device, tile, ms)``.

``steal`` (default) — DeepThings' distributed work stealing (Zhao et al.,
IEEE TCAD 2018, §IV-C): each device starts with the tiles the plan's grid
assigns it; a device whose own queue is empty takes a tile from the end of the
longest remaining queue, so a slow or busy device ends up with fewer tiles.

``adcnn`` — ADCNN's adaptive scheduling (Zhang, Lin & Zhang, ICPP 2020, §4 of
``PAPERS.md``): the source keeps a running rate per device,
``s_k <- (1 - gamma) s_k + gamma * (results received within T_L)``, and gives
each tile to the device that least increases ``max_k x_k / s_k`` (``x_k``:
tiles handed to k and not yet returned), within the device's storage
(``depth`` tiles). See :class:`AdcnnScheduler`.

``done(device, tile, ms, now_ms=None)``: ``now_ms`` is the time the output
arrived at the source (the simulator passes its clock; the runtime leaves it
``None`` and the scheduler reads a monotonic clock). Schedulers that keep
state across requests (``stateful = True``) receive a ``state`` dict the
caller keeps alive (the runtime: one per deployment and stage).
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Protocol


class TileScheduler(Protocol):
    depth: int

    def next_tile(self, device: str) -> int | None: ...

    def done(self, device: str, tile: int, ms: float, now_ms: float | None = None) -> None: ...


class StealScheduler:
    def __init__(self, tiles: list[int], devices: list[str], assignment: dict[int, str], depth: int = 1) -> None:
        self.depth = depth
        self.queues: dict[str, deque[int]] = {d: deque() for d in devices}
        for t in tiles:
            dev = assignment.get(t)
            self.queues[dev if dev in self.queues else devices[0]].append(t)
        self.taken: dict[str, list[int]] = {d: [] for d in devices}

    def next_tile(self, device: str) -> int | None:
        q = self.queues.get(device)
        if q:
            t = q.popleft()
        else:
            victim = max(self.queues, key=lambda d: len(self.queues[d]))
            if not self.queues[victim]:
                return None
            t = self.queues[victim].pop()
        self.taken[device].append(t)
        return t

    def done(self, device: str, tile: int, ms: float, now_ms: float | None = None) -> None:
        pass


class AdcnnScheduler:
    """ADCNN's rate-based tile assignment (Zhang, Lin & Zhang, ICPP 2020, adaptive scheduling).

    * **Rates.** ``s_k`` estimates how many results device k returns per
      window of ``window_ms`` (the paper's ``T_L``, 30 ms): whenever a window
      closes, ``s_k <- (1 - gamma) s_k + gamma * c_k`` with ``c_k`` the results
      of k that arrived in it (paper: ``gamma = 0.9``). Our choices where the
      paper is silent: only devices that had tiles outstanding during the
      window are updated (an idle device gives no evidence of its speed), and
      ``s_k`` never falls below ``min_rate`` x its initial value, so a device
      that returned nothing for a while still gets a tile now and then.
    * **Assignment.** Each unsent tile, in order, goes to the device whose
      ``x_k / s_k`` after taking it is smallest — the device that least
      increases ``max_k x_k / s_k`` (ties: the device listed first) — among
      the devices with storage left (fewer than ``depth`` tiles outstanding,
      the paper's node storage); ``x_k`` counts the tiles handed to k and not
      yet returned. Tiles wait at the source only while every device's
      storage is full. (An earlier reading held a tile back for a fast
      device whose storage was full even while slower devices sat idle; with
      rates learnt during warm-up requests — slow first tiles while a worker
      builds its parts — that starved devices for good: measured on eq8,
      VGG-16, 5x5 tiles, 3 of 7 workers got no tile in a request.)
    * **Initial rates.** From ``state["rates"]`` (what the previous request of
      this deployment learnt), else ``rates`` (the planner's prediction, in
      results per window), else 1 for every device.

    ``state`` (optional, kept by the caller across requests) receives the
    rates after every update. The planner (``coinfer.strategies.adcnn``)
    writes ``rates``, ``window_ms`` and ``depth`` into
    ``strategy.params.scheduler_params``.
    """

    stateful = True

    def __init__(self, tiles: list[int], devices: list[str], assignment: dict[int, str],
                 depth: int | None = None, gamma: float = 0.9, window_ms: float = 30.0,
                 rates: dict[str, float] | None = None, min_rate: float = 0.05,
                 state: dict[str, Any] | None = None) -> None:
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"adcnn scheduler: gamma must be in (0, 1], got {gamma}")
        if not window_ms > 0:
            raise ValueError(f"adcnn scheduler: window_ms must be > 0, got {window_ms}")
        self.devices = list(devices)
        self.depth = int(depth) if depth else max(1, len(tiles))
        self.gamma = float(gamma)
        self.window_ms = float(window_ms)
        self.state = state if state is not None else {}
        init = dict(rates or {})
        self.initial = {d: float(init.get(d, 1.0)) or 1.0 for d in self.devices}
        learnt = self.state.get("rates") or {}
        self.s = {d: float(learnt.get(d, self.initial[d])) for d in self.devices}
        self.floor = {d: max(1e-9, min_rate * self.initial[d]) for d in self.devices}
        self.pending: deque[int] = deque(tiles)
        self.x = {d: 0 for d in self.devices}
        self.outbox: dict[str, deque[int]] = {d: deque() for d in self.devices}
        self.taken: dict[str, list[int]] = {d: [] for d in self.devices}
        self.count = {d: 0 for d in self.devices}
        self.busy = {d: False for d in self.devices}
        self.t0: float | None = None  # start of the current window
        self.windows = 0

    @staticmethod
    def _clock() -> float:
        return time.monotonic() * 1e3

    def _roll(self, now: float) -> None:
        """Close every window that ended before ``now`` and update the rates."""
        if self.t0 is None:
            self.t0 = now
            return
        g = self.gamma
        while now >= self.t0 + self.window_ms:
            for d in self.devices:
                if self.busy[d] or self.count[d]:
                    self.s[d] = max(self.floor[d], (1 - g) * self.s[d] + g * self.count[d])
                self.count[d] = 0
                self.busy[d] = self.x[d] > 0
            self.t0 += self.window_ms
            self.windows += 1
            if now - self.t0 > 1000 * self.window_ms:  # a long gap: skip ahead, nothing more to learn
                self.t0 = now
        self.state["rates"] = dict(self.s)

    def _assign(self) -> None:
        """Hand out unsent tiles while some device has storage left, each to the least loaded one."""
        while self.pending:
            best, best_v = None, math.inf
            for d in self.devices:
                if self.x[d] < self.depth:
                    v = (self.x[d] + 1) / self.s[d]
                    if v < best_v:
                        best, best_v = d, v
            if best is None:  # every device's storage is full: the rest wait at the source
                return
            self.outbox[best].append(self.pending.popleft())
            self.x[best] += 1
            self.busy[best] = True

    def next_tile(self, device: str) -> int | None:
        if self.t0 is None:
            self._roll(self._clock())
        self._assign()
        q = self.outbox.get(device)
        if not q:
            return None
        t = q.popleft()
        self.taken[device].append(t)
        return t

    def done(self, device: str, tile: int, ms: float, now_ms: float | None = None) -> None:
        now = self._clock() if now_ms is None else float(now_ms)
        self._roll(now)
        self.count[device] = self.count.get(device, 0) + 1
        self.x[device] = max(0, self.x[device] - 1)

    def rates(self) -> dict[str, float]:
        return dict(self.s)


SCHEDULERS: dict[str, Any] = {"steal": StealScheduler, "adcnn": AdcnnScheduler}


def make_scheduler(params: dict[str, Any], tiles: list[int], devices: list[str],
                   assignment: dict[int, str], state: dict[str, Any] | None = None,
                   now_ms: float | None = None) -> TileScheduler:
    """The scheduler ``params["scheduler"]`` (default ``steal``) with ``params["scheduler_params"]``.

    ``state``: a dict kept by the caller across requests, handed to stateful
    schedulers. ``now_ms``: the stage's start on the caller's clock (the
    simulator's; default the scheduler's own monotonic clock).
    """
    name = str(params.get("scheduler", "steal"))
    if name not in SCHEDULERS:
        raise ValueError(f"unknown tile scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    cls = SCHEDULERS[name]
    kw = dict(params.get("scheduler_params", {}))
    if getattr(cls, "stateful", False) and state is not None:
        kw["state"] = state
    sched = cls(tiles, devices, assignment, **kw)
    if now_ms is not None and hasattr(sched, "_roll"):
        sched._roll(float(now_ms))
    return sched
