"""``memory_mb``: what a plan puts on each device, checked the way a worker holds it. ``auto`` only
keeps plans that fit (it returned aofl's plan with 44.7 MB on a ``memory_mb: 1`` device while
coedge, offload and neurosurgeon refused the same cluster), and ``coinfer plan`` warns when a
strategy that does not plan for memory exceeds it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from coinfer.api import plan as make_plan
from coinfer.api import plan_result
from coinfer.cli.main import build_app
from coinfer.cluster import parse_cluster
from coinfer.modelspec import capture_model
from coinfer.strategies.common import device_weight_bytes, memory_overflows
from coinfer.strategies.registry import StrategyError

MODEL = "resnet18_digits"


def _cluster(mems: list[float | None]):  # type: ignore[no-untyped-def]
    devs = [{"name": f"d{i}", "cpu_share": 0.2 if i == 0 else 0.5, **({"memory_mb": m} if m else {})}
            for i, m in enumerate(mems)]
    return parse_cluster({"source": "d0", "devices": devs, "network": {"bandwidth_mbps": 100, "latency_ms": 1.0}})


def test_weights_held_per_device_follow_the_parts() -> None:
    g = capture_model(MODEL).graph
    total = sum(n.param_bytes for n in g.nodes)
    cl = _cluster([None, None, None, None])
    held = device_weight_bytes(make_plan(MODEL, cl, "local"), g)
    assert held["d0"] == pytest.approx(total) and held["d1"] == held["d2"] == held["d3"] == 0
    held = device_weight_bytes(make_plan(MODEL, cl, "even"), g)
    # row parts replicate their layers' weights (late stages split over fewer devices); the source
    # computes a row band of every stage and the tail, so it holds the whole model
    assert held["d0"] == pytest.approx(total) and all(0 < held[d] <= total for d in held), held
    assert memory_overflows(make_plan(MODEL, cl, "even"), g, cl) == {}  # no memory_mb: nothing to exceed


def test_auto_keeps_only_plans_that_fit() -> None:
    g = capture_model(MODEL).graph
    cl = _cluster([4, 1, 2, None])
    over = memory_overflows(make_plan(MODEL, cl, "even"), g, cl)
    assert set(over) == {"d0", "d1", "d2"} and over["d1"][1] == 1.0 and over["d1"][0] > 40
    res = plan_result(MODEL, cl, "auto")
    assert memory_overflows(res.plan, g, cl) == {}
    assert not {"d1", "d2"} & set(res.plan.devices_used_names())
    assert "memory" in str(res.info["candidates"])


def test_auto_refuses_when_nothing_fits() -> None:
    with pytest.raises(StrategyError, match=r"auto: no strategy's plan fits the devices' memory_mb .*raise memory_mb"):
        plan_result(MODEL, _cluster([1, 1]), "auto")


def test_plan_warns_when_a_strategy_exceeds_memory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "mem.yaml"
    spec.write_text("source: d0\ndevices:\n  - {name: d0, memory_mb: 4}\n  - {name: d1, memory_mb: 1}\n"
                    "  - {name: d2}\nnetwork: {bandwidth_mbps: 100, latency_ms: 1.0}\n")
    r = CliRunner().invoke(build_app(), ["plan", "-m", MODEL, "-c", str(spec), "-s", "even", "-o",
                                         str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:") and "memory_mb" in ln]
    assert len(warn) == 1 and "d1" in warn[0] and "memory_mb 1" in warn[0] and "even does not plan" in warn[0], warn
    r = CliRunner().invoke(build_app(), ["plan", "-m", MODEL, "-c", str(spec), "-s", "auto", "-o",
                                         str(tmp_path / "a.json")])
    assert r.exit_code == 0 and "warning:" not in r.stderr, r.output  # d0 alone is faster, but 4 MB do not hold it
