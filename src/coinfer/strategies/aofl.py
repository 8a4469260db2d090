"""``aofl``: adaptive optimal fused-layer partitioning (Zhou, Samavatian, Bacha, Majumdar, Teodorescu, SEC 2019).

"Adaptive Parallel Execution of Deep Neural Networks on Heterogeneous Edge
Devices" (ACM/IEEE SEC 2019) spatially partitions the conv layers of a CNN
over a group of edge devices, *fusing* consecutive layers so that a device
computes its part of several layers without exchanging data (the halo grows
and is computed redundantly), and chooses — from the devices' computing
capabilities and the network — where to fuse and how many devices to use
(the "optimal degree of parallelism"). The DistrEdge and ADCNN papers use it
as their main spatial baseline and describe it as fused-layer partitioning
with splits proportional to device capability under a linear latency model.

Our reading, implemented here (the paper publishes no code; where we were
unsure we chose the stronger baseline and say so in ``docs/strategies/aofl.md``):

* candidate fusion points are the layer boundaries
  (:func:`~coinfer.strategies.spatial.layer_ends`); a *block* is a run of
  consecutive layers, at most ``max_block`` (default 8) long;
* a block's output rows are split so that all its devices finish together
  (:func:`~coinfer.strategies.spatial.equal_finish`): device *d* with ``r``
  rows takes ``alpha_d + beta_d · r`` — its compute (linear in rows, halo of
  the whole block included, :class:`~coinfer.strategies.spatial.RowModel`)
  plus receiving its input (the first block: the slab from the source over
  that device's link; later blocks: the halo rows from its neighbours) plus,
  for the last block, sending its slab to the source. Devices whose fixed
  cost alone exceeds the finish time get nothing, so the number of devices is
  chosen per block (the degree of parallelism);
* fusion points come from a dynamic programme over the layer boundaries
  minimising the sum of block times (bulk-synchronous between blocks) plus
  the tail, which runs whole on the source; the programme may also stop
  splitting early (the rest whole on the source), down to running everything
  locally when the links are too slow;
* between blocks devices exchange the rows the next block needs directly
  (``exchange=direct``, default); ``exchange=via_source`` gathers every block
  at the source and scatters the next one (a master-worker reading).

Latency is the objective (the paper's); ``--objective energy`` is refused
(use ``coedge``). Parameters: ``max_block``, ``exchange``, ``devices``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..graph.ir import OUTPUT
from ..plan.plan import Stage, Whole
from .registry import Infeasible, PlanRequest, PlanResult, StrategyError, register
from .spatial import (
    Overheads,
    RowModel,
    cost_model,
    equal_finish,
    int_param,
    integer_rows,
    layer_ends,
    plan_devices,
    row_bytes,
    rows_partition,
)


@register("aofl", summary="AOFL: fused-layer blocks chosen by dynamic programming, rows split for equal "
          "finish over heterogeneous devices and links", paper="Zhou et al., SEC 2019", exact=True, needs_costs=True,
          params=("max_block", "exchange", "devices"), deadline=True, objective=True, objectives=("latency",))
def plan_aofl(req: PlanRequest) -> PlanResult:
    t0 = time.perf_counter()
    if req.objective != "latency":
        raise StrategyError("aofl minimises latency (Zhou et al. 2019); use coedge for --objective energy")
    g = req.graph
    costs = cost_model(req)
    devices = plan_devices(req)
    src = req.source
    K = int_param(req, "max_block", 8, 1, 1000) or 8
    exchange = str(req.param("exchange", "direct"))
    if exchange not in ("direct", "via_source"):
        raise StrategyError(f"--param exchange must be direct or via_source (got {exchange!r})")
    ends = layer_ends(g)
    if not ends:
        raise StrategyError(f"{g.name} has no splittable layer; AOFL fuses conv layers (use local)")
    rm = RowModel(g, costs, devices)
    L = len(ends)
    pts = [g.input.name] + ends  # boundary k: after pts[k]
    lat = {(a, b): costs.link(a, b)[1] for a in devices for b in devices if a != b}
    _spb = {(a, b): costs.serialize_ms(a, b, 1e6) / 1e6 for a in devices for b in devices if a != b}
    # a piece moved between blocks comes from a neighbour: the best latency, the slowest link (conservative)
    peer_lat = {d: min((lat[(x, d)] for x in devices if x != d), default=0.0) for d in devices}
    peer_spb = {d: max((_spb[(x, d)] for x in devices if x != d), default=0.0) for d in devices}
    ov = Overheads(costs)

    def spb(a: str, b: str) -> float:  # serialisation ms per byte
        return _spb.get((a, b), 0.0)

    order = list(devices)

    def split(i: int, j: int) -> list[tuple[str, int]]:
        """Integer rows of block (pts[i], pts[j]] making compute + link-aware input time equal."""
        start, end = pts[i], pts[j]
        H = g[end].height
        blk = rm.block(start, end)
        hin = rm.in_halo(start, end)
        sn = g[start]
        rb_in, scale = row_bytes(sn), sn.height / H
        alpha, beta = {}, {}
        for d in devices:
            a, b = blk[d]
            a += ov.compute(d)
            if d != src:  # the block's input reaches d over its link (scattered, or moved from peers)
                p = (spb(src, d) + ov.per_byte(d)) * rb_in
                a += lat[(src, d)] + p * hin + ov.recv(d)
                b += p * scale
            alpha[d], beta[d] = a, b
        _, rows = equal_finish(alpha, beta, H)
        return integer_rows(H, rows, order)

    def block_ms(i: int, j: int, parts: list[tuple[str, int]], held: dict[str, tuple[int, int]] | None,
                 last: bool) -> tuple[float, dict[str, tuple[int, int]]]:
        """Time of block (pts[i], pts[j]] with ``parts``: max over devices of receive + compute (+ gather).

        ``held``: rows of the block input each device holds (the previous block's split, direct exchange).
        """
        start, end = pts[i], pts[j]
        H = g[end].height
        blk = rm.block(start, end, [d for d, _ in parts])
        hin = rm.in_halo(start, end)
        sn = g[start]
        rb_in, scale = row_bytes(sn), sn.height / H
        rb_out = row_bytes(g[end])
        bounds: dict[str, tuple[int, int]] = {}
        r0 = 0
        worst = 0.0
        src_busy = 0.0
        times: dict[str, float] = {}
        for d, r in parts:
            bounds[d] = (r0, r0 + r)
            lo = max(0.0, r0 * scale - hin / 2)
            hi = min(float(sn.height), (r0 + r) * scale + hin / 2)
            r0 += r
            t = blk[d][0] + blk[d][1] * r
            t += ov.compute(d)
            if held is None:  # input from the source
                if d != src:
                    nb = rb_in * (hi - lo)
                    t += lat[(src, d)] + spb(src, d) * nb + ov.recv(d, nb)
                    src_busy += ov.send(src, nb)
            else:
                h_lo, h_hi = held.get(d, (0, 0))
                if h_hi > h_lo:
                    top, bot = max(0.0, min(hi, h_lo) - lo), max(0.0, hi - max(lo, h_hi))
                else:
                    top, bot = hi - lo, 0.0
                recv = 0.0
                for rows in (top, bot):
                    if rows > 0:
                        recv = max(recv, peer_lat[d] + peer_spb[d] * rb_in * rows + ov.recv(d, rb_in * rows))
                        t += ov.send(d, rb_in * rows)  # it sends about as much to its neighbour
                t += recv
            if (last or exchange == "via_source") and d != src:
                nb = rb_out * r
                t += lat[(d, src)] + spb(d, src) * nb + ov.send(d, nb)
                src_busy += ov.recv(src, nb)
            worst = max(worst, t)
            times[d] = t
        # the source scatters / gathers for the others on its own CPU
        worst = max(worst, times.get(src, 0.0) + src_busy)
        return worst, bounds

    # tail whole on the source after boundary k (k = 0: everything local)
    tail = [rm.whole_ms(src, pts[k], g.output.name) for k in range(L + 1)]
    INF = math.inf
    # Viterbi-style programme: state k = best time to boundary k, with the split it ends with
    best: list[float] = [INF] * (L + 1)
    state: list[tuple[int, list[tuple[str, int]], dict[str, tuple[int, int]]] | None] = [None] * (L + 1)
    best[0] = 0.0
    splits: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for j in range(1, L + 1):
        for i in range(max(0, j - K), j):  # widest block first: RowModel caches one halo geometry per end
            if best[i] == INF:
                continue
            parts = splits.setdefault((i, j), split(i, j))
            held = None if (i == 0 or exchange == "via_source") else state[i][2]  # type: ignore[index]
            t, bounds = block_ms(i, j, parts, held, False)
            if best[i] + t < best[j]:
                best[j], state[j] = best[i] + t, (i, parts, bounds)
    total_best: tuple[float, int, Any] = (tail[0], 0, None)  # everything on the source
    for k in range(1, L + 1):
        st = state[k]
        if st is None:
            continue
        i, parts, _ = st
        held = None if (i == 0 or exchange == "via_source") else state[i][2]  # type: ignore[index]
        t_last, _ = block_ms(i, k, parts, held, True)
        tot = best[i] + t_last + tail[k]
        if tot < total_best[0]:
            total_best = (tot, k, (i, parts))
    total, k_end, last = total_best
    stages: list[Stage] = []
    blocks_info = []
    if k_end == 0:
        stages = [Stage(OUTPUT, Whole(src))]
    else:
        blocks: list[tuple[int, int, list[tuple[str, int]]]] = []
        assert last is not None
        i, parts = last
        blocks.append((i, k_end, parts))
        j = i
        while j > 0:
            st = state[j]
            assert st is not None
            i, parts, _ = st
            blocks.append((i, j, parts))
            j = i
        blocks.reverse()
        for i, j, parts in blocks:
            devs = [d for d, _ in parts]
            row_bounds = [0]
            for _, c in parts:
                row_bounds.append(row_bounds[-1] + c)
            ex = "via_source" if exchange == "via_source" and i > 0 else "direct"
            stages.append(rows_partition(pts[j], devs, row_bounds, exchange=ex))
            blocks_info.append({"until": pts[j], "layers": j - i, "devices": {d: c for d, c in parts}})
        if g.resolve(pts[k_end]) != g.output.name:
            stages.append(Stage(OUTPUT, Whole(src)))
    params: dict[str, Any] = {"objective": "latency", "max_block": K, "exchange": exchange}
    if req.deadline_ms is not None:
        params["deadline_ms"] = req.deadline_ms
    if req.param("devices") is not None:
        params["devices"] = devices
    plan = req.make_plan(stages, "aofl", params)
    info = {"model_latency_ms": round(total, 3), "blocks": blocks_info, "split_layers": k_end,
            "local_ms": round(tail[0], 3), "planning_ms": round((time.perf_counter() - t0) * 1e3, 2)}
    if req.deadline_ms is not None and total > req.deadline_ms:
        raise Infeasible(f"deadline {req.deadline_ms:g} ms cannot be met: AOFL's best plan takes {total:.1f} ms "
                         f"(predicted); raise --deadline-ms to at least {math.ceil(total)}", PlanResult(plan, info))
    return PlanResult(plan, info)
