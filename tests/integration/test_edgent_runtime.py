"""Edgent on real worker processes: a bandwidth trace replayed by the workers' link shapers, and the
dynamic adapter switching configurations between requests (outputs equal the chosen exit's)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from coinfer.cluster import parse_cluster
from coinfer.cost.model import CostModel
from coinfer.execute.local import TOLERANCE, compare
from coinfer.inputs import random_input
from coinfer.modelspec import capture_model
from coinfer.plan.plan import Stage, Whole
from coinfer.runtime.adapters import EdgentAdapter
from coinfer.runtime.coordinator import Session
from coinfer.runtime.launcher import LocalCluster
from coinfer.strategies import PlanRequest, run

pytestmark = pytest.mark.integration

MODEL = "alexnet_digits"
ACC = {"exit1": 0.80, "exit2": 0.88, "exit3": 0.9, "exit4": 0.92, "final": 0.95}


def cluster(trace: Path) -> object:
    # the planner sees a slow "pi" (cpu_share 0.15); the workers run unthrottled (emulate_cpu=False)
    return parse_cluster({"source": "pi", "devices": [{"name": "pi", "cpu_share": 0.15},
                                                      {"name": "edge", "cpu_share": 1.0}],
                          "network": {"bandwidth_mbps": 1000.0, "latency_ms": 1.0, "trace": str(trace)}})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("edgent")
    trace = d / "bw.csv"
    # two states, 1.2 s each (the trace loops): 0.5 Mbit/s and 80 Mbit/s
    trace.write_text("t_s,mbps\n" + "".join(f"{i * 0.3:.1f},{0.5 if (i // 4) % 2 == 0 else 80.0}\n"
                                            for i in range(8)))
    cl = cluster(trace)
    lc = LocalCluster(cl, emulate_cpu=False).start()  # type: ignore[arg-type]
    yield cl, lc, trace
    lc.stop()


def test_trace_replays_in_the_link_shaper(setup) -> None:  # type: ignore[no-untyped-def]
    cl, lc, _ = setup
    cm = capture_model(MODEL)
    req = PlanRequest(cm.graph, cl, MODEL)
    plan = req.make_plan([Stage("output", Whole("edge"))], "offload", exit="exit1")  # the 49 KB input crosses
    x = random_input(tuple(cm.graph.input_shape), 0)
    ms = []
    with Session(plan, cl, lc.addresses) as s:
        t_end = time.monotonic() + 3.0  # longer than one period of the trace
        while time.monotonic() < t_end and not (ms and max(ms) > 300.0 and min(ms) < 60.0):
            s(x)
            ms += [e.dur_ms for e in s.last_trace.events if e.lane == "recv" and e.args.get("bytes", 0) > 40000]
    # 49 KB: ~790 ms at 0.5 Mbit/s, ~5 ms at 80 Mbit/s (the configured 1000 Mbit/s would give 0.4 ms)
    assert max(ms) > 300.0 and min(ms) < 60.0, ms


def test_adapter_switches_configurations_between_requests(setup) -> None:  # type: ignore[no-untyped-def]
    cl, lc, trace = setup
    cm = capture_model(MODEL)
    costs = CostModel(cm.graph, cl)
    res = run("edgent", PlanRequest(cm.graph, cl, MODEL, costs, deadline_ms=150.0,
                                    params={"mode": "dynamic", "trace": str(trace), "accuracy": ACC,
                                            "states": 2}))
    plan = res.plan
    cmap = plan.strategy.params["config_map"]
    assert len(cmap) == 2 and cmap[0]["config"] != cmap[1]["config"]
    ad = EdgentAdapter(plan, probe_every_s=0.3)
    x = random_input(tuple(cm.graph.input_shape), 3)
    with torch.no_grad():
        refs = cm.module.forward_exits(x)
    seen = set()
    with Session(plan, cl, lc.addresses, adapter=ad) as s:
        built = s.deploys  # the map's configurations are built when the session starts
        prep = [p for p in ad.plans_to_prepare() if p.to_json() != plan.to_json()]
        assert prep and built == 1 + len(prep) and len(s.kept) == len(prep)
        t_end = time.monotonic() + 20.0  # ends as soon as both states and 2 switches are seen; long for loaded hosts
        while time.monotonic() < t_end and not ({ev.state for ev in ad.log} == {0, 1}
                                                  and ad.summary()["switches"] >= 2):
            y = s(x)
            ex = s.plan.exit or "final"
            seen.add(s.plan.strategy.params["config"])
            assert compare(y, refs[ex])[1] <= TOLERANCE
        assert s.deploys == built, "a switch re-deployed instead of using the prepared configuration"
    states = {ev.state for ev in ad.log}
    assert states == {0, 1}, [(ev.estimate_mbps, ev.state) for ev in ad.log]
    assert len(seen) >= 2 and ad.summary()["switches"] >= 2


def test_adapter_follows_a_replan_after_its_edge_dies(tmp_path: Path) -> None:
    """The edge device of Edgent's map dies: the session re-plans over the other edge once, the
    adapter takes the new plan's map (its configurations named the dead device: every request
    switched back to one, failed and re-planned again) and that map's plans are built in the
    background, so switching between its states builds nothing."""
    trace = tmp_path / "bw.csv"
    trace.write_text("t_s,mbps\n" + "".join(f"{i * 0.3:.1f},{0.5 if (i // 4) % 2 == 0 else 80.0}\n"
                                            for i in range(8)))
    cl = parse_cluster({"source": "pi", "devices": [{"name": "pi", "cpu_share": 0.15},
                                                    {"name": "edge", "cpu_share": 1.0},
                                                    {"name": "edge2", "cpu_share": 0.8}],
                        "network": {"bandwidth_mbps": 1000.0, "latency_ms": 1.0, "trace": str(trace)}})
    cm = capture_model(MODEL)
    plan = run("edgent", PlanRequest(cm.graph, cl, MODEL, CostModel(cm.graph, cl), deadline_ms=150.0,
                                     params={"mode": "dynamic", "trace": str(trace), "accuracy": ACC,
                                             "states": 2})).plan
    victim = next(d for d in plan.devices_used_names() if d != "pi")
    ad = EdgentAdapter(plan, probe_every_s=0.3)
    x = random_input(tuple(cm.graph.input_shape), 5)
    with torch.no_grad():
        refs = cm.module.forward_exits(x)
    lc = LocalCluster(cl, emulate_cpu=False).start()  # type: ignore[arg-type]
    try:
        with Session(plan, cl, lc.addresses, adapter=ad) as s:
            for _ in range(3):
                s(x)
            lc.kill(victim)
            before = s.deploys
            y = s(x)  # meets the death
            assert s.recoveries and victim not in s.deployed_on
            # the re-plan's build, then the new map's other plans, built in the background
            t_end = time.monotonic() + 30.0
            while time.monotonic() < t_end and (s.deploys < before + 2 or s._inflight):
                time.sleep(0.05)
            after = s.deploys
            configs = set()
            t_end = time.monotonic() + 20.0
            while time.monotonic() < t_end and not (len(configs) >= 2 and not s._bg_plans and s._bg_done.empty()):
                y = s(x)
                assert compare(y, refs[s.plan.exit or "final"])[1] <= TOLERANCE
                assert victim not in s.deployed_on
                configs.add(s.plan.strategy.params["config"])
            assert len(s.recoveries) == 1, [r.describe() for r in s.recoveries]
            assert all(victim not in p.devices_used_names() for p in ad.plans)  # the new map
            assert len(configs) >= 2, configs  # it still switches between its states ...
            assert s.deploys == after, "a switch built a plan the re-plan had prepared"  # ... at no cost
    finally:
        lc.stop()
