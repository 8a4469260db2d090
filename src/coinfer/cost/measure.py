"""The profiler's measurement core (torch side; torch is imported lazily).

Runs parts of a captured model with the same :class:`~coinfer.execute.part.PartRunner`
the workers use, in *this* process, so calling it inside a worker measures
that device (its cpu quota, threads and backend):

* :func:`measure_stage_rows` — a stage's latency as a function of the output
  rows computed (a region anchored at the top, full width): DistrEdge's
  nonlinear latency tables (Hou et al., 2022);
* :func:`measure_whole` — a stage computed whole (non-splittable stages, the tail);
* :func:`time_nodes` — per-node latencies of a part, the samples of the
  Edgent / Neurosurgeon per-layer-type regressions;
* :func:`profile_device` — all of the above for every cut-point segment of
  the model, fitted and packed as a :class:`~coinfer.cost.profile.DeviceProfile`.

A profiler measures and never decides; the planners read the profile.
"""

from __future__ import annotations

import datetime as _dt
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..graph.geometry import PartGeom, part_geometry
from ..graph.ir import Graph
from .profile import DeviceProfile, LinkProbe
from .regression import LayerSample, features, fit

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..graph.capture import CapturedModel

Progress = Callable[[str, int, int], None]  # (what, done, total)


def rows_sweep(height: int, points: int = 8) -> list[int]:
    """Rows to measure for an output of ``height`` rows: 1, evenly spaced values, and ``height``."""
    if height <= points:
        return list(range(1, height + 1))
    out = {1, height}
    for i in range(1, points - 1):
        out.add(max(1, round(height * i / (points - 1))))
    return sorted(out)


def _input_for(cm: CapturedModel, geom: PartGeom, seed: int = 0) -> torch.Tensor:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(geom.in_shape(cm.graph), generator=g)


def _median_ms(fn: Callable[[], Any], reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(max(reps, 1)):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def measure_part(cm: CapturedModel, geom: PartGeom, reps: int = 5, warmup: int = 2) -> float:
    """Median latency (ms) of one part through :class:`PartRunner`."""
    from ..execute.part import PartRunner

    runner = PartRunner(cm, geom)
    x = _input_for(cm, geom)
    return _median_ms(lambda: runner(x), reps, warmup)


def measure_stage_rows(cm: CapturedModel, start: str, end: str, rows_list: list[int], reps: int = 5,
                       warmup: int = 2, halo: str = "exact") -> list[tuple[int, float]]:
    """``[(rows, median ms)]`` of stage (start, end] computing output rows [0, rows), full width."""
    g = cm.graph
    node = g[end]
    out = []
    for r in rows_list:
        if not 1 <= r <= node.height:
            raise ValueError(f"rows {r} outside 1..{node.height} of {end}")
        geom = part_geometry(g, start, end, (0, r, 0, node.width), halo)
        out.append((r, measure_part(cm, geom, reps, warmup)))
    return out


def measure_whole(cm: CapturedModel, start: str, end: str, reps: int = 5, warmup: int = 2) -> float:
    """Median latency (ms) of stage (start, end] computed whole."""
    return measure_part(cm, part_geometry(cm.graph, start, end, None), reps, warmup)


def time_nodes(cm: CapturedModel, geom: PartGeom, reps: int = 5, warmup: int = 1,
               stat: str = "median") -> list[tuple[str, float]]:
    """Per-node latency (ms) of one part, in execution order: the ``median`` (or ``min``) over ``reps``.

    Follows :meth:`PartRunner.__call__` step by step with a clock around each
    node (the same slicing and kernels), so the samples price what a worker
    runs. ``min`` per node resists bursts of load from other processes.
    """
    import torch

    from ..execute.kernels import run_node
    from ..execute.part import PartRunner

    runner = PartRunner(cm, geom)
    x = _input_for(cm, geom)
    per: list[list[float]] = [[] for _ in geom.nodes]
    with torch.no_grad():
        for it in range(warmup + max(reps, 1)):
            bufs: dict[str, torch.Tensor] = {geom.start: x}
            for idx, (ng, node) in enumerate(zip(geom.nodes, runner.nodes)):
                t0 = time.perf_counter()
                ins = []
                for e in ng.edges:
                    t = bufs[e.src]
                    if e.slice is not None:
                        r0, r1, c0, c1 = e.slice
                        if (r0, c0) != (0, 0) or r1 != t.shape[2] or c1 != t.shape[3]:
                            t = t[:, :, r0:r1, c0:c1]
                    ins.append(t)
                bufs[ng.name] = run_node(cm, node, ins, ng, runner._cache)
                dt = (time.perf_counter() - t0) * 1e3
                if it >= warmup:
                    per[idx].append(dt)
                for name in geom.free_after.get(idx, ()):
                    bufs.pop(name, None)
    agg = min if stat == "min" else statistics.median
    return [(ng.name, agg(ts)) for ng, ts in zip(geom.nodes, per)]


def layer_samples(graph: Graph, geom: PartGeom, timings: list[tuple[str, float]]) -> list[LayerSample]:
    """Regression samples (family, features, ms) from :func:`time_nodes` output."""
    from .model import node_io  # the same element counts the cost model prices

    nodes = {n.name: n for n in graph.nodes}
    out = []
    by = {ng.name: ng for ng in geom.nodes}
    for name, ms in timings:
        ng = by[name]
        node = nodes[name]
        i, o = node_io(nodes, ng, node)
        fam, x = features(node, i, o, ng.flops)
        out.append(LayerSample(fam, tuple(x), ms))
    return out


def segments(graph: Graph) -> list[tuple[str, str, bool]]:
    """Consecutive cut-point segments ``(start, end, splittable)``, input to output."""
    out = []
    prev = graph.input.name
    cuts = graph.cut_points()
    if not cuts or cuts[-1] != graph.output.name:
        cuts = cuts + [graph.output.name]
    for c in cuts:
        out.append((prev, c, graph.segment_is_spatial(prev, c)))
        prev = c
    return out


def profile_device(cm: CapturedModel, device: str, *, rows_points: int = 8, reps: int = 5, warmup: int = 2,
                   backend: str = "torch", layer_reps: int = 3, resume: DeviceProfile | None = None,
                   links: dict[str, LinkProbe] | None = None, progress: Progress | None = None,
                   calibrate: bool = True) -> DeviceProfile:
    """Profile model ``cm`` on this process as device ``device``.

    For every cut-point segment: splittable ones get a rows sweep
    (:func:`rows_sweep`; the full height doubles as the whole latency),
    others a whole latency; per-node timings at the sweep's points feed the
    per-layer-type regressions. With ``resume`` (a partial profile of the
    same model and device) measured segments are kept and skipped.
    ``links`` are the link probes measured by the caller (the runtime).
    """
    from .calibrate import machine_info, measure_host

    g = cm.graph
    fp = g.fingerprint()
    prof = DeviceProfile(device, g.name, fp, backend=backend)
    if resume is not None and resume.fingerprint == fp and resume.device == device:
        prof.stages.update(resume.stages)
        prof.whole.update(resume.whole)
    samples: list[LayerSample] = []
    segs = segments(g)
    for k, (s, e, split) in enumerate(segs):
        if progress is not None:
            progress(f"{s}..{e}", k, len(segs))
        if split:
            if (s, e) not in prof.stages:
                prof.stages[(s, e)] = measure_stage_rows(cm, s, e, rows_sweep(g[e].height, rows_points),
                                                         reps, warmup)
            geom_full = part_geometry(g, s, e, None)
            geoms = [geom_full]
            h = g[e].height
            if h > 2:
                geoms.append(part_geometry(g, s, e, (0, max(1, h // 3), 0, g[e].width)))
        else:
            if (s, e) not in prof.whole:
                prof.whole[(s, e)] = measure_whole(cm, s, e, reps, warmup)
            geoms = [part_geometry(g, s, e, None)]
        if layer_reps > 0:
            for geom in geoms:
                samples += layer_samples(g, geom, time_nodes(cm, geom, layer_reps, 1))
    if progress is not None:
        progress("done", len(segs), len(segs))
    prof.regressions = fit(samples)
    prof.links = dict(links or {})
    prof.calibration = measure_host() if calibrate else None
    prof.machine = machine_info()
    prof.date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return prof
