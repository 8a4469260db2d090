"""Layer-wise planners: ``offload`` and ``neurosurgeon`` against exhaustive search on the simulator."""

from __future__ import annotations

import pytest

from coinfer.cluster import builtin_cluster, parse_cluster
from coinfer.cost.model import CostModel
from coinfer.execute.local import TOLERANCE, InProcessExecutor, compare
from coinfer.graph.ir import Graph, Node
from coinfer.plan.plan import Stage, Whole
from coinfer.sim.run import simulate_lowered
from coinfer.strategies import Infeasible, PlanRequest, StrategyError, run
from coinfer.strategies.layerwise import (
    FRONT_OTHER,
    FRONT_SOURCE,
    all_configs,
    chain_table,
    memo,
    price,
)

CONV = {"kernel": [3, 3], "stride": [1, 1], "dilation": [1, 1], "pad": [1, 1, 1, 1], "groups": 1}


def chain_graph(name: str = "chain", c: int = 16, hw: int = 16, n: int = 3) -> Graph:
    """A small conv chain (no exits), torch-free."""
    nodes = [Node("x", "input", (), (1, 3, hw, hw))]
    prev, cin = "x", 3
    for i in range(n):
        nodes.append(Node(f"c{i}", "conv", (prev,), (1, c, hw, hw), CONV, flops=2 * 9 * cin * c * hw * hw,
                          params=9 * cin * c, param_bytes=36 * cin * c))
        prev, cin = f"c{i}", c
    return Graph(name, nodes)


def exhaustive(req: PlanRequest, costs: CostModel, key: str = "latency") -> tuple[float, str]:
    """Simulate every cut in both orders with every other device: the best (value, config)."""
    src = req.source
    others = [d for d in req.devices if d != src]
    t = chain_table(req.graph, costs, [src, *others])
    fg = memo(req.graph).graph  # the same graph, its fingerprint computed once
    best = None
    for c in all_configs(t, costs, src, others):
        plan = req.make_plan(c.stages(src), "exhaustive", exit=c.exit)
        res = simulate_lowered(plan, fg, costs)
        v = res.latency_ms if key == "latency" else res.device_energy_j[src]
        if best is None or v < best[0]:
            best = (v, c.label)
    assert best is not None
    return best


@pytest.mark.parametrize("model", ["alexnet_digits", "resnet18_digits"])
@pytest.mark.parametrize("mbps", [0.1, 1.0, 50.0])
def test_neurosurgeon_equals_exhaustive_search_on_the_simulator(captured, model: str, mbps: float) -> None:
    g = captured(model).graph
    cl = builtin_cluster("edgent").with_bandwidth(mbps)
    costs = CostModel(g, cl)
    req = PlanRequest(g, cl, model, costs)
    res = run("neurosurgeon", req)
    best, label = exhaustive(req, costs)
    sim = simulate_lowered(res.plan, g, costs).latency_ms
    assert sim == pytest.approx(best, rel=1e-9), (res.info["config"], label)
    assert res.info["latency_ms"] == pytest.approx(best, abs=1e-3)


def test_neurosurgeon_energy_objective_minimises_source_energy(captured) -> None:
    g = captured("alexnet_digits").graph
    cl = builtin_cluster("edgent").with_bandwidth(2.0)
    costs = CostModel(g, cl)
    req = PlanRequest(g, cl, "alexnet_digits", costs, objective="energy")
    res = run("neurosurgeon", req)
    best, _ = exhaustive(req, costs, key="energy")
    got = simulate_lowered(res.plan, g, costs).device_energy_j["pi"]
    assert got == pytest.approx(best, rel=1e-9)


def test_chain_arithmetic_is_the_ideal_simulator(captured) -> None:
    """Every configuration's chain latency equals the simulator without runtime overheads."""
    g = captured("alexnet_digits").graph
    cl = builtin_cluster("edgent").with_bandwidth(0.5)
    costs = CostModel(g, cl)
    req = PlanRequest(g, cl, "alexnet_digits", costs)
    for ex in (None, "exit2"):
        t = chain_table(g, costs, ["pi", "edge"], ex)
        for c in all_configs(t, costs, "pi", ["edge"]):
            plan = req.make_plan(c.stages("pi"), "t", exit=ex)
            res = simulate_lowered(plan, g, costs, overheads=False)
            assert c.latency_ms == pytest.approx(res.latency_ms, rel=1e-9), c.label
            assert c.source_energy_j == pytest.approx(res.device_energy_j["pi"], rel=1e-9), c.label


def test_both_orders_and_their_canonical_forms(captured) -> None:
    g = captured("alexnet_digits").graph
    costs = CostModel(g, builtin_cluster("edgent"))
    t = chain_table(g, costs, ["pi", "edge"])
    K = len(t.cuts) - 1
    assert price(t, costs, "pi", "edge", FRONT_OTHER, 0).kind == "local"
    assert price(t, costs, "pi", "edge", FRONT_SOURCE, K).kind == "local"
    off = price(t, costs, "pi", "edge", FRONT_OTHER, K)
    assert off.kind == "offload" and off.label == price(t, costs, "pi", "edge", FRONT_SOURCE, 0).label
    split = price(t, costs, "pi", "edge", FRONT_OTHER, 3)
    assert split.kind == "split" and [s.partition.device for s in split.stages("pi")] == ["edge", "pi"]
    labels = [c.label for c in all_configs(t, costs, "pi", ["edge"])]
    assert len(labels) == len(set(labels)) == 2 * (K - 1) + 2  # splits in 2 orders + local + offload


def test_neurosurgeon_plans_are_exact(captured) -> None:
    cap = captured("alexnet_digits")
    cl = builtin_cluster("edgent").with_bandwidth(1.0)
    req = PlanRequest(cap.graph, cl, "alexnet_digits", CostModel(cap.graph, cl))
    plan = run("neurosurgeon", req).plan
    assert len(plan.stages) == 2  # a real split at this bandwidth
    y = InProcessExecutor(cap.cm, plan)(cap.x)
    assert compare(y, cap.ref)[1] <= TOLERANCE
    exit_plan = run("neurosurgeon", PlanRequest(cap.graph, cl, "alexnet_digits", CostModel(cap.graph, cl),
                                                params={"exit": "exit3"})).plan
    assert exit_plan.exit == "exit3"
    assert compare(InProcessExecutor(cap.cm, exit_plan)(cap.x), cap.ref_exit("exit3"))[1] <= TOLERANCE


def test_offload_picks_the_device_with_the_lowest_latency() -> None:
    g = chain_graph()
    cl = parse_cluster({"source": "s", "devices": [
        {"name": "s", "cpu_share": 0.1}, {"name": "fast_far", "cpu_share": 1.0},
        {"name": "slow_near", "cpu_share": 0.5}],
        "network": {"bandwidth_mbps": 1000, "latency_ms": 0.1,
                    "links": [{"between": ["s", "fast_far"], "bandwidth_mbps": 0.5}]}})
    costs = CostModel(g, cl)
    res = run("offload", PlanRequest(g, cl, "chain", costs))
    lat = {}
    for d in ("fast_far", "slow_near"):
        plan = PlanRequest(g, cl, "chain").make_plan([Stage("output", Whole(d))], "t")
        lat[d] = simulate_lowered(plan, g, costs).latency_ms
    assert res.info["device"] == min(lat, key=lat.get) == "slow_near"
    assert res.info["latency_ms"] == pytest.approx(lat["slow_near"], abs=1e-3)


def test_deadline_is_a_constraint_and_infeasible_carries_the_fastest() -> None:
    g = chain_graph()
    cl = builtin_cluster("edgent").with_bandwidth(5.0)
    costs = CostModel(g, cl)
    free = run("neurosurgeon", PlanRequest(g, cl, "chain", costs, objective="energy"))
    with pytest.raises(Infeasible) as ei:
        run("neurosurgeon", PlanRequest(g, cl, "chain", costs, deadline_ms=1e-3))
    assert "fastest is" in str(ei.value) and ei.value.best is not None
    assert ei.value.best.plan.stages
    fast = run("neurosurgeon", PlanRequest(g, cl, "chain", costs))
    dl = fast.info["latency_ms"] * 1.0001 + 1e-3  # info rounds to 3 decimals
    res = run("neurosurgeon", PlanRequest(g, cl, "chain", costs, objective="energy", deadline_ms=dl))
    assert res.info["latency_ms"] <= dl
    assert res.info["source_energy_j"] >= free.info["source_energy_j"] - 1e-12


def test_bad_input_is_a_strategy_error() -> None:
    g = chain_graph()
    cl = builtin_cluster("edgent")
    for params, msg in [({"exit": "exit1"}, "no early exits"), ({"device": "pi"}, "other than the source"),
                        ({"device": "nope"}, "other than the source"), ({"order": "sideways"}, "order"),
                        ({"verify": -1}, "verify")]:
        with pytest.raises(StrategyError, match=msg):
            run("neurosurgeon", PlanRequest(g, cl, "chain", params=params))
    with pytest.raises(StrategyError, match="only it"):
        run("offload", PlanRequest(g, cl.without("edge"), "chain"))
    with pytest.raises(StrategyError, match=r"--deadline-ms must be > 0"):
        PlanRequest(g, cl, "chain", deadline_ms=0)


def test_unknown_exit_names_the_exits(captured) -> None:
    g = captured("alexnet_digits").graph
    with pytest.raises(StrategyError, match="exit1, exit2, exit3, exit4, final"):
        run("neurosurgeon", PlanRequest(g, builtin_cluster("edgent"), "alexnet_digits", params={"exit": "exit9"}))


def test_local_runs_a_requested_exit_and_rejects_bad_exits(captured) -> None:
    """``local --param exit=NAME`` is Edgent's exit-only baseline; a wrong exit is bad input (exit 2)."""
    g = captured("alexnet_digits").graph
    cl = builtin_cluster("edgent")
    p = run("local", PlanRequest(g, cl, "alexnet_digits", params={"exit": "exit2"})).plan
    assert p.exit == "exit2" and [s.partition.device for s in p.stages] == ["pi"]  # type: ignore[union-attr]
    assert run("local", PlanRequest(g, cl, "alexnet_digits")).plan.exit is None
    with pytest.raises(StrategyError, match="exit1, exit2, exit3, exit4, final"):
        run("local", PlanRequest(g, cl, "alexnet_digits", params={"exit": "exit9"}))
    with pytest.raises(StrategyError, match="no early exits"):
        run("local", PlanRequest(chain_graph(), cl, "chain", params={"exit": "exit1"}))


@pytest.mark.parametrize("strategy", ["offload", "neurosurgeon", "edgent"])
def test_a_device_whose_memory_cannot_hold_its_part_is_not_chosen(strategy: str) -> None:
    """QA: memory_mb was ignored by the layer-wise strategies; the fastest device d1 (memory_mb 1, ResNet-18
    holds 47 MB of weights) got the whole model. Each part must fit its device (as coedge's rule)."""
    from coinfer.modelspec import capture_model

    name = "alexnet_digits" if strategy == "edgent" else "resnet18"
    g = capture_model(name).graph
    cl = parse_cluster({"source": "d0", "devices": [
        {"name": "d0", "cpu_share": 0.15}, {"name": "d1", "cpu_share": 0.9, "memory_mb": 1},
        {"name": "d2", "cpu_share": 0.6}], "network": {"bandwidth_mbps": 1000, "latency_ms": 0.1}})
    dl = 10_000.0 if strategy == "edgent" else None  # edgent needs a deadline; a loose one
    res = run(strategy, PlanRequest(g, cl, name, CostModel(g, cl), "latency", dl))
    assert "d1" not in res.plan.devices_used_names()
    small = parse_cluster({"source": "d0", "devices": [
        {"name": "d0", "cpu_share": 0.15, "memory_mb": 1}, {"name": "d1", "cpu_share": 0.9, "memory_mb": 1}],
        "network": {"bandwidth_mbps": 1000, "latency_ms": 0.1}})
    with pytest.raises(StrategyError, match="memory_mb"):
        run(strategy, PlanRequest(g, small, name, CostModel(g, small), "latency", dl))
