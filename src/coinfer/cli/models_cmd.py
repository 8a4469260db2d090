"""``coinfer models``: the zoo with input shape, parameters, FLOPs (and exit accuracies)."""

from __future__ import annotations

COMMAND = "models"

import typer

from .common import console, emit_json, user_errors


@user_errors
def cmd(
    json_out: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
    exits: bool = typer.Option(False, "--exits", help="show early exits and their measured accuracy"),
) -> None:
    """List the model zoo: name, input shape, parameters, FLOPs, weights."""
    from .. import zoo
    from ..zoo_summary import summaries

    rows = summaries(with_exits=exits)
    if json_out:
        emit_json({"models": rows})
        return
    from rich.table import Table

    t = Table(title="coinfer model zoo")
    for c in ("name", "input", "params (M)", "GFLOPs", "weights", "exits"):
        t.add_column(c, justify="right" if c in ("params (M)", "GFLOPs") else "left",
                     no_wrap=c in ("name", "input"))  # a model's name is what users copy
    for r in rows:
        ex = ", ".join(r["exits"]) if r["exits"] else "-"
        if exits and r.get("exit_accuracy"):
            ex = ", ".join(f"{k}={v:.3f}" for k, v in r["exit_accuracy"].items())
        elif exits and r["exits"]:
            from ..train.exits import ALIASES

            if r["name"] in ALIASES:  # training "alexnet" trains its digits variant, not this one
                ex += f" (untrained; trained exits live on {ALIASES[r['name']]})"
            else:
                ex += " (untrained: coinfer train exits --model " + r["name"] + ")"
        t.add_row(r["name"], "x".join(map(str, r["input_shape"])), f"{r['params'] / 1e6:.2f}",
                  f"{r['flops'] / 1e9:.2f}", r["weights"], ex)
    console().print(t)
    del zoo
