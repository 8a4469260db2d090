"""Executor benchmark: per-part overhead and halo redundancy (see README.md).

(1) overhead: the in-process executor running a 1-part plan (``local``
    strategy) against calling the plain ``nn.Module``, one thread, warm-up then
    the median of N interleaved runs (the order alternates every round).
(2) halo: extra FLOPs of exact 2/4/8-row splits made by the ``even`` strategy,
    (a) fused: ``max_redundancy`` large, so the whole splittable part of the
    model is ONE row-split stage, and (b) per cut point: ``max_redundancy=0``,
    a stage ends at every splittable cut point except where fusing costs no
    extra FLOPs (BN / activations).

    .venv/bin/python benchmarks/executor/bench.py              # both, default models
    .venv/bin/python benchmarks/executor/bench.py --only halo --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

OVERHEAD_MODELS = ("vgg16", "resnet50")
GOAL_PCT = 3.0


def _cluster(n: int) -> Any:
    from coinfer.cluster import parse_cluster

    return parse_cluster({"source": "d0", "devices": [{"name": f"d{i}", "cpu_share": 1.0} for i in range(n)]},
                         f"eq{n}")


def _plan(model: str, strategy: str, n: int, **params: Any) -> Any:
    from coinfer.modelspec import capture_model
    from coinfer.strategies import PlanRequest, run

    cm = capture_model(model)
    return run(strategy, PlanRequest(cm.graph, _cluster(n), model, params=params)).plan


def overhead(models: list[str], repeat: int, warmup: int) -> list[dict[str, Any]]:
    import torch

    from coinfer.execute.local import InProcessExecutor, compare
    from coinfer.inputs import random_input
    from coinfer.modelspec import capture_model

    torch.set_num_threads(1)
    rows = []
    for name in models:
        cm = capture_model(name)
        assert cm.module is not None
        plan = _plan(name, "local", 1)
        ex = InProcessExecutor(cm, plan)
        x = random_input(tuple(cm.graph.input_shape), 0)
        wall: dict[str, list[float]] = {"plain": [], "exec": []}
        cpu: dict[str, list[float]] = {"plain": [], "exec": []}
        with torch.no_grad():
            for _ in range(warmup):
                cm.module(x)
                ex(x)
            for i in range(repeat):
                order = (("plain", cm.module), ("exec", ex))
                for key, fn in (order if i % 2 == 0 else order[::-1]):
                    c0, t0 = time.thread_time(), time.perf_counter()
                    fn(x)
                    wall[key].append(time.perf_counter() - t0)
                    cpu[key].append(time.thread_time() - c0)
            diff = compare(ex(x), cm.module(x))[0]
        p, e = statistics.median(wall["plain"]), statistics.median(wall["exec"])
        pc, ec = statistics.median(cpu["plain"]), statistics.median(cpu["exec"])
        rows.append({"model": name, "plain_ms": round(1e3 * p, 2), "executor_ms": round(1e3 * e, 2),
                     "overhead_pct": round(100 * (e / p - 1), 2),
                     "plain_cpu_ms": round(1e3 * pc, 2), "executor_cpu_ms": round(1e3 * ec, 2),
                     "cpu_overhead_pct": round(100 * (ec / pc - 1), 2),
                     "max_abs_diff": diff, "runs": repeat})
    return rows


def halo(models: list[str], ns: tuple[int, ...] = (2, 4, 8)) -> list[dict[str, Any]]:
    from coinfer.execute.local import plan_geometries
    from coinfer.modelspec import capture_model

    rows = []
    for name in models:
        g = capture_model(name).graph
        row: dict[str, Any] = {"model": name, "gflops": round(g.flops / 1e9, 3)}
        for mode, red in (("fused", 1e9), ("per_cut", 0.0)):
            for n in ns:
                plan = _plan(name, "even", n, max_redundancy=red)
                geoms = plan_geometries(plan.validate(g), plan)
                total = sum(pg.flops for pg in geoms.values())
                split = [s for s in plan.stages if s.partition.type != "whole"]
                row[f"{mode}_{n}"] = round(100 * (total / g.flops - 1), 2)
                row[f"{mode}_{n}_stages"] = len(split)
        rows.append(row)
    return rows


def _md_overhead(rows: list[dict[str, Any]]) -> str:
    out = [("| model | plain model, wall (ms) | executor, wall (ms) | overhead, wall | "
            "plain model, CPU (ms) | executor, CPU (ms) | overhead, CPU | max abs diff |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['plain_ms']:.1f} | {r['executor_ms']:.1f} | {r['overhead_pct']:+.2f} % | "
                   f"{r['plain_cpu_ms']:.1f} | {r['executor_cpu_ms']:.1f} | {r['cpu_overhead_pct']:+.2f} % | "
                   f"{r['max_abs_diff']:.1g} |")
    return "\n".join(out)


def _md_halo(rows: list[dict[str, Any]], ns: tuple[int, ...] = (2, 4, 8)) -> str:
    head = " | ".join(f"fused {n} rows" for n in ns) + " | " + " | ".join(f"per-cut {n} rows" for n in ns)
    out = [f"| model | GFLOPs | {head} |", "|---|---:|" + "---:|" * (2 * len(ns))]
    for r in rows:
        cells = [f"{r[f'fused_{n}']:.1f} %" for n in ns] + \
                [f"{r[f'per_cut_{n}']:.1f} % ({r[f'per_cut_{n}_stages']} st.)" for n in ns]
        out.append(f"| {r['model']} | {r['gflops']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("overhead", "halo"), help="run one part only")
    ap.add_argument("--models", help="comma-separated overhead models (default vgg16,resnet50)")
    ap.add_argument("--halo-models", help="comma-separated halo models (default: every zoo model)")
    ap.add_argument("--repeat", type=int, default=30, help="timed runs per model and variant")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    a = ap.parse_args(argv)
    import torch

    from coinfer import zoo

    res: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "machine": platform.machine(), "threads": 1,
                           "load_avg": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count()}
    if a.only in (None, "overhead"):
        models = a.models.split(",") if a.models else list(OVERHEAD_MODELS)
        res["overhead"] = overhead(models, a.repeat, a.warmup)
    if a.only in (None, "halo"):
        res["halo"] = halo(a.halo_models.split(",") if a.halo_models else zoo.names())
    res["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    if a.json:
        print(json.dumps(res))
    else:
        print(f"python {res['python']}, torch {res['torch']}, {res['machine']}, {res['cpus']} cpus, "
              f"load average {res['load_avg']} at start, {res['load_avg_end']} at end")
        if "overhead" in res:
            print(f"\n(1) 1-part plan vs plain model, 1 thread, median of {a.repeat} interleaved runs "
                  f"(goal <= {GOAL_PCT:.0f} %)\n")
            print(_md_overhead(res["overhead"]))
        if "halo" in res:
            print("\n(2) extra FLOPs of exact row splits (even strategy), % of the model's FLOPs\n")
            print(_md_halo(res["halo"]))
    bad = [r for r in res.get("overhead", []) if min(r["overhead_pct"], r["cpu_overhead_pct"]) > GOAL_PCT]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
