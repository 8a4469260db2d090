"""Shared pieces of the Edgent benchmarks: the set-up, trained exits, profiles, measured runs."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from coinfer.cluster import Cluster, builtin_cluster
from coinfer.cost.model import CostModel
from coinfer.cost.profile import ProfileSet
from coinfer.graph.ir import Graph
from coinfer.plan.plan import Plan

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = HERE / "out"
MODEL = "alexnet_digits"
#: Edgent's link rates (Li et al. 2018, §IV: 50 kbit/s to 1.5 Mbit/s) plus two fast ones
BANDWIDTHS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 10.0, 50.0)
#: Edgent's deadlines 100-1000 ms (Li et al. 2018, Fig. 6), plus 50 and 75 ms: this AlexNet is small
DEADLINES = (50, 75, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)
PAPER_DEADLINES = tuple(d for d in DEADLINES if d >= 100)


def load() -> str:
    la = os.getloadavg()
    return f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def ensure_trained(model: str = MODEL) -> dict[str, float]:
    """The exits' held-out accuracies; trains them (coinfer train exits) when not cached."""
    from coinfer.train.exits import cached_accuracies, train_exits

    acc = cached_accuracies(model)
    if acc is None:
        print(f"training the exits of {model} (coinfer train exits; {load()})", flush=True)
        res = train_exits(model, progress=lambda e, n, r: print(f"  epoch {e}/{n} loss {r['loss']:.3f}", flush=True))
        print(f"  trained in {res.train_s:.0f} s: {res.accuracy}", flush=True)
        acc = cached_accuracies(model)
    assert acc is not None
    from coinfer.train.exits import read_metrics

    if (read_metrics(model) or {}).get("reduced"):  # a smoke run's chance-level accuracies plan the configs
        print(f"WARNING: the cached exits of {model} come from a reduced training (accuracies {acc}); the figures "
              f"are not comparable — coinfer train exits --model {model} --force trains the full recipe", flush=True)
    return acc


def ensure_profiles(pdir: Path, cluster: str = "edgent", model: str = MODEL) -> ProfileSet | None:
    """Profiles of the emulated devices (coinfer profile, real workers); None if profiling fails."""
    if not (pdir / "pi.json").is_file() or not (pdir / "edge.json").is_file():
        print(f"profiling {model} on {cluster} (coinfer profile; {load()})", flush=True)
        exe = Path(sys.executable).parent / "coinfer"
        r = subprocess.run([str(exe), "profile", cluster, "-m", model, "-o", str(pdir)], check=False)
        if r.returncode != 0:
            print("  profiling failed: planning with the analytic cost model", flush=True)
            return None
    return ProfileSet.load_dir(str(pdir))


def costs_for(graph: Graph, cluster: Cluster, profiles: ProfileSet | None) -> CostModel:
    return CostModel(graph, cluster, profiles)


def edgent_at(mbps: float) -> Cluster:
    return builtin_cluster("edgent").with_bandwidth(mbps)


def digits_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out digit images (1x3x64x64 each) and labels: the requests of the benchmarks."""
    from coinfer.train.data import digits_split

    sp = digits_split()
    return sp.x_test, sp.y_test


@dataclass
class Measured:
    latencies_ms: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)

    def rate(self, deadline_ms: float) -> float:
        return sum(x <= deadline_ms for x in self.latencies_ms) / max(1, len(self.latencies_ms))

    def summary(self) -> dict[str, Any]:
        xs = sorted(self.latencies_ms)
        return {"n": len(xs), "median_ms": statistics.median(xs) if xs else None,
                "p95_ms": xs[int(0.95 * (len(xs) - 1))] if xs else None, "max_ms": xs[-1] if xs else None,
                "accuracy": sum(self.correct) / max(1, len(self.correct))}


def measure(plan: Plan, cluster: Cluster, addresses: dict[str, str], n: int, warmup: int = 2,
            start: int = 0) -> Measured:
    """``n`` requests (after ``warmup``) of held-out digits on real workers; latency as the runtime measures."""
    from coinfer.runtime.coordinator import Session

    xs, ys = digits_inputs()
    out = Measured()
    with Session(plan, cluster, addresses) as s:
        for i in range(warmup + n):
            k = (start + i) % len(ys)
            y = s(xs[k:k + 1])
            if i >= warmup:
                assert s.last_trace is not None
                out.latencies_ms.append(float(s.last_trace.meta["latency_ms"]))
                out.correct.append(int(y.argmax()) == int(ys[k]))
    return out


def wait_for_quiet(max_load: float, timeout_s: float) -> None:
    """Wait (up to ``timeout_s``) for the 1-minute load average to drop below ``max_load``."""
    t_end = time.monotonic() + timeout_s
    while os.getloadavg()[0] > max_load and time.monotonic() < t_end:
        time.sleep(10)
