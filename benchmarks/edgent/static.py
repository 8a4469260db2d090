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
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    acc = ensure_trained()
    profiles = None if a.analytic else ensure_profiles(Path(a.profiles))
    g = capture_model(MODEL).graph
    print(f"planning ({load()}); costs: {'profiles' if profiles else 'analytic'}", flush=True)
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
                               "order": i["order"], "won": i["won"], "predicted_ms": i["latency_ms"],
                               "accuracy": acc[i["exit"]]}
            plans[(bw, i["config"])] = res.plan
            predicted[(bw, i["config"])] = i["latency_ms"]
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
                  f"(acc {s['accuracy']:.2f}; {load()})", flush=True)
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
    print(f"deadlines 100-1000 ms: met in {met}/{total} measured requests = {rate:.3f}; all deadlines "
          f"{tot['all'][0]}/{tot['all'][1]} = {rate_all:.3f}; {feas}/{len(cells)} cells feasible")
    doc = {"model": MODEL, "cluster": "edgent", "margin": a.margin, "requests": a.requests,
           "costs": "profiles" if profiles else "analytic", "accuracy": acc, "meet_rate": rate,
           "met": met, "total": total, "meet_rate_all_deadlines": rate_all, "met_all": tot["all"], "load_end": load(), "wall_s": round(time.time() - t_start),
           "cells": [{"mbps": bw, "deadline_ms": dl, **c} for (bw, dl), c in sorted(cells.items())],
           "configs": [{"mbps": bw, "config": cfg, "predicted_ms": predicted[(bw, cfg)], **m.summary()}
                       for (bw, cfg), m in sorted(measured.items())]}
    (out / "static.json").write_text(json.dumps(doc, indent=1))
    md = tables(cells, acc, rate, met, total, a, tot["all"])
    (out / "static.md").write_text(md)
    figure(cells, out / "static.png")
    print(md)


def tables(cells: dict[tuple[float, int], dict[str, Any]], acc: dict[str, float], rate: float, met: int,
           total: int, a: argparse.Namespace, all_: list[int]) -> str:
    head = "| Mbit/s | " + " | ".join(f"{d} ms" for d in DEADLINES) + " |\n|---|" + "---|" * len(DEADLINES) + "\n"
    t1 = t2 = head
    for bw in BANDWIDTHS:
        r1, r2 = [], []
        for dl in DEADLINES:
            c = cells[(bw, dl)]
            if not c["feasible"]:
                r1.append("—")
                r2.append("—")
                continue
            r1.append(short(c["config"]))
            r2.append(f"{c['meet_rate'] * 100:.0f}%")
        t1 += f"| {bw:g} | " + " | ".join(r1) + " |\n"
        t2 += f"| {bw:g} | " + " | ".join(r2) + " |\n"
    accs = ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
    return (f"Chosen configuration (exit, cut, order; F = final, eN = exit N, NS = front on the Pi "
            f"(Neurosurgeon order), ED = front on the edge (Edgent order); — = infeasible):\n\n{t1}\n"
            f"Measured deadline-meeting rate of the chosen configuration ({a.requests} requests each, "
            f"margin {a.margin:g}):\n\n{t2}\nOverall, deadlines 100-1000 ms: {met}/{total} = {rate * 100:.1f}% "
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
