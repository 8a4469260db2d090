"""QA stop 26. `coinfer strategies` said aofl plans for an objective ("yes"), yet `aofl --objective energy` is
refused (QA stop 26): the listing now names the objectives each strategy accepts."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from coinfer.cli.main import build_app


def test_aofl_is_listed_as_latency_only_and_coedge_as_both() -> None:
    r = CliRunner().invoke(build_app(), ["strategies", "--json"])
    assert r.exit_code == 0, r.output
    s = {x["name"]: x for x in json.loads(r.stdout)["strategies"]}
    assert s["aofl"]["objectives"] == ["latency"] and s["coedge"]["objectives"] == ["latency", "energy"]
    r = CliRunner().invoke(build_app(), ["strategies"], env={"COLUMNS": "250"})
    assert r.exit_code == 0 and "latency only" in r.stdout
    r = CliRunner().invoke(build_app(), ["plan", "-m", "resnet18_digits", "-c", "demo4", "-s", "aofl",
                                         "--objective", "energy", "-o", "/dev/null"])
    assert r.exit_code == 2 and "minimises latency" in r.output


def test_a_misspelt_strategy_gets_a_did_you_mean() -> None:
    from coinfer.strategies import registry

    with pytest.raises(registry.StrategyError, match=r"unknown strategy 'proportionall' \(did you mean proportional\?\)"):
        registry.info("proportionall")


def test_simulate_plan_takes_a_cluster_name() -> None:
    import coinfer
    from coinfer.sim.run import simulate_plan

    p = coinfer.plan("resnet18_digits", "het4", "even")
    assert simulate_plan(p, "het4").latency_ms == pytest.approx(coinfer.simulate(p, "het4").latency_ms)
