"""``coinfer run PLAN --cluster C``: execute a plan on real workers."""

from __future__ import annotations

COMMAND = "run"

import dataclasses
import statistics
import time
from typing import Any

import typer

from .common import (
    APPROXIMATE_NOTE,
    CPU_EMULATION_HELP,
    STAGES_HELP,
    CheckFailed,
    check_outputs,
    console,
    emit_json,
    print_breakdown,
    stage_rows,
    stop_on_signals,
    user_errors,
)


@user_errors
def cmd(
    plan_path: str = typer.Argument(..., metavar="PLAN", help="plan JSON file"),
    cluster: str = typer.Option(..., "--cluster", "-c", help="cluster YAML or built-in name"),
    input: str = typer.Option(None, "--input", help="image file, chelsea|coffee|astronaut|rocket|cat, or random (default)"),
    repeat: int = typer.Option(1, "--repeat", "-n", min=1, help="run the request N times"),
    warmup: int = typer.Option(1, "--warmup", min=0, help="untimed runs first"),
    verify: bool = typer.Option(False, "--verify", help="compare with the unpartitioned model here"),
    trace: str = typer.Option(None, "--trace", help="write the median-latency run's Chrome/Perfetto trace JSON"),
    gantt: str = typer.Option(None, "--gantt", help="write the median-latency run's Gantt chart PNG"),
    keys: str = typer.Option(None, "--keys", help="CURVE key directory"),
    stages: bool = typer.Option(False, "--stages", help=STAGES_HELP),
    json_out: bool = typer.Option(False, "--json", help="one JSON summary on stdout"),
    cpu_emulation: str = typer.Option(None, "--cpu-emulation", help=CPU_EMULATION_HELP),
    connect_timeout_s: float = typer.Option(30.0, "--connect-timeout-s", min=0.1,
                                            help="how long to wait for every device's worker to answer"),
    request_timeout_s: float = typer.Option(300.0, "--request-timeout-s", min=0.1,
                                            help="give up a request that has not finished after this long"),
    dead_after_s: float = typer.Option(1.2, "--dead-after-s", min=0.1,
                                       help="a device silent this long is declared dead (re-plan without it; the "
                                            "source: the run fails) — raise it for devices that stall"),
    failover: bool = typer.Option(False, "--failover",
                                  help="also build the plan without each device at the start: a device that "
                                       "dies is then replaced at once, not after re-planning and building"),
) -> None:
    """Run a plan on the cluster's workers (local devices are started if coinfer up is not running)."""
    from ..cluster import resolve_cluster, with_cpu_emulation
    from ..execute.local import TOLERANCE, compare, reference_output
    from ..inputs import make_input
    from ..modelspec import capture_model
    from ..plan.plan import Plan
    from ..runtime import upstate
    from ..runtime.coordinator import deploy, preflight
    from ..runtime.report import measure_energy, summarize

    check_outputs(trace=trace, gantt=gantt)
    stop_on_signals()  # a kill ends the session as Ctrl-C does: it undeploys (workers keep nothing)
    plan = Plan.load(plan_path)
    cl = with_cpu_emulation(resolve_cluster(cluster), cpu_emulation)
    up = upstate.read(cluster)
    # devices, keys and options first: the capture below took ≈ 9 s of ResNet-18 before they were looked at
    checked = preflight(plan, cl, addresses=up["addresses"] if up else None, keys=keys)
    cm = capture_model(plan.model.name, plan.model.input_shape)
    plan.validate(cm.graph)
    x = make_input(input, tuple(plan.model.input_shape))
    c = console(stderr=json_out)
    with c.status("deploying…"):
        session = deploy(plan, cl, addresses=up["addresses"] if up else None, keys=keys,
                         cpu_modes=up.get("cpu_modes") if up else None, hello_timeout_s=connect_timeout_s,
                         failover=failover, dead_after_s=dead_after_s, timeout_s=request_timeout_s,
                         checked=checked)
    lat: list[float] = []
    checks: list[tuple[float, float, Plan]] = []  # --verify: each request's max abs / rel diff and its plan
    refs: dict[str | None, Any] = {}

    def reference(exit_name: str | None) -> Any:  # the plain model's output, once per exit
        if exit_name not in refs:
            refs[exit_name] = reference_output(cm, x, exit_name)
        return refs[exit_name]

    # per request: its trace, measured joules, their source, and the plan it ran on (a device that died
    # during the run, or while the first plan built, leaves the rest on a re-plan without it)
    runs: list[tuple[Any, float | None, str, Plan]] = []
    with session, c.status("warming up…") as status:
        for _ in range(warmup):
            session(x)
        for i in range(repeat):
            status.update(f"request {i + 1}/{repeat}" + (f" (last {lat[-1]:.1f} ms)" if lat else ""))
            def timed() -> Any:  # the request alone: the power readers' first look-up took ≈ 4 ms (QA)
                t0 = time.perf_counter()
                out = session(x)
                lat.append((time.perf_counter() - t0) * 1e3)
                return out

            y, joules, esrc = measure_energy(timed)  # real power readers (RAPL/INA3221) if present
            runs.append((session.last_trace, joules, esrc, session.plan))
            if verify:  # every answer, not only the last (QA: a run with a re-plan checked one of 200)
                checks.append((*compare(y, reference(session.plan.exit)), session.plan))
    # the request of the median latency (the lower one of an even count) stands for the run
    tr, joules, esrc, ran = runs[sorted(range(len(lat)), key=lat.__getitem__)[(len(lat) - 1) // 2]]
    assert tr is not None
    s = summarize(tr, cl, measured_energy_j=joules, energy_source=esrc)
    s.update(latency_ms=round(statistics.median_low(lat), 3), latencies_ms=[round(v, 3) for v in lat],
             plan_path=plan_path, strategy=plan.strategy.name, cpu_modes=session.cpu_modes,
             backends=session.backends, dead=sorted(session.dead),
             recoveries=[dataclasses.asdict(r) for r in session.recoveries],
             predicted=ran.predicted if ran is plan else None)
    if stages:
        s["stages"] = stage_rows(tr, ran)
    if trace:
        tr.save(trace)
    if gantt:
        tr.gantt(gantt, f"{plan.model.name} · {plan.strategy.name} · measured {s['latency_ms']:.1f} ms")
    ok = True
    if verify:
        # a device computing at bf16 / fp16 (cluster file `precision`) makes the run approximate too
        def exact_on(p: Plan) -> bool:
            return p.is_exact and not any(cl.device(d).precision != "fp32" for d in p.devices_used_names())

        diff = max(d for d, _, _ in checks)
        rel = max(r for _, r, _ in checks)
        exact = all(exact_on(p) for _, _, p in checks)
        s.update(max_abs_diff=diff, rel=rel, exact_plan=exact, verified_requests=len(checks))
        ok = all(r <= TOLERANCE for _, r, p in checks if exact_on(p))
    if json_out:
        emit_json(s)
    else:
        c.print(f"{plan.model.name} · {plan.strategy.name}: median {s['latency_ms']:.1f} ms over {repeat} run(s); "
                f"{s['bytes_moved'] / 1e6:.2f} MB moved; energy {s['energy_j']:.3f} J")
        c.print("  busy ms: " + ", ".join(f"{d} {v:.1f}" + (" (dead)" if d in session.dead else "")
                                          for d, v in s["busy_ms"].items()))
        print_breakdown(c, "median run", float(tr.meta.get("latency_ms") or tr.span_ms), s["critical_compute_ms"],
                        s.get("stages"), indent="  ")
        c.print("  backends: " + ", ".join(f"{d} {'+'.join(b) or '-'}" for d, b in s["backends"].items()))
        if session.recoveries:  # devices died or came back during the run
            c.print(f"  re-plans: {len(session.recoveries)}", markup=False)
            for r in session.recoveries:
                c.print(f"    {r.describe()}", markup=False)
        if verify:
            c.print(f"  max_abs_diff={s['max_abs_diff']:.3g} rel={s['rel']:.3g}")
            if not s["exact_plan"]:
                c.print(f"  {APPROXIMATE_NOTE}")
    if not ok:
        raise CheckFailed(f"rel={s['rel']:.3g} exceeds the tolerance {TOLERANCE} of an exact plan")
