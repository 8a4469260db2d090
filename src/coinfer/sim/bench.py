"""How fast the simulator is: ``python -m coinfer.sim.bench [--model resnet50] [--cluster eq16]``.

Plans ``--model`` with ``--strategy`` over ``--cluster``, lowers it once, and
times :func:`coinfer.sim.simulate` alone (the capture, planning and lowering
are not timed; wall and thread CPU time): ``cold`` with a fresh cost model each time (every part priced
from scratch), ``warm`` reusing one (its part costs cached, as a planner's
search loop does). Prints one JSON object with the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--cluster", default="eq16")
    ap.add_argument("--strategy", default="proportional")
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args(argv)

    from ..api import plan_result
    from ..cluster import resolve_cluster
    from ..cost.model import CostModel
    from ..modelspec import capture_model
    from ..plan.lower import lower
    from . import simulate

    g = capture_model(a.model).graph
    cl = resolve_cluster(a.cluster)
    plan = plan_result(a.model, cl, a.strategy).plan
    low = lower(plan, g)
    cold, warm, cold_cpu, warm_cpu = [], [], [], []
    shared = CostModel(g, cl)
    res = simulate(low, shared)
    for _ in range(a.repeat):
        costs = CostModel(g, cl)
        t0, c0 = time.perf_counter(), time.thread_time()
        simulate(low, costs)
        cold.append((time.perf_counter() - t0) * 1e3)
        cold_cpu.append((time.thread_time() - c0) * 1e3)
        t0, c0 = time.perf_counter(), time.thread_time()
        simulate(low, shared)
        warm.append((time.perf_counter() - t0) * 1e3)
        warm_cpu.append((time.thread_time() - c0) * 1e3)
    out = {"model": a.model, "cluster": a.cluster, "strategy": a.strategy, "devices": len(low.programs),
           "instructions": sum(len(p) for p in low.programs.values()), "events": len(res.trace.events),
           "simulate_ms_cold": round(statistics.median(cold), 2), "simulate_ms_warm": round(statistics.median(warm), 2),
           # CPU time of this thread: what the simulation costs, free of other processes' load
           "simulate_cpu_ms_cold": round(statistics.median(cold_cpu), 2),
           "simulate_cpu_ms_warm": round(statistics.median(warm_cpu), 2),
           "predicted_latency_ms": round(res.latency_ms, 2)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
