"""Spatial plans on real worker processes (issue 7): work stealing under a slowdown, CoEdge re-planning.

* DeepThings: the same fused 4x4 tile grid run with work stealing and with
  static tiles; after a request one device is throttled to 1/25 of
  its CPU (its cgroup quota is lowered, as a busy device would be). With
  stealing that device computes fewer tiles than the plan assigned it and the
  fused stage ends much sooner than with static tiles (the rest of the model,
  whole on the source, is the same for both and only adds noise, so the
  fused stage's end is compared); results stay exact throughout.
* CoEdge: a device of the plan is SIGKILLed mid-stream; the session re-plans
  with ``coedge`` over the live devices, every request returns the right
  result, and latency / energy before and after are reported (the adaptive
  re-planner's history).

Timing is noisy on the shared 2-core machine: assertions are ratios within
one run, medians of several requests.
"""

from __future__ import annotations

import collections
import statistics
import threading

import pytest
import torch

from coinfer.cluster import parse_cluster
from coinfer.execute.local import TOLERANCE, compare, reference_output
from coinfer.modelspec import capture_model
from coinfer.runtime.adaptive import ReplanAdapter
from coinfer.runtime.coordinator import Session
from coinfer.runtime.emulation import limit_cpu
from coinfer.runtime.launcher import LocalCluster
from coinfer.strategies import PlanRequest, run

pytestmark = pytest.mark.integration

CLUSTER = {"source": "d0", "devices": [{"name": f"d{i}", "cpu_share": 0.5} for i in range(4)],
           "network": {"bandwidth_mbps": 1000, "latency_ms": 0.2}}


@pytest.fixture(scope="module")
def workers():
    """Four worker processes at half a core each, shared by the tests of this module (started once)."""
    cl = parse_cluster(CLUSTER)
    with LocalCluster(cl) as lc:
        yield cl, lc


def _is_tile(e) -> bool:  # type: ignore[no-untyped-def]
    return e.lane == "compute" and ("(tile)" in e.name or e.name.startswith("compute s0."))


def _tiles(trace, dev: str) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for e in trace.events if e.device == dev and _is_tile(e))


def _fused_ms(trace) -> float:  # type: ignore[no-untyped-def]
    """When the last tile of the fused stage was computed (ms after the request started)."""
    return max(e.end_ms for e in trace.events if _is_tile(e))


def test_work_stealing_vs_static_with_a_slowed_device(workers) -> None:
    model = "yolov2_tiny"
    cm = capture_model(model)
    g = cm.graph
    cl, lc = workers
    until = [c for c, ok in g.splittable_cuts().items() if ok and g[c].height == 26][-1]
    params = {"grid": "4x4", "until": until, "tail": "source", "devices": ["d0", "d1", "d2"]}
    dyn = run("deepthings", PlanRequest(g, cl, model, None, "latency", None, params)).plan
    sta = run("deepthings", PlanRequest(g, cl, model, None, "latency", None, {**params, "schedule": "static"})).plan
    assigned = collections.Counter(d for row in dyn.stages[0].partition.devices for d in row)
    x = torch.randn(g.input_shape, generator=torch.Generator().manual_seed(3))
    ref = reference_output(cm, x)
    victim = "d2"
    results: dict[str, dict[str, list]] = {}
    w = lc.workers[victim]
    for label, plan in (("steal", dyn), ("static", sta)):
        res: dict[str, list] = {"before": [], "after": [], "tiles": []}
        with Session(plan, cl, lc.addresses, replan=False, timeout_s=120, dead_after_s=60) as s:
            s(x)  # warm-up
            for k in range(4):
                if k == 1:  # the victim gets busy: 1/25 of its CPU
                    w.limiter.close()
                    w.limiter = limit_cpu(w.proc.pid, 0.02, victim)
                y = s(x)
                assert compare(y, ref)[1] <= TOLERANCE, f"{label} request {k} not exact"
                res["before" if k < 1 else "after"].append(_fused_ms(s.last_trace))
                if k >= 1:
                    res["tiles"].append(_tiles(s.last_trace, victim))
            w.limiter.close()
            w.limiter = limit_cpu(w.proc.pid, 0.5, victim)
        results[label] = res
    steal_after = statistics.median(results["steal"]["after"])
    static_after = statistics.median(results["static"]["after"])
    print(f"\nfused stage after the slowdown: work stealing {steal_after:.0f} ms, static {static_after:.0f} ms "
          f"(before: {statistics.median(results['steal']['before']):.0f} / "
          f"{statistics.median(results['static']['before']):.0f} ms); {victim} took "
          f"{results['steal']['tiles']} tiles of {assigned[victim]} assigned")
    assert statistics.median(results["steal"]["tiles"]) < assigned[victim]
    assert all(t == assigned[victim] for t in results["static"]["tiles"])
    assert static_after > 1.4 * steal_after


def test_coedge_replans_when_a_device_leaves_mid_stream(workers) -> None:
    """Runs last in the module: it kills a worker of the shared cluster."""
    model = "alexnet"
    cm = capture_model(model)
    g = cm.graph
    cl, lc = workers
    plan = run("coedge", PlanRequest(g, cl, model, None, "latency")).plan
    assert [d for d in plan.devices_used_names() if d != "d0"], f"coedge did not split: {plan.to_json()}"
    victim = ""
    xs = [torch.randn(g.input_shape, generator=torch.Generator().manual_seed(100 + i)) for i in range(10)]
    refs = reference_output(cm, torch.cat(xs)).split(1)
    adapter = ReplanAdapter()
    with Session(plan, cl, lc.addresses, adapter=adapter, timeout_s=120, dead_after_s=15) as s:
        for i, x in enumerate(xs):
            if i == 5:
                # the adapter may have re-planned on a bandwidth change already: kill a device the
                # *current* plan uses, so that a request depends on it
                used = [d for d in s.plan.devices_used_names() if d != "d0"]
                assert used, f"coedge stopped splitting: {s.plan.to_json()}"
                victim = used[-1]
                killer = threading.Timer(0.03, lc.kill, args=(victim,))
                killer.start()
            y = s(x)
            assert compare(y, refs[i])[1] <= TOLERANCE, f"request {i} wrong"
            if i == 5:
                killer.join()
        assert s.recoveries, "no re-plan after the device died"
        assert victim not in s.plan.devices and s.plan.strategy.name == "coedge"
    hist = adapter.history
    before = [h for h in hist[:5] if victim in h["devices"]]
    after = [h for h in hist[6:] if victim not in h["devices"]]
    assert len(before) >= 1 and len(after) >= 3
    lat_b = statistics.median(h["latency_ms"] for h in before)
    lat_a = statistics.median(h["latency_ms"] for h in after)
    e_b = statistics.median(h["dynamic_energy_j"] for h in before)
    e_a = statistics.median(h["dynamic_energy_j"] for h in after)
    print(f"\ncoedge before {victim} left: {lat_b:.0f} ms, {e_b:.3f} J (dynamic, model); "
          f"after: {lat_a:.0f} ms, {e_a:.3f} J over {sorted(after[-1]['devices'])}; "
          f"re-plan {s.recoveries[0].replan_ms:.0f} ms")
    assert lat_a > 0 and e_a > 0
