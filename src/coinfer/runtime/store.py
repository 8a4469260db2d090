"""Per-request state on a worker: pieces of tensors it holds, and a mailbox of arrivals.

A *piece* is a region of a stage's output tensor (``tensor`` = stage index,
-1 the model input); of a flat ``(N, F)`` tensor, a feature range ``(0, 1, c0, c1)``. Pieces come from local computation or from peers;
:meth:`TensorStore.assemble` cuts any region out of them (copying only when a
region spans several pieces).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from ..execute.part import concat_features
from ..graph.geometry import Region, area, intersect, is_empty

Key = tuple[int, "Region | None", str]  # (tensor, region, from-device)


class RequestAborted(Exception):
    """The request was cancelled (a device died, the coordinator re-planned) or timed out."""


class TensorStore:
    def __init__(self) -> None:
        self._pieces: dict[int, list[tuple[Region | None, torch.Tensor]]] = {}

    def add(self, tensor: int, region: Region | None, value: torch.Tensor) -> None:
        self._pieces.setdefault(tensor, []).append((region, value))

    def drop(self, tensor: int) -> None:
        self._pieces.pop(tensor, None)

    def assemble(self, tensor: int, region: Region | None) -> torch.Tensor:
        pieces = self._pieces.get(tensor)
        if not pieces:
            raise RuntimeError(f"internal: no piece of tensor s{tensor} on this device")
        if region is None:
            if len(pieces) == 1 and pieces[0][0] is None:
                return pieces[0][1]
            full = [p for p in pieces if p[0] is None]
            if full:
                return full[0][1]
            if all(v.dim() == 2 for _, v in pieces):  # feature ranges of a flat tensor (features parts)
                return concat_features(pieces, tensor)
            raise RuntimeError(f"internal: whole tensor s{tensor} requested but only regions are held")
        for r, v in pieces:
            if r == region:
                return v
        if pieces[0][1].dim() == 2:
            for r, v in pieces:
                c0 = 0 if r is None else r[2]
                if c0 <= region[2] and region[3] <= c0 + v.shape[1]:
                    return v[:, region[2] - c0:region[3] - c0]
            raise RuntimeError(f"internal: features {region[2:]} of s{tensor} are not within one piece held")
        for r, v in pieces:  # a region fully inside one piece: a view
            if r is None:
                return v[:, :, region[0]:region[1], region[2]:region[3]]
            if r[0] <= region[0] and region[1] <= r[1] and r[2] <= region[2] and region[3] <= r[3]:
                return v[:, :, region[0] - r[0]:region[1] - r[0], region[2] - r[2]:region[3] - r[2]]
        ref = pieces[0][1]
        out = torch.empty((ref.shape[0], ref.shape[1], region[1] - region[0], region[3] - region[2]),
                          dtype=ref.dtype)
        covered = 0
        for r, v in pieces:
            assert r is not None
            x = intersect(r, region)
            if is_empty(x):
                continue
            out[:, :, x[0] - region[0]:x[1] - region[0], x[2] - region[2]:x[3] - region[2]] = \
                v[:, :, x[0] - r[0]:x[1] - r[0], x[2] - r[2]:x[3] - r[2]]
            covered += area(x)
        if covered < area(region):
            raise RuntimeError(f"internal: region {region} of s{tensor} is not covered by the pieces held")
        return out


@dataclass
class RequestState:
    """What one request has on one worker. Thread-safe via its condition variable."""

    dep: str
    req: int
    created: float = field(default_factory=time.monotonic)
    cv: threading.Condition = field(default_factory=threading.Condition)
    inbox: dict[Key, torch.Tensor] = field(default_factory=dict)
    arrivals: dict[Key, tuple[float, float]] = field(default_factory=dict)  # key -> (sent_ms, arrived_ms)
    tiles: deque[tuple[int, int, torch.Tensor, str]] = field(default_factory=deque)
    tile_outs: deque[tuple[int, int, str, float, torch.Tensor]] = field(default_factory=deque)
    tiles_done: set[int] = field(default_factory=set)
    input: torch.Tensor | None = None
    started: bool = False
    aborted: str | None = None
    store: TensorStore = field(default_factory=TensorStore)
    events: list[list[Any]] = field(default_factory=list)

    def put(self, key: Key, value: torch.Tensor, sent_ms: float | None = None) -> None:
        with self.cv:
            self.inbox[key] = value
            now = time.time() * 1e3
            self.arrivals[key] = (sent_ms if sent_ms is not None else now, now)
            self.cv.notify_all()

    def abort(self, why: str) -> None:
        with self.cv:
            self.aborted = why
            self.cv.notify_all()

    def wait_for(self, pred: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        with self.cv:
            while not pred():
                if self.aborted:
                    raise RequestAborted(self.aborted)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RequestAborted(f"timed out after {timeout_s:.0f} s waiting for {what}")
                self.cv.wait(min(left, 0.5))
            if self.aborted:
                raise RequestAborted(self.aborted)

    def take(self, key: Key, timeout_s: float) -> torch.Tensor:
        self.wait_for(lambda: key in self.inbox, timeout_s, f"s{key[0]} {key[1]} from {key[2]}")
        with self.cv:
            return self.inbox.pop(key)
