"""Runtime overhead: a 1-device plan through the runtime vs plain PyTorch in one process.

The ``local`` strategy puts the whole model on the source device; the
runtime then runs it on a real worker process (``LocalCluster``, loopback,
no CPU emulation, the same torch thread count as here, the ``torch`` backend
unless ``--backend``): the coordinator
sends the input (ZeroMQ/TCP), the worker runs its program (the per-part
executor over the whole model), returns the output, then its trace. Plain
PyTorch is ``model(x)`` under ``torch.no_grad()`` in this process; a third
arm runs the same plan with the in-process executor (``InProcessExecutor``:
the very compute the worker does, without processes or sockets), so the
runtime's own cost is separated from the executor's. After a warm-up,
``--repeat`` interleaved rounds (the order rotates each round); medians. Also reported: the CPU time per request of both processes (worker
and coordinator) vs the plain call's, and where the runtime's extra wall time
goes (from the trace: the worker's compute vs everything else).

    .venv/bin/python benchmarks/runtime/overhead/bench.py [--model resnet50] [--threads 1] [--repeat 30] [--json]

Exit code 1 if the median wall-clock overhead exceeds the goal (5 %).
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

GOAL_PCT = 5.0


def measure(model: str, threads: int, repeat: int, warmup: int, backend: str = "torch") -> dict[str, Any]:
    import torch

    from coinfer.cluster import parse_cluster
    from coinfer.execute.local import InProcessExecutor, compare
    from coinfer.inputs import random_input
    from coinfer.modelspec import capture_model
    from coinfer.runtime.coordinator import Session
    from coinfer.runtime.emulation import process_cpu_time
    from coinfer.runtime.launcher import LocalCluster
    from coinfer.strategies import PlanRequest, run

    torch.set_num_threads(threads)
    cm = capture_model(model)
    net = cm.module
    assert net is not None
    net.eval()
    cl = parse_cluster({"source": "d0", "devices": [{"name": "d0", "cpu_share": 1.0, "threads": threads,
                                                     "backend": backend}],
                        "network": {"shape": False}}, "one")
    plan = run("local", PlanRequest(cm.graph, cl, model)).plan
    x = random_input(tuple(cm.graph.input_shape), 0)
    lc = LocalCluster(cl, emulate_cpu=False).start()
    ex = InProcessExecutor(cm, plan)
    wall: dict[str, list[float]] = {"plain": [], "executor": [], "runtime": []}
    cpu: dict[str, float] = {"plain": 0.0, "executor": 0.0, "runtime_worker": 0.0, "runtime_coord": 0.0}
    compute_ms: list[float] = []
    try:
        wpid = lc.workers["d0"].proc.pid
        with Session(plan, cl, lc.addresses) as s, torch.no_grad():

            def plain() -> Any:
                return net(x)

            for _ in range(warmup):
                plain()
                ex(x)
                s(x)
            arms = ("plain", "executor", "runtime")
            for i in range(repeat):
                order = arms[i % 3:] + arms[:i % 3]
                if i % 2:
                    order = order[::-1]
                for key in order:
                    if key in ("plain", "executor"):
                        fn = plain if key == "plain" else (lambda: ex(x))
                        c0, t0 = time.process_time(), time.perf_counter()
                        y = fn()
                        wall[key].append(time.perf_counter() - t0)
                        cpu[key] += time.process_time() - c0
                        if key == "plain":
                            y_plain = y
                    else:
                        w0 = process_cpu_time(wpid)
                        c0, t0 = time.process_time(), time.perf_counter()
                        y_rt = s(x)
                        wall["runtime"].append(time.perf_counter() - t0)
                        cpu["runtime_coord"] += time.process_time() - c0
                        cpu["runtime_worker"] += process_cpu_time(wpid) - w0
                        tr = s.last_trace
                        assert tr is not None
                        compute_ms.append(sum(e.dur_ms for e in tr.events if e.lane == "compute"))
            diff = compare(y_rt, y_plain)[0]
    finally:
        lc.stop()
    p, r = statistics.median(wall["plain"]), statistics.median(wall["runtime"])
    e = statistics.median(wall["executor"])
    comp = statistics.median(compute_ms)
    rt_cpu = cpu["runtime_worker"] + cpu["runtime_coord"]
    return {
        "model": model, "threads": threads, "repeat": repeat, "backend": backend,
        "plain_ms": round(1e3 * p, 2), "executor_ms": round(1e3 * e, 2), "runtime_ms": round(1e3 * r, 2),
        "overhead_pct": round(100 * (r / p - 1), 2),
        "overhead_vs_executor_pct": round(100 * (r / e - 1), 2),
        "executor_cpu_ms": round(1e3 * cpu["executor"] / repeat, 2),
        "cpu_overhead_vs_executor_pct": round(100 * (rt_cpu / cpu["executor"] - 1), 2),
        "plain_ms_min": round(1e3 * min(wall["plain"]), 2), "runtime_ms_min": round(1e3 * min(wall["runtime"]), 2),
        "overhead_min_pct": round(100 * (min(wall["runtime"]) / min(wall["plain"]) - 1), 2),
        "worker_compute_ms": round(comp, 2), "runtime_non_compute_ms": round(1e3 * r - comp, 2),
        "plain_cpu_ms": round(1e3 * cpu["plain"] / repeat, 2),
        "runtime_cpu_ms": round(1e3 * (cpu["runtime_worker"] + cpu["runtime_coord"]) / repeat, 2),
        "runtime_worker_cpu_ms": round(1e3 * cpu["runtime_worker"] / repeat, 2),
        "runtime_coord_cpu_ms": round(1e3 * cpu["runtime_coord"] / repeat, 2),
        "cpu_overhead_pct": round(100 * ((cpu["runtime_worker"] + cpu["runtime_coord"]) / cpu["plain"] - 1), 2),
        "max_abs_diff": diff,
        "load": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--backend", default="torch", help="the worker's execution backend (default torch, "
                    "the same kernels as plain PyTorch and the in-process executor)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    r = measure(a.model, a.threads, a.repeat, a.warmup, a.backend)
    ok = r["overhead_pct"] <= GOAL_PCT
    if a.json:
        print(json.dumps(r))
    else:
        print(f"runtime overhead, {a.model}, 1-device plan (local), {a.threads} thread(s), worker backend {a.backend}, "
              f"median of {a.repeat} interleaved runs ({platform.python_version()}, load {r['load'][0]:.2f})")
        print(f"  plain PyTorch   {r['plain_ms']:8.2f} ms   (min {r['plain_ms_min']:.2f})   "
              f"CPU {r['plain_cpu_ms']:.2f} ms")
        print(f"  executor        {r['executor_ms']:8.2f} ms   (in process, same plan)   "
              f"CPU {r['executor_cpu_ms']:.2f} ms")
        print(f"  runtime         {r['runtime_ms']:8.2f} ms   (min {r['runtime_ms_min']:.2f})   "
              f"CPU {r['runtime_cpu_ms']:.2f} ms (worker {r['runtime_worker_cpu_ms']:.2f} + "
              f"coordinator {r['runtime_coord_cpu_ms']:.2f})")
        print(f"    of which worker compute {r['worker_compute_ms']:.2f} ms, "
              f"everything else {r['runtime_non_compute_ms']:.2f} ms")
        print(f"  ratio runtime/plain = {r['runtime_ms'] / r['plain_ms']:.4f}  overhead {r['overhead_pct']:+.2f} % "
              f"(min-based {r['overhead_min_pct']:+.2f} %, CPU {r['cpu_overhead_pct']:+.2f} %)  "
              f"goal <= {GOAL_PCT} %: {'meets' if ok else 'MISSES'}; max abs diff {r['max_abs_diff']:.3g}")
        print(f"  ratio runtime/executor = {r['runtime_ms'] / r['executor_ms']:.4f}  "
              f"(the runtime's own cost: {r['overhead_vs_executor_pct']:+.2f} % wall, "
              f"{r['cpu_overhead_vs_executor_pct']:+.2f} % CPU)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
