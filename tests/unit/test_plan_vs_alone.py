"""``coinfer plan`` compares the plan with the plain model on its source alone (same cost model): a plan
predicted worse than that (``modnn`` over demo4's 100 Mbit/s links: 1.8x slower than d0 alone) used to be
written with no word; now a warning names both figures, ``--json`` carries ``alone``. Exit code 0: it is
the strategy's choice."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from coinfer.cli.main import build_app

runner = CliRunner()


def _plan(tmp_path: Path, strategy: str, *extra: str):  # type: ignore[no-untyped-def]
    return runner.invoke(build_app(), ["plan", "-m", "resnet18", "-c", "demo4", "-s", strategy,
                                       "-o", str(tmp_path / "p.json"), *extra])


def test_a_plan_slower_than_the_source_alone_is_warned(tmp_path: Path) -> None:
    r = _plan(tmp_path, "modnn", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["alone"]["device"] == "d0" and s["alone"]["latency_ms"] < s["latency_ms"]
    assert "warning: modnn's plan is predicted at" in r.stderr
    assert "the model alone on d0 at" in r.stderr and "faster alone" in r.stderr


def test_a_plan_faster_than_alone_is_not_warned_and_local_is_not_compared(tmp_path: Path) -> None:
    r = _plan(tmp_path, "proportional", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["latency_ms"] < s["alone"]["latency_ms"] and "alone" not in r.stderr
    r = _plan(tmp_path, "local", "--json")
    assert r.exit_code == 0 and "alone" not in json.loads(r.stdout) and "alone" not in r.stderr


def test_energy_objective_compares_energy(tmp_path: Path) -> None:
    r = _plan(tmp_path, "modnn", "--objective", "energy", "--json")
    s = json.loads(r.stdout)
    assert s["energy_j"] > 1.05 * s["alone"]["energy_j"]
    assert "J, the model alone on d0 at" in r.stderr and "less energy alone" in r.stderr
