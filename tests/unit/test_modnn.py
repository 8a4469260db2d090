"""``modnn``: one stage per layer, rows in proportion to per-layer speed, regathered at the source."""

from __future__ import annotations

import pytest

from coinfer.cluster import builtin_cluster, parse_cluster
from coinfer.modelspec import capture_model
from coinfer.plan.lower import lower
from coinfer.plan.plan import Rows, Whole
from coinfer.strategies import PlanRequest, StrategyError, run
from coinfer.strategies.spatial import layer_ends


@pytest.fixture(scope="module")
def alexnet():
    return capture_model("alexnet").graph


def test_one_stage_per_layer_via_source_tail_on_source(alexnet) -> None:
    g = alexnet
    cl = builtin_cluster("het4")
    res = run("modnn", PlanRequest(g, cl, "alexnet"))
    p = res.plan
    ends = layer_ends(g)
    assert [s.until for s in p.stages[:len(ends)]] == ends
    assert all(s.exchange == "via_source" for s in p.stages if s.partition.type != "whole")
    # the FC layers split by weights (output features), gathered at the source too
    assert [(s.until, s.partition.type) for s in p.stages[len(ends):]] == [
        ("classifier_2", "features"), ("classifier_5", "features"), ("output", "features")]
    assert res.info["fc"] == "split by features over the devices"
    off = run("modnn", PlanRequest(g, cl, "alexnet", params={"fc_split": "false"}))
    assert off.plan.stages[-1].partition == Whole("d0") and off.plan.stages[-1].until == "output"
    assert off.info["fc"] == "whole on the source"
    # no worker sends to another worker: every piece goes through the source
    lw = lower(p, g)
    for dev, prog in lw.programs.items():
        for ins in prog:
            if ins.op == "send" and dev != p.source:
                assert ins.peer == p.source, f"{dev} sends to {ins.peer}"


def test_rows_follow_per_layer_speed(alexnet) -> None:
    g = alexnet
    cl = builtin_cluster("het4")  # cpu shares 0.15, 0.25, 0.4, 0.7
    p = run("modnn", PlanRequest(g, cl, "alexnet")).plan
    big = [s for s in p.stages if isinstance(s.partition, Rows) and g[s.until].height >= 27]
    assert big
    share = {"d0": 0.15, "d1": 0.25, "d2": 0.4, "d3": 0.7}
    for s in big:
        H = g[s.until].height
        rows = {rp.device: rp.rows[1] - rp.rows[0] for rp in s.partition.parts}
        for d, r in rows.items():  # proportional within rounding (per-layer speed ∝ cpu share here)
            assert abs(r - H * share[d] / sum(share.values())) <= 1.0 + 1e-9, (s.until, rows)
        assert list(rows) == ["d0", "d1", "d2", "d3"]


def test_per_layer_speed_uses_the_cost_model(alexnet) -> None:
    """A device much faster on paper gets more rows in every layer."""
    g = alexnet
    cl = parse_cluster({"source": "a", "devices": [{"name": "a", "cpu_share": 0.5},
                                                    {"name": "b", "cpu_share": 0.5, "speed_gflops": 400}]})
    p = run("modnn", PlanRequest(g, cl, "alexnet")).plan
    for s in p.stages[:-1]:
        if isinstance(s.partition, Rows):
            rows = {rp.device: rp.rows[1] - rp.rows[0] for rp in s.partition.parts}
            assert rows["b"] > rows["a"]


def test_devices_param_and_min_rows(alexnet) -> None:
    g = alexnet
    cl = builtin_cluster("eq16")
    p = run("modnn", PlanRequest(g, cl, "alexnet", params={"devices": ["d0", "d5", "d9"]})).plan
    assert set(p.devices_used_names()) == {"d0", "d5", "d9"}
    p2 = run("modnn", PlanRequest(g, cl, "alexnet", params={"min_rows": 4})).plan
    for s in p2.stages[:-1]:
        if isinstance(s.partition, Rows):
            assert all(rp.rows[1] - rp.rows[0] >= 4 for rp in s.partition.parts)
    with pytest.raises(StrategyError, match="unknown"):
        run("modnn", PlanRequest(g, cl, "alexnet", params={"devices": ["nope"]}))


def test_modnn_regathers_far_more_than_halo_exchange() -> None:
    g = capture_model("resnet18").graph
    cl = builtin_cluster("eq4")
    modnn = lower(run("modnn", PlanRequest(g, cl, "resnet18")).plan, g).bytes_moved()
    # every layer's whole output comes back to the source: at least the sum of the layer outputs
    outs = sum(g[e].out_bytes for e in layer_ends(g)[:-1])
    assert modnn >= outs * 0.7
