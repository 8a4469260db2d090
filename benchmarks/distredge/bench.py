"""DistrEdge vs the other spatial planners (README.md): simulated and measured speedups, training cost.

Phases (``all``, the default, runs them in order, each the way the machine-sharing rules ask):

* ``profile`` — emulated, nonlinear latency tables of every model on every device (cached under
  ``coinfer.paths.cache_dir("profiles", "emulated")``). ``--timing cpu`` (default): the thread's CPU
  time at full speed, the quota applied by the cost model — robust to other processes' load, run
  niced; ``--timing wall``: sustained runs under each device's cgroup quota — a timed measurement:
  ``all`` runs it under ``flock /tmp/coinfer-timing.lock``, one locked run per model.
* ``plan`` — every baseline plans with the same profiled cost model, DistrEdge partitions and trains
  its splitter (DDPG, the paper's; ``--algos ddpg,td3`` adds TD3 for comparison) and plans; each plan
  is simulated. CPU-heavy, deterministic apart from the training time: ``all`` runs it under
  ``nice -n 10``. Writes ``results/cases/<cluster>_<model>.json`` and the plan files.
* ``measure`` — the saved plans of the ``--cases`` on a LocalCluster (worker processes with the
  cluster's cpu shares and shaped links): one warm-up, ``--repeat`` requests, median; outputs
  checked against the plain model. ``all`` runs one locked run per case.
* ``report`` — the table (speedup = best baseline / distredge per case), ``results/results.json``.

    python benchmarks/distredge/bench.py                              # the claim, one command
    python benchmarks/distredge/bench.py plan --models vgg16 --clusters het4 --episodes 500
    flock /tmp/coinfer-timing.lock python benchmarks/distredge/bench.py measure --cases het4:yolov2_tiny
    python benchmarks/distredge/bench.py report
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RES = HERE / "results"
LOCK = "/tmp/coinfer-timing.lock"
BASELINES = ["coedge", "modnn", "deepthings", "aofl", "offload"]
CLUSTERS = {"het4": "het4", "mixed4": str(HERE / "mixed4.yaml")}
MODELS = ["vgg16", "resnet50", "yolov2_tiny"]
MEASURE_CASES = "het4:yolov2_tiny,mixed4:yolov2_tiny,het4:resnet50,mixed4:resnet50"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _case(cluster: str, model: str) -> str:
    return f"{cluster}_{model}"


def _cluster(name: str) -> Any:
    from coinfer.cluster import resolve_cluster

    return resolve_cluster(CLUSTERS.get(name, name))


# -- profile --------------------------------------------------------------------------------------
def phase_profile(args: argparse.Namespace) -> None:
    from coinfer.modelspec import capture_model
    from coinfer.train.distredge import emulated_profiles

    for model in args.models.split(","):
        for cname in args.clusters.split(","):
            t0 = time.time()
            l0 = load()
            emulated_profiles(_cluster(cname), model, capture_model(model).graph,
                              note=lambda s: print("  " + s, flush=True), timing=args.timing)
            print(f"profiles {model} on {cname}: {time.time() - t0:.0f} s, load {l0} -> {load()}", flush=True)


# -- plan -----------------------------------------------------------------------------------------
def phase_plan(args: argparse.Namespace) -> None:
    import torch

    from coinfer import strategies
    from coinfer.cost.model import CostModel, load_cost_model
    from coinfer.modelspec import capture_model
    from coinfer.sim.run import simulate_lowered
    from coinfer.strategies import PlanRequest, run
    from coinfer.train.distredge import emulated_profiles, plot_curve

    torch.set_num_threads(1)
    names = strategies.names()
    base = [b for b in BASELINES if b in names]
    missing = [b for b in BASELINES if b not in names]
    algos = args.algos.split(",")
    (RES / "cases").mkdir(parents=True, exist_ok=True)
    print(f"baselines: {base}; missing: {missing or 'none'}; load {load()}, nice {os.nice(0)}", flush=True)
    for cname in args.clusters.split(","):
        cl = _cluster(cname)
        for model in args.models.split(","):
            g = capture_model(model).graph
            if args.worker_profiles:  # profiles made through the workers by `coinfer profile` (validated)
                wdir = Path(args.worker_profiles) / cname / model
                if not wdir.is_dir():
                    raise SystemExit(f"no worker profiles in {wdir}: run flock {LOCK} coinfer profile "
                                     f"{CLUSTERS.get(cname, cname)} --model {model} -o {wdir}")
                costs = load_cost_model(g, cl, str(wdir))
                print(f"  costs from the worker profiles in {wdir}", flush=True)
            else:
                profs = emulated_profiles(cl, model, g, note=lambda s: print("  " + s, flush=True),
                                          timing=args.timing)
                costs = CostModel(g, cl, profs)
            pdir = RES / "plans" / _case(cname, model)
            pdir.mkdir(parents=True, exist_ok=True)
            row: dict[str, Any] = {"cluster": cname, "model": model, "episodes": args.episodes,
                                   "timing": "worker profiles" if args.worker_profiles else args.timing,
                                   "missing_baselines": missing, "load_start": load(), "nice": os.nice(0),
                                   "plans": {}}
            for s in base:
                try:
                    t1 = time.perf_counter()
                    res = run(s, PlanRequest(g, cl, model, costs))
                    row["plans"][s] = {"sim_ms": round(simulate_lowered(res.plan, g, costs).latency_ms, 2),
                                       "plan_s": round(time.perf_counter() - t1, 2)}
                    res.plan.save(pdir / f"{s}.json")
                except Exception as e:  # noqa: BLE001 - a baseline that cannot plan this case
                    row["plans"][s] = {"error": f"{type(e).__name__}: {e}"[:200]}
            curves = {}
            for algo in algos:
                params = {"train_episodes": args.episodes, "algo": algo, "retrain": args.retrain,
                          "costs": "cpu" if args.timing == "cpu" else "auto"}
                if args.shaping != "none":
                    params["shaping"] = args.shaping
                t1 = time.time()
                res = run("distredge", PlanRequest(g, cl, model, costs, params=params))
                key = "distredge" if algo == algos[0] else f"distredge_{algo}"
                res.plan.save(pdir / f"{key}.json")
                info = res.info
                meta = json.loads(Path(info["policy"]).with_suffix(".json").read_text())
                curves[algo] = meta.get("curve_ms", [])
                row["plans"][key] = {"sim_ms": round(simulate_lowered(res.plan, g, costs).latency_ms, 2),
                                     "train_s": info["train_s"], "plan_s": round(time.time() - t1, 1),
                                     "trained_now": info["trained"], "train_load": meta.get("train_load"),
                                     "train_cpu_s": meta.get("train_cpu_s"), "train_nice": meta.get("train_nice"),
                                     "episodes": info["episodes"], "volumes": info["volumes"],
                                     "policy_inference_ms": info["policy_inference_ms"],
                                     "policy_inference_cpu_ms": info.get("policy_inference_cpu_ms"),
                                     "policy": info["policy"], "algo": algo,
                                     "policy_ms": info["policy_latency_ms"], "splits_from": info["splits_from"],
                                     "tail": info["tail"], "partition": info["partition"]}
            png = RES / f"curve_{_case(cname, model)}.png"
            plot_curve(curves, png, f"DistrEdge splitter: {model} on {cname}")
            row["curve_png"] = png.name
            ok = {k: v for k, v in row["plans"].items() if k in base and "sim_ms" in v}
            best = min(ok, key=lambda k: ok[k]["sim_ms"])
            row["best_baseline_sim"] = best
            row["speedup_sim"] = round(ok[best]["sim_ms"] / row["plans"]["distredge"]["sim_ms"], 3)
            row["load_end"] = load()
            (RES / "cases" / f"{_case(cname, model)}.json").write_text(json.dumps(row, indent=1))
            _print_row(row)


# -- measure --------------------------------------------------------------------------------------
def phase_measure(args: argparse.Namespace) -> None:
    import torch

    from coinfer.execute.local import compare, reference_output
    from coinfer.modelspec import capture_model
    from coinfer.plan.plan import Plan
    from coinfer.runtime.coordinator import Session
    from coinfer.runtime.launcher import LocalCluster

    torch.set_num_threads(1)
    (RES / "measured").mkdir(parents=True, exist_ok=True)
    for case in args.cases.split(","):
        cname, model = case.split(":")
        cl = _cluster(cname)
        cm = capture_model(model)
        crow = json.loads((RES / "cases" / f"{_case(cname, model)}.json").read_text())
        x = torch.randn(tuple(cm.graph.input_shape), generator=torch.Generator().manual_seed(0))
        ref = reference_output(cm, x)
        out: dict[str, Any] = {"cluster": cname, "model": model, "repeat": args.repeat, "load_start": load(),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "plans": {}}
        t0 = time.time()
        lc = LocalCluster(cl, emulate_cpu=True).start()
        try:
            for k, v in crow["plans"].items():
                pf = RES / "plans" / _case(cname, model) / f"{k}.json"
                if "sim_ms" not in v or not pf.is_file():
                    continue
                if v["sim_ms"] > args.cap_ms:
                    out["plans"][k] = {"skipped": f"simulated {v['sim_ms']:.0f} ms > --cap-ms {args.cap_ms:.0f}"}
                    continue
                plan = Plan.load(pf)
                lat = []
                try:
                    with Session(plan, cl, lc.addresses, replan=False) as s:
                        y = s(x)  # warm-up (deploy, first touch)
                        for _ in range(args.repeat):
                            s(x)
                            lat.append(float(s.last_trace.meta["latency_ms"]))
                    out["plans"][k] = {"measured_ms": round(statistics.median(lat), 2),
                                       "all_ms": [round(t, 1) for t in lat], "rel_err": compare(y, ref)[1]}
                except Exception as e:  # noqa: BLE001
                    out["plans"][k] = {"measure_error": f"{type(e).__name__}: {e}"[:200]}
                print(f"  {case} {k:<16} sim {v['sim_ms']:8.1f}  {out['plans'][k]}", flush=True)
        finally:
            lc.stop()
        out["policy_inference"] = _time_policies(crow, cl)
        out["load_end"] = load()
        out["seconds"] = round(time.time() - t0)
        (RES / "measured" / f"{_case(cname, model)}.json").write_text(json.dumps(out, indent=1))
        print(f"{case}: measured in {out['seconds']} s, load {out['load_start']} -> {out['load_end']}", flush=True)


def _find_policy(cl: Any, model: str, algo: str, v: dict[str, Any]) -> Path | None:
    """The cached policy a case row used (rows written before they recorded the path)."""
    from coinfer.paths import cache_dir
    from coinfer.strategies.distredge import cluster_fingerprint

    if v.get("policy") and Path(v["policy"]).is_file():
        return Path(v["policy"])
    fp = cluster_fingerprint(cl)
    for f in sorted(cache_dir("distredge").glob(f"{model}-*.json")):
        m = json.loads(f.read_text())
        if (m.get("algo") == algo and m.get("cluster") == fp and m.get("volumes") == v.get("volumes")
                and m.get("settings", {}).get("episodes") == v.get("episodes")
                and m.get("settings", {}).get("shaping", "none") == "none" and f.with_suffix(".zip").is_file()):
            return f.with_suffix(".zip")
    return None


def _time_policies(crow: dict[str, Any], cl: Any, reps: int = 20) -> dict[str, Any]:
    """Wall time of one deterministic rollout (one ``predict`` per volume) of each trained policy, median."""
    import numpy as np

    from coinfer.train.distredge import load_agent

    out = {}
    for k, v in crow["plans"].items():
        if not k.startswith("distredge"):
            continue
        algo = v.get("algo") or (k.split("_", 1)[1] if "_" in k else "ddpg")
        pol = _find_policy(cl, crow["model"], algo, v)
        if pol is None:
            continue
        agent = load_agent(algo, pol)
        obs = np.zeros(agent.observation_space.shape, np.float32)
        agent.predict(obs, deterministic=True)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in v["volumes"]:
                agent.predict(obs, deterministic=True)
            ts.append((time.perf_counter() - t0) * 1e3)
        out[k] = {"volumes": len(v["volumes"]), "median_ms": round(statistics.median(ts), 3),
                  "max_ms": round(max(ts), 3)}
    return out


# -- report ---------------------------------------------------------------------------------------
def phase_report(args: argparse.Namespace) -> None:
    rows = []
    for f in sorted((RES / "cases").glob("*.json")):
        r = json.loads(f.read_text())
        mf = RES / "measured" / f.name
        if mf.is_file():
            m = json.loads(mf.read_text())
            r["measured"] = {k: v for k, v in m.items() if k != "plans"}
            for k, v in m.get("policy_inference", {}).items():
                r["plans"].setdefault(k, {})["locked_inference_ms"] = v["median_ms"]
            for k, v in m["plans"].items():
                r["plans"].setdefault(k, {}).update(v)
            okm = {k: v for k, v in r["plans"].items() if k in BASELINES and "measured_ms" in v}
            if okm and "measured_ms" in r["plans"].get("distredge", {}):
                bm = min(okm, key=lambda k: okm[k]["measured_ms"])
                r["best_baseline_measured"] = bm
                r["speedup_measured"] = round(okm[bm]["measured_ms"] / r["plans"]["distredge"]["measured_ms"], 3)
        rows.append(r)
    (RES / "results.json").write_text(json.dumps({"results": rows}, indent=1))
    print("speedup of distredge over the best baseline per case (simulated / measured):")
    for r in rows:
        d = r["plans"]["distredge"]
        extra = ""
        for k, v in r["plans"].items():
            if k.startswith("distredge_"):
                extra += f"; {k[10:]} {v['sim_ms']:.1f} ms ({v['train_s']:.0f} s)"
        print(f"  {r['cluster']:>7} {r['model']:<12} sim {r['speedup_sim']:.2f}x (vs {r['best_baseline_sim']} "
              f"{r['plans'][r['best_baseline_sim']]['sim_ms']:.1f} ms, distredge {d['sim_ms']:.1f} ms; "
              f"train {d['train_s']:.0f} s, inference {d['policy_inference_ms']:.1f} ms{extra})"
              + (f"  measured {r['speedup_measured']:.2f}x (vs {r['best_baseline_measured']} "
                 f"{r['plans'][r['best_baseline_measured']]['measured_ms']:.0f} ms, distredge "
                 f"{d['measured_ms']:.0f} ms, load {r['measured']['load_start'][0]})"
                 if "speedup_measured" in r else ""))
    print(f"wrote {RES / 'results.json'}")
    print("\n| cluster | model | volumes | best baseline (sim ms) | distredge DDPG sim ms | speedup sim | TD3 sim ms "
          "| train wall / CPU s (DDPG) | inference ms | measured: best baseline / distredge ms | speedup measured |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        d = r["plans"]["distredge"]
        b = r["best_baseline_sim"]
        t = r["plans"].get("distredge_td3", {})
        td3 = f"{t['sim_ms']:.0f}" if "sim_ms" in t else "—"
        meas = sp = "—"
        if "speedup_measured" in r:
            bm = r["best_baseline_measured"]
            meas = f"{bm} {r['plans'][bm]['measured_ms']:.0f} / {d['measured_ms']:.0f}"
            sp = f"**{r['speedup_measured']:.2f}×**"
        print(f"| {r['cluster']} | {r['model']} | {len(d['volumes'])} | {b} {r['plans'][b]['sim_ms']:.0f} | "
              f"{d['sim_ms']:.0f} | **{r['speedup_sim']:.2f}×** | {td3} | {d['train_s']:.0f} / "
              f"{d.get('train_cpu_s') or 0:.0f} | {d['policy_inference_ms']:.1f} | {meas} | {sp} |")


def _print_row(r: dict[str, Any]) -> None:
    print(f"\n{r['cluster']} {r['model']} (load {r['load_start']} -> {r['load_end']}):", flush=True)
    for k, v in r["plans"].items():
        extra = ""
        if "train_s" in v:
            extra = (f"  train {v['train_s']:.0f} s, {v['episodes']} ep, {len(v['volumes'])} volumes, "
                     f"inference {v['policy_inference_ms']:.2f} ms, splits from {v['splits_from']}")
        if "sim_ms" in v:
            print(f"  {k:<16} sim {v['sim_ms']:8.1f}{extra}", flush=True)
        else:
            print(f"  {k:<16} {v.get('error')}", flush=True)
    print(f"  speedup (sim) {r['speedup_sim']:.2f}x over {r['best_baseline_sim']}", flush=True)


def phase_all(args: argparse.Namespace) -> None:
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--clusters", args.clusters, "--episodes", str(args.episodes), "--algos", args.algos,
              "--timing", args.timing, "--results", str(RES)]
    if args.worker_profiles:  # `coinfer profile` through the workers: timed, one locked run per case
        exe = str(Path(sys.executable).parent / "coinfer")
        for cname in args.clusters.split(","):
            for model in args.models.split(","):
                wdir = Path(args.worker_profiles) / cname / model
                if not wdir.is_dir():
                    subprocess.run(["flock", LOCK, exe, "profile", CLUSTERS.get(cname, cname), "--model", model,
                                    "-o", str(wdir)], check=True)
        common += ["--worker-profiles", args.worker_profiles]
    else:
        for model in args.models.split(","):  # one locked run per model (each a few minutes)
            pre = ["flock", LOCK] if args.timing == "wall" else ["nice", "-n", "10"]
            subprocess.run([*pre, *me, "profile", "--models", model, "--clusters", args.clusters,
                            "--timing", args.timing, "--results", str(RES)], check=True)
    subprocess.run(["nice", "-n", "10", *me, "plan", "--models", args.models, *common]
                   + (["--retrain"] if args.retrain else []), check=True)
    if args.cases:
        for case in args.cases.split(","):  # one locked run per case (each < 10 min)
            subprocess.run(["flock", LOCK, *me, "measure", "--cases", case, "--repeat", str(args.repeat),
                            "--cap-ms", str(args.cap_ms), "--results", str(RES)], check=True)
    phase_report(args)


def main() -> None:
    global RES
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", nargs="?", default="all", choices=["all", "profile", "plan", "measure", "report"])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--clusters", default="het4,mixed4", help="built-in names, 'mixed4' or cluster files")
    ap.add_argument("--episodes", type=int, default=4000)
    ap.add_argument("--algos", default="ddpg,td3", help="the first one's plan is the distredge result")
    ap.add_argument("--shaping", default="none", help="reward shaping for the plan phase: none | progress")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--worker-profiles", default=None,
                    help="plan phase: price with profiles made through the workers (`coinfer profile`, the "
                         "simulator's validated route) in DIR/<cluster>/<model> instead of emulated tables")
    ap.add_argument("--timing", choices=["wall", "cpu"], default="cpu",
                    help="emulated profiles: cpu (thread CPU time at full speed, the quota applied by the cost "
                         "model; robust to other processes' load: run niced) or wall (sustained runs under the "
                         "quota; timed: run locked)")
    ap.add_argument("--cases", default=MEASURE_CASES, help="cluster:model cases to measure ('' for none)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cap-ms", type=float, default=8000.0, help="do not measure plans simulated slower")
    ap.add_argument("--results", default=str(RES), help="where results go (default: results/ here)")
    args = ap.parse_args()
    RES = Path(args.results)
    {"all": phase_all, "profile": phase_profile, "plan": phase_plan, "measure": phase_measure,
     "report": phase_report}[args.phase](args)


if __name__ == "__main__":
    main()
