"""``coinfer verify PLAN``: run the plan in-process and compare with the plain model."""

from __future__ import annotations

COMMAND = "verify"

import typer

from .common import APPROXIMATE_NOTE, CheckFailed, emit_json, user_errors


@user_errors
def cmd(
    plan_path: str = typer.Argument(..., metavar="PLAN", help="plan JSON file"),
    input: str = typer.Option(None, "--input", help="image file, chelsea|coffee|astronaut|rocket|cat, or random (default)"),
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
        from ..sim.run import check_devices

        cl = resolve_cluster(cluster)
        check_devices(plan, cl, "verify")  # as simulate does: a missing device would silently run on torch
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
    quant = plan.wire.quant
    wire: dict[str, float] = {}
    quant_note = None
    if quant:
        # the plan's wire codecs applied where tensors cross a link (train.fdsp.WireExecutor): what the
        # runtime computes for adcnn-shaped plans; row stages' halo pieces are quantised as one message
        # per part input there, each piece on its own in the runtime (close, not bit-identical)
        from ..train.fdsp import WireExecutor

        yq = WireExecutor(cm, plan, backend=backend, precision=precision, cluster=cl)(x)
        wdiff, wrel = compare(yq, reference_output(cm, x, plan.exit))
        wire = {"max_abs_diff_wire": wdiff, "rel_wire": wrel}
        quant_note = (f"with wire quantisation {quant} applied in-process: max_abs_diff={wdiff:.3g} "
                      f"rel={wrel:.3g} (as the runtime for tiled plans; it quantises row stages' halo "
                      f"pieces one by one: coinfer run PLAN --verify measures those exactly)")
    if json_out:
        # an approximate plan is not checked against a tolerance: say so instead of printing one next to "ok"
        emit_json({"max_abs_diff": diff, "rel": rel, "exact_plan": exact, "exact": exact,
                   "tolerance": TOLERANCE if exact else None, "ok": ok, "backends": ex.backends,
                   "wire_quant": quant, "wire_quant_applied": bool(quant), **wire,
                   "note": None if exact else APPROXIMATE_NOTE, **({"wire_note": quant_note} if quant_note else {})})
    else:
        typer.echo(f"max_abs_diff={diff:.3g} rel={rel:.3g}" + (" (without the wire quantisation)" if quant else ""))
        typer.echo("backends: " + ", ".join(f"{d} {'+'.join(b)}" for d, b in ex.backends.items()))
        if not exact:
            typer.echo(APPROXIMATE_NOTE)
        if quant_note:
            typer.echo(quant_note)
    if not ok:
        raise CheckFailed(f"rel={rel:.3g} exceeds the tolerance {TOLERANCE} of an exact plan")
