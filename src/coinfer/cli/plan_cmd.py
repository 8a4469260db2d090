"""``coinfer plan``: run a strategy, write a plan file."""

from __future__ import annotations

COMMAND = "plan"

from pathlib import Path
from typing import Any

import typer

from .common import (
    backend_notes,
    console,
    deadline_notes,
    emit_json,
    fail,
    mismatch_notes,
    objective_notes,
    parse_params,
    user_errors,
)


@user_errors
def cmd(
    model: str = typer.Option(..., "--model", "-m", help="zoo name, package.module:callable, or file.onnx"),
    cluster: str = typer.Option(..., "--cluster", "-c", help="cluster YAML file or built-in name (demo4, eq4, het4...)"),
    strategy: str = typer.Option("proportional", "--strategy", "-s", help="see coinfer strategies "
                                  "(distredge: the first plan of a model and cluster profiles the devices, minutes)"),
    objective: str = typer.Option("latency", "--objective", help="latency | energy"),
    deadline_ms: float = typer.Option(None, "--deadline-ms", help="latency requirement (ms); strategies "
                                    "that do not plan for one (coinfer strategies) only warn when it is missed"),
    profiles: str = typer.Option(None, "--profiles", help="directory of coinfer profile results"),
    input_shape: str = typer.Option(None, "--input-shape", help="N,C,H,W (for import paths)"),
    param: list[str] = typer.Option(None, "--param", "-p", help="strategy parameter key=value (repeatable)"),
    train_episodes: int = typer.Option(None, "--train-episodes", help="distredge: splitter training episodes "
                                       "(default 4000; the policy is cached per cluster and model). The first "
                                       "distredge plan of a model and cluster profiles every emulated device "
                                       "(minutes; one line each on stderr, cached) and then trains"),
    out: Path = typer.Option(Path("plan.json"), "-o", "--out", help="where to write the plan"),
    json_out: bool = typer.Option(False, "--json", help="one JSON summary on stdout"),
    show_programs: bool = typer.Option(False, "--show-programs", help="print the lowered per-device programs"),
    calibrate: bool = typer.Option(False, "--calibrate",
                                   help="measure this host's calibration first (≈ 3 s, cached for later plans)"),
) -> None:
    """Plan a model over a cluster with a strategy and write the plan file."""
    from ..api import _cluster, plan_result
    from ..cost.model import load_cost_model
    from ..modelspec import capture_model
    from ..plan.lower import lower

    params = parse_params(param)
    if calibrate:
        from ..cost.calibrate import ensure_calibration

        ensure_calibration(remeasure=True)
    if train_episodes is not None:  # shorthand for --param train_episodes=N (distredge)
        if strategy != "distredge":
            fail(f"--train-episodes is a distredge option; --strategy {strategy} takes no training")
        params["train_episodes"] = train_episodes
    from ..strategies.registry import check_params

    check_params(strategy, params)  # a misspelt --param is an error, not a plan made with the default
    res = plan_result(model, cluster, strategy, objective=objective, deadline_ms=deadline_ms,
                      profiles=profiles, input_shape=input_shape,
                      note=lambda line: typer.echo(f"{strategy}: {line}", err=True), **params)
    plan = res.plan
    graph = capture_model(model, input_shape).graph
    lowered = lower(plan, graph)
    cl = _cluster(cluster)
    costs = load_cost_model(graph, cl, profiles)
    plan.save(out)  # with its prediction (plan_result)
    assert plan.predicted is not None
    alone = _alone(plan, graph, costs, cl) if strategy != "local" else None
    for line in [*mismatch_notes(costs.describe()), *backend_notes(cl, plan.devices_used_names()),
                 *objective_notes(strategy, objective),
                 *deadline_notes(strategy, deadline_ms, plan.predicted["latency_ms"]),
                 *_alone_notes(strategy, objective, plan, alone)]:
        typer.echo(line, err=True)
    from ..strategies.common import describe_overflows, memory_overflows

    over = memory_overflows(plan, graph, cl)
    if over:  # the strategies that plan for memory_mb never get here; say it for the others
        typer.echo(f"warning: {describe_overflows(over)}: {strategy} does not plan for memory_mb (coedge, "
                   f"offload, neurosurgeon, edgent and auto do)", err=True)
    summary: dict[str, Any] = {"plan_path": str(out), "strategy": strategy, "stages": len(plan.stages),
                               "devices": plan.devices_used(lowered.graph), "predicted": plan.predicted,
                               "info": res.info}
    summary.update({k: v for k, v in plan.predicted.items() if k not in summary})
    if over:
        summary["memory_overflows"] = {d: {"weights_mb": round(mb, 3), "memory_mb": lim} for d, (mb, lim) in over.items()}
    if alone is not None:
        summary["alone"] = alone
    if deadline_ms is not None:
        summary["deadline_ms"] = deadline_ms
        summary["deadline_met"] = plan.predicted["latency_ms"] <= deadline_ms
    if json_out:
        emit_json(summary)
    else:
        c = console()
        p = plan.predicted
        c.print(f"wrote [bold]{out}[/]: {strategy}, {len(plan.stages)} stage{'s' if len(plan.stages) != 1 else ''} over "
                f"{', '.join(summary['devices'])}; {p['raw_bytes'] / 1e6:.2f} MB moved per inference")
        c.print(f"predicted: latency {p['latency_ms']:.2f} ms, energy {p['energy_j']:.3f} J "
                f"(dynamic {p['dynamic_energy_j']:.3f} J), {p['bytes_moved'] / 1e6:.2f} MB on the wire "
                f"({p['costs']} costs; coinfer simulate {out} --cluster {cluster} for the timeline)")
        c.print("busy ms: " + ", ".join(f"{d} {v:.1f}" for d, v in p["busy_ms"].items()))
        if res.info.get("summary"):
            c.print(f"{strategy}: {res.info['summary']}", markup=False)
        if p["costs"] == "analytic" and costs.calibration.source == "builtin":
            c.print("note: analytic costs with the built-in calibration (another machine's speeds); "
                    "add --calibrate to measure this host once (≈ 3 s, cached; later plans use it)")
    if show_programs:
        (console(stderr=True) if json_out else console()).print(lowered.text(), markup=False)


def _alone(plan: Any, graph: Any, costs: Any, cluster: Any) -> dict[str, Any]:
    """The prediction for the plain model on the plan's source alone (what the user has without coinfer),
    with the same cost model: ``{"device", "latency_ms", "energy_j", "fits"}`` (``fits``: its weights
    within the source's ``memory_mb``)."""
    from dataclasses import replace

    from ..graph.ir import OUTPUT
    from ..plan.lower import lower
    from ..plan.plan import Stage, Whole
    from ..sim import simulate
    from ..strategies.common import memory_overflows

    one = replace(plan, stages=[Stage(OUTPUT, Whole(plan.source))], exit=None, predicted=None)
    r = simulate(lower(one, graph), costs)
    return {"device": plan.source, "latency_ms": round(r.latency_ms, 3), "energy_j": round(r.energy_j, 6),
            "fits": not memory_overflows(one, graph, cluster)}


def _alone_notes(strategy: str, objective: str, plan: Any, alone: dict[str, Any] | None) -> list[str]:
    """A warning when the plan is predicted worse, on its objective, than the plain model on its source
    alone (e.g. ``adcnn`` tiling a single device, ``modnn`` over slow links): the strategy's choice, but
    the user should know before deploying it."""
    if alone is None or not alone["fits"]:  # the model does not fit there: no alternative to compare
        return []
    key, unit = ("energy_j", "J") if objective == "energy" else ("latency_ms", "ms")
    mine, theirs = plan.predicted[key], alone[key]
    if mine <= theirs * 1.05:  # within the cost model's error: no claim either way
        return []
    fmt, better = ((lambda v: f"{v:.3f} J"), "less energy") if unit == "J" else ((lambda v: f"{v:.1f} ms"), "faster")
    return [(f"warning: {strategy}'s plan is predicted at {fmt(mine)}, the model alone on {alone['device']} at "
             f"{fmt(theirs)} ({mine / theirs:.2f}x {better} alone); coinfer plan -s local, or try another "
             f"strategy (coinfer bench compares them)")]
