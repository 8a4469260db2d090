"""``coinfer simulate PLAN``: predicted latency, energy, bytes and timeline, no devices needed."""

from __future__ import annotations

COMMAND = "simulate"

from pathlib import Path

import typer

from .common import (
    STAGES_HELP,
    backend_notes,
    check_outputs,
    console,
    emit_json,
    mismatch_notes,
    print_breakdown,
    stage_rows,
    user_errors,
)


@user_errors
def cmd(
    plan_path: str = typer.Argument(..., metavar="PLAN", help="plan JSON file"),
    cluster: str = typer.Option(..., "--cluster", "-c", help="cluster YAML file or built-in name"),
    profiles: str = typer.Option(None, "--profiles", help="directory of coinfer profile results (<device>.json)"),
    gantt: Path = typer.Option(None, "--gantt", help="write a Gantt chart PNG"),
    trace: Path = typer.Option(None, "--trace", help="write the timeline as Chrome/Perfetto trace JSON"),
    bandwidth_trace: str = typer.Option(None, "--bandwidth-trace",
                                        help="CSV t_s,mbps replacing the cluster's network.trace"),
    nic: str = typer.Option("per_link", "--nic", help="per_link (default) or shared: do a device's sends share one queue"),
    calibrate: bool = typer.Option(False, "--calibrate", help="measure this host's calibration first (cached)"),
    links: str = typer.Option("cluster", "--links", help="cluster (the file's figures, default) or probed "
                              "(bandwidth and RTT/2 from --profiles)"),
    ideal: bool = typer.Option(False, "--ideal", help="leave out the runtime's own costs (messages, CPU quotas)"),
    stages: bool = typer.Option(False, "--stages", help=STAGES_HELP),
    json_out: bool = typer.Option(False, "--json", help="one JSON summary on stdout"),
) -> None:
    """Simulate a plan on a cluster: latency, per-device busy/idle, bytes moved, energy, timeline."""
    from ..api import _cluster
    from ..errors import UserError
    from ..plan.plan import Plan
    from ..sim import NIC_MODES
    from ..sim.run import simulate_plan

    if nic not in NIC_MODES:
        raise UserError(f"--nic {nic!r} is unknown; use {' or '.join(NIC_MODES)}")
    if links not in ("cluster", "probed"):
        raise UserError(f"--links {links!r} is unknown; use cluster or probed")
    check_outputs(trace=trace, gantt=gantt)
    plan = Plan.load(plan_path)
    cl = _cluster(cluster)
    cal = None
    if calibrate:
        from ..cost.calibrate import ensure_calibration

        cal = ensure_calibration(remeasure=True)
    res = simulate_plan(plan, cl, profiles, calibration=cal, bandwidth_trace=bandwidth_trace, nic=nic,
                        overheads=not ideal, probed_links=links == "probed")
    res.trace.meta["plan"] = str(plan_path)
    if trace is not None:
        res.trace.save(trace)
    if gantt is not None:
        res.trace.gantt(gantt, f"simulated {plan.model.name} / {plan.strategy.name}: {res.latency_ms:.1f} ms")
    summary = {"plan": str(plan_path), **res.summary(), "costs": res.costs}
    for line in [*mismatch_notes(res.costs), *backend_notes(cl, plan.devices_used_names())]:
        typer.echo(line, err=True)
    if stages:
        summary["stages"] = stage_rows(res.trace, plan)
    if json_out:
        emit_json(summary)
        return
    from rich.table import Table

    c = console()
    c.print(f"[bold]{plan.model.name}[/] / {plan.strategy.name}: predicted latency "
            f"[bold]{res.latency_ms:.2f} ms[/], energy {res.energy_j:.3f} J (dynamic {res.dynamic_energy_j:.3f} J), "
            f"{res.bytes_moved / 1e6:.3f} MB on the wire")
    srcs = sorted({res.costs["compute"][d] for d in res.devices})
    c.print(f"costs: {', '.join(srcs)}; host calibration {res.costs['calibration']}"
            + (f"; bandwidth trace {res.costs['bandwidth_trace']}" if res.costs.get("bandwidth_trace") else ""))
    t = Table()
    for col in ("device", "busy ms", "idle ms", "tx ms", "rx ms", "energy J"):
        t.add_column(col, justify="left" if col == "device" else "right")
    for d in res.devices:
        t.add_row(d, f"{res.busy_ms[d]:.2f}", f"{res.idle_ms[d]:.2f}", f"{res.tx_ms[d]:.2f}",
                  f"{res.rx_ms[d]:.2f}", f"{res.device_energy_j[d]:.4f}")
    c.print(t)
    print_breakdown(c, "predicted", res.latency_ms, summary["critical_compute_ms"], summary.get("stages"))
    for what, path in (("trace", trace), ("gantt", gantt)):
        if path is not None:
            c.print(f"wrote {what} {path}")
