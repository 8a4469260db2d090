"""Edgent, static bandwidth: chosen (exit, cut) vs bandwidth and deadline, and measured deadline-meeting.

    .venv/bin/python benchmarks/edgent/static.py [--requests 20] [--margin 0.1] [--out benchmarks/edgent/out]

The emulated Edgent set-up (built-in cluster ``edgent``: source "pi" at cpu_share 0.15, edge server
"edge" at 1.0; links 0.05/0.1/0.25/0.5/1/1.5 Mbit/s as in the paper plus 10/50; deadlines
100-1000 ms) and alexnet_digits with trained exits. Steps: train the exits if not cached
(coinfer train exits), profile both devices through the runtime if not cached (coinfer profile),
plan every (bandwidth, deadline) with ``--strategy edgent``, then run every distinct chosen
configuration ``--requests`` times on real worker processes (LocalCluster: cgroup CPU quotas,
shaped links) with held-out digit images, and count the requests that met each deadline.
Writes out/static.json, out/static.md (tables) and out/static.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import (
    BANDWIDTHS,
    DEADLINES,
    MODEL,
    OUT,
    PAPER_DEADLINES,
    Measured,
    costs_for,
    edgent_at,
    ensure_profiles,
    ensure_trained,
    load,
    measure,
)

from coinfer.cluster import builtin_cluster
from coinfer.modelspec import capture_model
from coinfer.runtime.launcher import LocalCluster
from coinfer.strategies import Infeasible, PlanRequest, run
from coinfer.train.exits import cached_accuracies


def short(cfg: str) -> str:
    """exit4@features_12:neurosurgeon:edge -> e4 f12 NS."""
    ex, _, rest = cfg.partition("@")
    ex = "F" if ex == "final" else "e" + ex.removeprefix("exit")
    if rest == "local":
        return f"{ex} local"
    if rest.startswith("offload"):
        return f"{ex} offload"
    cut, order, _ = rest.split(":")
    cut = cut.replace("features_", "f").replace("classifier_", "c").replace(".", "")
    return f"{ex} {cut} {'NS' if order == 'neurosurgeon' else 'ED'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20, help="measured requests per configuration")
    ap.add_argument("--margin", type=float, default=0.0, help="edgent --param margin (fraction of the deadline)")
    ap.add_argument("--profiles", default=str(OUT / "profiles"), help="profiles directory (made if missing)")
    ap.add_argument("--analytic", action="store_true", help="plan with the analytic cost model (no profiles)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--no-train", action="store_true",
                    help="do not train missing exits: plan by depth (Algorithm 1) and measure latency now, read the "
                         "accuracies later with --render (the workers run whatever weights the zoo has)")
    ap.add_argument("--plan-only", action="store_true",
                    help="no measurement: write static_plan.md (chosen configuration and predicted latency per cell)")
    ap.add_argument("--render", action="store_true",
                    help="no measurement: re-write static.md/png from static.json with the cached exit accuracies")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.render:
        doc = json.loads((out / "static.json").read_text())
        render(doc, out, cached_accuracies(MODEL))
        return
    t_start = time.time()
    trained = cached_accuracies(MODEL) is not None
    acc = cached_accuracies(MODEL) if a.no_train else ensure_trained()
    trained = trained or not a.no_train
    profiles = None if a.analytic else ensure_profiles(Path(a.profiles))
    g = capture_model(MODEL).graph
    load_start = load()
    print(f"planning ({load_start}); costs: {'profiles' if profiles else 'analytic'}", flush=True)
    cells: dict[tuple[float, int], dict[str, Any]] = {}
    plans: dict[tuple[float, str], Any] = {}
    predicted: dict[tuple[float, str], float] = {}
    for bw in BANDWIDTHS:
        cl = edgent_at(bw)
        costs = costs_for(g, cl, profiles)
        for dl in DEADLINES:
            req = PlanRequest(g, cl, MODEL, costs, deadline_ms=float(dl), params={"margin": a.margin})
            try:
                res = run("edgent", req)
            except Infeasible as e:
                best = e.best.info if e.best else {}
                cells[(bw, dl)] = {"feasible": False, "fastest": best.get("config"),
                                   "fastest_ms": best.get("latency_ms")}
                continue
            i = res.info
            cells[(bw, dl)] = {"feasible": True, "config": i["config"], "exit": i["exit"], "cut": i["cut"],
                               "order": i["order"], "won": i["won"], "predicted_ms": i["latency_ms"]}
            plans[(bw, i["config"])] = res.plan
            predicted[(bw, i["config"])] = i["latency_ms"]
    if a.plan_only:
        md = plan_table(cells, acc)
        (out / "static_plan.md").write_text(md)
        print(md)
        return
    print(f"{len(plans)} distinct (bandwidth, configuration) pairs to measure", flush=True)
    measured: dict[tuple[float, str], Measured] = {}
    lc = LocalCluster(builtin_cluster("edgent")).start()
    try:
        print("cpu emulation:", lc.cpu_modes(), flush=True)
        for k, ((bw, cfg), plan) in enumerate(sorted(plans.items())):
            m = measure(plan, edgent_at(bw), lc.addresses, a.requests, start=7 * k)
            measured[(bw, cfg)] = m
            s = m.summary()
            print(f"  {bw:5g} Mbit/s {cfg:42s} predicted {predicted[(bw, cfg)]:7.1f} measured median "
                  f"{s['median_ms']:7.1f} p95 {s['p95_ms']:7.1f} ms "
                  f"(correct {s['accuracy']:.2f}; {load()})", flush=True)
    finally:
        lc.stop()
    # per cell: the measured requests of its configuration against its deadline
    tot: dict[str, list[int]] = {"paper": [0, 0], "all": [0, 0]}
    for (bw, dl), c in cells.items():
        if not c["feasible"]:
            continue
        m = measured[(bw, c["config"])]
        c["measured"] = m.summary()
        c["meet_rate"] = m.rate(dl)
        for key in ("paper", "all") if dl in PAPER_DEADLINES else ("all",):
            tot[key][0] += sum(x <= dl for x in m.latencies_ms)
            tot[key][1] += len(m.latencies_ms)
    met, total = tot["paper"]
    rate = met / max(1, total)
    rate_all = tot["all"][0] / max(1, tot["all"][1])
    feas = sum(c["feasible"] for c in cells.values())
    paper_rates = [c["meet_rate"] for (bw, dl), c in cells.items() if c["feasible"] and dl in PAPER_DEADLINES]
    cells_ok = sum(r >= 0.95 for r in paper_rates)
    min_rate = min(paper_rates) if paper_rates else None
    print(f"deadlines 100-1000 ms: met in {met}/{total} measured requests = {rate:.3f}; all deadlines "
          f"{tot['all'][0]}/{tot['all'][1]} = {rate_all:.3f}; {feas}/{len(cells)} cells feasible")
    doc = {"model": MODEL, "cluster": "edgent", "margin": a.margin, "requests": a.requests,
           "costs": "profiles" if profiles else "analytic", "workers_ran_trained_weights": trained,
           "meet_rate": rate, "met": met, "total": total, "meet_rate_all_deadlines": rate_all,
           "met_all": tot["all"], "paper_cells_feasible": len(paper_rates), "paper_cells_at_least_95": cells_ok,
           "paper_cells_min_rate": min_rate, "load_start": load_start, "load_end": load(),
           "wall_s": round(time.time() - t_start),
           "cells": [{"mbps": bw, "deadline_ms": dl, **c} for (bw, dl), c in sorted(cells.items())],
           "configs": [{"mbps": bw, "config": cfg, "predicted_ms": predicted[(bw, cfg)], **m.summary()}
                       for (bw, cfg), m in sorted(measured.items())]}
    if not trained:  # the workers ran untrained weights: their answers say nothing about accuracy
        for c in doc["configs"]:
            c["accuracy"] = None
    render(doc, out, acc)


def render(doc: dict[str, Any], out: Path, acc: dict[str, float] | None) -> None:
    """Write static.json (with the exits' accuracies when known), static.md and static.png."""
    doc["accuracy"] = acc
    cells = {(c["mbps"], c["deadline_ms"]): c for c in doc["cells"]}
    for c in cells.values():
        if c["feasible"]:
            c["accuracy"] = acc[c["exit"]] if acc else None
    (out / "static.json").write_text(json.dumps(doc, indent=1))
    md = tables(cells, acc, doc)
    md += (f"\nPer cell (deadlines 100-1000 ms): {doc['paper_cells_at_least_95']} of {doc['paper_cells_feasible']} "
           f"feasible cells met >= 95 % (lowest cell "
           f"{float('nan') if doc['paper_cells_min_rate'] is None else doc['paper_cells_min_rate'] * 100:.0f} %). Load: {doc['load_start']} at the start, "
           f"{doc['load_end']} at the end; wall {doc['wall_s']} s.\n")
    (out / "static.md").write_text(md)
    figure(cells, out / "static.png")
    print(md)


def plan_table(cells: dict[tuple[float, int], dict[str, Any]], acc: dict[str, float] | None) -> str:
    """Chosen configuration and its predicted latency (ms) per (bandwidth, deadline): planning only."""
    head = "| Mbit/s | " + " | ".join(f"{d} ms" for d in DEADLINES) + " |\n|---|" + "---|" * len(DEADLINES) + "\n"
    t = head
    for bw in BANDWIDTHS:
        r = []
        for dl in DEADLINES:
            c = cells[(bw, dl)]
            r.append(f"{short(c['config'])} ({c['predicted_ms']:.0f})" if c["feasible"]
                     else f"— (fastest {c['fastest']} {c['fastest_ms']:.0f})")
        t += f"| {bw:g} | " + " | ".join(r) + " |\n"
    accs = ", ".join(f"{k} {v:.3f}" for k, v in acc.items()) if acc else "not trained"
    return (f"Chosen configuration (predicted latency, ms) per link bandwidth and deadline; exits' held-out "
            f"accuracy: {accs}.\n\n{t}")


def tables(cells: dict[tuple[float, int], dict[str, Any]], acc: dict[str, float] | None, doc: dict[str, Any]) -> str:
    rate, met, total, all_ = doc["meet_rate"], doc["met"], doc["total"], doc["met_all"]
    head = "| Mbit/s | " + " | ".join(f"{d} ms" for d in DEADLINES) + " |\n|---|" + "---|" * len(DEADLINES) + "\n"
    t1 = t2 = t3 = head
    for bw in BANDWIDTHS:
        r1, r2, r3 = [], [], []
        for dl in DEADLINES:
            c = cells[(bw, dl)]
            if not c["feasible"]:
                r1.append("—")
                r2.append("—")
                r3.append("—")
                continue
            r1.append(short(c["config"]))
            r2.append(f"{c['meet_rate'] * 100:.0f}%")
            r3.append(f"{c['accuracy'] * 100:.1f}" if c.get("accuracy") is not None else "n/a")
        t1 += f"| {bw:g} | " + " | ".join(r1) + " |\n"
        t2 += f"| {bw:g} | " + " | ".join(r2) + " |\n"
        t3 += f"| {bw:g} | " + " | ".join(r3) + " |\n"
    accs = ", ".join(f"{k} {v:.3f}" for k, v in acc.items()) if acc else "not trained yet"
    return (f"Chosen configuration (exit, cut, order; F = final, eN = exit N, NS = front on the Pi "
            f"(Neurosurgeon order), ED = front on the edge (Edgent order); — = infeasible):\n\n{t1}\n"
            f"Measured deadline-meeting rate of the chosen configuration ({doc['requests']} requests each, "
            f"margin {doc['margin']:g}):\n\n{t2}\nHeld-out accuracy (%) of the chosen exit (trained exits, 450 held-out "
            f"digits):\n\n{t3}\nOverall, deadlines 100-1000 ms: {met}/{total} = {rate * 100:.1f}% "
            f"of the measured requests met their deadline where a configuration was feasible (all deadlines: "
            f"{all_[0]}/{all_[1]} = {all_[0] / max(1, all_[1]) * 100:.1f}%).\n\nHeld-out accuracy of "
            f"the exits (trained): {accs}.\n")


def figure(cells: dict[tuple[float, int], dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    order = ["exit1", "exit2", "exit3", "exit4", "final"]
    grid = np.full((len(BANDWIDTHS), len(DEADLINES)), np.nan)
    fig, ax = plt.subplots(figsize=(10, 4.6))
    for i, bw in enumerate(BANDWIDTHS):
        for j, dl in enumerate(DEADLINES):
            c = cells[(bw, dl)]
            if c["feasible"]:
                grid[i, j] = order.index(c["exit"])
                ax.text(j, i, short(c["config"]).replace(" ", "\n", 1) + f"\n{c['meet_rate'] * 100:.0f}%",
                        ha="center", va="center", fontsize=6)
            else:
                ax.text(j, i, "infeasible", ha="center", va="center", fontsize=6)
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=4, aspect="auto", origin="lower")
    ax.set_xticks(range(len(DEADLINES)), [str(d) for d in DEADLINES])
    ax.set_yticks(range(len(BANDWIDTHS)), [f"{b:g}" for b in BANDWIDTHS])
    ax.set_xlabel("deadline (ms)")
    ax.set_ylabel("link bandwidth (Mbit/s)")
    cb = fig.colorbar(im, ax=ax, ticks=range(5))
    cb.ax.set_yticklabels(order)
    ax.set_title("Edgent (static): chosen exit and cut; measured deadline-meeting rate")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
