"""A device that dies while a new plan is being deployed on it (e.g. an adapter's switch).

Before the fix, a device building a deployment was never judged by the
heartbeat, so its death left the coordinator waiting for the deploy's
180 s timeout. Now it is declared dead after ``BUILD_GRACE x dead_after_s``,
the deploy fails over, and the request re-plans and returns the right result.
"""

from __future__ import annotations

import time

import pytest

from coinfer.cluster import parse_cluster
from coinfer.execute.local import TOLERANCE, compare, reference_output
from coinfer.inputs import random_input
from coinfer.modelspec import capture_model
from coinfer.runtime.coordinator import BUILD_GRACE, Session
from coinfer.runtime.launcher import LocalCluster
from coinfer.strategies import PlanRequest, run

pytestmark = pytest.mark.integration

MODEL = "resnet18_digits"


class SwitchOnce:
    """An adapter that asks for ``plan`` before the first request after it is armed."""

    def __init__(self, plan):  # type: ignore[no-untyped-def]
        self.plan, self.armed = plan, False

    def before_request(self, session):  # type: ignore[no-untyped-def]
        if self.armed:
            self.armed = False
            return self.plan
        return None

    def after_request(self, session, trace) -> None:  # type: ignore[no-untyped-def]
        pass


def test_device_dies_while_a_new_plan_deploys() -> None:
    cl = parse_cluster({"source": "d0", "devices": [{"name": f"d{i}", "cpu_share": 1.0} for i in range(3)],
                        "network": {"bandwidth_mbps": 1000, "latency_ms": 0, "shape": False}})
    cm = capture_model(MODEL)
    two = run("even", PlanRequest(cm.graph, cl.without("d2"), MODEL)).plan
    three = run("even", PlanRequest(cm.graph, cl, MODEL)).plan
    assert "d2" in three.devices_used_names() and "d2" not in two.devices_used_names()
    assert three.to_dict() != two.to_dict()
    x = random_input(tuple(cm.graph.input_shape), 7)
    ref = reference_output(cm, x)
    adapter = SwitchOnce(two)
    with LocalCluster(cl, emulate_cpu=False) as lc, \
            Session(three, cl, lc.addresses, adapter=adapter, dead_after_s=1.0, timeout_s=120) as s:
        assert compare(s(x), ref)[1] <= TOLERANCE
        adapter.armed = True
        assert compare(s(x), ref)[1] <= TOLERANCE and "d2" not in s.plan.devices_used_names()
        # d2 is alive and idle; it dies just before the adapter switches back to a plan that uses it
        adapter.plan, adapter.armed = three, True
        lc.kill("d2")
        t0 = time.monotonic()
        y = s(x)  # switch → deploy on the dead d2 fails over → re-plan without d2 → result
        dt = time.monotonic() - t0
        print(f"\nrequest with a device dying during deploy answered after {dt:.1f} s")
        assert compare(y, ref)[1] <= TOLERANCE
        assert "d2" in s.dead and "d2" not in s.plan.devices_used_names()
        assert s.recoveries
        assert dt < BUILD_GRACE * 1.0 + 20, "waited for the deploy timeout instead of the heartbeat"


def test_an_unreachable_device_in_a_switched_plan_is_marked_dead() -> None:
    """A device never greeted (not in the first plan) that is down when a plan needs it."""
    cl = parse_cluster({"source": "d0", "devices": [{"name": f"d{i}", "cpu_share": 1.0} for i in range(3)],
                        "network": {"bandwidth_mbps": 1000, "latency_ms": 0, "shape": False}})
    cm = capture_model(MODEL)
    two = run("even", PlanRequest(cm.graph, cl.without("d2"), MODEL)).plan
    three = run("even", PlanRequest(cm.graph, cl, MODEL)).plan
    x = random_input(tuple(cm.graph.input_shape), 8)
    ref = reference_output(cm, x)
    adapter = SwitchOnce(three)
    with LocalCluster(cl, emulate_cpu=False) as lc, \
            Session(two, cl, lc.addresses, adapter=adapter, hello_timeout_s=3.0, timeout_s=120) as s:
        lc.kill("d2")
        adapter.armed = True
        y = s(x)
        assert compare(y, ref)[1] <= TOLERANCE
        assert "d2" in s.dead and "d2" not in s.plan.devices_used_names()
