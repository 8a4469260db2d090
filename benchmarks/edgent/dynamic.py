"""Edgent, dynamic bandwidth: configuration map + runtime adapter vs the static configuration.

    .venv/bin/python benchmarks/edgent/dynamic.py [--frames 320] [--period-ms 250] [--deadline-ms 100]

A 3-state bandwidth trace (levels ``--levels`` Mbit/s, 8-16 s segments moving to a neighbouring
level, ~10 % multiplicative noise, 0.5 s rows) is
generated twice: a *historical* trace (seed 1) from which ``--strategy edgent --param mode=dynamic``
finds the states by change-point detection and builds the configuration map, and a *replayed* trace
(seed 2: other durations and order, same levels) that the workers' link shapers replay during the
runs. Frames (held-out digit images) arrive every ``--period-ms``; each must be answered within the
deadline of its arrival (a frame that cannot start before its deadline has passed is skipped and
counts as missed). Two runs on real worker processes (the built-in ``edgent`` cluster):

* static — Edgent's static plan for the bandwidth at the start of the replay, kept throughout;
* dynamic — the configuration map, switched by :class:`coinfer.runtime.adapters.EdgentAdapter`.

Writes out/dynamic.json, out/dynamic.md and out/dynamic.png (bandwidth, detected state, chosen
configuration over time).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

from common import MODEL, OUT, costs_for, digits_inputs, ensure_profiles, ensure_trained, load

from coinfer.cluster import Cluster, builtin_cluster
from coinfer.cost.bandwidth import BandwidthTrace
from coinfer.modelspec import capture_model
from coinfer.runtime.adapters import EdgentAdapter
from coinfer.runtime.coordinator import Session
from coinfer.runtime.launcher import LocalCluster
from coinfer.strategies import PlanRequest, run


def make_trace(path: Path, levels: list[float], seconds: float, seed: int, first: int) -> None:
    """Segments of 8-16 s; each moves to a random neighbouring level (a link degrades / recovers
    step by step), starting at level ``first``."""
    rnd = random.Random(seed)
    rows, t, s = [], 0.0, first
    while t < seconds:
        dur = rnd.uniform(8.0, 16.0)
        end = t + dur
        while t < end:
            rows.append((t, levels[s] * math.exp(rnd.gauss(0.0, 0.1))))
            t += 0.5
        s = rnd.choice([k for k in (s - 1, s + 1) if 0 <= k < len(levels)])
    path.write_text("t_s,mbps\n" + "".join(f"{a:.1f},{b:.5f}\n" for a, b in rows))


def with_trace(cl: Cluster, trace: Path | None) -> Cluster:
    return cl.model_copy(update={"network": cl.network.model_copy(update={"trace": None if trace is None
                                                                            else str(trace)})})


def frames_run(plan: Any, cl: Cluster, addresses: dict[str, str], adapter: EdgentAdapter | None, frames: int,
               period_ms: float, deadline_ms: float, replay: BandwidthTrace) -> list[dict[str, Any]]:
    xs, ys = digits_inputs()
    rows: list[dict[str, Any]] = []
    with Session(plan, cl, addresses, adapter=adapter) as s:
        # the adapter's configurations are built before the first frame (Session prepare)
        SESSION[adapter is not None] = {"prepare_s": round(s.prepare_s, 2), "deploys_at_start": s.deploys}
        t0 = float(s.link_trace["t0"]) if s.link_trace else time.time()
        start = time.time() + 1.0  # the first frame arrives 1 s after the session is up
        for i in range(frames):
            arrival = start + i * period_ms / 1e3
            now = time.time()
            if now < arrival:
                time.sleep(arrival - now)
            now = time.time()
            bw = replay.mbps_at(arrival - t0)
            row: dict[str, Any] = {"i": i, "t": arrival - start, "mbps": bw}
            if (now - arrival) * 1e3 > deadline_ms:  # still busy with earlier frames: this one is lost
                row.update(skipped=True, met=False, latency_ms=None, config=s.plan.strategy.params.get("config"))
                rows.append(row)
                continue
            k = i % len(ys)
            y = s(xs[k:k + 1])
            done = time.time()
            resp = (done - arrival) * 1e3
            row.update(skipped=False, latency_ms=resp, met=resp <= deadline_ms,
                       runtime_ms=float(s.last_trace.meta["latency_ms"]) if s.last_trace else None,
                       correct=int(y.argmax()) == int(ys[k]), config=s.plan.strategy.params.get("config"),
                       exit=s.plan.exit or "final")
            if adapter is not None and adapter.log:
                ev = adapter.log[-1]
                row.update(state=ev.state, estimate_mbps=ev.estimate_mbps, probe=ev.probe, switched=ev.switched)
            rows.append(row)
        SESSION[adapter is not None]["deploys_at_end"] = s.deploys
    return rows


SESSION: dict[bool, dict[str, Any]] = {}  # per run (dynamic?): prepare time and deploy counts


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ran = [r for r in rows if not r["skipped"]]
    return {"frames": len(rows), "executed": len(ran), "skipped": len(rows) - len(ran),
            "met": sum(r["met"] for r in rows), "meet_rate": sum(r["met"] for r in rows) / len(rows),
            "accuracy_executed": sum(r["correct"] for r in ran) / max(1, len(ran)),
            "accuracy_answered_in_time": sum(r["met"] and r["correct"] for r in rows) / len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=320)
    ap.add_argument("--period-ms", type=float, default=250.0)
    ap.add_argument("--deadline-ms", type=float, default=100.0)
    ap.add_argument("--levels", default="0.1,1.5,50", help="the three bandwidth levels (Mbit/s)")
    ap.add_argument("--margin", type=float, default=0.0)
    ap.add_argument("--probe-every-s", type=float, default=4.0)
    ap.add_argument("--profiles", default=str(OUT / "profiles"))
    ap.add_argument("--analytic", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    levels = [float(x) for x in a.levels.split(",")]
    secs = a.frames * a.period_ms / 1e3 + 10.0
    hist, replay_p = out / "trace_historical.csv", out / "trace_replay.csv"
    make_trace(hist, levels, secs, seed=1, first=len(levels) - 1)
    make_trace(replay_p, levels, secs, seed=2, first=len(levels) - 1)
    replay = BandwidthTrace.load(replay_p)
    load_start = load()
    acc = ensure_trained()
    profiles = None if a.analytic else ensure_profiles(Path(a.profiles))
    g = capture_model(MODEL).graph
    base = builtin_cluster("edgent")
    # the dynamic plan: states and configuration map from the historical trace
    t = time.perf_counter()
    dyn = run("edgent", PlanRequest(g, base, MODEL, costs_for(g, base, profiles), deadline_ms=a.deadline_ms,
                                    params={"mode": "dynamic", "trace": str(hist), "margin": a.margin}))
    plan_ms = (time.perf_counter() - t) * 1e3
    cmap = dyn.plan.strategy.params["config_map"]
    print(f"states (Mbit/s) {dyn.info['states']['centers_mbps']} planned in {plan_ms:.0f} ms; map:")
    for e in cmap:
        print(f"  state {e['state']}: {e['config']:45s} predicted {e['latency_ms']:7.1f} ms reward {e['reward']:.3f}"
              + (f" probe {e['probe']['config']}" if e.get("probe") else ""))
    # the static configuration chosen at the start (Edgent Algorithm 1 at the replay's first bandwidth)
    b0 = replay.mbps[0]
    cl0 = base.with_bandwidth(b0)
    stat = run("edgent", PlanRequest(g, cl0, MODEL, costs_for(g, cl0, profiles), deadline_ms=a.deadline_ms,
                                     params={"margin": a.margin}))
    print(f"static at {b0:.2f} Mbit/s: {stat.info['config']} predicted {stat.info['latency_ms']:.1f} ms")
    cl = with_trace(base, replay_p)
    results: dict[str, Any] = {}
    lc = LocalCluster(base).start()
    try:
        print(f"cpu emulation {lc.cpu_modes()}; {load()}", flush=True)
        for mode in ("static", "dynamic"):
            ad = EdgentAdapter(dyn.plan, probe_every_s=a.probe_every_s) if mode == "dynamic" else None
            plan = dyn.plan if mode == "dynamic" else stat.plan
            t = time.time()
            rows = frames_run(plan, cl, lc.addresses, ad, a.frames, a.period_ms, a.deadline_ms, replay)
            sm = summary(rows)
            sm.update(SESSION.get(ad is not None, {}))
            if ad is not None:
                sm.update(ad.summary())
            results[mode] = {"summary": sm, "rows": rows}
            print(f"{mode}: {sm} in {time.time() - t:.0f} s; {load()}", flush=True)
    finally:
        lc.stop()
    thresholds = dyn.plan.strategy.params["bandwidth_states"]["thresholds_mbps"]
    doc = {"model": MODEL, "deadline_ms": a.deadline_ms, "period_ms": a.period_ms, "levels": levels,
           "margin": a.margin, "probe_every_s": a.probe_every_s, "accuracy": acc,
           "costs": "profiles" if profiles else "analytic", "states": dyn.info["states"],
           "config_map": dyn.info["config_map"], "static_config": stat.info["config"],
           "static_predicted_ms": stat.info["latency_ms"], "static_start_mbps": b0, "plan_ms": plan_ms,
           "load_start": load_start, "load_end": load(), "runs": results}
    (out / "dynamic.json").write_text(json.dumps(doc, indent=1))
    md = report(doc, thresholds)
    (out / "dynamic.md").write_text(md)
    figure(doc, thresholds, out / "dynamic.png")
    print(md)


def report(doc: dict[str, Any], thresholds: list[float]) -> str:
    s, d = doc["static_config"], doc["runs"]
    lines = ["| run | configuration | frames | executed | deadline met | accuracy (answered in time) |",
             "|---|---|---|---|---|---|"]
    for mode in ("static", "dynamic"):
        sm = d[mode]["summary"]
        cfg = s if mode == "static" else "configuration map (" + ", ".join(e["config"] for e in doc["config_map"]) + ")"
        lines.append(f"| {mode} | {cfg} | {sm['frames']} | {sm['executed']} | {sm['meet_rate'] * 100:.1f}% "
                     f"| {sm['accuracy_answered_in_time'] * 100:.1f}% |")
    dm = d["dynamic"]["summary"]
    lines.append("")
    lines.append(f"Dynamic: {dm.get('switches', 0)} switches, {dm.get('probes', 0)} probe requests; states "
                 f"{doc['states']['centers_mbps']} Mbit/s (thresholds {[round(x, 3) for x in thresholds]}); "
                 f"deadline {doc['deadline_ms']:g} ms, a frame every {doc['period_ms']:g} ms. Load: {doc['load_start']} "
                 f"at the start, {doc['load_end']} at the end.")
    return "\n".join(lines) + "\n"


def figure(doc: dict[str, Any], thresholds: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dyn, sta = doc["runs"]["dynamic"]["rows"], doc["runs"]["static"]["rows"]
    fig, axs = plt.subplots(3, 1, figsize=(11, 7.5), sharex=True,
                            gridspec_kw={"height_ratios": [2.2, 1, 1.6]})
    ax = axs[0]
    ax.semilogy([r["t"] for r in dyn], [r["mbps"] for r in dyn], color="0.3", lw=1, label="replayed bandwidth")
    est = [(r["t"], r["estimate_mbps"]) for r in dyn if r.get("estimate_mbps")]
    if est:
        ax.semilogy(*zip(*est), ".", ms=3, color="tab:orange", label="adapter's estimate")
    for th in thresholds:
        ax.axhline(th, color="tab:blue", ls=":", lw=0.8)
    ax.set_ylabel("Mbit/s")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"Edgent dynamic vs static, deadline {doc['deadline_ms']:g} ms, a frame every "
                 f"{doc['period_ms']:g} ms")
    ax = axs[1]

    def true_state(m: float) -> int:
        return sum(m >= th for th in thresholds)

    ax.step([r["t"] for r in dyn], [true_state(r["mbps"]) for r in dyn], where="post", color="0.3",
            label="state of the replayed bandwidth")
    st = [(r["t"], r["state"]) for r in dyn if "state" in r]
    if st:
        ax.plot(*zip(*st), ".", ms=3, color="tab:orange", label="detected state")
    ax.set_yticks(range(len(thresholds) + 1))
    ax.set_ylabel("state")
    ax.legend(loc="upper right", fontsize=8)
    ax = axs[2]
    configs = sorted({r["config"] for r in dyn + sta if r.get("config")})
    idx = {c: i for i, c in enumerate(configs)}
    ax.plot([r["t"] for r in dyn if r.get("config")], [idx[r["config"]] for r in dyn if r.get("config")], ".",
            ms=3, color="tab:green", label="dynamic: configuration")
    miss_d = [(r["t"], idx[r["config"]]) for r in dyn if not r["met"] and r.get("config")]
    miss_s = [(r["t"], idx[r["config"]]) for r in sta if not r["met"] and r.get("config")]
    if miss_d:
        ax.plot(*zip(*miss_d), "x", ms=5, color="tab:red", label="dynamic: deadline missed")
    if miss_s:
        ax.plot(*zip(*miss_s), "|", ms=7, color="tab:purple", label="static: deadline missed")
    ax.set_yticks(range(len(configs)), configs, fontsize=7)
    ax.set_xlabel("time (s)")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
