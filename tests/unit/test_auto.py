"""The ``auto`` planner: never predicted worse than any strategy it consults; plans stay exact."""

from __future__ import annotations

import pytest

from coinfer.cluster import builtin_cluster
from coinfer.execute.local import TOLERANCE, InProcessExecutor, compare, reference_output
from coinfer.inputs import random_input
from coinfer.modelspec import capture_model
from coinfer.sim.run import simulate_lowered
from coinfer.strategies import PlanRequest, StrategyError, run


@pytest.mark.parametrize("model,cluster", [("resnet18", "demo4"), ("mobilenet_v2", "het4")])
def test_auto_beats_every_candidate_and_is_exact(model, cluster):
    cm = capture_model(model)
    cl = builtin_cluster(cluster)
    req = PlanRequest(cm.graph, cl, model, params={"budget_s": 1.5})
    res = run("auto", req)
    lat = simulate_lowered(res.plan, cm.graph, req.cost_model()).latency_ms
    cands = {k: v["latency_ms"] for k, v in res.info["candidates"].items() if "latency_ms" in v}
    assert len(cands) >= 3
    assert lat <= min(cands.values()) * 1.0001
    x = random_input(tuple(cm.graph.input_shape), 0)
    assert compare(InProcessExecutor(cm, res.plan)(x), reference_output(cm, x))[1] <= TOLERANCE
    assert res.plan.strategy.name == "auto" and res.plan.strategy.params["base"] in cands
    assert res.info["summary"].startswith(f"best of {len(cands)} strategies' plans: {res.info['chosen_from']}, ")


def test_auto_energy_objective_respects_deadline():
    cm = capture_model("resnet18")
    req = PlanRequest(cm.graph, builtin_cluster("demo4"), "resnet18", objective="energy", deadline_ms=10_000,
                      params={"budget_s": 1.0})
    res = run("auto", req)
    energies = [v["energy_j"] for v in res.info["candidates"].values() if "energy_j" in v]
    assert res.info["predicted_energy_j"] <= min(energies) * 1.0001


def test_auto_bad_budget():
    cm = capture_model("resnet18")
    with pytest.raises(StrategyError, match="budget_s"):
        run("auto", PlanRequest(cm.graph, builtin_cluster("demo4"), "resnet18", params={"budget_s": 0}))


def _auto(params: dict[str, object]) -> object:
    cm = capture_model("resnet18_digits")
    return run("auto", PlanRequest(cm.graph, builtin_cluster("het4"), "resnet18_digits", params=params))


@pytest.mark.parametrize(("key", "value", "msg"), [
    ("include", "foo", "--param include: unknown strategy foo; known: "),  # was exit 1, "no strategy produced a plan"
    ("include", "even,evn", "--param include: unknown strategy evn (did you mean even?); known: "),  # was ignored
    ("exclude", ["foo"], "--param exclude: unknown strategy foo; known: "),  # was ignored
])
def test_auto_refuses_unknown_strategy_names(key: str, value: object, msg: str) -> None:
    with pytest.raises(StrategyError) as e:
        _auto({key: value, "budget_s": 0.2})
    assert str(e.value).startswith(msg) and "coedge" in str(e.value) and "\n" not in str(e.value)


def test_auto_include_takes_a_comma_separated_string() -> None:
    res = _auto({"include": "even,coedge", "budget_s": 0.2})
    assert set(res.info["candidates"]) == {"even", "coedge"}  # type: ignore[attr-defined]
