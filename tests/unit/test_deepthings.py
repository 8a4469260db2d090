"""``deepthings``: fused tile partitioning, N and grid given or chosen, work stealing in the simulator."""

from __future__ import annotations

import collections

import pytest

from coinfer.cluster import builtin_cluster, parse_cluster
from coinfer.cost.model import CostModel
from coinfer.modelspec import capture_model
from coinfer.plan.lower import lower
from coinfer.plan.plan import Grid, Whole
from coinfer.runtime.schedulers import SCHEDULERS, StealScheduler
from coinfer.sim import simulate
from coinfer.strategies import PlanRequest, StrategyError, run
from coinfer.strategies.deepthings import candidate_cuts, fused_until, parse_grid
from coinfer.strategies.spatial import conv_count


@pytest.fixture(scope="module")
def yolo():
    return capture_model("yolov2_tiny").graph


def test_given_layers_and_grid(yolo) -> None:
    g = yolo
    res = run("deepthings", PlanRequest(g, builtin_cluster("het4"), "yolov2_tiny", None, "latency", None,
                                        {"layers": 6, "grid": "3x3", "tail": "source"}))
    p = res.plan
    s0 = p.stages[0]
    assert isinstance(s0.partition, Grid) and s0.partition.schedule == "dynamic" and s0.halo == "exact"
    assert len(s0.partition.rows) == 4 and len(s0.partition.cols) == 4
    assert s0.until == fused_until(g, 6) and conv_count(g, s0.until) >= 6
    assert p.stages[1].partition == Whole("d0")
    assert p.strategy.params["scheduler"] == "steal"
    # every device owns at least one tile (it is in the stealing pool), faster devices own more
    owners = collections.Counter(d for row in s0.partition.devices for d in row)
    assert set(owners) == {"d0", "d1", "d2", "d3"} and owners["d3"] >= owners["d0"]
    lw = lower(p, g)
    assert any(i.op == "dyn_master" for i in lw.programs["d0"])


def test_chosen_by_the_cost_model(yolo) -> None:
    g = yolo
    res = run("deepthings", PlanRequest(g, builtin_cluster("het4").with_bandwidth(1000), "yolov2_tiny"))
    info = res.info
    assert info["candidates"] > 4
    assert info["fused_until"] in candidate_cuts(g)
    R, C = parse_grid(info["grid"])
    assert 2 <= R <= 5 and R == C
    assert info["tail_on"] in ("d0", "d3")
    # the model's choice is no worse than a fixed 3x3 / 16-layer configuration it also priced
    fixed = run("deepthings", PlanRequest(g, builtin_cluster("het4").with_bandwidth(1000), "yolov2_tiny", None,
                                          "latency", None, {"until": info["fused_until"], "grid": "3x3"}))
    assert info["model_latency_ms"] <= fixed.info["model_latency_ms"] + 1e-9


def test_bad_input(yolo) -> None:
    g = yolo
    cl = builtin_cluster("het4")
    with pytest.raises(StrategyError, match="finer"):
        run("deepthings", PlanRequest(g, cl, "yolov2_tiny", params={"until": g.cut_points()[-3], "grid": "50x50"}))
    with pytest.raises(StrategyError, match="grid"):
        run("deepthings", PlanRequest(g, cl, "yolov2_tiny", params={"grid": "axb"}))
    with pytest.raises(StrategyError, match="schedule"):
        run("deepthings", PlanRequest(g, cl, "yolov2_tiny", params={"schedule": "sometimes"}))


def test_static_schedule_option(yolo) -> None:
    p = run("deepthings", PlanRequest(yolo, builtin_cluster("het4"), "yolov2_tiny", params={"schedule": "static"})).plan
    assert p.stages[0].partition.schedule == "static" and "scheduler" not in p.strategy.params


def test_steal_scheduler_gives_a_slow_device_fewer_tiles() -> None:
    """Pure policy: each device starts with its own queue, then steals from the longest."""
    tiles = list(range(12))
    devs = ["a", "b", "c"]
    own = {t: devs[t // 4] for t in tiles}
    s = StealScheduler(tiles, devs, own)
    speed = {"a": 1.0, "b": 0.1, "c": 1.0}  # b is ten times slower
    t = {d: 0.0 for d in devs}
    count = collections.Counter()
    done = set()
    while len(done) < len(tiles):
        d = min((x for x in devs if t[x] < float("inf")), key=lambda x: t[x])
        k = s.next_tile(d)
        if k is None:
            t[d] = float("inf")
            continue
        t[d] += 1.0 / speed[d]
        count[d] += 1
        done.add(k)
        s.done(d, k, 1.0 / speed[d])
    assert count["b"] < 4 and count["a"] > 4 and count["c"] > 4
    assert "steal" in SCHEDULERS


def test_work_stealing_beats_static_tiles_when_a_device_slows_down(yolo) -> None:
    """Planned for equal devices, run (simulated, runtime's scheduler) with one device at a fifth."""
    g = yolo
    cl = parse_cluster({"source": "d0", "devices": [{"name": f"d{i}", "cpu_share": 0.5} for i in range(4)],
                        "network": {"bandwidth_mbps": 1000, "latency_ms": 0.2}})
    params = {"layers": 8, "grid": "4x4", "tail": "source"}
    dyn = run("deepthings", PlanRequest(g, cl, "yolov2_tiny", params=params)).plan
    sta = run("deepthings", PlanRequest(g, cl, "yolov2_tiny", params={**params, "schedule": "static"})).plan
    slowed = parse_cluster({**cl.to_dict(), "devices": [
        {**d, "cpu_share": 0.1 if d["name"] == "d2" else d["cpu_share"]} for d in cl.to_dict()["devices"]]})
    costs = CostModel(g, slowed)
    r_dyn = simulate(lower(dyn, g), costs)
    r_sta = simulate(lower(sta, g), costs)
    tiles = collections.Counter(e.device for e in r_dyn.trace.events if e.lane == "compute" and "(tile)" in e.name)
    assigned = collections.Counter(d for row in dyn.stages[0].partition.devices for d in row)
    assert tiles["d2"] < assigned["d2"], (tiles, assigned)
    assert sum(tiles.values()) == 16
    assert r_dyn.latency_ms < 0.85 * r_sta.latency_ms, (r_dyn.latency_ms, r_sta.latency_ms)
