"""The adaptive re-planner (CoEdge's re-solve on device and bandwidth changes) against a fake session."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from coinfer.cluster import Cluster, builtin_cluster
from coinfer.modelspec import capture_model
from coinfer.plan.plan import Plan
from coinfer.runtime.adaptive import ReplanAdapter, energy_of, replan
from coinfer.runtime.coordinator import LinkSample
from coinfer.strategies import PlanRequest, run

MODEL = "alexnet"


@dataclass
class FakeSession:
    plan: Plan
    cluster: Cluster
    dead: set[str] = field(default_factory=set)
    link_samples: deque = field(default_factory=lambda: deque(maxlen=2000))


def _plan(cluster: Cluster, **kw) -> Plan:
    g = capture_model(MODEL).graph
    return run("coedge", PlanRequest(g, cluster, MODEL, None, kw.pop("objective", "latency"), kw.pop("deadline", None),
                                     kw)).plan


def _samples(s: FakeSession, a: str, b: str, mbps: float, n: int, nbytes: int = 200_000) -> None:
    lat = s.cluster.link(a, b)[1]
    ms = nbytes * 8 / (mbps * 1e3) + lat + 0.8  # + runtime overhead: the baseline absorbs it
    for _ in range(n):
        s.link_samples.append(LinkSample(time.time(), a, b, nbytes, ms))


def test_nothing_changes_nothing_replans() -> None:
    cl = builtin_cluster("eq4").with_bandwidth(1000)
    s = FakeSession(_plan(cl), cl)
    ad = ReplanAdapter()
    assert ad.before_request(s) is None
    _samples(s, "d0", "d1", 1000, 8)
    assert ad.before_request(s) is None
    assert ad.events == []


def test_device_leaves_and_returns() -> None:
    cl = builtin_cluster("eq4").with_bandwidth(1000)
    s = FakeSession(_plan(cl), cl)
    ad = ReplanAdapter()
    assert ad.before_request(s) is None
    s.dead.add("d2")
    new = ad.before_request(s)
    assert new is not None and "d2" not in new.devices and "left ['d2']" in ad.events[-1].reason
    assert new.strategy.name == "coedge"
    s.plan = new
    assert ad.before_request(s) is None
    s.dead.clear()
    back = ad.before_request(s)
    assert back is not None and "d2" in back.devices and "joined ['d2']" in ad.events[-1].reason


def test_bandwidth_drop_triggers_a_resolve_with_the_observed_rate() -> None:
    cl = builtin_cluster("het4").with_bandwidth(1000)
    s = FakeSession(_plan(cl), cl)
    ad = ReplanAdapter(threshold=0.35, min_samples=3, window=4, cooldown_s=0.0)
    assert ad.before_request(s) is None
    _samples(s, "d0", "d3", 1000, 4)
    assert ad.before_request(s) is None  # learns the baseline
    _samples(s, "d0", "d3", 1000, 4)
    assert ad.before_request(s) is None  # unchanged
    _samples(s, "d0", "d3", 50, 6)
    new = ad.before_request(s)
    assert new is not None
    ev = ad.events[-1]
    assert ev.reason.startswith("bandwidth changed: d0-d3")
    assumed = ev.links["d0-d3"]
    assert 20 < assumed < 300  # the baseline ratio applied to the assumed 1000 Mbit/s
    # the re-plan saw the slower link
    assert ad.cluster_for(cl, cl.names).link("d0", "d3")[0] == assumed


def test_replan_keeps_objective_and_deadline() -> None:
    cl = builtin_cluster("het4").with_bandwidth(1000)
    p = _plan(cl, objective="energy", deadline=400.0)
    new, info = replan(p, cl.without("d1"))
    assert new.strategy.params["objective"] == "energy" and new.strategy.params["deadline_ms"] == 400.0
    assert "d1" not in new.devices
    assert info["model_latency_ms"] <= 400.0


def test_energy_of_summary() -> None:
    cl = builtin_cluster("het4")
    summ = {"latency_ms": 100.0, "busy_ms": {"d0": 50.0, "d3": 20.0}, "tx_ms": {"d0": 5.0}, "rx_ms": {"d3": 5.0}}
    e = energy_of(summ, cl)
    p0 = cl.device("d0").power
    assert e["device_dynamic_j"]["d0"] == (p0.busy_w * 50 + p0.tx_w * 5) / 1e3
    assert e["total_j"] > e["dynamic_j"] and set(e["device_total_j"]) == {"d0", "d3"}
