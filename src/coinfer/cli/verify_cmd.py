"""``coinfer verify PLAN``: run the plan in-process and compare with the plain model."""

from __future__ import annotations

COMMAND = "verify"

import typer

from .common import APPROXIMATE_NOTE, CheckFailed, emit_json, user_errors


@user_errors
def cmd(
    plan_path: str = typer.Argument(..., metavar="PLAN", help="plan JSON file"),
    input: str = typer.Option(None, "--input", help="image file, chelsea|coffee|astronaut, or random (default)"),
    seed: int = typer.Option(0, "--seed", help="seed of the random input"),
    json_out: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
    backend: str = typer.Option("torch", "--backend", help="auto | torch | onnxruntime | openvino (all parts)"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (exact) | bf16 | fp16 (approximate)"),
    cluster: str = typer.Option(None, "--cluster", "-c",
                                help="take each device's backend/precision from this cluster file instead"),
) -> None:
    """Check that a plan's output equals the unpartitioned model (exit 1 above tolerance)."""
    from ..execute.backends import check_backend
    from ..execute.local import TOLERANCE, InProcessExecutor, compare, reference_output
    from ..inputs import make_input
    from ..modelspec import capture_model
    from ..plan.plan import Plan

    plan = Plan.load(plan_path)
    check_backend(backend, precision)
    cl = None
    if cluster:
        from ..cluster import resolve_cluster

        cl = resolve_cluster(cluster)
        for d in cl.devices:
            check_backend(d.backend, d.precision, where=f"device {d.name}")
    cm = capture_model(plan.model.name, plan.model.input_shape)
    plan.validate(cm.graph)
    x = make_input(input, tuple(plan.model.input_shape), seed)
    ex = InProcessExecutor(cm, plan, backend=backend, precision=precision, cluster=cl)
    y = ex(x)
    diff, rel = compare(y, reference_output(cm, x, plan.exit))
    reduced = any(r.precision != "fp32" for parts in ex.parts for _, r in parts)
    exact = plan.is_exact and not reduced
    ok = rel <= TOLERANCE or not exact
    if json_out:
        emit_json({"max_abs_diff": diff, "rel": rel, "exact_plan": exact, "tolerance": TOLERANCE, "ok": ok,
                   "backends": ex.backends})
    else:
        typer.echo(f"max_abs_diff={diff:.3g} rel={rel:.3g}")
        typer.echo("backends: " + ", ".join(f"{d} {'+'.join(b)}" for d, b in ex.backends.items()))
        if not exact:
            typer.echo(APPROXIMATE_NOTE)
    if not ok:
        raise CheckFailed(f"rel={rel:.3g} exceeds the tolerance {TOLERANCE} of an exact plan")
