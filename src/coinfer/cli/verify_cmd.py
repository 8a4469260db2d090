"""``coinfer verify PLAN``: run the plan in-process and compare with the plain model."""

from __future__ import annotations

COMMAND = "verify"

import typer

from .common import CheckFailed, emit_json, user_errors


@user_errors
def cmd(
    plan_path: str = typer.Argument(..., metavar="PLAN", help="plan JSON file"),
    input: str = typer.Option(None, "--input", help="image file, chelsea|coffee|astronaut, or random (default)"),
    seed: int = typer.Option(0, "--seed", help="seed of the random input"),
    json_out: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Check that a plan's output equals the unpartitioned model (exit 1 above tolerance)."""
    from ..execute.local import TOLERANCE, InProcessExecutor, compare, reference_output
    from ..inputs import make_input
    from ..modelspec import capture_model
    from ..plan.plan import Plan

    plan = Plan.load(plan_path)
    cm = capture_model(plan.model.name, plan.model.input_shape)
    plan.validate(cm.graph)
    x = make_input(input, tuple(plan.model.input_shape), seed)
    y = InProcessExecutor(cm, plan)(x)
    diff, rel = compare(y, reference_output(cm, x, plan.exit))
    exact = all(s.halo == "exact" for s in plan.stages) and plan.wire.lossless
    ok = rel <= TOLERANCE or not exact
    if json_out:
        emit_json({"max_abs_diff": diff, "rel": rel, "exact_plan": exact, "tolerance": TOLERANCE, "ok": ok})
    else:
        typer.echo(f"max_abs_diff={diff:.3g} rel={rel:.3g}")
        if not exact:
            typer.echo("approximate plan (halo zero or quantised wire): no tolerance applied")
    if not ok:
        raise CheckFailed(f"rel={rel:.3g} exceeds the tolerance {TOLERANCE} of an exact plan")
