"""``coinfer bench``: strategies side by side on the emulated cluster, and the simulator's validation."""

from __future__ import annotations

COMMAND = "bench"

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from .common import console, deadline_notes, emit_json, parse_params, user_errors


def _csv(text: str | None, what: str) -> list[str]:
    from ..errors import UserError

    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if text is not None and not items:
        raise UserError(f"{what} is empty; give a comma-separated list")
    return items


@user_errors
def cmd(
    model: str = typer.Option(None, "--model", "-m", help="zoo name (comparison mode)"),
    cluster: str = typer.Option(None, "--cluster", "-c", help="cluster YAML or built-in name"),
    strategies: str = typer.Option(None, "--strategies", "-s", help="comma-separated strategies to compare"),
    profiles: str = typer.Option(None, "--profiles", help="profiles directory for planning and simulating"),
    input_shape: str = typer.Option(None, "--input-shape", help="N,C,H,W (for import paths)"),
    repeat: int = typer.Option(5, "--repeat", "-n", min=1, help="measured runs per plan (median)"),
    warmup: int = typer.Option(1, "--warmup", min=0, help="untimed runs first"),
    validate: bool = typer.Option(False, "--validate", help="run the simulator validation matrix instead"),
    models: str = typer.Option(None, "--models", help="validation models (default resnet18,mobilenet_v2,vgg16)"),
    clusters: str = typer.Option(None, "--clusters", help="validation clusters (default eq4,het4; or --cluster)"),
    bandwidths: str = typer.Option(None, "--bandwidths", help="validation link rates Mbit/s (default 100,1000)"),
    kinds: str = typer.Option(None, "--kinds", help="validation plan kinds (default rows,grid,whole)"),
    out: str = typer.Option("bench-validate", "--out", "-o", help="validation output directory"),
    profiles_root: str = typer.Option(None, "--profiles-root", help="where validation profiles are cached "
                                      "(default OUT/profiles)"),
    keys: str = typer.Option(None, "--keys", help="CURVE key directory"),
    priority: bool = typer.Option(False, "--priority", help="emulated devices get their CPU share even on a "
                                  "loaded host (cgroup v1: a high-weight group; see docs/simulator.md)"),
    rounds: int = typer.Option(1, "--rounds", min=1, help="with --validate: measure every case this many times, "
                               "in rotated order, and take the median of all runs (spreads slow spells of the "
                               "host over the cases)"),
    resim: list[str] = typer.Option(None, "--resimulate", help="with --validate: predict the cases of this "
                                    "validation.csv again (saved plans, current model, --profiles-root) without "
                                    "re-measuring; repeatable"),
    deadline_ms: float = typer.Option(None, "--deadline-ms", help="latency requirement (ms) given to every "
                                      "strategy (edgent needs one); a missed deadline is a warning"),
    param: list[str] = typer.Option(None, "--param", "-p", help="strategy parameter key=value given to every "
                                    "strategy benched (each must take it; repeatable)"),
    json_out: bool = typer.Option(False, "--json", help="one JSON summary on stdout"),
) -> None:
    """Compare strategies on a cluster (predicted vs measured), or validate the simulator (--validate)."""
    if validate and resim:
        _resimulate(resim, profiles_root, out, json_out)
    elif validate:
        _validate(cluster, clusters, models, bandwidths, kinds, out, profiles_root, repeat, warmup, keys, json_out,
                  priority, rounds)
    else:
        _compare(model, cluster, strategies, profiles, input_shape, repeat, warmup, keys, json_out, priority,
                 deadline_ms, parse_params(param))


def _noter(c: Any, strategy: str) -> Callable[[str], None]:
    """Progress lines of long planning (DistrEdge profiling the devices) on the bench's console."""
    return lambda line: c.print(f"{strategy}: {line}", markup=False)


def _compare(model: str | None, cluster: str | None, strategies: str | None, profiles: str | None,
             input_shape: str | None, repeat: int, warmup: int, keys: str | None, json_out: bool,
             priority: bool = False, deadline_ms: float | None = None,
             params: dict[str, Any] | None = None) -> None:
    from ..api import _cluster, plan_result
    from ..cost.model import load_cost_model
    from ..errors import UserError
    from ..modelspec import capture_model
    from ..plan.lower import lower
    from ..sim import simulate
    from ..sim.validation import Testbed
    from ..strategies import names as strategy_names

    if not (model and cluster and strategies):
        raise UserError("coinfer bench needs --model, --cluster and --strategies a,b,c (or --validate)")
    strats = _csv(strategies, "--strategies")
    known = strategy_names()
    bad = [s for s in strats if s not in known]
    if bad:
        raise UserError(f"unknown strategies {bad}; see coinfer strategies (known: {', '.join(known)})")
    from ..strategies.registry import check_params

    params = dict(params or {})
    for s in strats:  # as coinfer plan does: a --param a strategy does not take is an error, before any worker starts
        check_params(s, params)
    if deadline_ms is not None and not deadline_ms > 0:
        raise UserError(f"--deadline-ms must be > 0 (got {deadline_ms:g})")
    cl = _cluster(cluster)
    g = capture_model(model, input_shape).graph
    costs = load_cost_model(g, cl, profiles)
    c = console(stderr=json_out)
    rows: list[dict[str, Any]] = []
    with Testbed(keys=keys, priority=priority) as bed:
        for s in strats:
            with c.status(f"{s}: planning and simulating…"):
                plan = plan_result(model, cl, s, profiles=profiles, input_shape=input_shape, deadline_ms=deadline_ms,
                                   note=_noter(c, s), **params).plan
                sim = simulate(lower(plan, g), costs)
            for line in deadline_notes(s, deadline_ms, sim.latency_ms):
                typer.echo(line, err=True)
            with c.status(f"{s}: running on the emulated cluster…"):
                meas = bed.measure(plan, cl, repeat=repeat, warmup=warmup)
            m = meas.latency_ms
            rows.append({"strategy": s, "stages": len(plan.stages), "devices": plan.devices_used_names(),
                         "predicted_ms": round(sim.latency_ms, 3), "measured_ms": round(m, 3),
                         "error": round((sim.latency_ms - m) / m, 4), "runs_ms": [round(v, 2) for v in meas.latencies_ms],
                         "predicted_energy_j": round(sim.energy_j, 5), "measured_energy_j": meas.summary["energy_j"],
                         "energy_source": meas.summary.get("energy_source", "model"),
                         "predicted_bytes": sim.bytes_moved, "measured_bytes": meas.summary["bytes_moved"],
                         "predicted_critical_compute_ms": round(sim.trace.critical_compute_ms(), 3),
                         "measured_critical_compute_ms": meas.summary["critical_compute_ms"],
                         "busy_ms": meas.summary["busy_ms"],
                         # the --json contract's keys (DESIGN.md), measured as coinfer run reports them
                         "latency_ms": round(m, 3), "energy_j": meas.summary["energy_j"],
                         "bytes_moved": meas.summary["bytes_moved"]})
    if json_out:
        emit_json({"model": model, "cluster": cluster, "profiles": profiles, "repeat": repeat,
                   "deadline_ms": deadline_ms, "params": params, "results": rows})
        return
    from rich.table import Table

    t = Table(title=f"{model} on {cluster}: predicted (simulator) vs measured (emulated cluster, median of {repeat})")
    for col in ("strategy", "stages", "pred ms", "meas ms", "error", "pred J", "meas J", "pred MB", "meas MB"):
        t.add_column(col, justify="left" if col == "strategy" else "right")
    for r in rows:
        t.add_row(r["strategy"], str(r["stages"]), f"{r['predicted_ms']:.1f}", f"{r['measured_ms']:.1f}",
                  f"{r['error']:+.1%}", f"{r['predicted_energy_j']:.3f}", f"{r['measured_energy_j']:.3f}",
                  f"{r['predicted_bytes'] / 1e6:.2f}", f"{r['measured_bytes'] / 1e6:.2f}")
    c.print(t)
    c.print(f"costs: {'profiles ' + profiles if profiles else 'analytic (give --profiles DIR from coinfer profile)'}; "
            f"measured energy: cluster power figures over the measured trace")


def _resimulate(csvs: list[str], profiles_root: str | None, out: str, json_out: bool) -> None:
    from ..errors import UserError
    from ..sim import validation as V

    missing = [c for c in csvs if not Path(c).is_file()]
    if missing:
        raise UserError(f"--resimulate {missing[0]} does not exist; give a validation.csv written by "
                        f"coinfer bench --validate")
    if not profiles_root:
        raise UserError("--resimulate needs --profiles-root (the profiles the cases were planned with)")
    try:
        results = V.resimulate(csvs, profiles_root)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    _report(results, Path(out), json_out, "re-simulated (measurements kept)")


def _report(results: list[Any], outp: Path, json_out: bool, what: str = "") -> None:
    from ..sim import validation as V

    c = console(stderr=json_out)
    outp.mkdir(parents=True, exist_ok=True)
    V.write_csv(results, outp / "validation.csv")
    V.scatter_png(results, outp / "validation.png")
    st = V.error_stats(results)
    summary = {"cases": len(results), "errors": st, "csv": str(outp / "validation.csv"),
               "plot": str(outp / "validation.png"), "results": [r.row() for r in results]}
    if json_out:
        emit_json(summary)
        return
    from rich.table import Table

    t = Table(title="simulator vs runtime (latency)" + (f"; {what}" if what else ""))
    for col in ("case", "stages", "pred ms", "meas ms", "error", "pred J", "meas J"):
        t.add_column(col, justify="left" if col == "case" else "right")
    for r in results:
        t.add_row(r.case, str(r.stages), f"{r.predicted_ms:.1f}", f"{r.measured_ms:.1f}", f"{r.error:+.1%}",
                  f"{r.predicted_energy_j:.3f}", f"{r.measured_energy_j:.3f}")
    c.print(t)
    c.print(f"|error| median {st.get('median', 0):.1%}, p90 {st.get('p90', 0):.1%}, max {st.get('max', 0):.1%} over "
            f"{st.get('n')} cases; wrote {outp / 'validation.csv'} and {outp / 'validation.png'}")


def _validate(cluster: str | None, clusters: str | None, models: str | None, bandwidths: str | None,
              kinds: str | None, out: str, profiles_root: str | None, repeat: int, warmup: int, keys: str | None,
              json_out: bool, priority: bool = False, rounds: int = 1) -> None:
    from ..cluster import resolve_cluster
    from ..errors import UserError
    from ..sim import validation as V

    cls = tuple(_csv(clusters, "--clusters")) if clusters else ((cluster,) if cluster else V.DEFAULT_CLUSTERS)
    mods = tuple(_csv(models, "--models")) if models else V.DEFAULT_MODELS
    try:
        bws = tuple(float(b) for b in _csv(bandwidths, "--bandwidths")) if bandwidths else V.DEFAULT_BANDWIDTHS
    except ValueError:
        raise UserError(f"--bandwidths {bandwidths!r} must be numbers (Mbit/s), e.g. 100,1000") from None
    if any(not b > 0 for b in bws):
        raise UserError(f"--bandwidths must be > 0 Mbit/s (got {bandwidths}); a link needs a positive rate")
    ks = tuple(_csv(kinds, "--kinds")) if kinds else V.KINDS
    bad = [k for k in ks if k not in V.KINDS]
    if bad:
        raise UserError(f"--kinds {bad} unknown; use {', '.join(V.KINDS)}")
    for name in cls:  # only the grid plans need 4 devices (a 2-device cluster was refused for rows,whole)
        cl = resolve_cluster(name)
        if "grid" in ks and len(cl.devices) < 4:
            raise UserError(f"cluster {name!r} has {len(cl.devices)} devices; the validation's grid plans need 4 "
                            f"(leave grid out of --kinds)")
    from ..modelspec import capture_model

    for m in mods:
        capture_model(m)  # bad model names fail here, before any worker starts
    cases = V.validation_cases(mods, ks, cls, bws)
    c = console(stderr=json_out)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    c.print(f"{len(cases)} cases; load average {V.load_average():.2f} (figures are load-sensitive"
            + ("; devices prioritised)" if priority else "; --priority keeps the devices' shares on a loaded host)"))

    def show(r: V.CaseResult) -> None:
        c.print(f"  {r.case:<34} predicted {r.predicted_ms:8.1f} ms  measured {r.measured_ms:8.1f} ms  "
                f"error {r.error:+6.1%}  (ideal machine {r.ideal_ms:.1f}; load {r.load:.1f})")

    from ..cost.remote import ProgressSink

    class Notes(ProgressSink):
        def note(self, msg: str) -> None:
            if msg.startswith("round"):
                c.print(f"  {msg} ({len(cases)} cases; each case's result after its last round)")

    results = V.validate(cases, outp, repeat=repeat, warmup=warmup, profiles_root=profiles_root, keys=keys,
                         on_result=show, priority=priority, rounds=rounds, sink=Notes())
    _report(results, outp, json_out)
