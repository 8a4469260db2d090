"""Planning time per call of edgent (static), neurosurgeon and offload on alexnet / resnet18.

    .venv/bin/python benchmarks/edgent/plan_time.py [--calls 200]

Modes: "warm" — each call is a fresh PlanRequest over the same graph and cost model (as a
running coordinator holds them: the cost model caches part latencies, the planner memoises the
graph's structural work per graph object); "cold" — the cost model is rebuilt every call;
"first" — the graph is a fresh copy too (nothing cached: a planner's very first call).
Prints the median and p90 wall time per call in ms, the median CPU time per call (``time.process_time``:
what the call costs the planning process, nearly independent of other jobs on a shared machine), and the
host load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from coinfer.cluster import builtin_cluster
from coinfer.cost.model import CostModel
from coinfer.modelspec import capture_model
from coinfer.strategies import Infeasible, PlanRequest, run


def bench(model: str, strategy: str, calls: int, mode: str, **kw: object) -> tuple[float, float, float]:
    from coinfer.graph.ir import Graph

    g0 = capture_model(model).graph
    g = g0
    cl = builtin_cluster("edgent").with_bandwidth(1.0)
    costs = CostModel(g, cl)
    params = dict(kw.pop("params", {}))  # type: ignore[arg-type]
    ts, cpu = [], []
    for i in range(calls + 3):
        if mode == "first":
            g = Graph.from_dict(g0.to_dict())
        t0, c0 = time.perf_counter(), time.process_time()
        c = costs if mode == "warm" else CostModel(g, cl)
        try:
            run(strategy, PlanRequest(g, cl, model, c, params=params, **kw))  # type: ignore[arg-type]
        except Infeasible:
            pass
        if i >= 3:
            ts.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
    ts.sort()
    return statistics.median(ts), ts[int(0.9 * (len(ts) - 1))], statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args()
    rows = []
    load0 = os.getloadavg()
    print(f"load average {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} on {os.cpu_count()} cores")
    print(f"{'model':10} {'strategy':13} {'mode':5} {'median ms':>10} {'p90 ms':>8} {'cpu ms':>8}")
    for model in ("alexnet", "resnet18"):
        for strategy, kw in (("edgent", {"deadline_ms": 300.0}), ("neurosurgeon", {}), ("offload", {})):
            for mode in ("warm", "cold", "first"):
                med, p90, cpu = bench(model, strategy, a.calls, mode, **kw)
                rows.append({"model": model, "strategy": strategy, "mode": mode, "median_ms": med, "p90_ms": p90,
                             "cpu_median_ms": cpu})
                print(f"{model:10} {strategy:13} {mode:5} {med:10.2f} {p90:8.2f} {cpu:8.2f}", flush=True)
    worst = max(r["median_ms"] for r in rows if r["mode"] == "warm")
    worst_cpu = max(r["cpu_median_ms"] for r in rows if r["mode"] == "warm")
    load1 = os.getloadavg()
    print(f"worst warm median {worst:.2f} ms wall, {worst_cpu:.2f} ms CPU (goal < 10 ms per call); "
          f"load average at the end {load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"load_start": load0, "load_end": load1, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
