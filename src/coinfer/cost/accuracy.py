"""How well the cost model predicts part latencies on this host (torch side).

``python -m coinfer.cost.accuracy --model resnet18 [--parts 40] [--threads 1]``

1. calibrates the host (:func:`coinfer.cost.calibrate.measure_host`) and
   profiles the model in this process (:func:`coinfer.cost.measure.profile_device`:
   top-anchored row sweeps per cut-point segment, whole latencies, regressions);
2. draws random parts the profile never measured: 1–3 fused segments, a
   random row slab (anywhere, so with halo on both sides) or a grid tile, or
   the whole stage;
3. measures each part (median of ``--reps``) and compares it with the
   analytic prediction and with the profiled one.

Prints one JSON object: median and p90 of |predicted − measured| / measured
for both. A check of the cost model alone, not of the simulator (which
``coinfer bench --validate`` checks against the runtime).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from typing import Any


def _p(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--parts", type=int, default=40)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import torch

    from ..cluster import parse_cluster
    from ..graph.geometry import part_geometry
    from ..modelspec import capture_model
    from .calibrate import measure_host
    from .measure import measure_part, profile_device, segments
    from .model import CostModel

    torch.set_num_threads(a.threads)
    cm = capture_model(a.model)
    g = cm.graph
    cal = measure_host(threads=a.threads)
    prof = profile_device(cm, "h", reps=3, warmup=1, layer_reps=2, calibrate=False)
    cl = parse_cluster({"source": "h", "devices": [{"name": "h", "cpu_share": 1.0, "threads": a.threads}]})
    analytic = CostModel(g, cl, calibration=cal)
    profiled = CostModel(g, cl, {"h": prof}, calibration=cal)

    rng = random.Random(a.seed)
    segs = segments(g)
    rows = []
    for _ in range(a.parts):
        i = rng.randrange(len(segs))
        j = min(len(segs), i + rng.randint(1, 3))
        start, end = segs[i][0], segs[j - 1][1]
        spatial = g.segment_is_spatial(start, end) and g[end].is_feature_map
        node = g[end]
        region = None
        if spatial:
            kind = rng.choice(["rows", "rows", "tile", "whole"])
            H, W = node.height, node.width
            if kind != "whole":
                r0 = rng.randrange(H)
                r1 = rng.randint(r0 + 1, H)
                c0, c1 = (0, W)
                if kind == "tile":
                    c0 = rng.randrange(W)
                    c1 = rng.randint(c0 + 1, W)
                region = (r0, r1, c0, c1)
        geom = part_geometry(g, start, end, region)
        meas = measure_part(cm, geom, a.reps, 1)
        rows.append((meas, analytic.part_ms("h", geom), profiled.part_ms("h", geom)))
    err_a = [abs(p - m) / m for m, p, _ in rows]
    err_p = [abs(p - m) / m for m, _, p in rows]
    out = {"model": a.model, "threads": a.threads, "parts": len(rows),
           "calibration": {k: round(v, 3) for k, v in cal.to_dict().items() if isinstance(v, float)},
           "analytic_median_err": round(statistics.median(err_a), 3), "analytic_p90_err": round(_p(err_a, 0.9), 3),
           "profiled_median_err": round(statistics.median(err_p), 3), "profiled_p90_err": round(_p(err_p, 0.9), 3),
           "regressions": {k: {"n": r.n, "rmse_ms": round(r.rmse_ms, 4)} for k, r in prof.regressions.items()}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
