"""DistrEdge vs the other spatial planners (README.md): simulated and measured speedups, training cost.

For each cluster and model: emulated profiles of the devices (measured once, cached), then every
baseline plans with the same profiled cost model, DistrEdge trains its splitter (DDPG, and TD3 for
comparison) and plans; each plan is simulated and — with ``--measure`` — run on a LocalCluster (worker
processes with the cluster's cpu shares and shaped links), ``--repeat`` requests after one warm-up,
median. Speedup = best baseline / distredge, per case. Baselines are picked by name from
``coinfer.strategies.names()`` at run time; missing ones are reported as missing.

    python benchmarks/distredge/bench.py                      # everything (long: see README)
    python benchmarks/distredge/bench.py --models vgg16 --clusters het4 --episodes 500 --no-measure
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
BASELINES = ["coedge", "modnn", "deepthings", "aofl", "offload"]


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def measure(plan: Any, cl: Any, lc: Any, cm: Any, repeat: int) -> dict[str, Any]:
    import torch

    from coinfer.execute.local import compare, reference_output
    from coinfer.runtime.coordinator import Session

    x = torch.randn(tuple(cm.graph.input_shape), generator=torch.Generator().manual_seed(0))
    lat = []
    with Session(plan, cl, lc.addresses, replan=False) as s:
        y = s(x)  # warm-up (deploy, first-touch)
        for _ in range(repeat):
            s(x)
            lat.append(float(s.last_trace.meta["latency_ms"]))
    rel = compare(y, reference_output(cm, x))[1]
    return {"measured_ms": round(statistics.median(lat), 2), "all_ms": [round(v, 1) for v in lat],
            "rel_err": rel}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg16,resnet50,yolov2_tiny")
    ap.add_argument("--clusters", default=f"het4,{HERE / 'mixed4.yaml'}")
    ap.add_argument("--episodes", type=int, default=4000)
    ap.add_argument("--algos", default="ddpg,td3", help="the first one's plan is the distredge result")
    ap.add_argument("--measure", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()

    import torch

    from coinfer import strategies
    from coinfer.cluster import resolve_cluster
    from coinfer.cost.model import CostModel
    from coinfer.modelspec import capture_model
    from coinfer.sim.run import simulate_lowered
    from coinfer.strategies import PlanRequest, run
    from coinfer.train.distredge import emulated_profiles, plot_curve

    torch.set_num_threads(1)
    names = strategies.names()
    base = [b for b in BASELINES if b in names]
    missing = [b for b in BASELINES if b not in names]
    algos = args.algos.split(",")
    print(f"baselines: {base}; missing: {missing or 'none'}; load {load()}", flush=True)
    results: list[dict[str, Any]] = []
    out = Path(args.out)
    for cname in args.clusters.split(","):
        cl = resolve_cluster(cname)
        cshort = Path(cname).stem
        lc = None
        if args.measure:
            from coinfer.runtime.launcher import LocalCluster

            lc = LocalCluster(cl, emulate_cpu=True).start()
        try:
            for model in args.models.split(","):
                cm = capture_model(model)
                g = cm.graph
                t0 = time.time()
                profs = emulated_profiles(cl, model, g, note=lambda s: print("  " + s, flush=True))
                costs = CostModel(g, cl, profs)
                row: dict[str, Any] = {"cluster": cshort, "model": model, "profile_s": round(time.time() - t0),
                                       "load_start": load(), "plans": {}}
                plans = {}
                for s in base:
                    try:
                        res = run(s, PlanRequest(g, cl, model, costs))
                        plans[s] = res.plan
                        row["plans"][s] = {"sim_ms": round(simulate_lowered(res.plan, g, costs).latency_ms, 2)}
                    except Exception as e:  # noqa: BLE001 - a baseline that cannot plan this case
                        row["plans"][s] = {"error": f"{type(e).__name__}: {e}"[:200]}
                curves = {}
                for algo in algos:
                    params = {"train_episodes": args.episodes, "algo": algo, "retrain": args.retrain}
                    t1 = time.time()
                    res = run("distredge", PlanRequest(g, cl, model, costs, params=params))
                    key = "distredge" if algo == algos[0] else f"distredge_{algo}"
                    plans[key] = res.plan
                    info = res.info
                    meta = json.loads(Path(info["policy"]).with_suffix(".json").read_text())
                    curves[algo] = meta.get("curve_ms", [])
                    row["plans"][key] = {"sim_ms": round(simulate_lowered(res.plan, g, costs).latency_ms, 2),
                                         "train_s": info["train_s"], "plan_s": round(time.time() - t1, 1),
                                         "episodes": info["episodes"], "volumes": info["volumes"],
                                         "policy_inference_ms": info["policy_inference_ms"],
                                         "policy_ms": info["policy_latency_ms"], "splits_from": info["splits_from"],
                                         "tail": info["tail"]}
                png = HERE / f"curve_{cshort}_{model}.png"
                plot_curve(curves, png, f"DistrEdge splitter: {model} on {cshort}")
                row["curve_png"] = png.name
                ok = {k: v for k, v in row["plans"].items() if k in base and "sim_ms" in v}
                best = min(ok, key=lambda k: ok[k]["sim_ms"])
                row["best_baseline_sim"] = best
                row["speedup_sim"] = round(ok[best]["sim_ms"] / row["plans"]["distredge"]["sim_ms"], 3)
                if lc is not None:
                    for k, p in plans.items():
                        try:
                            row["plans"][k].update(measure(p, cl, lc, cm, args.repeat))
                        except Exception as e:  # noqa: BLE001
                            row["plans"][k]["measure_error"] = f"{type(e).__name__}: {e}"[:200]
                    okm = {k: v for k, v in row["plans"].items() if k in base and "measured_ms" in v}
                    if okm and "measured_ms" in row["plans"]["distredge"]:
                        bm = min(okm, key=lambda k: okm[k]["measured_ms"])
                        row["best_baseline_measured"] = bm
                        row["speedup_measured"] = round(okm[bm]["measured_ms"]
                                                        / row["plans"]["distredge"]["measured_ms"], 3)
                row["load_end"] = load()
                results.append(row)
                out.write_text(json.dumps({"missing_baselines": missing, "episodes": args.episodes,
                                           "results": results}, indent=1))
                _print_row(row)
        finally:
            if lc is not None:
                lc.stop()
    print("\nspeedup of distredge over the best baseline per case (simulated / measured):")
    for r in results:
        print(f"  {r['cluster']:>7} {r['model']:<12} sim {r['speedup_sim']:.2f}x (vs {r['best_baseline_sim']})"
              + (f"  measured {r['speedup_measured']:.2f}x (vs {r['best_baseline_measured']})"
                 if "speedup_measured" in r else ""))
    print(f"wrote {out}")


def _print_row(r: dict[str, Any]) -> None:
    print(f"\n{r['cluster']} {r['model']} (load {r['load_start']} -> {r['load_end']}):", flush=True)
    for k, v in r["plans"].items():
        extra = ""
        if "train_s" in v:
            extra = f"  train {v['train_s']:.0f} s, {v['episodes']} ep, inference {v['policy_inference_ms']:.2f} ms"
        meas = f"  measured {v['measured_ms']:8.1f}" if "measured_ms" in v else ""
        if "sim_ms" in v:
            print(f"  {k:<16} sim {v['sim_ms']:8.1f}{meas}{extra}", flush=True)
        else:
            print(f"  {k:<16} {v.get('error')}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
