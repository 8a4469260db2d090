"""Tile schedulers for ``schedule: dynamic`` stages (pure policy, torch-free).

The source asks ``next_tile(device)`` whenever a participant has room (fewer
than ``depth`` tiles in flight) and reports ``done(device, tile, ms)``.

``steal`` (default) — DeepThings' distributed work stealing (Zhao et al.,
IEEE TCAD 2018, §IV-C): each device starts with the tiles the plan's grid
assigns it; a device whose own queue is empty takes a tile from the end of the
longest remaining queue, so a slow or busy device ends up with fewer tiles.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol


class TileScheduler(Protocol):
    depth: int

    def next_tile(self, device: str) -> int | None: ...

    def done(self, device: str, tile: int, ms: float) -> None: ...


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

    def done(self, device: str, tile: int, ms: float) -> None:
        pass


SCHEDULERS: dict[str, Any] = {"steal": StealScheduler}


def make_scheduler(params: dict[str, Any], tiles: list[int], devices: list[str],
                   assignment: dict[int, str]) -> TileScheduler:
    name = str(params.get("scheduler", "steal"))
    if name not in SCHEDULERS:
        raise ValueError(f"unknown tile scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](tiles, devices, assignment, **params.get("scheduler_params", {}))
