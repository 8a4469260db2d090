"""``aofl``: fused blocks by dynamic programming, equal-finish rows over heterogeneous devices and links."""

from __future__ import annotations

import pytest

from coinfer.cluster import builtin_cluster, parse_cluster
from coinfer.cost.model import CostModel
from coinfer.modelspec import capture_model
from coinfer.plan.lower import lower
from coinfer.plan.plan import Rows, Whole
from coinfer.sim import simulate
from coinfer.strategies import PlanRequest, StrategyError, run
from coinfer.strategies.spatial import equal_finish, layer_ends


@pytest.fixture(scope="module")
def vgg():
    return capture_model("vgg16").graph


def test_fuses_layers_and_splits_by_speed(vgg) -> None:
    g = vgg
    cl = builtin_cluster("het4").with_bandwidth(1000)
    res = run("aofl", PlanRequest(g, cl, "vgg16"))
    p = res.plan
    split = [s for s in p.stages if isinstance(s.partition, Rows)]
    assert split and len(split) < len(layer_ends(g))  # some layers are fused into blocks
    assert any(b["layers"] > 1 for b in res.info["blocks"])
    for s in split:
        rows = {rp.device: rp.rows[1] - rp.rows[0] for rp in s.partition.parts}
        if "d3" in rows and "d1" in rows:
            assert rows["d3"] > rows["d1"]  # 0.7 of a core against 0.25
    assert p.stages[-1].partition == Whole("d0")
    assert res.info["model_latency_ms"] < res.info["local_ms"]
    lower(p, g)


def test_slow_links_keep_everything_local(vgg) -> None:
    cl = builtin_cluster("het4").with_bandwidth(0.5)
    p = run("aofl", PlanRequest(vgg, cl, "vgg16")).plan
    assert p.devices_used_names() == ["d0"]


def test_link_heterogeneity_moves_rows() -> None:
    """Same CPUs; the device behind a slow link gets fewer rows of the first block."""
    g = capture_model("alexnet").graph
    base = {"source": "d0", "devices": [{"name": f"d{i}", "cpu_share": 0.4} for i in range(3)],
            "network": {"bandwidth_mbps": 1000, "latency_ms": 0.2}}
    slow = dict(base, network={**base["network"], "links": [{"between": ["d0", "d2"], "bandwidth_mbps": 30}]})
    r_eq = run("aofl", PlanRequest(g, parse_cluster(base), "alexnet")).info["blocks"][0]["devices"]
    r_sl = run("aofl", PlanRequest(g, parse_cluster(slow), "alexnet")).info["blocks"][0]["devices"]
    assert r_sl.get("d2", 0) < r_eq.get("d2", 0)


def test_equal_finish() -> None:
    tau, rows = equal_finish({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 0.5}, 30)
    assert rows["a"] == pytest.approx(10) and rows["b"] == pytest.approx(20) and tau == pytest.approx(11)
    tau, rows = equal_finish({"a": 0.0, "b": 100.0}, {"a": 1.0, "b": 0.01}, 10)
    assert list(rows) == ["a"] and tau == pytest.approx(10)  # b's fixed cost alone is too much


def test_options_and_objective(vgg) -> None:
    cl = builtin_cluster("eq4").with_bandwidth(1000)
    p = run("aofl", PlanRequest(vgg, cl, "vgg16", params={"exchange": "via_source"})).plan
    assert any(s.exchange == "via_source" for s in p.stages)
    one = run("aofl", PlanRequest(vgg, cl, "vgg16", params={"max_block": 1}))
    assert all(b["layers"] == 1 for b in one.info["blocks"])
    best = run("aofl", PlanRequest(vgg, cl, "vgg16"))
    assert best.info["model_latency_ms"] <= one.info["model_latency_ms"] + 1e-9  # DP over a superset
    with pytest.raises(StrategyError, match="coedge"):
        run("aofl", PlanRequest(vgg, cl, "vgg16", None, "energy"))


def test_model_tracks_the_simulator(vgg) -> None:
    cl = builtin_cluster("het4").with_bandwidth(1000)
    res = run("aofl", PlanRequest(vgg, cl, "vgg16"))
    sim = simulate(lower(res.plan, vgg), CostModel(vgg, cl))
    assert 0.5 < sim.latency_ms / res.info["model_latency_ms"] < 2.0
