"""The simulator on random plans: it always completes, and its accounting is consistent.

Random plans (whole / rows / grid stages, zero halo, dynamic schedules,
via-source exchanges, early exits) over captured models are lowered and
simulated with the analytic cost model, with and without the runtime's
overheads. On the ideal machine, static plans must also be monotone:
faster links or faster devices never make them slower (every event time is a
max-plus function of the costs and each link keeps its program order).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from core_helpers.plangen import DEVICE_NAMES, random_plan
from hypothesis import given, settings
from hypothesis import strategies as st

from coinfer.cluster import parse_cluster
from coinfer.cost import CostModel
from coinfer.cost.calibration import HostCalibration
from coinfer.plan.lower import lower
from coinfer.plan.plan import Plan
from coinfer.sim import simulate

MODELS = ["alexnet_digits", "resnet18_digits", "user:user_net"]


def graph_of(name: str):  # type: ignore[no-untyped-def]
    if name.startswith("user:"):
        from core_helpers import user_models

        from coinfer.graph.capture import capture

        fn = name.split(":", 1)[1]
        return capture(getattr(user_models, fn)(), user_models.USER_SHAPE, fn).graph
    from coinfer.modelspec import capture_model

    return capture_model(name).graph


def cluster(mbps: float = 50.0, share: float = 1.0):  # type: ignore[no-untyped-def]
    return parse_cluster({
        "source": "d0",
        "devices": [{"name": d, "cpu_share": round(share * (0.2 + 0.15 * i), 3),
                     "power": {"busy_w": 3 + i, "idle_w": 1.0, "tx_w": 0.5 + 0.1 * i}}
                    for i, d in enumerate(DEVICE_NAMES)],
        "network": {"bandwidth_mbps": mbps, "latency_ms": 0.5,
                    "links": [{"between": ["d0", "d1"], "bandwidth_mbps": mbps * 3}]}})


CAL = HostCalibration()


@pytest.fixture(scope="module")
def graphs():  # type: ignore[no-untyped-def]
    return {}


@pytest.mark.parametrize("name", MODELS)
def test_random_plans_simulate_consistently(name: str, graphs) -> None:  # type: ignore[no-untyped-def]
    g = graphs.setdefault(name, graph_of(name))
    exits = tuple(g.exits)
    base = CostModel(g, cluster(), calibration=CAL)
    fast_net = CostModel(g, cluster(mbps=200.0), calibration=CAL)
    fast_cpu = CostModel(g, cluster(share=2.0), calibration=CAL)

    @settings(max_examples=40)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        ex = data.draw(st.sampled_from([None, *exits])) if exits else None
        plan: Plan = data.draw(random_plan(g.for_exit(ex), model_name=name, allow_zero=True))
        plan = dataclasses.replace(plan, exit=ex, model=dataclasses.replace(plan.model, fingerprint=g.fingerprint()))
        low = lower(plan, g)
        real = simulate(low, base)  # with the runtime's overheads (and the CPU quotas' bursts)
        assert real.latency_ms > 0 and real.trace.span_ms <= real.latency_ms + 1e-9
        assert real.energy_j == pytest.approx(sum(real.device_energy_j.values()))
        res = simulate(low, base, overheads=False)
        assert res.latency_ms > 0
        for d in res.devices:
            assert res.busy_ms[d] + res.idle_ms[d] == pytest.approx(res.latency_ms)
            assert res.busy_ms[d] <= res.latency_ms + 1e-9
        assert res.energy_j == pytest.approx(sum(res.device_energy_j.values()))
        assert res.trace.span_ms == pytest.approx(res.latency_ms)
        computes = Counter(e.name for e in res.trace.events if e.lane == "compute")
        assert sum(computes.values()) == len(low.parts)  # every part computed exactly once
        if not any(s.dynamic for s in low.stages):
            assert res.raw_bytes == low.bytes_moved()
            want = Counter((d, i.text()) for d, p in low.programs.items() for i in p
                           if i.op in ("send", "recv", "compute"))
            assert Counter((e.device, e.name) for e in res.trace.events) == want
            assert simulate(low, fast_net, overheads=False).latency_ms <= res.latency_ms + 1e-6
            assert simulate(low, fast_cpu, overheads=False).latency_ms <= res.latency_ms + 1e-6
            shared = simulate(low, base, nic="shared", overheads=False)
            assert shared.latency_ms >= res.latency_ms - 1e-6

    check()
