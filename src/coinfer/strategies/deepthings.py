"""``deepthings``: Fused Tile Partitioning with work stealing (Zhao, Barijough, Gerstlauer, IEEE TCAD 2018).

DeepThings (§III–IV of "DeepThings: Distributed Adaptive Deep Learning
Inference on Resource-Constrained IoT Edge Clusters") fuses the first *N*
convolutional layers of a CNN into one stage and cuts that stage's output
into an ``R x C`` grid. Each output tile is traced back through the receptive
fields of the fused layers to an overlapping input tile, so every tile is
computed independently — no communication inside the fused stage, the
overlap computed redundantly (*Fused Tile Partitioning*, FTP). Tiles are
distributed at run time: an idle device steals a tile from a busy one
(*distributed work stealing*, §IV-C), so a slow or loaded device ends up with
fewer tiles. The remaining layers run on the gateway. YOLOv2 on 2–6
Raspberry Pi 3 used N = 16 and a 3 x 3 grid.

Here the fused stage is a ``grid`` stage with ``halo: exact`` (the overlapping
input tiles, results equal to the model) and ``schedule: dynamic``: the
source holds the input, hands each idle device its next tile and collects the
outputs (:mod:`coinfer.runtime.schedulers`, ``steal``: each device first takes
the tiles the plan's grid assigns it — in proportion to its predicted speed —
then steals from the end of the longest queue). The rest of the model runs
whole on the source or on the fastest device (``tail``).

Parameters: ``layers`` (N, number of conv layers fused; the stage ends at the
first splittable cut point after the N-th conv) or ``until`` (a cut point),
``grid`` (``"3x3"``, ``[3, 3]`` or ``3``), ``tail`` (``source``, ``fastest``,
``auto``), ``schedule`` (``dynamic`` or ``static``), ``devices``. What is not
given is chosen with the cost model: every candidate (the last cut point of
each feature-map resolution, square grids 2x2..5x5, both tails) is priced by
a list-scheduling model of work stealing (tile latencies from
:class:`~coinfer.strategies.spatial.RowModel`, tile transfers over each
device's link to the source) and the fastest (``objective=energy``: the least
dynamic energy within ``deadline_ms``) is planned.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..graph.ir import Graph
from .registry import Infeasible, PlanRequest, PlanResult, StrategyError, register
from .spatial import (
    Overheads,
    RowModel,
    assign_tiles,
    conv_count,
    cost_model,
    even_bounds,
    grid_stage,
    int_param,
    plan_devices,
    splittable,
    tail_whole,
    xfer,
)

MAX_GRID = 5


def parse_grid(v: Any) -> tuple[int, int]:
    """``"3x3"``, ``[3, 3]``, ``3`` -> (rows, cols)."""
    try:
        if isinstance(v, int) and not isinstance(v, bool):
            r = c = v
        elif isinstance(v, str):
            parts = v.lower().replace("*", "x").split("x")
            r, c = (int(parts[0]), int(parts[1])) if len(parts) == 2 else (int(parts[0]), int(parts[0]))
        else:
            r, c = int(v[0]), int(v[1])
    except (ValueError, TypeError, IndexError):
        raise StrategyError(f"--param grid must look like 3x3 (got {v!r})") from None
    if r < 1 or c < 1:
        raise StrategyError(f"--param grid needs at least one row and column (got {v!r})")
    return r, c


def fused_until(graph: Graph, layers: int) -> str:
    """The first splittable cut point at or after the ``layers``-th conv (the last splittable one at most)."""
    sp = splittable(graph)
    for c in sp:
        if conv_count(graph, c) >= layers:
            return c
    return sp[-1]


def candidate_cuts(graph: Graph) -> list[str]:
    """The last splittable cut point of each output resolution (at least 2 x 2)."""
    sp = splittable(graph)
    out = []
    for i, c in enumerate(sp):
        n = graph[c]
        if n.height < 2 or n.width < 2:
            continue
        nxt = graph[sp[i + 1]] if i + 1 < len(sp) else None
        if nxt is None or (nxt.height, nxt.width) != (n.height, n.width):
            out.append(c)
    return out or sp[-1:]


@dataclass
class Estimate:
    latency_ms: float
    energy_j: float
    tiles: dict[str, int]  # tiles computed per device
    fused_ms: float
    tail_ms: float


class _Pricer:
    """Tile latencies and transfers for one fused stage (input, cut] (vectorised over nodes)."""

    def __init__(self, req: PlanRequest, rm: RowModel, cut: str) -> None:
        g = req.graph
        self.g, self.rm, self.cut = g, rm, g.resolve(cut)
        self.costs = rm.costs
        self.ov = Overheads(rm.costs)
        a, b = 1, g.index(self.cut)
        nodes = g.nodes[a : b + 1]
        h = rm.halos(g.input.name, self.cut)
        self.H, self.W = g[self.cut].height, g[self.cut].width
        self.fmap = np.array([n.is_feature_map for n in nodes])
        self.Hn = np.array([n.height for n in nodes], dtype=float)
        self.Wn = np.array([n.width for n in nodes], dtype=float)
        self.hn = np.array([h.get(n.name, 0.0) for n in nodes])
        self.names = [n.name for n in nodes]
        self._arr: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._memo: dict[Any, float] = {}
        self.h0 = h.get(g.input.name, 0.0)
        inp = g.input
        self.in_shape = (inp.shape[1], inp.height, inp.width)
        out = g[self.cut]
        self.out_ch = out.shape[1]

    def _ref_arrays(self, ref: str) -> tuple[np.ndarray, np.ndarray]:
        v = self._arr.get(ref)
        if v is None:
            lin = [self.rm.node_lin(ref, n) for n in self.names]
            v = (np.array([x[0] for x in lin]), np.array([x[1] for x in lin]))
            self._arr[ref] = v
        return v

    def compute_ms(self, dev: str, rows: int, cols: int, sr: int, sc: int) -> float:
        ref, f = self.rm.fast.factor(dev)
        key = (ref, rows, cols, sr, sc)
        v = self._memo.get(key)
        if v is None:
            fx, pr = self._ref_arrays(ref)
            rr = np.minimum(self.Hn, rows * self.Hn / self.H + self.hn * sr / 2)
            cc = np.minimum(self.Wn, cols * self.Wn / self.W + self.hn * sc / 2)
            v = float(fx.sum() + np.where(self.fmap, pr * rr * cc / self.Wn, 0.0).sum())
            self._memo[key] = v
        return v * f

    def in_bytes(self, rows: int, cols: int, sr: int, sc: int) -> float:
        C, H0, W0 = self.in_shape
        r = min(H0, rows * H0 / self.H + self.h0 * sr / 2)
        c = min(W0, cols * W0 / self.W + self.h0 * sc / 2)
        return 4.0 * C * r * c

    def out_bytes(self, rows: int, cols: int) -> float:
        return 4.0 * self.out_ch * rows * cols


def estimate(req: PlanRequest, pr: _Pricer, R: int, C: int, owners: list[str], tail_dev: str,
             steal: bool = True) -> Estimate:
    """List-scheduling model of the fused stage (work stealing or static) plus the tail."""
    costs = pr.costs
    src = req.source
    rb, cb = even_bounds(pr.H, R), even_bounds(pr.W, C)
    tiles = []
    for i in range(R):
        for j in range(C):
            rows, cols = rb[i + 1] - rb[i], cb[j + 1] - cb[j]
            sr = (i > 0) + (i < R - 1)
            sc = (j > 0) + (j < C - 1)
            tiles.append((rows, cols, sr, sc))
    devs = list(dict.fromkeys(owners))
    queues: dict[str, deque[int]] = {d: deque() for d in devs}
    for t, d in enumerate(owners):
        queues[d].append(t)
    energy = 0.0
    busy = {d: 0.0 for d in devs}
    count = {d: 0 for d in devs}
    heap = [(0.0, k, d) for k, d in enumerate(devs)]
    heapq.heapify(heap)
    finish = 0.0
    pw = {d: costs.power(d) for d in set(devs) | {src}}
    ov = pr.ov
    # the source dispatches tiles and collects outputs (messages, in order) while a worker thread computes
    # its own tiles; both use its one CPU, so the stage lasts at least their sum
    src_msg = 0.0
    src_comp = 0.0
    src_cpu = 0.0
    while heap:
        now, k, d = heapq.heappop(heap)
        q = queues[d]
        if q:
            t = q.popleft()
        elif steal:
            victim = max(queues, key=lambda x: len(queues[x]))
            if not queues[victim]:
                continue
            t = queues[victim].pop()
        else:
            continue
        rows, cols, sr, sc = tiles[t]
        ms = pr.compute_ms(d, rows, cols, sr, sc) + ov.compute(d)
        busy[d] += ms
        energy += pw[d].busy_w * ms / 1e3
        if d != src:
            nb_in, nb_out = pr.in_bytes(rows, cols, sr, sc), pr.out_bytes(rows, cols)
            t_in, s_in = xfer(costs, src, d, nb_in)
            t_out, s_out = xfer(costs, d, src, nb_out)
            src_msg = max(now, src_msg) + ov.send(src, nb_in)
            arrive = src_msg + t_in + ov.recv(d, nb_in) + ms + ov.send(d, nb_out) + t_out
            done = arrive + ov.recv(src, nb_out)
            src_cpu += ov.send(src, nb_in) + ov.recv(src, nb_out)
            energy += ((pw[src].tx_w + pw[d].recv_w) * s_in + (pw[d].tx_w + pw[src].recv_w) * s_out) / 1e3
        else:
            src_comp = max(now, src_comp) + ms
            src_cpu += ms
            done = src_comp
        count[d] += 1
        finish = max(finish, done, src_cpu)
        heapq.heappush(heap, (done, k, d))
    g = req.graph
    tail_ms = 0.0
    if g.resolve(pr.cut) != g.output.name:
        comp = pr.rm.whole_ms(tail_dev, pr.cut, g.output.name) + ov.compute(tail_dev)
        tail_ms = comp
        energy += pw.get(tail_dev, costs.power(tail_dev)).busy_w * comp / 1e3
        if tail_dev != src:
            nb_in, nb_out = g[pr.cut].out_bytes, g.output.out_bytes
            t_in, s_in = xfer(costs, src, tail_dev, nb_in)
            t_out, s_out = xfer(costs, tail_dev, src, nb_out)
            tail_ms += (t_in + t_out + ov.send(src, nb_in) + ov.recv(tail_dev, nb_in) + ov.send(tail_dev, nb_out)
                        + ov.recv(src, nb_out))
            pt, ps = costs.power(tail_dev), costs.power(src)
            energy += ((ps.tx_w + pt.recv_w) * s_in + (pt.tx_w + ps.recv_w) * s_out) / 1e3
    return Estimate(finish + tail_ms, energy, count, finish, tail_ms)


@register("deepthings", summary="DeepThings: first N conv layers fused, RxC grid of exact overlapping tiles, "
          "work stealing; rest whole on the source or fastest device",
          paper="Zhao et al., DeepThings, IEEE TCAD 2018", exact=True, needs_costs=True,
          params=("layers", "until", "grid", "tail", "schedule", "scheduler", "verify", "devices"), deadline=True, objective=True)
def plan_deepthings(req: PlanRequest) -> PlanResult:
    t0 = time.perf_counter()
    g = req.graph
    costs = cost_model(req)
    devices = plan_devices(req)
    sp = splittable(g)
    if not sp:
        raise StrategyError(f"{g.name} has no splittable layer; DeepThings fuses conv layers (use local)")
    rm = RowModel(g, costs, devices)
    speed = {d: 1.0 / max(rm.whole_ms(d, g.input.name, g.output.name), 1e-9) for d in devices}
    fastest = max(devices, key=lambda d: speed[d])
    schedule = str(req.param("schedule", "dynamic"))
    if schedule not in ("dynamic", "static"):
        raise StrategyError(f"--param schedule must be dynamic or static (got {schedule!r})")
    # fused stage candidates
    if req.param("until") is not None:
        until = str(req.param("until"))
        if until not in g or g.resolve(until) not in sp:
            raise StrategyError(f"--param until={until!r} is not a splittable cut point of {g.name} "
                                f"(coinfer inspect {req.model} lists them)")
        cuts = [g.resolve(until)]
    elif req.param("layers") is not None:
        try:
            n = req.number("layers", kind=int)
        except (TypeError, ValueError):
            raise StrategyError(f"--param layers must be an integer (got {req.param('layers')!r})") from None
        if n < 1:
            raise StrategyError(f"--param layers must be >= 1 (got {n})")
        cuts = [fused_until(g, n)]
    else:
        cuts = candidate_cuts(g)
    if req.param("grid") is not None:
        grids = [parse_grid(req.param("grid"))]
        R, C = grids[0]
        fits = [c for c in cuts if R <= g[c].height and C <= g[c].width]
        if not fits:
            c = cuts[0]
            raise StrategyError(f"grid {R}x{C} is finer than {c}'s output {g[c].height}x{g[c].width}; "
                                f"use fewer rows/cols or fuse fewer layers")
        cuts = fits
    else:
        grids = [(k, k) for k in range(2, MAX_GRID + 1)] if len(devices) > 1 else [(1, 1)]
    tail = str(req.param("tail", "auto"))
    if tail not in ("source", "fastest", "auto"):
        raise StrategyError(f"--param tail must be source, fastest or auto (got {tail!r})")
    tails = {"source": [req.source], "fastest": [fastest], "auto": list(dict.fromkeys([req.source, fastest]))}[tail]
    def key_of(lat: float, energy: float) -> tuple[int, float]:
        if req.objective == "energy":
            ok = req.deadline_ms is None or lat <= req.deadline_ms
            return (0 if ok else 1, energy if ok else lat)
        return (0, lat)

    ranked: list[tuple[tuple[int, float], int, Any]] = []
    for cut in cuts:
        pr = _Pricer(req, rm, cut)
        for R, C in grids:
            if R > pr.H or C > pr.W:
                continue
            owners = assign_tiles(R * C, speed)
            for td in tails:
                est = estimate(req, pr, R, C, owners, td, steal=schedule == "dynamic")
                ranked.append((key_of(est.latency_ms, est.energy_j), len(ranked), (cut, R, C, owners, td, est)))
    if not ranked:
        raise StrategyError(f"no grid fits {g.name}'s fused outputs; give --param grid and until")
    ranked.sort(key=lambda r: (r[0], r[1]))
    tried = len(ranked)
    # the best few by the list-scheduling model are simulated (runtime costs, the runtime's tile scheduler)
    verify = int_param(req, "verify", 3 if len(devices) <= 8 else 0, 0, 1000) or 0
    priced_by = "model"
    choice = ranked[0][2]
    sim_ms = None
    if verify > 0 and len(ranked) > 1:
        from ..plan.lower import lower
        from ..sim.engine import simulate

        best_key = None
        for _, _, cfg in ranked[:verify]:
            cut, R, C, owners, td, est = cfg
            st = [grid_stage(g, cut, R, C, owners, schedule=schedule)] + tail_whole(g, cut, td)
            p = req.make_plan(st, "deepthings", {"scheduler": str(req.param("scheduler", "steal"))})
            r = simulate(lower(p, g), costs)
            k = key_of(r.latency_ms, r.dynamic_energy_j)
            if best_key is None or k < best_key:
                best_key, choice, sim_ms = k, cfg, r.latency_ms
        priced_by = f"simulator (best {min(verify, len(ranked))} of the model's ranking)"
    cut, R, C, owners, td, est = choice
    stages = [grid_stage(g, cut, R, C, owners, schedule=schedule)] + tail_whole(g, cut, td)
    params: dict[str, Any] = {"objective": req.objective, "schedule": schedule}
    if schedule == "dynamic":
        params["scheduler"] = str(req.param("scheduler", "steal"))
    if req.deadline_ms is not None:
        params["deadline_ms"] = req.deadline_ms
    for name in ("layers", "until", "grid", "tail", "devices"):
        if req.param(name) is not None:
            params[name] = req.param(name)
    plan = req.make_plan(stages, "deepthings", params)
    info = {"fused_until": cut, "fused_convs": conv_count(g, cut), "grid": f"{R}x{C}", "tail_on": td,
            "schedule": schedule, "model_latency_ms": round(est.latency_ms, 3),
            "model_energy_j": round(est.energy_j, 6), "tiles_per_device": est.tiles, "candidates": tried,
            "priced_by": priced_by, "simulated_latency_ms": None if sim_ms is None else round(float(sim_ms), 3),
            "planning_ms": round((time.perf_counter() - t0) * 1e3, 2)}
    if req.deadline_ms is not None and est.latency_ms > req.deadline_ms:
        raise Infeasible(f"deadline {req.deadline_ms:g} ms cannot be met: the fastest DeepThings configuration "
                         f"takes {est.latency_ms:.1f} ms (predicted); raise --deadline-ms to at least "
                         f"{math.ceil(est.latency_ms)}", PlanResult(plan, info))
    return PlanResult(plan, info)
