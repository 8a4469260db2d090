"""Per-stage compute inflation of a split plan, in one process (no runtime, no quota, no messages).

For a plan planned on ``eq4``, every stage is timed twice on one thread:
split as planned (the sum of its parts, run one after the other) and whole
(the same stage boundaries, one part each). The ratio is what splitting
costs in compute alone — halo rows computed twice and smaller, less
efficient kernels — before any communication, waiting or CPU quota. The
sum over stages bounds the plan's parallel efficiency from above:
``whole / (split-sum / 4 + unsplit stages)`` when perfectly balanced.

    .venv/bin/python benchmarks/runtime/scaling/inflation.py resnet50 even max_redundancy=0.3
    .venv/bin/python benchmarks/runtime/scaling/inflation.py vgg16 even fc_split=true
    .venv/bin/python benchmarks/runtime/scaling/inflation.py vgg16 even fc_split=true --backend onnxruntime
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("strategy")
    ap.add_argument("params", nargs="*", help="strategy parameters key=value")
    ap.add_argument("--cluster", default="eq4")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--backend", default="torch", help="the parts' backend (torch, onnxruntime, ...)")
    a = ap.parse_args(argv)
    import torch

    from coinfer.api import plan_result
    from coinfer.execute.local import InProcessExecutor
    from coinfer.modelspec import capture_model
    from coinfer.plan.plan import Stage, Whole

    torch.set_num_threads(1)
    params: dict[str, object] = {}
    for kv in a.params:
        k, _, v = kv.partition("=")
        params[k] = float(v) if v.replace(".", "", 1).isdigit() else v
    cm = capture_model(a.model)
    plan = plan_result(a.model, a.cluster, a.strategy, **params).plan
    whole_plan = replace(plan, stages=[Stage(s.until, Whole(plan.source)) for s in plan.stages])
    x = torch.randn(cm.graph.input_shape, generator=torch.Generator().manual_seed(0))
    split_ex = InProcessExecutor(cm, plan, backend=a.backend)
    whole_ex = InProcessExecutor(cm, whole_plan, backend=a.backend)
    for _ in range(2):
        split_ex.run(x)
        whole_ex.run(x)
    split: dict[int, list[float]] = {}
    whole: dict[int, list[float]] = {}
    parts: dict[int, int] = {}
    for _ in range(a.repeat):  # interleaved
        run_s: dict[int, float] = {}
        for t in split_ex.run(x, timed=True).timings:
            run_s[t.stage] = run_s.get(t.stage, 0.0) + t.ms
            parts[t.stage] = parts.get(t.stage, 0) + 1
        for s, ms in run_s.items():
            split.setdefault(s, []).append(ms)
        for t in whole_ex.run(x, timed=True).timings:
            whole.setdefault(t.stage, []).append(t.ms)
    n = len({p.device for s in range(len(plan.stages)) for p in plan.parts(cm.graph, s)})
    tot_w = tot_s = bound = 0.0
    print(f"{a.model} {a.strategy} {params or ''}: {len(plan.stages)} stages over {n} devices, one thread, "
          f"median of {a.repeat}")
    print(f"  {'stage':>5} {'until':24} {'type':8} {'parts':>5} {'whole ms':>9} {'split-sum ms':>12} {'ratio':>6}")
    for s in sorted(whole):
        w, sp = statistics.median(whole[s]), statistics.median(split[s])
        k = parts[s] // a.repeat
        tot_w, tot_s = tot_w + w, tot_s + sp
        bound += sp / n if k > 1 else sp
        print(f"  {s:>5} {plan.stages[s].until:24} {plan.stages[s].partition.type:8} {k:>5} {w:9.2f} {sp:12.2f} "
              f"{sp / w:6.2f}")
    print(f"  total: whole {tot_w:.1f} ms, split parts {tot_s:.1f} ms (x{tot_s / tot_w:.2f}); perfectly balanced "
          f"over {n} devices with nothing else: efficiency <= {tot_w / bound / n:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
