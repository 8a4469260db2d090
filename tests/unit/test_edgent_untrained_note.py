"""QA (stop 26): on a fresh clone edgent chose an early exit whose head is untrained (seeded random
weights) and said nothing; planning now notes it (the CLI prints the note on stderr)."""

from __future__ import annotations

import pytest

import coinfer.strategies.edgent as E
from coinfer.cluster import builtin_cluster
from coinfer.modelspec import capture_model
from coinfer.strategies import PlanRequest, run


@pytest.mark.parametrize("acc", [None, {"exit1": 0.5, "exit2": 0.6, "exit3": 0.7, "exit4": 0.8, "final": 0.9}])
def test_an_untrained_exit_is_noted(monkeypatch, acc) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(E, "accuracies", lambda req: acc)
    cm = capture_model("alexnet_digits")
    lines: list[str] = []
    res = run("edgent", PlanRequest(cm.graph, builtin_cluster("edgent"), "alexnet_digits", deadline_ms=10,
                                    note=lines.append))
    assert res.plan.exit not in (None, "final")
    if acc is None:
        assert lines and "is not trained" in lines[0] and "coinfer train exits" in lines[0], lines
    else:
        assert not [ln for ln in lines if "not trained" in ln], lines
