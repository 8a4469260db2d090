"""``modnn``: MoDNN's layer-by-layer biased one-dimensional partition (Mao et al., DATE 2017).

MoDNN (Mao, Chen, Nixon, Krieger, Chen: "MoDNN: Local Distributed Mobile
Computing System for Deep Neural Network", DATE 2017, §3) runs a CNN on a
WiFi group of phones. The group owner holds the input; for every
convolutional layer it splits the layer's input along one dimension in
proportion to each worker's computing capability (*Biased One-Dimensional
Partition*, BODP), every worker computes its slice (with the overlapping
input rows it needs), and the owner gathers the output and redistributes it
for the next layer. Fully connected layers are split by weights (Modified
Spectral Co-Clustering).

Here:

* every *layer* (:func:`~coinfer.strategies.spatial.layer_ends`: a conv or
  pool with the pointwise ops after it) is its own stage, split by output
  rows in proportion to each device's predicted speed **for that layer**
  (``1 / latency of the whole layer on the device``, from the cost model), with
  ``exchange: via_source`` — the source (group owner) gathers the output and
  sends every part its input region, halo rows included;
* rows, not columns: every zoo input is square, and BODP splits the longer
  side; a device whose share rounds below ``min_rows`` (default 1) is left out
  of that layer;
* fully connected layers are split by weights: every linear layer of the
  tail with ≥ 4 MB of weights is a ``features`` stage, each device computing
  a contiguous range of output neurons in proportion to its predicted speed
  on the layer (:mod:`coinfer.strategies.features`); the rest of the tail
  (global pooling, small layers) runs whole on the source. MoDNN's Modified
  Spectral Co-Clustering reorders the neurons of *sparse* layers to cut the
  traffic; the zoo's layers are dense, so it is not implemented.

Parameters: ``devices`` (subset), ``min_rows``, ``fc_split`` (default true). The objective is ignored
(MoDNN has one fixed rule) and recorded.
"""

from __future__ import annotations

from ..graph.geometry import part_geometry
from ..plan.plan import Stage
from .common import split_rows
from .registry import FC_SPLIT, PlanRequest, PlanResult, StrategyError, flag_param, register
from .spatial import (
    FastCosts,
    cost_model,
    int_param,
    layer_ends,
    plan_devices,
    rows_partition,
    tail_whole,
)


@register("modnn", summary="MoDNN: every layer split by rows in proportion to per-layer speed, regathered at the source",
          paper="Mao et al., MoDNN, DATE 2017", exact=True, needs_costs=True, params=("devices", "min_rows"))
def plan_modnn(req: PlanRequest) -> PlanResult:
    g = req.graph
    costs = cost_model(req)
    devices = plan_devices(req)
    min_rows = int_param(req, "min_rows", 1, 1, 10_000) or 1
    fast = FastCosts(costs, devices)
    ends = layer_ends(g)
    if not ends:
        raise StrategyError(f"{g.name} has no splittable layer; MoDNN needs conv layers (use local)")
    stages: list[Stage] = []
    weights_per_layer = []
    prev = g.input.name
    for e in ends:
        geom = part_geometry(g, prev, e, None)
        w = {d: 1.0 / max(fast.part_ms(d, geom), 1e-9) for d in devices}
        split = split_rows(g[e].height, w, min_rows)
        devs = [d for d, _ in split]
        bounds = [split[0][1][0]] + [b for _, (_, b) in split]
        stages.append(rows_partition(e, devs, bounds, exchange="via_source"))
        weights_per_layer.append(len(split))
        prev = e
    stages += tail_whole(g, ends[-1], req.source)
    params = {"objective": req.objective, "min_rows": min_rows,
              FC_SPLIT: flag_param(req.param(FC_SPLIT, True), FC_SPLIT)}
    if req.deadline_ms is not None:
        params["deadline_ms"] = req.deadline_ms
    if req.param("devices") is not None:
        params["devices"] = devices
    plan = req.make_plan(stages, "modnn", params)
    info = {"layers": len(ends), "tail_on": req.source, "devices_per_layer": weights_per_layer,
            "fc": "split by features over the devices" if params[FC_SPLIT] else "whole on the source"}
    return PlanResult(plan, info)
