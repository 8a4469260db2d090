"""A halo-balanced row/grid plan for N equal devices (the scaling benchmark's own candidate).

``even`` splits every stage's output rows equally. With an exact halo that
is not balanced work: a middle part recomputes halo rows on both sides, an
edge part on one, so the middle parts are the stage's critical path (ResNet-50
``even``: 2.47 vs 1.90 GFLOP per device). Its stage boundaries come from a
redundancy threshold, not from a cost, and may include stages that do
nothing but wait (a ReLU after an add).

This builder, for equal devices only (torch-free, FLOP-based like the
stage-synchronous bound in ``docs/backends.md``):

1. for a stage ``(start, end]`` it chooses row boundaries that minimise the
   largest part's exact-halo FLOPs (from ``part_geometry``; local search
   from the equal split, moving one row at a time off the heaviest part),
   and, when the output is square enough, also tries a 2×2 grid with the
   same balancing on rows and columns, keeping the lighter;
2. stage boundaries by dynamic programming over the splittable cut points,
   minimising ``Σ_stages (largest part's FLOPs) + stage_cost × model FLOPs``
   (``stage_cost`` = the fixed per-stage price — halo messages, a
   synchronisation, a CPU-quota wake-up — as a fraction of the model's
   FLOPs);
3. the non-splittable tail runs whole on the source, as in every row planner.

The plan is exact (``halo: exact``): the benchmark checks its output against
the plain model on every request like any other plan. It is a benchmark
candidate, not a registered strategy (registering one would change what
``auto`` scores for everybody); ``plan_balanced(graph, cluster, model)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from coinfer.graph.geometry import part_geometry
from coinfer.graph.ir import OUTPUT
from coinfer.plan.plan import Grid, RowPart, Rows, Stage, Whole
from coinfer.strategies import PlanRequest
from coinfer.strategies.common import split_rows


def _balance_1d(size: int, n: int, cost: Any) -> tuple[list[int], float]:
    """Boundaries ``b_0=0 < … < b_n=size`` minimising ``max_i cost(b_i, b_{i+1})`` (local search)."""
    eq = split_rows(size, {str(i): 1.0 for i in range(n)})
    bounds = [0] + [r[1] for _, r in eq]
    n = len(bounds) - 1

    def costs(b: list[int]) -> list[float]:
        return [cost(b[i], b[i + 1]) for i in range(n)]

    cur = costs(bounds)
    for _ in range(4 * size):
        worst = max(range(n), key=lambda i: cur[i])
        best: tuple[float, list[int], list[float]] | None = None
        for nb, k, d in ((worst - 1, worst, +1), (worst + 1, worst + 1, -1)):
            # shrink the heaviest part by one row towards neighbour nb (boundary index k moves by d)
            if not 0 <= nb < n:
                continue
            b = list(bounds)
            b[k] += d
            if not all(b[i] < b[i + 1] for i in range(n)):
                continue
            c = list(cur)
            lo, hi = min(worst, nb), max(worst, nb)
            c[lo], c[hi] = cost(b[lo], b[lo + 1]), cost(b[hi], b[hi + 1])
            if max(c) < max(cur) - 1e-9 and (best is None or max(c) < best[0]):
                best = (max(c), b, c)
        if best is None:
            break
        _, bounds, cur = best
    return bounds, max(cur)


class Balancer:
    """Balanced partitions and their critical-path FLOPs for stages of one graph."""

    def __init__(self, graph: Any, devices: list[str], grid: bool = True) -> None:
        self.g = graph
        self.devices = devices
        self.grid = grid and len(devices) == 4
        self._flops = lru_cache(maxsize=None)(self._flops_uncached)

    def _flops_uncached(self, start: str, end: str, region: tuple[int, int, int, int]) -> float:
        return float(part_geometry(self.g, start, end, region, "exact").flops)

    def stage(self, start: str, end: str) -> tuple[float, Stage]:
        """(largest part's FLOPs, Stage) of the best balanced partition of ``(start, end]``."""
        node = self.g[end]
        h, w = node.height, node.width
        n = len(self.devices)
        if h < 2:
            return self._flops(start, end, (0, h, 0, w)), Stage(end, Whole(self.devices[0]))
        rb, rmax = _balance_1d(h, min(n, h), lambda a, b: self._flops(start, end, (a, b, 0, w)))
        best = (rmax, Stage(end, Rows(tuple(RowPart(self.devices[i], (rb[i], rb[i + 1]))
                                             for i in range(len(rb) - 1))), "exact"))
        if self.grid and h >= 2 and w >= 2:
            # 2x2: balance the row split with full-width halves' worst column half, then columns
            half = w // 2
            r2, _ = _balance_1d(h, 2, lambda a, b: max(self._flops(start, end, (a, b, 0, half)),
                                                       self._flops(start, end, (a, b, half, w))))
            c2, _ = _balance_1d(w, 2, lambda a, b: max(self._flops(start, end, (r2[0], r2[1], a, b)),
                                                       self._flops(start, end, (r2[1], r2[2], a, b))))
            gmax = max(self._flops(start, end, (r2[i], r2[i + 1], c2[j], c2[j + 1])) for i in (0, 1) for j in (0, 1))
            if gmax < best[0] - 1e-9:
                d = self.devices
                best = (gmax, Stage(end, Grid(tuple(r2), tuple(c2), ((d[0], d[1]), (d[2], d[3]))), "exact"))
        return best


def plan_balanced(graph: Any, cluster: Any, model: str, stage_cost: float = 0.004, max_len: int = 6,
                  grid: bool = True) -> Any:
    """The balanced plan over every device of ``cluster`` (see the module docstring)."""
    req = PlanRequest(graph, cluster, model)
    devices = list(req.devices)
    src = req.source
    devices.sort(key=lambda d: d != src)  # the source first: it holds the input's top rows
    bal = Balancer(graph, devices, grid)
    cuts = [c for c, ok in graph.splittable_cuts().items() if ok]
    total = float(sum(n.flops for n in graph.nodes))
    pts = [graph.input.name, *cuts]
    inf = float("inf")
    best: list[tuple[float, int, Stage | None]] = [(0.0, -1, None)] + [(inf, -1, None)] * len(cuts)
    for j in range(1, len(pts)):
        for i in range(max(0, j - max_len), j):
            if best[i][0] == inf:
                continue
            f, st = bal.stage(pts[i], pts[j])
            c = best[i][0] + f + stage_cost * total
            if c < best[j][0]:
                best[j] = (c, i, st)
    stages: list[Stage] = []
    j = len(pts) - 1
    while j > 0:
        _, i, st = best[j]
        assert st is not None
        stages.append(st)
        j = i
    stages.reverse()
    if not stages or graph.resolve(stages[-1].until) != graph.output.name:
        stages.append(Stage(OUTPUT, Whole(src)))
    return req.make_plan(stages, "balanced", {"stage_cost": stage_cost, "grid": grid})


if __name__ == "__main__":  # print the plans' FLOP bounds (no workers, no timing)
    import argparse

    ap = argparse.ArgumentParser(description="FLOP bounds of even / balanced plans on eq4 (no workers, no timing)")
    ap.add_argument("models", nargs="*", default=["vgg16", "resnet50"], help="zoo models (default vgg16 resnet50)")
    models = ap.parse_args().models

    from coinfer.cluster import builtin_cluster
    from coinfer.modelspec import capture_model
    from coinfer.plan.lower import lower
    from coinfer.strategies import run

    cl = builtin_cluster("eq4")
    for m in models:
        cm = capture_model(m)
        g = cm.graph
        tot = sum(n.flops for n in g.nodes)
        cands = {"even": run("even", PlanRequest(g, cl, m)).plan}
        for sc in (0.0, 0.002, 0.004, 0.01):
            cands[f"balanced/sc={sc}"] = plan_balanced(g, cl, m, sc)
            cands[f"balanced-rows/sc={sc}"] = plan_balanced(g, cl, m, sc, grid=False)
        for k, p in cands.items():
            p.validate(g)
            lw = lower(p, g)
            per: dict[int, list[float]] = {}
            for (s, _), info in lw.parts.items():
                per.setdefault(s, []).append(info.flops)
            crit = sum(max(v) for v in per.values())
            print(f"{m:9} {k:22} stages {len(p.stages):3}  FLOPx {sum(map(sum, per.values())) / tot:.3f}  "
                  f"stage-synchronous FLOP bound: efficiency {tot / crit / 4:.3f}")
