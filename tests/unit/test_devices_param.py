"""``--param devices=`` is read by one parser for every strategy (``strategies.common.requested_devices``).

``even``, ``proportional`` and ``adcnn`` used to iterate the CLI's string ``"d1,d2"`` one character at a
time (``unknown ['d', '1', ',', 'd', '2']``); now a comma-separated string or a list is accepted, unknown
names are one line naming the cluster's devices, duplicates collapse and the source is always included.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from coinfer.cli.main import build_app
from coinfer.cluster import builtin_cluster
from coinfer.cost.model import CostModel
from coinfer.graph.ir import Graph
from coinfer.strategies import PlanRequest, StrategyError, run
from coinfer.strategies.common import requested_devices

MODEL = "resnet18_digits"
CLUSTER = "het4"  # d0 (source) … d3
runner = CliRunner()


@pytest.fixture(scope="module")
def graph(captured) -> Graph:  # type: ignore[no-untyped-def]
    return captured(MODEL).graph  # type: ignore[no-any-return]


def _req(graph: Graph, **params: object) -> PlanRequest:
    cl = builtin_cluster(CLUSTER)
    return PlanRequest(graph, cl, MODEL, CostModel(graph, cl), params=dict(params))


@pytest.mark.parametrize("given", ["d2,d1", "d2, d1,d2", ["d1", "d2", "d1"]])
def test_requested_devices_parses_strings_and_lists(graph: Graph, given: object) -> None:
    # cluster order, duplicates collapsed, the source d0 always included
    assert requested_devices(_req(graph, devices=given)) == ["d0", "d1", "d2"]
    assert requested_devices(_req(graph)) is None


def test_requested_devices_refuses_unknown_names_in_one_line(graph: Graph) -> None:
    with pytest.raises(StrategyError) as e:
        requested_devices(_req(graph, devices="d1,d9,d9"))
    assert str(e.value) == "--param devices: unknown device d9; known: d0, d1, d2, d3"
    with pytest.raises(StrategyError, match="device names separated by commas"):
        requested_devices(_req(graph, devices=3))


@pytest.mark.parametrize("name", ["even", "proportional", "adcnn", "coedge"])
def test_strategies_take_a_comma_separated_devices_string(graph: Graph, name: str) -> None:
    plan = run(name, _req(graph, devices="d1,d2")).plan
    used = set(plan.devices_used_names())
    assert used <= {"d0", "d1", "d2"}, used
    assert "d3" not in used


@pytest.mark.parametrize("name", ["even", "proportional"])
def test_rows_strategies_keep_the_source_and_split_over_the_given_devices(graph: Graph, name: str) -> None:
    plan = run(name, _req(graph, devices="d1,d1")).plan
    assert set(plan.strategy.params["weights"]) == {"d0", "d1"}


def test_cli_even_devices(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    r = runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", CLUSTER, "-s", "even", "-p", "devices=d1,d2",
                                    "-o", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", CLUSTER, "-s", "even", "-p", "devices=d1,x",
                                    "-o", str(out)])
    assert r.exit_code == 2
    assert "unknown device x; known: d0, d1, d2, d3" in r.output
    assert "Traceback" not in r.output
