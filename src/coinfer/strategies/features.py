"""Split a plan's fully connected tail by output features (MoDNN's FC partition). Torch-free.

MoDNN (Mao et al., DATE 2017, §3) splits fully connected layers *by
weights*: each device holds some rows of the weight matrix, receives the
whole layer input and computes its share of the output neurons; the owner
concatenates them. (MoDNN's Modified Spectral Co-Clustering reorders the
rows of *sparse* layers to cut communication; the zoo's layers are dense, so
contiguous ranges are what it would find.) A fully connected layer is
memory-bound — VGG-16's first one reads 411 MB of weights per inference —
so computing it whole on one device caps the speedup of any spatial plan
(docs/strategies/fc-split.md).

:func:`split_fc_tail` rewrites the last (whole) stage of a plan: every
linear layer of it with at least ``min_mb`` of weights becomes its own
``features`` stage, split over the devices in proportion to their predicted
speed on that layer; what lies between runs whole on the tail's device as
before. Any strategy gets it with ``--param fc_split=true``
(:func:`coinfer.strategies.registry.run`); ``modnn`` applies it by default.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..graph.geometry import features_layer, part_geometry
from ..graph.ir import OUTPUT, Graph
from ..plan.plan import FeaturePart, Features, Plan, Stage, Whole
from .common import split_rows

if TYPE_CHECKING:  # pragma: no cover
    from ..cost.model import CostModel

MIN_MB = 4.0  # smaller layers stay whole: a split costs a broadcast and a gather
MIN_FEATURES = 16  # the smallest share of a device (fewer: its features go to the others)


def feature_stages(graph: Graph, start: str, device: str, devices: list[str],
                   costs: CostModel | None = None, min_mb: float = MIN_MB,
                   exchange: str = "direct") -> list[Stage]:
    """Stages from cut point ``start`` to the output: big linear layers split by features.

    Each stage ends at the furthest cut point that keeps it one linear layer
    (plus the flatten / pooling before and activations after); layers with
    at least ``min_mb`` MB of weights are split in proportion to each device's
    speed on the stage (``1 / costs.part_ms`` of the whole stage; equal without
    ``costs``), the rest run whole on ``device``. ``exchange``: of the split
    stages (``via_source``: MoDNN's gather at the source and redistribution).
    """
    g = graph
    cuts = [c for c in g.cut_points() if g.index(c) > g.index(g.resolve(start))]
    out: list[Stage] = []

    def splits_from(a: str) -> list[str]:
        return [c for c in cuts if g.index(c) > g.index(a) and features_layer(g, a, c)[0] is not None]

    def whole_until(until: str, dev: str) -> None:  # joins a whole stage on ``dev`` just before it
        if out and isinstance(out[-1].partition, Whole) and out[-1].partition.device == dev:
            out[-1] = replace(out[-1], until=until)
        else:
            out.append(Stage(until, Whole(dev)))

    cur = g.resolve(start)
    while cur != g.output.name:
        ok = splits_from(cur)
        if not ok:  # whole up to the first cut point a features stage can start from (none: the output)
            nxt = next((c for c in cuts if g.index(c) > g.index(cur) and splits_from(c)), None)
            whole_until(OUTPUT if nxt is None else nxt, device)
            if nxt is None:
                break
            cur = nxt
            continue
        end = ok[-1]
        lin = features_layer(g, cur, end)[0]
        assert lin is not None
        until = OUTPUT if end == g.output.name else end
        F = g[end].shape[1]
        split: list[tuple[str, tuple[int, int]]] = [(device, (0, F))]
        if g[lin].param_bytes >= min_mb * 1e6:
            if costs is None:
                speed = {d: 1.0 for d in devices}
            else:
                geom = part_geometry(g, cur, end, None)
                speed = {d: 1.0 / max(costs.part_ms(d, geom), 1e-9) for d in devices}
            split = split_rows(F, speed, MIN_FEATURES)
        if len(split) > 1:
            out.append(Stage(until, Features(tuple(FeaturePart(d, r) for d, r in split)), exchange=exchange))
        else:
            whole_until(until, split[0][0])
        cur = end
    return out


def feature_stage_ends(plan: Plan) -> list[str]:
    """Where the plan's ``features`` stages end (what ``fc_split`` reports in a plan's info)."""
    return [s.until for s in plan.stages if s.partition.type == "features"]


def split_fc_tail(plan: Plan, graph: Graph, costs: CostModel | None = None,
                  devices: list[str] | None = None, min_mb: float = MIN_MB) -> Plan:
    """``plan`` with its final whole stage's big linear layers split by features (see the module).

    Shares follow ``costs`` (1 / the device's predicted latency of the
    whole layer) or are equal without one. The split stages exchange as the
    plan does: through the source when any of its stages does (MoDNN), else
    directly. A plan whose last stage is not whole, or whose tail has no
    linear layer to split, comes back unchanged.
    """
    g = graph.for_exit(plan.exit)
    last = plan.stages[-1]
    if not isinstance(last.partition, Whole):
        return plan
    start = plan.stage_bounds(g)[-1][0]
    devs = [d for d in (devices or plan.devices) if d in plan.devices]
    exchange = "via_source" if any(s.exchange == "via_source" for s in plan.stages) else "direct"
    new = feature_stages(g, start, last.partition.device, devs, costs, min_mb, exchange)
    if all(isinstance(s.partition, Whole) for s in new):
        return plan
    params = dict(plan.strategy.params, fc_split=True)
    return replace(plan, stages=list(plan.stages[:-1]) + new, strategy=replace(plan.strategy, params=params),
                   predicted=None)
