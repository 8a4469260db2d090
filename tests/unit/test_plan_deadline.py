"""``coinfer plan --deadline-ms``: a strategy that does not plan for a deadline (``register(deadline=False)``)
used to ignore it silently (``-s local --deadline-ms 50`` → exit 0, 375 ms predicted, no word). Now a
note says it is ignored and a warning says when the prediction misses it (any strategy); exit code 0."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from coinfer.cli.common import deadline_notes, objective_notes
from coinfer.cli.main import build_app
from coinfer.strategies import info, names

MODEL, CLUSTER = "resnet18_digits", "het4"
runner = CliRunner()


def _plan(tmp_path: Path, strategy: str, deadline: str, *extra: str):  # type: ignore[no-untyped-def]
    return runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", CLUSTER, "-s", strategy, "--deadline-ms", deadline,
                                       "-o", str(tmp_path / "p.json"), *extra])


def test_registry_declares_which_strategies_plan_for_a_deadline() -> None:
    assert {n for n in names() if info(n).deadline} >= {"coedge", "edgent", "neurosurgeon", "aofl", "deepthings"}
    assert not {"local", "even", "proportional", "modnn"} & {n for n in names() if info(n).deadline}


def test_local_missed_deadline_is_noted_and_warned(tmp_path: Path) -> None:
    r = _plan(tmp_path, "local", "0.001")
    assert r.exit_code == 0, r.output
    assert "note: local does not plan for a deadline: --deadline-ms 0.001" in r.output
    assert "warning: predicted latency " in r.output and "misses --deadline-ms 0.001 (local)" in r.output


def test_met_deadline_json_and_no_warning(tmp_path: Path) -> None:
    r = _plan(tmp_path, "coedge", "100000", "--json")
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output and "note: coedge" not in r.output
    js = json.loads(next(line for line in r.output.splitlines() if line.startswith("{")))
    assert js["deadline_ms"] == 100000 and js["deadline_met"] is True


def test_deadline_notes_for_every_strategy() -> None:
    assert deadline_notes("even", None, 10.0) == []
    assert deadline_notes("coedge", 5.0, 4.0) == []
    (w,) = deadline_notes("coedge", 5.0, 6.0)
    assert w.startswith("warning: predicted latency 6.0 ms misses --deadline-ms 5 (coedge)")


def test_objective_not_used_is_noted(tmp_path: Path) -> None:
    """QA: the docs said coinfer plan reports that --objective is not used by local/even…; only the
    deadline got a note. Strategies that plan for an objective declare it (register(objective=True))."""
    assert {n for n in names() if info(n).objective} >= {"coedge", "neurosurgeon", "offload", "deepthings", "auto"}
    assert not {"local", "even", "proportional", "modnn"} & {n for n in names() if info(n).objective}
    assert objective_notes("local", "latency") == [] and objective_notes("coedge", "energy") == []
    (n,) = objective_notes("even", "energy")
    assert n.startswith("note: even does not plan for an objective: --objective energy is not used")
    r = runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", CLUSTER, "-s", "local", "--objective", "energy",
                                    "-o", str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    assert "note: local does not plan for an objective: --objective energy is not used" in r.output
