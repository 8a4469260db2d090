"""Edgent: Algorithm 1 on synthetic costs with a known answer, both orders, bad input, and the
dynamic-bandwidth configuration map (states by change-point detection, the adapter's decisions)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from coinfer.cluster import parse_cluster
from coinfer.cost.bandwidth import BandwidthTrace
from coinfer.cost.model import CostModel
from coinfer.graph.ir import ExitBranch, Graph, Node
from coinfer.plan.plan import Plan, Stage, Whole
from coinfer.runtime.adapters import EdgentAdapter
from coinfer.sim.run import simulate_lowered
from coinfer.strategies import Infeasible, PlanRequest, StrategyError, run
from coinfer.strategies.edgent import bandwidth_states
from coinfer.strategies.layerwise import all_configs, chain_table
from coinfer.trace import Trace

CONV = {"kernel": [3, 3], "stride": [1, 1], "dilation": [1, 1], "pad": [1, 1, 1, 1], "groups": 1}
MFLOP = 1_000_000


def head(name: str, attach: str, c: int) -> ExitBranch:
    return ExitBranch(name, attach, [
        Node(f"{name}.pool", "global_pool", (attach,), (1, c, 1, 1), spatial=False),
        Node(f"{name}.flat", "flatten", (f"{name}.pool",), (1, c), spatial=False),
        Node(f"{name}.fc", "linear", (f"{name}.flat",), (1, 10), {"in": c, "out": 10}, flops=2 * c * 10,
             params=c * 10, param_bytes=40 * c, spatial=False)])


def exit_net(stage_mflops: float = 20.0) -> Graph:
    """Four equal conv stages (exits after the first three), then global pool + linear."""
    nodes = [Node("x", "input", (), (1, 3, 32, 32))]
    prev, cin = "x", 3
    for i in range(4):
        nodes.append(Node(f"s{i}", "conv", (prev,), (1, 32, 32, 32), CONV, flops=int(stage_mflops * MFLOP),
                          params=9 * cin * 32, param_bytes=36 * cin * 32))
        prev, cin = f"s{i}", 32
    nodes += [Node("gp", "global_pool", ("s3",), (1, 32, 1, 1), spatial=False),
              Node("flat", "flatten", ("gp",), (1, 32), spatial=False),
              Node("fc", "linear", ("flat",), (1, 10), {"in": 32, "out": 10}, flops=640, params=330,
                   param_bytes=1320, spatial=False)]
    exits = {f"exit{i + 1}": head(f"exit{i + 1}", f"s{i}", 32) for i in range(3)}
    return Graph("synthetic", nodes, exits)


def two_devices(mbps: float, dev_gflops: float = 1.0, srv_gflops: float = 100.0) -> object:
    # remote (loopback) addresses: no emulated CPU quota, so the analytic costs are FLOPs / speed
    return parse_cluster({"source": "dev", "devices": [
        {"name": "dev", "address": "tcp://127.0.0.1:7001", "speed_gflops": dev_gflops},
        {"name": "srv", "address": "tcp://127.0.0.1:7002", "speed_gflops": srv_gflops}],
        "network": {"bandwidth_mbps": mbps, "latency_ms": 1.0}})


def local_latency(g: Graph, cl: object, costs: CostModel, ex: str | None) -> float:
    plan = PlanRequest(g, cl, "synthetic").make_plan([Stage("output", Whole("dev"))], "t", exit=ex)  # type: ignore[arg-type]
    return simulate_lowered(plan, g, costs).latency_ms


def plan(g: Graph, cl: object, deadline: float, **params: object):  # type: ignore[no-untyped-def]
    return run("edgent", PlanRequest(g, cl, "synthetic", CostModel(g, cl), deadline_ms=deadline,  # type: ignore[arg-type]
                                     params=dict(params)))


# -- static: Algorithm 1 ---------------------------------------------------------------------------------
def test_most_accurate_feasible_exit_on_synthetic_costs() -> None:
    g = exit_net()
    cl = two_devices(mbps=0.001)  # a useless link: everything stays on the device
    costs = CostModel(g, cl)
    lat = {e: local_latency(g, cl, costs, e) for e in ("exit1", "exit2", "exit3", None)}
    assert lat["exit1"] < lat["exit2"] < lat["exit3"] < lat[None]
    deadline = (lat["exit2"] + lat["exit3"]) / 2
    # Algorithm 1: deepest (= most accurate, accuracies growing with depth) first
    acc = {"exit1": 0.80, "exit2": 0.90, "exit3": 0.93, "final": 0.97}
    for params in ({}, {"accuracy": acc}, {"accuracy": acc, "prefer": "accuracy"}):
        res = plan(g, cl, deadline, **params)
        assert res.plan.exit == "exit2" and res.info["kind"] == "local"
        assert res.info["latency_ms"] == pytest.approx(lat["exit2"], abs=1e-3)
        assert [t["exit"] for t in res.info["exits_tried"]] == ["final", "exit3", "exit2"]
    assert res.info["accuracy"] == 0.90
    # accuracies that do not grow with depth: prefer=accuracy takes the most accurate feasible one
    odd = {"exit1": 0.9, "exit2": 0.8, "exit3": 0.85, "final": 0.95}
    assert plan(g, cl, deadline, accuracy=odd, prefer="accuracy").plan.exit == "exit1"
    assert plan(g, cl, deadline, accuracy=odd).plan.exit == "exit2"  # depth order
    # a deadline every exit meets: the most accurate (final)
    assert plan(g, cl, lat[None] * 1.01, accuracy=odd, prefer="accuracy").plan.exit is None
    # restricting the candidates
    assert plan(g, cl, deadline, exits=["exit1", "exit3"]).plan.exit == "exit1"


def test_fast_link_offloads_the_final_exit() -> None:
    g = exit_net()
    cl = two_devices(mbps=1000.0)
    costs = CostModel(g, cl)
    res = plan(g, cl, deadline=local_latency(g, cl, costs, "exit1") * 0.5)
    assert res.plan.exit is None and res.info["device"] == "srv"


def test_each_exit_gets_its_fastest_configuration() -> None:
    """A(i, p*) of every exit tried equals the minimum over all cuts and orders on the simulator."""
    g = exit_net()
    cl = two_devices(mbps=20.0, dev_gflops=2.0, srv_gflops=8.0)
    costs = CostModel(g, cl)
    with pytest.raises(Infeasible) as ei:
        plan(g, cl, deadline=0.5)
    tried = ei.value.best.info["exits_tried"]  # type: ignore[union-attr]
    req = PlanRequest(g, cl, "synthetic", costs)
    for t in tried:
        ex = None if t["exit"] == "final" else t["exit"]
        tab = chain_table(g, costs, ["dev", "srv"], ex)
        best = min(simulate_lowered(req.make_plan(c.stages("dev"), "t", exit=ex), g, costs).latency_ms
                   for c in all_configs(tab, costs, "dev", ["srv"]))
        assert t["latency_ms"] == pytest.approx(best, abs=1e-3), t


def edgent_order_net() -> Graph:
    """A heavy first layer with a small output, then a cheap layer with a large output (the result)."""
    nodes = [Node("x", "input", (), (1, 3, 32, 32)),
             Node("a", "conv", ("x",), (1, 4, 32, 32), CONV, flops=1000 * MFLOP, params=108, param_bytes=432),
             Node("b", "conv", ("a",), (1, 64, 32, 32), {**CONV, "kernel": [1, 1], "pad": [0, 0, 0, 0]},
                  flops=2 * 4 * 64 * 1024, params=256, param_bytes=1024)]
    return Graph("synthetic", nodes, {"exit1": head("exit1", "a", 4)})


def test_edgent_order_wins_when_the_back_part_has_a_large_output() -> None:
    g = edgent_order_net()
    cl = two_devices(mbps=10.0)
    res = plan(g, cl, deadline=200.0)
    assert res.plan.exit is None
    assert res.info["won"] == "edgent" and res.info["cut"] == "a"
    assert [s.partition.device for s in res.plan.stages] == ["srv", "dev"]  # edge runs the front
    assert res.info["best_split_by_order"]["edgent"]["latency_ms"] < \
        res.info["best_split_by_order"]["neurosurgeon"]["latency_ms"]
    # Neurosurgeon's order only: the answer changes
    ns = plan(g, cl, deadline=2000.0, order="neurosurgeon")
    assert ns.info["order"] == "neurosurgeon"


def test_infeasible_names_the_fastest_configuration() -> None:
    g = exit_net()
    cl = two_devices(mbps=0.001)
    with pytest.raises(Infeasible) as ei:
        plan(g, cl, deadline=1.0)
    msg = str(ei.value)
    assert "no exit meets the 1 ms deadline" in msg and "exit1@local" in msg
    best = ei.value.best
    assert best is not None and best.plan.exit == "exit1"


def test_bad_input() -> None:
    g = exit_net()
    cl = two_devices(mbps=1.0)
    noexit = Graph("plain", g.nodes, {})
    cases = [
        ({}, None, "needs a latency requirement"),
        ({"exits": ["exit7"]}, 10.0, "unknown exit"),
        ({"exit": "exit7"}, 10.0, "unknown exit"),
        ({"accuracy": {"exit9": 0.5}}, 10.0, "does not have"),
        ({"accuracy": {"exit1": 1.5}}, 10.0, "in \\[0, 1\\]"),
        ({"accuracy": {"exit1": 0.5}}, 10.0, "missing for exit"),
        ({"mode": "wild"}, 10.0, "mode"),
        ({"prefer": "speed"}, 10.0, "prefer"),
        ({"prefer": "accuracy"}, 10.0, "needs the exits' accuracies"),
        ({"margin": 1.0}, 10.0, "margin"),
        ({"mode": "dynamic"}, 10.0, "no measured exit accuracies"),
    ]
    for params, dl, msg in cases:
        with pytest.raises(StrategyError, match=msg):
            run("edgent", PlanRequest(g, cl, "synthetic", deadline_ms=dl, params=params))  # type: ignore[arg-type]
    with pytest.raises(StrategyError, match="has no early exits"):
        run("edgent", PlanRequest(noexit, cl, "plain", deadline_ms=10.0))  # type: ignore[arg-type]
    with pytest.raises(StrategyError, match="bandwidth trace"):
        run("edgent", PlanRequest(g, cl, "synthetic", deadline_ms=10.0,  # type: ignore[arg-type]
                                  params={"mode": "dynamic", "accuracy": {"exit1": .5, "exit2": .6, "exit3": .7,
                                                                         "final": .8}}))


# -- dynamic: states and the configuration map -------------------------------------------------------------
LEVELS = (0.1, 1.0, 10.0)


def write_trace(path: Path, pattern: tuple[int, ...] = (2, 0, 1, 2, 0, 1), rows: int = 20, seed: int = 1) -> list[int]:
    rnd = random.Random(seed)
    lines, truth = ["t_s,mbps"], []
    t = 0.0
    for s in pattern:
        for _ in range(rows):
            lines.append(f"{t:.2f},{LEVELS[s] * math.exp(rnd.gauss(0, 0.1)):.5f}")
            truth.append(s)
            t += 0.5
    path.write_text("\n".join(lines) + "\n")
    return truth


def test_bandwidth_states_by_change_point_detection(tmp_path: Path) -> None:
    truth = write_trace(tmp_path / "bw.csv")
    st = bandwidth_states(BandwidthTrace.load(tmp_path / "bw.csv"), 3)
    assert len(st.centers) == 3
    for c, lvl in zip(st.centers, LEVELS):
        assert c == pytest.approx(lvl, rel=0.15)
    agree = sum(a == b for a, b in zip(st.labels, truth)) / len(truth)
    assert agree >= 0.97
    assert len(st.breakpoints) == 5  # the five level changes
    assert [st.state_of(x) for x in (0.05, 0.5, 2.0, 50.0)] == [0, 1, 1, 2]
    assert all(p <= c for p, c in zip(st.plan_mbps, st.centers))


ACC = {"exit1": 0.80, "exit2": 0.90, "exit3": 0.93, "final": 0.97}


def dynamic_plan(tmp_path: Path, deadline: float) -> tuple[Graph, object, object]:
    write_trace(tmp_path / "bw.csv")
    g = exit_net(stage_mflops=8.0)
    cl = two_devices(mbps=1.0, dev_gflops=0.5, srv_gflops=50.0)
    res = plan(g, cl, deadline, mode="dynamic", trace=str(tmp_path / "bw.csv"), accuracy=ACC)
    return g, cl, res


def test_configuration_map_per_state(tmp_path: Path) -> None:
    g, cl, res = dynamic_plan(tmp_path, deadline=40.0)
    p = res.plan
    cmap = p.strategy.params["config_map"]
    assert [e["state"] for e in cmap] == [0, 1, 2]
    assert all(e["feasible"] and e["reward"] > 0 and e["latency_ms"] <= 40.0 for e in cmap)
    # low bandwidth keeps everything on the device (a shallower exit), high bandwidth offloads the final exit
    assert not cmap[0]["uses_link"] and cmap[0]["exit"] is not None
    assert cmap[2]["uses_link"] and cmap[2]["exit"] is None
    assert cmap[0]["probe"]["uses_link"]
    # the reward is Edgent's: exp(accuracy) + a throughput term in (0, weight]
    for e in cmap:
        assert math.exp(e["accuracy"]) < e["reward"] <= math.exp(e["accuracy"]) + 0.01 + 1e-5
    # the trace starts in the high state: the plan is that state's configuration, and it round-trips
    assert p.strategy.params["state"] == 2 and p.strategy.params["config"] == cmap[2]["config"]
    q = Plan.from_json(p.to_json())
    assert q.to_dict() == p.to_dict()
    q.validate(g)
    for e in cmap:  # every state's plan is valid and its predicted latency is the simulator's
        sp = PlanRequest(g, cl, "synthetic").make_plan(  # type: ignore[arg-type]
            [Stage.from_dict(s, "s") for s in e["stages"]], "t", exit=e["exit"])
        sp.validate(g)


def fake_trace(src: str, peer: str, nbytes: int, ms: float) -> Trace:
    t = Trace()
    t.add(src, "recv", "recv s0 from x", 0.0, ms, peer=peer, bytes=nbytes)
    return t


def test_adapter_detects_the_state_and_switches(tmp_path: Path) -> None:
    _, cl, res = dynamic_plan(tmp_path, deadline=40.0)
    p = res.plan
    ad = EdgentAdapter(p, probe_every_s=3600.0)
    sess = SimpleNamespace(plan=p, cluster=cl)
    assert ad.before_request(sess) is None  # already on the start state's configuration
    # a 12 KB transfer taking 1 s (+1 ms latency): ~0.1 Mbit/s -> the low state
    ad.after_request(sess, fake_trace("srv", "dev", 12288, 1001.0))
    assert ad.estimate == pytest.approx(12288 * 8 / 1e3 / 1000.0, rel=0.01)
    assert ad.interval is not None and ad.interval[0] <= 0.1 <= ad.interval[1] * 1.02
    new = ad.before_request(sess)
    assert new is not None and ad.state == 0
    assert new.strategy.params["config"] == p.strategy.params["config_map"][0]["config"]
    sess.plan = new
    assert ad.before_request(sess) is None
    # no sample for a while on a device-only configuration: the next request probes the link
    ad.probe_every_s = 0.0
    probe = ad.before_request(sess)
    assert probe is not None and ad.probing
    assert probe.strategy.params["config"] == p.strategy.params["config_map"][0]["probe"]["config"]
    sess.plan = probe
    ad.after_request(sess, fake_trace("dev", "srv", 49152, 1.0 + 49152 * 8 / 1e3 / 10.0))  # ~10 Mbit/s
    ad.probe_every_s = 3600.0
    back = ad.before_request(sess)
    assert ad.state == 2 and back is not None
    assert back.strategy.params["config"] == p.strategy.params["config_map"][2]["config"]
    assert [ev.state for ev in ad.log] == [2, 0, 0, 0, 2]
    assert ad.summary()["probes"] == 1
    # a small piece proves only a lower bound when it is faster than the runtime's overhead allows to tell:
    # 1 KB in 5 ms after the latency: >= 1.6 Mbit/s, no upper bound -> states 1 or 2 are possible
    ad.after_request(sess, fake_trace("srv", "dev", 1024, 6.0))
    assert ad.interval is not None and ad.interval[1] == math.inf
    assert ad.possible_states(*ad.interval) == [1, 2]
    ad.state = 0
    ad.before_request(sess)
    assert ad.state == 1  # from state 0 up to the lowest possible one (the safe side)
    ad.after_request(sess, fake_trace("srv", "dev", 1024, 6.0))
    ad.state = 2
    ad.before_request(sess)
    assert ad.state == 2  # the current state is possible: kept


def test_adapter_rejects_a_plan_without_a_map() -> None:
    from coinfer.plan.plan import PlanError

    g = exit_net()
    cl = two_devices(mbps=1.0)
    p = plan(g, cl, deadline=1000.0).plan
    with pytest.raises(PlanError, match="mode=dynamic"):
        EdgentAdapter(p)


def test_cli_exit_codes(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Infeasible deadline -> exit 1 naming the fastest configuration; a model without exits -> exit 2."""
    r = run_cli("plan", "-m", "alexnet_digits", "-c", "edgent", "-s", "edgent", "--deadline-ms", "0.01",
                "-o", tmp_path / "p.json")
    assert r.returncode == 1, r.stderr
    assert "infeasible" in r.stderr and "the fastest configuration is exit1@local" in r.stderr
    r = run_cli("plan", "-m", "core_helpers.user_models:user_net", "--input-shape", "1,3,37,29", "-c", "edgent",
                "-s", "edgent", "--deadline-ms", "100", "-o", tmp_path / "q.json")
    assert r.returncode == 2, r.stderr
    assert "has no early exits" in r.stderr and len(r.stderr.strip().splitlines()) == 1
