"""The light modules (graph IR, geometry, plans, cluster, strategies, cost, sim) import without torch."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap

import coinfer.cost
import coinfer.sim

#: torch-side on purpose: the profiler's measurement core and the host calibration run kernels
TORCH_SIDE = {"coinfer.cost.measure", "coinfer.cost.calibrate", "coinfer.cost.accuracy"}


def _modules(pkg: object) -> list[str]:
    return sorted(f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__))  # type: ignore[attr-defined]


LIGHT = (["coinfer", "coinfer.graph.ir", "coinfer.graph.geometry", "coinfer.plan", "coinfer.plan.plan",
          "coinfer.plan.lower", "coinfer.cluster", "coinfer.trace", "coinfer.strategies", "coinfer.cost",
          "coinfer.sim"]
         + [m for m in _modules(coinfer.cost) + _modules(coinfer.sim) if m not in TORCH_SIDE])


def test_light_modules_import_and_run_without_torch() -> None:
    code = textwrap.dedent(f"""
        import importlib, sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        for m in {LIGHT!r}:
            importlib.import_module(m)
        # and they work: plan a hand-made graph, price it, simulate it
        from coinfer.cluster import builtin_cluster
        from coinfer.cost import CostModel
        from coinfer.graph.ir import Graph, Node
        from coinfer.sim.run import simulate_lowered
        from coinfer.strategies import PlanRequest, run
        conv = {{"kernel": [3, 3], "stride": [1, 1], "dilation": [1, 1], "pad": [1, 1, 1, 1], "groups": 1}}
        g = Graph("t", [Node("x", "input", (), (1, 3, 32, 32)),
                        Node("a", "conv", ("x",), (1, 8, 32, 32), conv, flops=2 * 27 * 8 * 1024),
                        Node("b", "conv", ("a",), (1, 8, 32, 32), conv, flops=2 * 72 * 8 * 1024)])
        cl = builtin_cluster("het4")
        costs = CostModel(g, cl)
        plan = run("proportional", PlanRequest(g, cl, "t", costs)).plan
        res = simulate_lowered(plan, g, costs)
        assert res.latency_ms > 0 and res.energy_j > 0
        bad = sorted(k for k in sys.modules if k == "torch" or k.startswith("torch."))
        assert sys.modules.get("torch") is None, bad
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
