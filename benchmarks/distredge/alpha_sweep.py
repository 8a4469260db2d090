"""DistrEdge's LC-PSS weight α swept on one case: simulated plans, then measured on real workers.

    .venv/bin/python benchmarks/distredge/alpha_sweep.py plan resnet50 het4 --alphas 0.75,0.5,0.25
    flock /tmp/coinfer-timing.lock .venv/bin/python benchmarks/distredge/alpha_sweep.py measure resnet50 het4

``plan`` prices every baseline and ``distredge`` at each α with the emulated CPU-time tables
(``costs=cpu``, as ``bench.py`` does by default), prints the volumes and simulated latencies and
saves the plans in ``--out`` (default ``/tmp/distredge_alpha``); ``measure`` runs the saved plans
of the case (or those named with ``--plans``) on the cluster's real workers, ``--rounds``
alternating rounds, and prints the median latencies and each plan's error against the plain model.
README: results and discussion ("α swept").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # the DistrEdge bench: its clusters and load helper

BASELINES = ("coedge", "aofl", "offload", "deepthings", "even")


def plan(args: argparse.Namespace) -> None:
    from coinfer.cost.model import CostModel
    from coinfer.modelspec import capture_model
    from coinfer.sim.run import simulate_lowered
    from coinfer.strategies import PlanRequest, run
    from coinfer.train.distredge import emulated_profiles

    cl = B._cluster(args.cluster)
    g = capture_model(args.model).graph
    costs = CostModel(g, cl, emulated_profiles(cl, args.model, g, note=print, timing="cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.model}_{args.cluster}"
    for s in BASELINES:
        try:
            p = run(s, PlanRequest(g, cl, args.model, costs)).plan
        except Exception as e:  # noqa: BLE001 - a baseline that cannot plan this case
            print(f"{s:12s} cannot plan: {e}")
            continue
        p.save(out / f"{stem}_{s}.json")
        print(f"{s:12s} sim {simulate_lowered(p, g, costs).latency_ms:8.1f} ms  stages {len(p.stages)}", flush=True)
    for alpha in (float(a) for a in args.alphas.split(",")):
        t = time.time()
        params = {"alpha": alpha, "costs": "cpu", "train_episodes": args.episodes}
        r = run("distredge", PlanRequest(g, cl, args.model, costs, params=params))
        r.plan.save(out / f"{stem}_distredge_a{alpha}.json")
        print(f"distredge alpha={alpha}: volumes {r.info['volumes']} sim "
              f"{simulate_lowered(r.plan, g, costs).latency_ms:8.1f} ms  train {r.info['train_s']} s "
              f"({time.time() - t:.0f} s)", flush=True)


def measure(args: argparse.Namespace) -> None:
    from coinfer.execute.local import compare, reference_output
    from coinfer.modelspec import capture_model
    from coinfer.plan.plan import Plan
    from coinfer.runtime.coordinator import Session
    from coinfer.runtime.launcher import LocalCluster

    torch.set_num_threads(1)
    files = [Path(f) for f in args.plans] if args.plans else \
        sorted(Path(args.out).glob(f"{args.model}_{args.cluster}_*.json"))
    if not files:
        raise SystemExit(f"no plans for {args.model} on {args.cluster} in {args.out}: run the plan step first")
    cl = B._cluster(args.cluster)
    cm = capture_model(args.model)
    x = torch.randn(tuple(cm.graph.input_shape), generator=torch.Generator().manual_seed(0))
    ref = reference_output(cm, x)
    lat: dict[Path, list[float]] = {f: [] for f in files}
    err: dict[Path, float] = {}
    with LocalCluster(cl, emulate_cpu=True) as lc:
        sessions = {f: Session(Plan.load(f), cl, lc.addresses, replan=False, dead_after_s=10.0) for f in files}
        try:
            for f, s in sessions.items():
                s.__enter__()
                err[f] = compare(s(x), ref)[1]
                s(x)  # warm-up
            for r in range(args.rounds):
                for f in files if r % 2 == 0 else files[::-1]:
                    sessions[f](x)
                    lat[f].append(float(sessions[f].last_trace.meta["latency_ms"]))
        finally:
            for s in sessions.values():
                s.__exit__(None, None, None)
    for f in files:
        print(f"{f.stem:40s} median {statistics.median(lat[f]):7.1f} ms  rel err {err[f]:.1e}  "
              f"all {[round(v) for v in lat[f]]}")
    print(f"load {B.load()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("plan", "measure"))
    ap.add_argument("model")
    ap.add_argument("cluster", help="het4, mixed4 or a cluster file")
    ap.add_argument("--alphas", default="0.75,0.5,0.25")
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--out", default="/tmp/distredge_alpha")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--plans", nargs="*", help="measure these plan files instead of the case's saved ones")
    args = ap.parse_args()
    plan(args) if args.step == "plan" else measure(args)


if __name__ == "__main__":
    main()
