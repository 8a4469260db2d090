"""Spatial I benchmark: MoDNN, DeepThings, CoEdge, AOFL (and local / offload / Neurosurgeon) — issue 7.

One command (``python benchmarks/spatial/bench.py``) runs every part and writes
``benchmarks/spatial/results/*.json`` plus a markdown report
(``results/report.md``) whose tables go into docs/strategies/coedge.md and the
"Spatial I" section of docs/results.md:

``plan_time``  planning time of the four planners, 16 devices (eq16), ResNet-50 (warm median and cold).
``sim``        the full matrix, *simulated* (the discrete-event simulator with the runtime's costs):
               het4 and eq4 x 8/20/100/1000 Mbit/s x VGG-16, ResNet-18, GoogLeNet, MobileNetV2, AlexNet
               x every strategy (local/offload/neurosurgeon if registered, modnn, deepthings, aofl,
               coedge latency-optimal, coedge energy-optimal at three deadlines).
``real``       the same plans *measured*: LocalCluster worker processes (cgroup CPU quotas, shaped
               links), median latency of ``--repeat`` requests after a warm-up, model energy from the
               measured trace (busy / tx / rx times x the cluster's power figures). Plans whose simulated
               latency exceeds ``--real-cap-ms`` stay simulated (marked so).
``report``     the tables (``results/report.md``) from whatever the parts above saved, including the
               CoEdge section: CoEdge's energy reduction at close latency (vs local, vs MoDNN) and vs the latency-optimal
               split at the same deadline, from the measured runs where they exist, else simulated.
``steal``      DeepThings work stealing vs static tiles with one device slowed to a tenth mid-run (real).

Energy is *model-based* everywhere (no power reader on this machine): ``dyn`` is CoEdge's Ec + Ex
(busy_w x compute + tx_w x tx + rx_w x rx), ``total`` adds idle_w for the participating devices.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODELS = ["vgg16", "resnet18", "googlenet", "mobilenet_v2", "alexnet"]
CLUSTERS = ["het4", "eq4"]
BWS = [8, 20, 100, 1000]
SPATIAL = ["modnn", "deepthings", "aofl", "coedge"]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def strategies() -> list[str]:
    from coinfer.strategies import names

    have = names()
    return [s for s in ("local", "offload", "neurosurgeon") if s in have] + SPATIAL


# -- planning ----------------------------------------------------------------------------------------
def make_plans(model: str, cluster: Any, costs: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    """label -> (plan, info): every strategy, plus CoEdge energy-optimal at three deadlines."""
    from coinfer.plan.lower import lower
    from coinfer.sim import simulate
    from coinfer.strategies import Infeasible, PlanRequest, run

    g = costs.graph
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    for s in strategies():
        try:
            t0 = time.perf_counter()
            res = run(s, PlanRequest(g, cluster, model, costs, "latency"))
            out[s] = (res.plan, dict(res.info, planning_ms=(time.perf_counter() - t0) * 1e3))
        except Exception as e:  # noqa: BLE001 - a strategy that cannot plan here is reported, not fatal
            out[s] = (None, {"error": f"{type(e).__name__}: {e}"})
    sim_lat = {}
    for k, (p, _) in out.items():
        if p is not None:
            sim_lat[k] = simulate(lower(p, g), costs).latency_ms
    deadlines = {}  # "close latency": within 5% of the baseline's (simulated) latency
    if "local" in sim_lat:
        deadlines["coedgeE@local"] = 1.05 * sim_lat["local"]
    if "modnn" in sim_lat:
        deadlines["coedgeE@modnn"] = 1.05 * sim_lat["modnn"]
    if "coedge" in out and out["coedge"][0] is not None:
        deadlines["coedgeE@1.25xlat"] = 1.25 * out["coedge"][1].get("model_latency_ms", sim_lat["coedge"])
    for label, D in deadlines.items():
        try:
            res = run("coedge", PlanRequest(g, cluster, model, costs, "energy", D))
            out[label] = (res.plan, dict(res.info, deadline_ms=D))
        except Infeasible as e:  # the model says the deadline is too tight: CoEdge's fastest plan instead
            if e.best is not None:
                out[label] = (e.best.plan, dict(e.best.info, deadline_ms=D, infeasible=str(e)))
            else:
                out[label] = (None, {"error": f"infeasible: {e}", "deadline_ms": D})
    return out


def sim_result(plan: Any, costs: Any) -> dict[str, Any]:
    from coinfer.plan.lower import lower
    from coinfer.sim import simulate

    r = simulate(lower(plan, costs.graph), costs)
    return {"latency_ms": float(r.latency_ms), "energy_j": float(r.energy_j), "dyn_j": float(r.dynamic_energy_j),
            "devices": plan.devices_used_names()}


# -- parts -------------------------------------------------------------------------------------------
def part_plan_time(args: argparse.Namespace) -> dict[str, Any]:
    from coinfer.cluster import builtin_cluster
    from coinfer.cost.model import CostModel
    from coinfer.modelspec import capture_model
    from coinfer.strategies import PlanRequest, run

    g = capture_model("resnet50").graph
    cl = builtin_cluster("eq16")
    out: dict[str, Any] = {"load": load(), "model": "resnet50", "cluster": "eq16", "devices": 16}
    for s in SPATIAL + (["coedge_energy"] if True else []):
        name, obj, D = (s, "latency", None) if s != "coedge_energy" else ("coedge", "energy", 2000.0)
        times, cpu = [], []
        cold = None
        for k in range(args.plan_repeat + 1):
            costs = CostModel(g, cl)  # a fresh cost model each time: no cached part costs
            t0, c0 = time.perf_counter(), time.process_time()
            run(name, PlanRequest(g, cl, "resnet50", costs, obj, D))
            dt, dc = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3
            if k == 0:
                cold = dt
            else:
                times.append(dt)
                cpu.append(dc)
        out[s] = {"warm_median_ms": round(statistics.median(times), 1), "warm_min_ms": round(min(times), 1),
                  "cpu_median_ms": round(statistics.median(cpu), 1), "first_ms": round(cold or 0, 1)}
        print(f"plan_time {s:14s} wall median {out[s]['warm_median_ms']:7.1f} ms  min {out[s]['warm_min_ms']:7.1f}"
              f"  cpu median {out[s]['cpu_median_ms']:6.1f} ms  first {out[s]['first_ms']:7.1f} ms   (load {load()})",
              flush=True)
    return out


def part_sim(args: argparse.Namespace) -> list[dict[str, Any]]:
    from coinfer.cluster import builtin_cluster
    from coinfer.cost.model import CostModel
    from coinfer.modelspec import capture_model

    rows = []
    for model in args.models:
        g = capture_model(model).graph
        for cname in args.clusters:
            for bw in args.bws:
                cl = builtin_cluster(cname).with_bandwidth(bw)
                costs = CostModel(g, cl)
                plans = make_plans(model, cl, costs)
                for label, (plan, info) in plans.items():
                    row = {"mode": "sim", "model": model, "cluster": cname, "mbps": bw, "label": label,
                           "planning_ms": info.get("planning_ms"), "deadline_ms": info.get("deadline_ms")}
                    if plan is None:
                        row["error"] = info.get("error")
                    else:
                        row.update(sim_result(plan, costs))
                        row["plan"] = plan.to_dict()
                        row["model_latency_ms"] = info.get("model_latency_ms")
                    rows.append(row)
                print(f"sim {model:12s} {cname} {bw:5d} Mbit/s: " + ", ".join(
                    f"{r['label']} {r.get('latency_ms', float('nan')):.0f}ms/{r.get('dyn_j', float('nan')):.2f}J"
                    for r in rows[-len(plans):]), flush=True)
    return rows


def cpu_energy(summary: dict[str, Any], cpu_ms: dict[str, float], cluster: Any) -> tuple[float, dict[str, float]]:
    """Dynamic energy with each device's busy time taken from the CPU time its process used.

    An emulated device at share *s* that computes flat out uses *s* CPU-seconds per second, so its
    busy time is ``cpu_ms / s``: unlike the wall time of the trace's compute events, this does not
    grow when other processes on the machine steal the device's CPU (the machine is shared). It also
    counts the runtime's own work (messages), which a real device pays for too.
    """
    per = {}
    for d, c in cpu_ms.items():
        dev = cluster.device(d)
        busy = c / min(1.0, dev.cpu_share)
        p = dev.power
        per[d] = (p.busy_w * busy + p.tx_w * summary["tx_ms"].get(d, 0.0) + p.recv_w * summary["rx_ms"].get(d, 0.0)) / 1e3
    return sum(per.values()), per


def _measure(session: Any, x: Any, cluster: Any, repeat: int, pids: dict[str, int] | None = None,
             warm: bool = True) -> dict[str, Any]:
    from coinfer.runtime.adaptive import energy_of
    from coinfer.runtime.emulation import process_cpu_time
    from coinfer.runtime.report import summarize

    if warm:
        session(x)  # warm-up (the caller's verification request already warmed the session when warm=False)
    used = [d for d in session.plan.devices_used_names() if pids and d in pids]
    lats, dyn, tot, cdyn = [], [], [], []
    for _ in range(repeat):
        c0 = {d: process_cpu_time(pids[d]) for d in used} if pids else {}
        session(x)
        c1 = {d: process_cpu_time(pids[d]) for d in used} if pids else {}
        s = summarize(session.last_trace, cluster)
        e = energy_of(s, cluster)
        lats.append(s["latency_ms"])
        dyn.append(e["dynamic_j"])
        tot.append(e["total_j"])
        if pids:
            cdyn.append(cpu_energy(s, {d: (c1[d] - c0[d]) * 1e3 for d in used}, cluster)[0])
    out = {"latency_ms": statistics.median(lats), "latency_all": lats, "dyn_wall_j": statistics.mean(dyn),
           "energy_j": statistics.mean(tot)}
    out["dyn_j"] = statistics.mean(cdyn) if cdyn else out["dyn_wall_j"]
    out["energy_from"] = "cpu" if cdyn else "wall"
    return out


def _backend(cluster: Any, backend: str) -> Any:
    """``cluster`` with every device's execution backend set to ``backend`` (``keep``: unchanged)."""
    if backend == "keep":
        return cluster
    return cluster.model_copy(update={"devices": [d.model_copy(update={"backend": backend})
                                                  for d in cluster.devices]})


def _revive(lc: Any) -> None:
    """Restart the local workers that are gone (the shared machine ran out of memory more than once)."""
    for name, w in list(lc.workers.items()):
        if not w.alive():
            print(f"  worker {name} is gone (exit {w.proc.returncode}); restarting it", flush=True)
            lc.restart(name)


def part_real(args: argparse.Namespace, sim_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import torch

    from coinfer.cluster import builtin_cluster
    from coinfer.execute.local import compare, reference_output
    from coinfer.modelspec import capture_model
    from coinfer.plan.plan import Plan
    from coinfer.runtime.coordinator import Session
    from coinfer.runtime.launcher import LocalCluster

    rows: list[dict[str, Any]] = []
    t_start = time.time()
    for cname in args.real_clusters:
        base = _backend(builtin_cluster(cname), args.real_backend)
        lc = LocalCluster(base).start()
        try:
            for model in args.real_models:
                cm = capture_model(model)
                x = torch.randn(cm.graph.input_shape, generator=torch.Generator().manual_seed(0))
                ref = reference_output(cm, x)
                for bw in args.real_bws:
                    cl = base.with_bandwidth(bw)
                    seen: dict[str, str] = {}
                    for r in sim_rows:
                        if (r["model"], r["cluster"], r["mbps"]) != (model, cname, bw) or "plan" not in r:
                            continue
                        if args.real_labels and r["label"] not in args.real_labels:
                            continue
                        out = {k: r[k] for k in ("model", "cluster", "mbps", "label", "deadline_ms")}
                        out.update(mode="real", sim_latency_ms=r["latency_ms"], sim_dyn_j=r["dyn_j"],
                                   backend="cluster's" if args.real_backend == "keep" else args.real_backend)
                        key = json.dumps(r["plan"]["stages"], sort_keys=True)
                        if key in seen:  # the same plan as another label: measured once
                            out["same_as"] = seen[key]
                            rows.append(out)
                            continue
                        seen[key] = r["label"]
                        if r["latency_ms"] > args.real_cap_ms:
                            out["skipped"] = f"simulated {r['latency_ms']:.0f} ms > cap {args.real_cap_ms:.0f} ms"
                            rows.append(out)
                            continue
                        if time.time() - t_start > args.real_budget_s:  # keep one locked run short
                            out["skipped"] = f"not measured: time budget of {args.real_budget_s:.0f} s spent"
                            rows.append(out)
                            continue
                        plan = Plan.from_dict(r["plan"])
                        t0 = time.time()
                        for attempt in range(2):
                            _revive(lc)  # a worker the machine's OOM killer took is started again
                            try:
                                with Session(plan, cl, lc.addresses, timeout_s=120, replan=False,
                                             dead_after_s=600) as s:
                                    y = s(x)  # checked against the plain model; also the warm-up
                                    out["max_abs_diff"] = compare(y, ref)[0]
                                    out.update(_measure(s, x, cl, args.repeat,
                                                        {n: w.proc.pid for n, w in lc.workers.items()},
                                                        warm=False))
                                out.pop("error", None)
                                break
                            except Exception as e:  # noqa: BLE001
                                out["error"] = f"{type(e).__name__}: {e}"
                        out["wall_s"] = round(time.time() - t0, 1)
                        out["load"] = load()
                        rows.append(out)
                        print(f"real {model:12s} {cname} {bw:5d} {r['label']:18s} "
                              f"{out.get('latency_ms', float('nan')):8.1f} ms (sim {r['latency_ms']:8.1f}) "
                              f"dyn {out.get('dyn_j', float('nan')):.3f} J  {out.get('error', '')}  load {load()}",
                              flush=True)
                        _save(args, "real_partial", rows)
        finally:
            lc.stop()
    return rows


def part_steal(args: argparse.Namespace) -> list[dict[str, Any]]:
    """DeepThings: work stealing vs static tiles, one device slowed to a fifth after ``--steal-before`` requests."""
    import collections

    import torch

    from coinfer.cluster import builtin_cluster
    from coinfer.execute.local import compare, reference_output
    from coinfer.modelspec import capture_model
    from coinfer.runtime.coordinator import Session
    from coinfer.runtime.emulation import limit_cpu
    from coinfer.runtime.launcher import LocalCluster
    from coinfer.strategies import PlanRequest, run

    rows = []
    for cname in args.steal_clusters:
        base = _backend(builtin_cluster(cname).with_bandwidth(1000), args.real_backend)
        victim = args.steal_victim
        share = base.device(victim).cpu_share
        lc = LocalCluster(base).start()
        try:
            for model in args.steal_models:
                cm = capture_model(model)
                g = cm.graph
                x = torch.randn(g.input_shape, generator=torch.Generator().manual_seed(0))
                ref = reference_output(cm, x)
                dyn = run("deepthings", PlanRequest(g, base, model, None, "latency", None,
                                                    {"grid": args.steal_grid, "tail": "source"}))
                params = {"grid": args.steal_grid, "tail": "source", "until": dyn.info["fused_until"],
                          "schedule": "static"}
                sta = run("deepthings", PlanRequest(g, base, model, None, "latency", None, params))
                for label, plan in (("steal", dyn.plan), ("static", sta.plan)):
                    res: dict[str, Any] = {"model": model, "cluster": cname, "schedule": label,
                                           "grid": args.steal_grid, "fused_until": dyn.info["fused_until"],
                                           "victim": victim, "assigned": dict(collections.Counter(
                                               d for row in plan.stages[0].partition.devices for d in row))}
                    _revive(lc)
                    w = lc.workers[victim]
                    with Session(plan, base, lc.addresses, timeout_s=120, replan=False, dead_after_s=600) as s:
                        s(x)
                        phases: dict[str, list[Any]] = {"before": [], "after": []}
                        for k in range(args.steal_before + args.steal_after):
                            if k == args.steal_before:  # the victim becomes busy: a tenth of its CPU
                                w.limiter.close()
                                w.limiter = limit_cpu(w.proc.pid, share / 10, victim)
                            y = s(x)
                            ok = compare(y, ref)[1] <= 1e-4
                            tr = s.last_trace
                            tile_ev = [e for e in tr.events if e.lane == "compute"
                                       and ("(tile)" in e.name or e.name.startswith("compute s0."))]
                            tiles = collections.Counter(e.device for e in tile_ev)
                            fused = max(e.end_ms for e in tile_ev)
                            phases["before" if k < args.steal_before else "after"].append(
                                (tr.meta["latency_ms"], dict(tiles), ok, fused))
                        w.limiter.close()
                        w.limiter = limit_cpu(w.proc.pid, share, victim)
                    for ph, vals in phases.items():
                        res[ph] = {"latency_ms": statistics.median(v[0] for v in vals),
                                   "fused_ms": statistics.median(v[3] for v in vals),
                                   "victim_tiles": statistics.median(v[1].get(victim, 0) for v in vals),
                                   "exact": all(v[2] for v in vals), "tiles_last": vals[-1][1]}
                    res["load"] = load()
                    rows.append(res)
                    print(f"steal {model} {cname} {label:6s} before {res['before']['latency_ms']:.0f} ms "
                          f"after {res['after']['latency_ms']:.0f} ms, {victim} tiles "
                          f"{res['before']['victim_tiles']} -> {res['after']['victim_tiles']} "
                          f"(assigned {res['assigned'].get(victim, 0)}), exact {res['after']['exact']}  load {load()}",
                          flush=True)
        finally:
            lc.stop()
    return rows


# -- reports -----------------------------------------------------------------------------------------
def _best(rows: list[dict[str, Any]], real: dict[tuple, dict[str, Any]], key: tuple) -> dict[str, Any] | None:
    """The measured figures of ``key`` (model, cluster, mbps, label) where they exist, else simulated."""
    r = real.get(key)
    if r is not None and "same_as" in r:
        r = real.get((*key[:3], r["same_as"]))
    if r is not None and "latency_ms" in r and "error" not in r:
        return {"latency_ms": r["latency_ms"], "dyn_j": r["dyn_j"], "energy_j": r["energy_j"], "src": "real"}
    for s in rows:
        if (s["model"], s["cluster"], s["mbps"], s["label"]) == key and "latency_ms" in s:
            return {"latency_ms": s["latency_ms"], "dyn_j": s["dyn_j"], "energy_j": s["energy_j"], "src": "sim"}
    return None


def report(args: argparse.Namespace, sim_rows: list[dict[str, Any]], real_rows: list[dict[str, Any]],
           steal_rows: list[dict[str, Any]], pt: dict[str, Any] | None) -> str:
    real = {(r["model"], r["cluster"], r["mbps"], r["label"]): r for r in real_rows}
    labels = strategies()
    lines = [(f"_Generated by `python benchmarks/spatial/bench.py` ({time.strftime('%Y-%m-%d %H:%M')}, "
              f"load {load()}). Latency ms / dynamic energy J (Ec + Ex, model-based from the cluster's power "
              "figures); **bold** = measured on LocalCluster workers (median of the measured requests), plain = "
              "simulated; — = could not plan._"), ""]
    for cname in args.clusters:
        for bw in args.bws:
            lines.append(f"#### {cname}, {bw} Mbit/s")
            lines.append("")
            lines.append("| model | " + " | ".join(labels + ["coedge E-opt @local", "@modnn", "@1.25×lat"]) + " |")
            lines.append("|" + "---|" * (len(labels) + 4))
            for model in args.models:
                cells = []
                for lab in labels + ["coedgeE@local", "coedgeE@modnn", "coedgeE@1.25xlat"]:
                    b = _best(sim_rows, real, (model, cname, bw, lab))
                    if b is None:
                        cells.append("—")
                        continue
                    txt = f"{b['latency_ms']:.0f} / {b['dyn_j']:.2f}"
                    cells.append(f"**{txt}**" if b["src"] == "real" else txt)
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
            lines.append("")
    # CoEdge energy reductions
    lines += ["#### CoEdge energy reduction (dynamic energy, same or lower latency)", "",
              "| cluster | Mbit/s | model | vs local | vs MoDNN | vs latency-optimal split @1.25× its latency | source |",
              "|---|---|---|---|---|---|---|"]
    reds: dict[str, list[float]] = {"local": [], "modnn": [], "latopt": []}
    for cname in args.clusters:
        for bw in args.bws:
            for model in args.models:
                cells, srcs = [], set()
                for base_lab, e_lab, k in (("local", "coedgeE@local", "local"), ("modnn", "coedgeE@modnn", "modnn"),
                                           ("coedge", "coedgeE@1.25xlat", "latopt")):
                    a = _best(sim_rows, real, (model, cname, bw, base_lab))
                    b = _best(sim_rows, real, (model, cname, bw, e_lab))
                    if a is None or b is None or a["dyn_j"] <= 0:
                        cells.append("—")
                        continue
                    red = 100 * (1 - b["dyn_j"] / a["dyn_j"])
                    lat = b["latency_ms"] / a["latency_ms"]
                    reds[k].append(red)
                    srcs |= {a["src"], b["src"]}
                    cells.append(f"{red:.1f}% (lat ×{lat:.2f})")
                lines.append(f"| {cname} | {bw} | {model} | " + " | ".join(cells) + f" | {'/'.join(sorted(srcs))} |")
    lines.append("")
    for k, v in reds.items():
        if v:
            lines.append(f"- vs {k}: median {statistics.median(v):.1f}%, range {min(v):.1f}% … {max(v):.1f}% "
                         f"over {len(v)} cases")
    lines.append("")
    if steal_rows:
        lines += ["#### DeepThings: work stealing vs static tiles, one device slowed to 1/10 of its CPU mid-run", "",
                  "| model | cluster | grid | schedule | fused stage before → after (ms) | latency before → after (ms) | slowed device's tiles before → after (assigned) | exact |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in steal_rows:
            lines.append(f"| {r['model']} | {r['cluster']} | {r['grid']} | {r['schedule']} | "
                         f"{r['before']['fused_ms']:.0f} → {r['after']['fused_ms']:.0f} | "
                         f"{r['before']['latency_ms']:.0f} → {r['after']['latency_ms']:.0f} | "
                         f"{r['before']['victim_tiles']:g} → {r['after']['victim_tiles']:g} ({r['assigned'].get(r['victim'], 0)}) | "
                         f"{r['before']['exact'] and r['after']['exact']} |")
        by = {(r["model"], r["cluster"], r["schedule"]): r for r in steal_rows}
        for (m, c, sch), r in by.items():
            if sch == "steal" and (m, c, "static") in by:
                st = by[(m, c, "static")]
                lines.append(f"- {m} on {c}: after the slowdown static / stealing = "
                             f"{st['after']['fused_ms'] / r['after']['fused_ms']:.2f}× (fused stage), "
                             f"{st['after']['latency_ms'] / r['after']['latency_ms']:.2f}× (request)")
        lines.append("")
    if pt:
        lines += [f"#### Planning time, ResNet-50 on 16 devices (eq16), load {pt['load']}", "",
                  "| planner | wall median (ms) | wall min (ms) | CPU median (ms) | first call, wall (ms) |",
                  "|---|---|---|---|---|"]
        for s in SPATIAL + ["coedge_energy"]:
            if s in pt:
                lines.append(f"| {s} | {pt[s]['warm_median_ms']} | {pt[s]['warm_min_ms']} | "
                             f"{pt[s].get('cpu_median_ms', '')} | {pt[s]['first_ms']} |")
        lines.append("")
    return "\n".join(lines)


def _save(args: argparse.Namespace, name: str, obj: Any) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(obj, indent=1, default=float))


def _load(args: argparse.Namespace, name: str) -> Any:
    p = Path(args.out) / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="plan_time,sim,real,steal,report",
                    help="comma list of plan_time, sim, real, steal, report (default: all)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--clusters", default=",".join(CLUSTERS))
    ap.add_argument("--bws", default=",".join(map(str, BWS)), help="Mbit/s for the simulated matrix")
    ap.add_argument("--real-models", default=",".join(MODELS))
    ap.add_argument("--real-clusters", default=",".join(CLUSTERS), help="clusters measured on real workers")
    ap.add_argument("--real-bws", default="8,100,1000", help="Mbit/s measured on real workers")
    ap.add_argument("--real-cap-ms", type=float, default=4000.0,
                    help="plans simulated slower than this stay simulated")
    ap.add_argument("--repeat", type=int, default=3, help="measured requests per real configuration")
    ap.add_argument("--real-backend", default="keep",
                    help="execution backend of every device in the real runs (torch: the same for every "
                         "strategy and quick to deploy; auto times every backend on every part at deploy; "
                         "keep: the cluster's own)")
    ap.add_argument("--real-labels", default="",
                    help="comma list: measure only these plans (e.g. local,modnn,coedge,coedgeE@1.25xlat)")
    ap.add_argument("--real-budget-s", type=float, default=1e9,
                    help="start no new real measurement after this many seconds (the rest stays simulated)")
    ap.add_argument("--plan-repeat", type=int, default=7)
    ap.add_argument("--steal-models", default="yolov2_tiny,resnet18")
    ap.add_argument("--steal-clusters", default="eq4,het4")
    ap.add_argument("--steal-grid", default="4x4")
    ap.add_argument("--steal-victim", default="d2")
    ap.add_argument("--steal-before", type=int, default=4)
    ap.add_argument("--steal-after", type=int, default=6)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    for k in ("models", "clusters", "real_models", "real_clusters", "real_labels", "steal_models",
              "steal_clusters"):
        setattr(args, k, [x for x in getattr(args, k).split(",") if x])
    args.bws = [int(x) for x in args.bws.split(",") if x]
    args.real_bws = [int(x) for x in args.real_bws.split(",") if x]
    parts = set(args.parts.split(","))
    known = {"plan_time", "sim", "real", "steal", "report"}
    if parts - known:  # a typo ran nothing and exited 0
        ap.error(f"--parts: unknown {', '.join(sorted(parts - known))}; choose from {', '.join(sorted(known))}")
    print(f"spatial benchmark, load {load()}, cpus {os.cpu_count()}", flush=True)
    pt = _load(args, "plan_time")
    if "plan_time" in parts:
        pt = part_plan_time(args)
        _save(args, "plan_time", pt)
    sim_rows = _load(args, "sim") or []
    if "sim" in parts:
        sim_rows = part_sim(args)
        _save(args, "sim", sim_rows)
    real_rows = _load(args, "real") or []
    if "real" in parts:
        new = part_real(args, sim_rows)
        # merged into the earlier measured rows: each locked run (kept under ~10 min) measures a subset
        # (--real-models / --real-clusters / --real-bws); delete results/real.json to start over
        fresh = {(r["model"], r["cluster"], r["mbps"], r["label"]) for r in new}
        real_rows = [r for r in real_rows if (r["model"], r["cluster"], r["mbps"], r["label"]) not in fresh] + new
        _save(args, "real", real_rows)
    steal_rows = _load(args, "steal") or []
    if "steal" in parts:
        steal_rows = part_steal(args)
        _save(args, "steal", steal_rows)
    if "report" in parts:
        text = report(args, sim_rows, real_rows, steal_rows, pt)
        (Path(args.out) / "report.md").write_text(text + "\n")
        print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    raise SystemExit(main())
