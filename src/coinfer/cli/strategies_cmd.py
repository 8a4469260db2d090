"""``coinfer strategies``: the registered planners."""

from __future__ import annotations

COMMAND = "strategies"

import typer

from .common import console, emit_json, user_errors


@user_errors
def cmd(json_out: bool = typer.Option(False, "--json", help="one JSON object on stdout")) -> None:
    """List the planning strategies (coinfer plan --strategy NAME)."""
    from ..strategies import registry

    rows = [registry.info(n) for n in registry.names()]
    if json_out:
        emit_json({"strategies": [{"name": r.name, "summary": r.summary, "paper": r.paper, "exact": r.exact,
                                   "deadline": r.deadline, "objective": r.objective,
                                   "objectives": list(r.objectives) if r.objective else ["latency"],
                                   "params": list(r.params)} for r in rows]})
        return
    from rich.table import Table

    t = Table(title="strategies")
    for c in ("name", "exact", "deadline", "objective", "summary", "parameters (--param)", "paper"):
        t.add_column(c)
    for r in rows:
        t.add_row(r.name, "yes" if r.exact else "approx", "yes" if r.deadline else "-",
                  ("latency only" if r.objectives == ("latency",) else "yes") if r.objective else "-", r.summary,
                  ", ".join(r.params), r.paper)
    console().print(t)
