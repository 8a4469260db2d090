"""How much of eq4's lost utilisation is the quota freezing message handling? (README: "io_quota")

Starts eq4 (onnxruntime, unshaped loopback) once and runs each plan and the one-device `local`
plan with every worker's message-handling threads — the ZeroMQ I/O thread and the main thread,
which receives and decodes messages — either inside the worker's cgroup quota (as always) or
moved to the root cgroup (no quota; the compute threads stay limited). The two placements
alternate request by request after warm-up; medians. Needs cgroup v1 at /sys/fs/cgroup/cpu.

    flock /tmp/coinfer-timing.lock .venv/bin/python benchmarks/runtime/scaling/io_quota.py

Moving the main thread is safe only once the request pool's threads exist (they are created by
it and would inherit its cgroup): the warm-up requests create them before the first move.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path("/sys/fs/cgroup/cpu")
CASES = [("vgg16", "even", {"max_redundancy": 0.1, "fc_split": True}),
         ("resnet50", "even", {"max_redundancy": 0.3})]


def _io_threads(pid: int) -> list[str]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text()
        if comm.startswith("ZMQbg/IO") or tid == str(pid):
            out.append(tid)
    return out


def _move(lc: Any, free: bool) -> None:
    for w in lc.workers.values():
        dest = ROOT / "tasks" if free else Path(w.limiter.path) / "tasks"
        for tid in _io_threads(w.proc.pid):
            dest.write_text(tid)


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0],
                            epilog="Takes no options; run it under the timing lock (see the module docstring)."
                            ).parse_args(argv)  # --help prints this and exits: nothing starts
    # this directory's scaling benchmark (a script's directory is on sys.path)
    from bench import _cluster

    from coinfer.api import plan_result
    from coinfer.inputs import random_input
    from coinfer.modelspec import capture_model
    from coinfer.runtime.coordinator import Session
    from coinfer.runtime.launcher import LocalCluster

    if not (ROOT / "tasks").exists():
        print(f"needs cgroup v1 cpu at {ROOT}", file=sys.stderr)
        return 2
    cl = _cluster(None, "onnxruntime")  # eq4, unshaped links, every device on onnxruntime
    rounds = 8
    ms: dict[tuple[str, str, bool], list[float]] = {}
    with LocalCluster(cl) as lc:
        if any(w.limiter is None or not str(w.limiter.mode).startswith("cgroup-v1") for w in lc.workers.values()):
            print("the workers are not limited by cgroup v1", file=sys.stderr)
            return 2
        try:
            for model, strategy, params in CASES:
                x = random_input(tuple(capture_model(model).graph.input_shape), 0)
                for strat, kw in ((strategy, params), ("local", {})):
                    plan = plan_result(model, cl, strat, **kw).plan
                    with Session(plan, cl, lc.addresses, cpu_modes=lc.cpu_modes(), dead_after_s=60,
                                 replan=False) as s:
                        for _ in range(2):
                            s(x)
                        for r in range(rounds):
                            for free in ((True, False) if r % 2 else (False, True)):
                                _move(lc, free)
                                t0 = time.perf_counter()
                                s(x)
                                ms.setdefault((model, strat, free), []).append((time.perf_counter() - t0) * 1e3)
        finally:
            _move(lc, False)
    print(f"eq4, onnxruntime, unshaped; median of {rounds} alternating requests; load {os.getloadavg()[0]:.2f}")
    print(f"  {'model':10s} {'plan':6s} {'handling':22s} {'plan ms':>8s} {'local ms':>9s} {'speedup':>8s} {'effic.':>7s}")
    for model, strategy, _ in CASES:
        for free in (False, True):
            sp = statistics.median(ms[(model, strategy, free)])
            loc = statistics.median(ms[(model, "local", free)])
            where = "no quota (root cgroup)" if free else "inside the quota"
            print(f"  {model:10s} {strategy:6s} {where:22s} {sp:8.1f} {loc:9.1f} {loc / sp:8.3f} {loc / sp / 4:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
