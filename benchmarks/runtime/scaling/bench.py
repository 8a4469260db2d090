"""Scaling: 4 equal emulated devices vs one such device, through the real runtime.

The built-in cluster ``eq4`` (4 × ``cpu_share`` 0.35, one thread each; cgroup
CPU quota when writable, see ``coinfer.runtime.emulation``; ``--emulation
dilate``: time dilation inside each worker, ``coinfer.runtime.dilation``) is started once as
four worker processes on loopback; links are NOT shaped (``network.shape:
false``) unless ``--bandwidth`` is given. For each model, one Session per
plan on the same workers:

* ``local``: the whole model on ``d0`` — the one-device baseline;
* every other registered strategy (``coinfer.strategies.names()``) with its
  defaults, plus variants of ``even`` over ``max_redundancy`` (0 = a stage
  per cut point; 0.1 = the default fusing; 0.3) — identical plans are run once;
  strategies that cannot plan here (e.g. they need profiles) are listed with
  the reason;
* ``balanced/sc=C`` (``balanced.py``, this benchmark's own exact plans, run
  unless ``--strategies`` leaves out ``balanced``): rows (or a 2x2 grid) per
  stage balanced on the exact-halo FLOPs of each part, stage boundaries by
  dynamic programming with a per-stage price C (fraction of the model's FLOPs).

Requests are interleaved (one per plan per round, the order rotating) after a
warm-up; latency = the median of ``--repeat`` rounds. Speedup = median
latency of ``local`` ÷ that of the plan; parallel efficiency = speedup ÷ 4.
Every output is checked against the plain model.

Efficiency is then decomposed with the median run's trace:
``efficiency = utilisation ÷ inflation`` where ``inflation`` = the summed
compute time of the 4 devices ÷ the compute time of the one-device run (extra
work: halo recomputation, smaller and slower kernels, throttling), and
``utilisation`` = the summed compute time ÷ (4 × latency) (idle time:
waiting for halos, scatter/gather, the serial tail). The FLOP inflation of
the plan (from the lowered parts) shows how much of the extra work is halo.
A second view of the same run: ``bound`` = the one-device compute time ÷ (4 ×
Σ over stages of the stage's longest part) — the efficiency if messages,
waiting and skew between devices were free — and ``crit.`` = that Σ ÷ the
latency; ``efficiency = bound × crit.``.

``--emulation-check`` also verifies the emulation premise: each device alone
vs all four at once, each running the whole model (cgroup quota: as fast).

    .venv/bin/python benchmarks/runtime/scaling/bench.py [--models vgg16,resnet50] [--repeat 10]
        [--strategies even,proportional] [--bandwidth MBPS] [--emulation-check] [--gantt DIR] [--json]

Exit code 1 if the best efficiency of a model is below the goal (0.85).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

GOAL = 0.85
N = 4
#: the fixed per-stage price (fraction of the model's FLOPs) of the balanced candidates
BALANCED_STAGE_COSTS = (0.002, 0.004, 0.01)
#: a throttled worker building a model on a loaded machine can miss heartbeats for seconds:
#: never re-plan in the middle of a measurement
SESSION_KW: dict[str, Any] = {"dead_after_s": 60.0, "replan": False, "heartbeat_s": 1.0}


def _cluster(bandwidth: float | None, backend: str) -> Any:
    from coinfer.cluster import builtin_cluster

    cl = builtin_cluster("eq4")
    net = {"shape": False} if bandwidth is None else {"shape": True, "bandwidth_mbps": bandwidth, "latency_ms": 0.0}
    devs = [d.model_copy(update={"backend": backend}) for d in cl.devices]
    return cl.model_copy(update={"network": cl.network.model_copy(update=net), "devices": devs})


def candidate_plans(model: str, cl: Any, only: list[str] | None,
                    fc_split: str = "both") -> tuple[dict[str, Any], dict[str, str]]:
    from coinfer.modelspec import capture_model
    from coinfer.strategies import PlanRequest, names, run

    cm = capture_model(model)
    plans: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    seen: dict[str, str] = {}
    tries: list[tuple[str, str, dict[str, Any]]] = [("local", "local", {})]
    for s in names():
        if s == "local" or (only and s not in only):
            continue
        tries.append((s, s, {}))
        if s == "even":
            tries += [("even/mr=0", "even", {"max_redundancy": 0.0}), ("even/mr=0.3", "even", {"max_redundancy": 0.3})]
    if not only or "balanced" in only:  # this benchmark's halo-balanced row/grid plans (balanced.py)
        tries += [(f"balanced/sc={sc}", "balanced", {"stage_cost": sc}) for sc in BALANCED_STAGE_COSTS]
    if fc_split != "off":  # the same plans with the FC tail split by features (coinfer.strategies.features)
        fc = [(f"{label}+fc", s, {**params, "fc_split": "true"}) for label, s, params in tries if s != "local"]
        tries = tries[:1] + fc if fc_split == "on" else tries + fc
    for label, s, params in tries:
        try:
            if s == "balanced":
                sys.path.insert(0, str(Path(__file__).resolve().parent))
                from balanced import plan_balanced

                from coinfer.cost.model import CostModel
                from coinfer.strategies.features import split_fc_tail

                split = params.get("fc_split") == "true"
                plan = plan_balanced(cm.graph, cl, model, **{k: v for k, v in params.items() if k != "fc_split"})
                if split:
                    plan = split_fc_tail(plan, cm.graph, CostModel(cm.graph, cl))
                plan.validate(cm.graph)
            else:
                plan = run(s, PlanRequest(cm.graph, cl, model, params=params)).plan
        except Exception as e:  # noqa: BLE001 - report why a strategy could not plan here
            skipped[label] = f"{type(e).__name__}: {str(e)[:120]}"
            continue
        key = json.dumps([st.to_dict() if hasattr(st, "to_dict") else repr(st) for st in plan.stages],
                         sort_keys=True, default=str) + plan.wire.codec
        if key in seen:
            skipped[label] = f"same plan as {seen[key]}"
            continue
        seen[key] = label
        plans[label] = plan
    return plans, skipped


def _median_trace(lat: list[float], traces: list[Any]) -> Any:
    order = sorted(range(len(lat)), key=lambda i: lat[i])
    return traces[order[len(order) // 2]]


def analyse(trace: Any, plan: Any, graph: Any, t1_compute_ms: float) -> dict[str, Any]:
    from coinfer.plan.lower import lower

    lw = lower(plan, graph)
    span = float(trace.meta["latency_ms"])
    devs = plan.devices_used_names()
    busy = {d: trace.busy_ms(d, "compute") for d in devs}
    total = sum(busy.values())
    flops = sum(p.flops for p in lw.parts.values())
    model_flops = sum(n.flops for n in graph.for_exit(plan.exit).nodes)
    waits = [e.args.get("waited_ms", 0.0) for e in trace.events if e.lane == "recv"]
    recv = [e for e in trace.events if e.lane == "recv"]
    crit = trace.critical_compute_ms()
    return {
        "latency_ms": round(span, 1),
        "stages": len(plan.stages),
        "busy_ms": {d: round(v, 1) for d, v in busy.items()},
        "compute_sum_ms": round(total, 1),
        "inflation": round(total / t1_compute_ms, 3),
        "flop_inflation": round(flops / model_flops, 3),
        "utilisation": round(total / (N * span), 3),
        "critical_ms": round(crit, 1),
        "stage_bound": round(t1_compute_ms / (N * crit), 3) if crit else None,
        "on_critical": round(crit / span, 3),
        "messages": len(recv),
        "bytes_moved": int(sum(e.args.get("bytes", 0) for e in trace.events if e.lane == "send")),
        "recv_wait_ms_sum": round(sum(waits), 1),
        "transfer_ms_sum": round(sum(e.dur_ms for e in recv), 1),
    }


def emulation_check(lc: Any, cl: Any, model: str, repeat: int) -> dict[str, Any]:
    """Whole-model compute time of each device alone, then of all four at once."""
    from coinfer.inputs import random_input
    from coinfer.modelspec import capture_model
    from coinfer.plan.plan import Stage, Whole
    from coinfer.runtime.coordinator import Session
    from coinfer.strategies import PlanRequest

    cm = capture_model(model)
    x = random_input(tuple(cm.graph.input_shape), 1)
    sessions = {d: Session(PlanRequest(cm.graph, cl, model).make_plan([Stage("output", Whole(d))], f"whole-{d}"),
                           cl, lc.addresses, **SESSION_KW) for d in cl.names}
    try:
        def compute(s: Any) -> float:
            s(x)
            return sum(e.dur_ms for e in s.last_trace.events if e.lane == "compute")

        for s in sessions.values():
            compute(s)
        alone: dict[str, list[float]] = {d: [] for d in sessions}
        together: dict[str, list[float]] = {d: [] for d in sessions}
        for _ in range(repeat):
            for d, s in sessions.items():
                alone[d].append(compute(s))

            def go(d: str) -> None:
                together[d].append(compute(sessions[d]))

            ts = [threading.Thread(target=go, args=(d,)) for d in sessions]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        a = {d: statistics.median(v) for d, v in alone.items()}
        t = {d: statistics.median(v) for d, v in together.items()}
        return {"model": model, "alone_ms": {d: round(v, 1) for d, v in a.items()},
                "together_ms": {d: round(v, 1) for d, v in t.items()},
                "slowdown_together": round(statistics.mean(t[d] / a[d] for d in a), 3)}
    finally:
        for s in sessions.values():
            s.close()


def measure(model: str, cl: Any, lc: Any, repeat: int, warmup: int, only: list[str] | None,
            gantt: Path | None, fc_split: str = "both") -> dict[str, Any]:
    from coinfer.execute.local import TOLERANCE, compare, reference_output
    from coinfer.inputs import random_input
    from coinfer.modelspec import capture_model
    from coinfer.runtime.coordinator import Session

    cm = capture_model(model)
    x = random_input(tuple(cm.graph.input_shape), 0)
    ref = reference_output(cm, x)
    plans, skipped = candidate_plans(model, cl, only, fc_split)
    sessions = {label: Session(p, cl, lc.addresses, **SESSION_KW) for label, p in plans.items()}
    lat: dict[str, list[float]] = {k: [] for k in sessions}
    exact = {k: all(st.halo == "exact" for st in p.stages) and p.wire.lossless for k, p in plans.items()}
    rels: dict[str, float] = {}
    traces: dict[str, list[Any]] = {k: [] for k in sessions}
    try:
        for _ in range(warmup):
            for s in sessions.values():
                s(x)
        labels = list(sessions)
        for i in range(repeat):
            for label in labels[i % len(labels):] + labels[:i % len(labels)]:
                t0 = time.perf_counter()
                y = sessions[label](x)
                lat[label].append((time.perf_counter() - t0) * 1e3)
                traces[label].append(sessions[label].last_trace)
                rel = compare(y, ref)[1]
                rels[label] = max(rels.get(label, 0.0), rel)
                if rel > TOLERANCE and exact[label]:
                    raise AssertionError(f"{model} {label}: output differs from the plain model (rel {rel:.3g})")
    finally:
        for s in sessions.values():
            s.close()
    t1 = statistics.median(lat["local"])
    tr1 = _median_trace(lat["local"], traces["local"])
    t1_compute = sum(e.dur_ms for e in tr1.events if e.lane == "compute")
    rows = []
    for label in sessions:
        med = statistics.median(lat[label])
        tr = _median_trace(lat[label], traces[label])
        row = {"plan": label, "latency_ms": round(med, 1), "speedup": round(t1 / med, 3),
               "efficiency": round(t1 / med / N, 3), "exact": exact[label], "rel_err": rels[label]}
        if label != "local":
            row.update(analyse(tr, plans[label], cm.graph, t1_compute))
            row["latency_ms"] = round(med, 1)
        rows.append(row)
        if gantt is not None:
            gantt.mkdir(parents=True, exist_ok=True)
            tr.gantt(gantt / f"{model}-{label.replace('/', '_').replace('=', '')}.png",
                     f"{model} · {label} on eq4 · measured {tr.meta['latency_ms']:.0f} ms "
                     f"(median {med:.0f} ms; local {t1:.0f} ms)")
            tr.save(gantt / f"{model}-{label.replace('/', '_').replace('=', '')}.json")
    best = max((r for r in rows if r["plan"] != "local" and r["exact"]), key=lambda r: r["efficiency"],
               default=None)  # --strategies local alone: nothing split to judge
    return {"model": model, "local_ms": round(t1, 1), "local_compute_ms": round(t1_compute, 1), "rows": rows,
            "skipped": skipped, "best": best and best["plan"], "best_efficiency": best and best["efficiency"]}


def pin_workers(lc: Any) -> dict[str, int]:
    """Pin device i's worker process, every thread of it, to core i mod the cores we may use.

    Two 0.35-share devices per core sum to 0.7 of it, so each gets its quota inside every
    period however short; unpinned, the scheduler sometimes stacks three on one core."""
    cores = sorted(os.sched_getaffinity(0))
    placed = {}
    for i, (name, w) in enumerate(lc.workers.items()):
        core = cores[i % len(cores)]
        for tid in os.listdir(f"/proc/{w.proc.pid}/task"):
            os.sched_setaffinity(int(tid), {core})
        placed[name] = core
    return placed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vgg16,resnet50")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--strategies", default=None, help="comma-separated (default: every registered one)")
    ap.add_argument("--bandwidth", type=float, default=None, help="shape links at this Mbit/s (default: unshaped)")
    ap.add_argument("--backend", default="torch", help="every device's execution backend (default torch)")
    ap.add_argument("--period-ms", type=float, default=None,
                    help="cgroup CPU quota period (default: the launcher's, 10 ms)")
    ap.add_argument("--fc-split", choices=("off", "on", "both"), default="both",
                    help="also (both) or only (on) run every plan with its FC tail split by features")
    ap.add_argument("--pin", action="store_true",
                    help="pin device i's worker (every thread) to core i mod the cores available")
    ap.add_argument("--emulation", choices=("quota", "dilate"), default="quota",
                    help="cpu_share emulation: cgroup quota (default) or time dilation inside each worker")
    ap.add_argument("--emulation-check", action="store_true")
    ap.add_argument("--gantt", type=Path, default=None, help="write the median run's Gantt PNG + trace per plan")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from coinfer import zoo
    from coinfer.runtime.launcher import LocalCluster

    unknown = [m for m in a.models.split(",") if m not in zoo.names()]
    if unknown:  # before any worker starts (it was a traceback after the workers had started)
        ap.error(f"--models: unknown {', '.join(unknown)}; zoo models: {', '.join(zoo.names())}")

    cl = _cluster(a.bandwidth, a.backend)
    only = a.strategies.split(",") if a.strategies else None
    out: dict[str, Any] = {"load_before": os.getloadavg(), "models": []}
    if a.emulation == "dilate" and a.period_ms is not None:
        ap.error("--period-ms is for the quota emulation, not --emulation dilate")
    lc = LocalCluster(cl, emulate_cpu="dilate" if a.emulation == "dilate" else a.period_ms is None).start()
    limiters = []
    try:
        out["cpu_modes"] = lc.cpu_modes()
        if a.period_ms is not None:
            from coinfer.runtime.emulation import limit_cpu

            limiters = [limit_cpu(w.proc.pid, cl.device(n).cpu_share, n, int(a.period_ms * 1000))
                        for n, w in lc.workers.items()]
            out["cpu_modes"] = {n: f"{lim.mode} (period {a.period_ms} ms)" for n, lim in zip(lc.workers, limiters)}
        if a.pin:
            out["pinned"] = pin_workers(lc)
        if a.emulation_check:
            out["emulation"] = emulation_check(lc, cl, a.models.split(",")[-1], max(3, a.repeat // 2))
        for m in a.models.split(","):
            out["models"].append(measure(m, cl, lc, a.repeat, a.warmup, only, a.gantt, a.fc_split))
    finally:
        for lim in limiters:
            lim.close()
        lc.stop()
    out["load_after"] = os.getloadavg()
    ok = all((r["best_efficiency"] or 0.0) >= GOAL for r in out["models"])
    if a.json:
        print(json.dumps(out))
        return 0 if ok else 1
    modes = sorted(set(out["cpu_modes"].values()))
    print(f"scaling on eq4 (4 x cpu_share 0.35, cpu emulation {', '.join(modes)}, backend {a.backend}; links "
          f"{'unshaped' if a.bandwidth is None else f'{a.bandwidth} Mbit/s'}"
          f"{', pinned ' + str(out['pinned']) if a.pin else ''}), median of {a.repeat} interleaved "
          f"rounds; load {out['load_before'][0]:.2f} -> {out['load_after'][0]:.2f}")
    if "emulation" in out:
        e = out["emulation"]
        print(f"  emulation check ({e['model']}, whole model per device): alone {e['alone_ms']} ms, "
              f"all four at once {e['together_ms']} ms -> slowdown x{e['slowdown_together']}")
    for r in out["models"]:
        print(f"\n{r['model']}: one device (local) {r['local_ms']} ms (compute {r['local_compute_ms']} ms)")
        print(f"  {'plan':<18}{'ms':>8}{'speedup':>9}{'effic.':>8}{'infl.':>7}{'FLOPx':>7}{'util.':>7}"
              f"{'bound':>7}{'crit.':>7}{'stages':>7}{'msgs':>6}{'MB':>7}")
        for x in r["rows"]:
            if x["plan"] == "local":
                continue
            print(f"  {x['plan']:<18}{x['latency_ms']:>8.1f}{x['speedup']:>9.3f}{x['efficiency']:>8.3f}"
                  f"{x['inflation']:>7.3f}{x['flop_inflation']:>7.3f}{x['utilisation']:>7.3f}"
                  f"{x['stage_bound'] or 0:>7.3f}{x['on_critical']:>7.3f}{x['stages']:>7}"
                  f"{x['messages']:>6}{x['bytes_moved'] / 1e6:>7.2f}"
                  + ("" if x["exact"] else f"   approximate plan (rel err {x['rel_err']:.2g})"))
        for k, why in r["skipped"].items():
            print(f"  ({k}: {why})")
        if r["best"] is None:
            print("  no split exact plan ran (--strategies): nothing to judge")
            continue
        print(f"  best exact plan: {r['best']} efficiency {r['best_efficiency']:.3f} (goal {GOAL}: "
              f"{'meets' if r['best_efficiency'] >= GOAL else 'MISSES'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
