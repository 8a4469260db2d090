"""Helpers shared by strategies: row splitting, stage boundaries, halo redundancy. Torch-free."""

from __future__ import annotations

from typing import Any

from ..graph.geometry import part_geometry
from ..graph.ir import OUTPUT, Graph
from ..plan.plan import Plan, RowPart, Rows, Stage, Whole
from .registry import PlanRequest, StrategyError, close_match


def holds_weights(costs: Any, device: str, weight_bytes: int) -> bool:
    """Whether ``device``'s ``memory_mb`` (None: unbounded) holds ``weight_bytes`` of weights: coedge's
    rule for a share (a device whose weights alone do not fit is left out), and the layer-wise
    strategies' for a part."""
    mem = costs.device(device).memory_mb
    return mem is None or mem * 1e6 - weight_bytes > 0


def device_weight_bytes(plan: Plan, graph: Graph) -> dict[str, float]:
    """Bytes of weights each device of ``plan`` holds to compute its parts — what a worker keeps after
    its build (:func:`coinfer.runtime.deployment.build`: a ``features`` part holds its slice; a
    participant of a dynamic stage holds every tile's layers, since it may compute any)."""
    from ..plan.lower import lower, weight_shares

    lowered = lower(plan, graph)
    return {dev: float(sum(graph[n].param_bytes * f for n, f in weight_shares(lowered, graph, dev).items()
                           if n in graph)) for dev in plan.devices}


def memory_overflows(plan: Plan, graph: Graph, cluster: Any) -> dict[str, tuple[float, float]]:
    """device -> (MB of weights the plan puts on it, its ``memory_mb``) for every device whose
    ``memory_mb`` the plan exceeds; {} when the cluster sets no ``memory_mb`` (nothing computed)."""
    limits = {d.name: d.memory_mb for d in cluster.devices if d.memory_mb is not None and d.name in plan.devices}
    if not limits:
        return {}
    held = device_weight_bytes(plan, graph)
    return {d: (held.get(d, 0.0) / 1e6, float(mb)) for d, mb in limits.items() if held.get(d, 0.0) > mb * 1e6}


def describe_overflows(over: dict[str, tuple[float, float]]) -> str:
    """``d1 44.8 MB of weights > memory_mb 1, …``"""
    return ", ".join(f"{d} {mb:.1f} MB of weights > memory_mb {lim:g}" for d, (mb, lim) in sorted(over.items()))


def name_list(v: object, key: str, known: list[str], what: str) -> list[str]:
    """A ``--param KEY=`` list of names (``what``: "device", "strategy"): comma-separated (``a,b``, as the
    CLI passes it) or a list, duplicates collapsed, in the given order; an unknown name is a StrategyError
    naming it, a close match and the ``known`` ones."""
    if isinstance(v, str):
        items = [w.strip() for w in v.split(",") if w.strip()]
    elif isinstance(v, (list, tuple)):
        items = [str(w).strip() for w in v]
    else:
        raise StrategyError(f"--param {key}={v!r}: give {what} names separated by commas, "
                            f"e.g. {key}={','.join(known[:2])}")
    bad = list(dict.fromkeys(n for n in items if n not in known))
    if bad:
        hints = [f"{b} (did you mean {m}?)" if (m := close_match(b, known)) else b for b in bad]
        raise StrategyError(f"--param {key}: unknown {what} {', '.join(hints)}; known: {', '.join(known)}")
    return list(dict.fromkeys(items))


def requested_devices(req: PlanRequest) -> list[str] | None:
    """The devices ``--param devices=`` allows, or None when it is not given: the one parser of that
    parameter for every strategy.

    Accepts a comma-separated string (``devices=d1,d2``, as the CLI passes it) or a list; names are
    checked against the cluster (one StrategyError naming the unknown ones and the cluster's devices),
    duplicates collapse, the source is always included (it holds the input and gets the output), and the
    result is in cluster order.
    """
    want = req.param("devices")
    if want is None:
        return None
    names = req.cluster.names
    keep = set(name_list(want, "devices", names, "device")) | {req.source}
    return [d for d in names if d in keep]


def split_rows(size: int, weights: dict[str, float], min_rows: int = 1) -> list[tuple[str, tuple[int, int]]]:
    """Split ``size`` rows in proportion to ``weights`` (largest remainder), in the given order.

    Devices whose share rounds below ``min_rows`` are dropped (their rows go to
    the others), so every part has at least ``min_rows`` rows.
    """
    items = [(d, w) for d, w in weights.items() if w > 0]
    if not items:
        raise ValueError("split_rows needs at least one positive weight")
    while True:
        total = sum(w for _, w in items)
        exact = [size * w / total for _, w in items]
        base = [int(x) for x in exact]
        rest = size - sum(base)
        order = sorted(range(len(items)), key=lambda i: exact[i] - base[i], reverse=True)
        for i in order[:rest]:
            base[i] += 1
        small = [i for i, b in enumerate(base) if b < min_rows]
        if not small or len(items) == 1:
            break
        drop = min(small, key=lambda i: items[i][1])
        items.pop(drop)
    out, r = [], 0
    for (d, _), b in zip(items, base):
        if b > 0:
            out.append((d, (r, r + b)))
            r += b
    return out


def rows_stage(graph: Graph, until: str, weights: dict[str, float], halo: str = "exact") -> Stage:
    node = graph[until]
    parts = split_rows(node.height, weights)
    if len(parts) == 1:
        return Stage(until, Whole(parts[0][0]))
    return Stage(until, Rows(tuple(RowPart(d, r) for d, r in parts)), halo)


def last_splittable(graph: Graph) -> str | None:
    split = [c for c, ok in graph.splittable_cuts().items() if ok]
    return split[-1] if split else None


def tail_stage(graph: Graph, device: str) -> Stage:
    return Stage(OUTPUT, Whole(device))


def redundancy(graph: Graph, start: str, end: str, weights: dict[str, float]) -> float:
    """Extra FLOPs of an exact row split of stage (start, end] relative to the unsplit stage."""
    node = graph[end]
    parts = split_rows(node.height, weights)
    whole = part_geometry(graph, start, end, None).flops
    if whole == 0:
        return 0.0
    split = sum(part_geometry(graph, start, end, (a, b, 0, node.width)).flops for _, (a, b) in parts)
    return split / whole - 1.0


def fused_boundaries(graph: Graph, weights: dict[str, float], max_redundancy: float = 0.10) -> list[str]:
    """Cut points ending row-split stages: each stage as long as its halo redundancy allows.

    Starting at the input, a stage is extended to the furthest splittable cut
    point whose exact row split (by ``weights``) adds at most
    ``max_redundancy`` FLOPs; with 0 every splittable cut point ends a stage
    (except that zero-FLOP segments, such as a residual block's closing add
    and ReLU, join the stage before them when that adds no redundant FLOPs).
    """
    split = [c for c, ok in graph.splittable_cuts().items() if ok]
    if not split:
        return []
    out = []
    start = graph.input.name
    i = 0
    while i < len(split):
        best = i
        for j in range(i + 1, len(split)):
            if redundancy(graph, start, split[j], weights) <= max_redundancy:
                best = j
            elif j - best > 3:
                break
        # a zero-FLOP segment after the stage (the add + ReLU closing a residual block) would be a
        # stage of its own that costs a halo exchange and computes nothing: it joins this stage when
        # that adds no redundant FLOPs (a pointwise op needs no more rows)
        base = redundancy(graph, start, split[best], weights)
        while (best + 1 < len(split) and part_geometry(graph, split[best], split[best + 1], None).flops == 0
               and redundancy(graph, start, split[best + 1], weights) <= base + 1e-12):
            best += 1
        out.append(split[best])
        start = split[best]
        i = best + 1
    return out
