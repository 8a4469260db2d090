"""``coedge``: the LP against brute force, Algorithm 1's device dropping, deadlines, per-stage shares.

The brute-force test enumerates every integer split of the input rows over 2
and 3 devices of a small model, evaluates each with the same integer model
the planner rounds into (:func:`coinfer.strategies.coedge.evaluate_shares`),
and checks that the LP relaxation bounds it and that the rounded plan is
within rounding of the optimum (issue 7, Acceptance).
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from torch import nn

from coinfer.cluster import builtin_cluster, parse_cluster
from coinfer.graph.capture import capture
from coinfer.modelspec import capture_model
from coinfer.plan.lower import lower
from coinfer.plan.plan import Rows, Whole
from coinfer.strategies import Infeasible, PlanRequest, run
from coinfer.strategies import coedge as ce
from coinfer.strategies.registry import StrategyError
from coinfer.strategies.spatial import layer_ends


class Tiny(nn.Module):
    """Four 3x3 conv layers over 32 input rows, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                               nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                               nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.f(x).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    return capture(Tiny().eval(), (1, 3, 32, 32), "tiny").graph


def _cluster(shares: list[float], mbps: float = 100.0, **power) -> object:
    devs = [{"name": f"d{i}", "cpu_share": s, "power": power or {"busy_w": round(2 + 8 * s, 2), "idle_w": 1.5,
                                                                  "tx_w": 1.0}} for i, s in enumerate(shares)]
    return parse_cluster({"source": "d0", "devices": devs, "network": {"bandwidth_mbps": mbps, "latency_ms": 0.5}})


def _brute(inst: ce.Instance, objective: str, deadline: float | None, devices: list[int] | None = None):
    """Best integer input-row split (any device may get 0 rows) under the integer model."""
    H = inst.H0
    best = None
    n = inst.N
    for cut in itertools.combinations(range(H + n - 1), n - 1):  # stars and bars
        a = np.diff(np.array([-1, *cut, H + n - 1])) - 1
        if devices is not None and any(a[i] > 0 for i in range(n) if i not in devices):
            continue
        ev = ce.evaluate_shares(inst, a, deadline)
        if ev.violation > 1e-12:
            continue
        v = ev.value(objective)
        if best is None or v < best[0]:
            best = (v, a.copy(), ev)
    return best


@pytest.mark.parametrize("shares,objective,deadline", [
    ([0.3, 0.7], "latency", None),
    ([0.3, 0.7], "energy", None),
    ([0.25, 0.4, 0.7], "latency", None),
    ([0.25, 0.4, 0.7], "energy", 60.0),
])
def test_lp_matches_brute_force(tiny, shares, objective, deadline) -> None:
    cl = _cluster(shares, 200.0)
    req = PlanRequest(tiny, cl, "tiny", None, objective, deadline)
    inst = ce.build_instance(req)
    assert inst.H0 == 32
    sol = ce.solve(inst, objective, deadline, explore=len(shares))
    assert sol is not None
    brute = _brute(inst, objective, deadline)
    assert brute is not None
    v_plan = sol.ev.value(objective)
    # the rounded plan is the brute-force optimum within rounding (one or two rows of 32 moved)
    assert v_plan <= brute[0] * 1.02 + 1e-9, (sol.a, brute[1], v_plan, brute[0])
    # the LP relaxation over the brute-force optimum's devices bounds every integer split of them
    used = [i for i in range(inst.N) if brute[1][i] > 0]
    lp = ce.solve_lp(inst, used, objective, deadline, min_share=True)
    assert lp is not None
    best_on_used = _brute(inst, objective, deadline, used)
    assert lp.value <= best_on_used[0] * 1.005 + 1e-9
    # and equals it within rounding (the relaxation is tight up to integer rows)
    assert best_on_used[0] <= lp.value * 1.03 + 1e-9
    # the continuous shares round to the brute-force rows within two rows per device
    if set(sol.A) == set(used):
        assert np.abs(sol.a - best_on_used[1]).max() <= 2


def test_plan_reports_lp_bound_and_is_valid(tiny) -> None:
    cl = _cluster([0.3, 0.5, 0.7], 200.0)
    res = run("coedge", PlanRequest(tiny, cl, "tiny", None, "energy", 80.0))
    info = res.info
    assert {"lp_bound", "split_value", "objective_value"} <= set(info) and info["objective"] == "energy"
    assert info["split_value"] >= info["lp_bound"] * 0.98  # the rounded split against its LP bound
    assert info["objective_value"] <= info["split_value"] + 1e-9
    assert info["model_latency_ms"] <= 80.0
    p = res.plan
    assert p.strategy.params["objective"] == "energy" and p.strategy.params["deadline_ms"] == 80.0
    split = [s for s in p.stages if isinstance(s.partition, Rows)]
    if split:  # every split stage uses the same devices in the same order (one share per device)
        orders = {tuple(rp.device for rp in s.partition.parts) for s in split}
        assert len({o for o in orders if len(o) == max(map(len, orders))}) == 1
    assert p.stages[-1].partition == Whole("d0")  # the tail on the source
    lower(p, tiny)


def test_stages_end_at_every_layer_and_halo_moves_between_neighbours() -> None:
    g = capture_model("vgg16").graph
    cl = builtin_cluster("eq4")
    res = run("coedge", PlanRequest(g, cl, "vgg16", None, "latency"))
    p = res.plan
    ends = layer_ends(g)
    assert [s.until for s in p.stages[: len(ends)]] == ends
    lw = lower(p, g)
    # only halos move between split stages: far less than regathering every layer
    moved = lw.bytes_moved()
    modnn = lower(run("modnn", PlanRequest(g, cl, "vgg16")).plan, g).bytes_moved()
    assert moved < 0.25 * modnn
    for dev, prog in lw.programs.items():
        for ins in prog:
            if ins.op == "send" and 0 <= ins.tensor < len(ends) - 1 and ins.peer != p.source:
                r = ins.region
                assert r[1] - r[0] <= 2, f"{dev} sends {r} of stage {ins.tensor}: not a halo"


def test_dropping_loop_min_share_and_zero_share() -> None:
    g = capture_model("resnet18").graph
    res = run("coedge", PlanRequest(g, builtin_cluster("eq16"), "resnet18", None, "latency"))
    log = " ".join(res.info["dropping"])
    # resnet18's 7x7 blocks need 2 halo rows per side: at most 3 devices can hold 2 of 7 rows
    assert res.info["min_share"] == pytest.approx(2 / 7, abs=1e-3)
    assert "fit: drop" in log
    used = [d for d in res.plan.devices_used_names()]
    assert len(used) <= 4


def test_infeasible_deadline_reports_minimum_latency(tiny) -> None:
    cl = _cluster([0.3, 0.5], 50.0)
    with pytest.raises(Infeasible) as e:
        run("coedge", PlanRequest(tiny, cl, "tiny", None, "energy", 0.5))
    msg = str(e.value)
    assert "minimum achievable latency" in msg and "--deadline-ms" in msg
    assert e.value.best is not None
    best_ms = float(msg.split("minimum achievable latency is ")[1].split(" ms")[0])
    # a deadline just above it is feasible
    res = run("coedge", PlanRequest(tiny, cl, "tiny", None, "energy", best_ms * 1.05 + 0.1))
    assert res.info["model_latency_ms"] <= best_ms * 1.05 + 0.1


def test_infeasible_exit_code_1(tmp_path) -> None:
    from typer.testing import CliRunner

    from coinfer.cli.main import build_app

    r = CliRunner().invoke(build_app(), ["plan", "--model", "alexnet_digits", "--cluster", "het4", "--strategy",
                                         "coedge", "--objective", "energy", "--deadline-ms", "0.01",
                                         "-o", str(tmp_path / "p.json")])
    assert r.exit_code == 1, r.output
    assert "minimum achievable latency" in r.output


def test_energy_objective_saves_energy_at_same_deadline() -> None:
    """The energy-optimal split uses less (modelled) energy than the latency-optimal one at its deadline."""
    g = capture_model("resnet18").graph
    cl = builtin_cluster("het4").with_bandwidth(1000)
    lat = run("coedge", PlanRequest(g, cl, "resnet18", None, "latency"))
    D = lat.info["model_latency_ms"] * 1.3
    en = run("coedge", PlanRequest(g, cl, "resnet18", None, "energy", D))
    assert en.info["model_latency_ms"] <= D
    assert en.info["model_energy_j"] <= lat.info["model_energy_j"] + 1e-9


def test_per_stage_shares(tiny) -> None:
    g = capture_model("resnet18").graph
    cl = builtin_cluster("het4").with_bandwidth(1000)
    one = run("coedge", PlanRequest(g, cl, "resnet18", None, "latency"))
    per = run("coedge", PlanRequest(g, cl, "resnet18", None, "latency", params={"per_stage": True}))
    assert per.plan.strategy.params["per_stage"] is True
    assert per.info["per_stage"] is True
    # per-stage shares relax the single-share problem: never worse in the model
    assert per.info["model_latency_ms"] <= one.info["model_latency_ms"] * 1.05
    lower(per.plan, g)


def test_memory_limits_shares(tiny) -> None:
    cl = parse_cluster({"source": "d0", "devices": [
        {"name": "d0", "cpu_share": 0.3}, {"name": "d1", "cpu_share": 1.0, "memory_mb": 0.001}],
        "network": {"bandwidth_mbps": 1000, "latency_ms": 0.1}})
    res = run("coedge", PlanRequest(tiny, cl, "tiny", None, "latency"))
    assert res.plan.devices_used_names() == ["d0"]  # d1 cannot hold the weights


def test_single_device_fallback_skips_a_device_whose_memory_cannot_hold_the_weights() -> None:
    """QA: the fast d1 with memory_mb 1 was left out by the LP, yet the single-device fallback put the
    whole of ResNet-18 (47 MB of weights) on it. The fallback considers only devices that hold them."""
    g = capture_model("resnet18").graph
    cl = parse_cluster({"source": "d0", "devices": [
        {"name": "d0", "cpu_share": 0.15}, {"name": "d1", "cpu_share": 0.7, "memory_mb": 1},
        {"name": "d2", "cpu_share": 0.7}], "network": {"bandwidth_mbps": 100, "latency_ms": 0.5}})
    res = run("coedge", PlanRequest(g, cl, "resnet18", None, "latency"))
    assert "d1" not in res.plan.devices_used_names()
    assert "d1" not in str(res.info.get("fallback", ""))
    # every device too small: one line naming memory_mb, not an assertion
    small = parse_cluster({"source": "d0", "devices": [
        {"name": "d0", "cpu_share": 0.15, "memory_mb": 1}, {"name": "d1", "cpu_share": 0.7, "memory_mb": 1}],
        "network": {"bandwidth_mbps": 100, "latency_ms": 0.5}})
    with pytest.raises(StrategyError, match="memory_mb"):
        run("coedge", PlanRequest(g, small, "resnet18", None, "latency"))


def test_replan_without_costs_and_planning_time() -> None:
    """default_replan passes costs=None; 16 devices on ResNet-50 plan well under a generous bound."""
    g = capture_model("resnet50").graph
    cl = builtin_cluster("eq16")
    run("coedge", PlanRequest(g, cl, "resnet50"))  # warm (scipy import, caches of the capture)
    t = time.perf_counter()
    res = run("coedge", PlanRequest(g, cl, "resnet50"))
    assert (time.perf_counter() - t) < 1.0  # the <100 ms goal is measured in benchmarks/spatial
    assert res.info["planning_ms"] > 0
