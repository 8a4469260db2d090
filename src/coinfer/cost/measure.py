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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise
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


def geometric_sweep(height: int, points: int = 4) -> list[int]:
    """``points`` rows spaced geometrically from 1 to ``height`` (1, h^(1/3), h^(2/3), h for 4).

    Relative resolution is the same everywhere: a weak device's 10-row slab
    is priced as well as a strong one's 150 rows, for about 1.3x the cost of
    measuring the full height once (evenly spaced points cost ~points/2 x).
    """
    if height <= points:
        return list(range(1, height + 1))
    out = {1, height}
    for i in range(1, points - 1):
        out.add(min(height, max(1, round(height ** (i / (points - 1))))))
    return sorted(out)


def refine_point(table: list[tuple[int, float]]) -> int | None:
    """The next row count to measure: the middle of the interval with the largest latency gap.

    (Greedy refinement of a piecewise-linear table: the error of linear
    interpolation is bounded by the interval's rise, so split the largest.)
    """
    best, at = 0.0, None
    for (r0, m0), (r1, m1) in pairwise(table):
        if r1 - r0 < 2:
            continue
        gap = abs(m1 - m0)
        if gap > best:
            best, at = gap, (r0 + r1) // 2
    return at


def _input_for(cm: CapturedModel, geom: PartGeom, seed: int = 0) -> torch.Tensor:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(geom.in_shape(cm.graph), generator=g)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def _clock(name: str) -> Callable[[], float]:
    """``wall``, or ``cpu``: the calling thread's CPU time when torch computes on one thread, the
    process's when on several — the calling thread's alone counted its spin-waiting for the others
    (a 2-thread emulated device was profiled up to 10x slower than a 1-thread one on a busy host);
    emulated multi-thread workers wait passively (``OMP_WAIT_POLICY=PASSIVE``, the launcher), so the
    process's CPU time is their work, what their quota is spent on."""
    import torch

    if name == "cpu" and torch.get_num_threads() > 1:
        return time.process_time
    try:
        return CLOCKS[name]
    except KeyError:
        raise ValueError(f"clock {name!r} is not one of {sorted(CLOCKS)}") from None


EVICT_MB = 256
"""Default size of the buffer written before every timed run (:func:`evicting`)."""


class _Evictor:
    """Writes a buffer of ``mb`` MiB: the caches then hold it, not the part's weights and activations."""

    def __init__(self, mb: int) -> None:
        import numpy as np

        self.buf = np.ones((mb << 20) // 8)

    def __call__(self) -> None:
        self.buf += 1.0


_EVICT: list[_Evictor] = []


@contextmanager
def evicting(mb: int = EVICT_MB) -> Iterator[None]:
    """Time every run inside on cold caches: write ``mb`` MiB before each timed run (0: off).

    A part runs once per request in a worker, between other parts, other
    devices' processes and the transport: its weights and inputs are no
    longer in the caches. Timed back to back, it finds them there and the
    profile prices it too low — measured on ResNet-18's 2x2 grid parts (one
    thread): a layer-3 tile 1.31 ms warm, 1.86 ms after writing 256 MiB, 2.09
    ms in CPU time inside a worker during requests; the effect grows with the
    buffer up to ~256 MiB (32: +0.2 ms, 128: +0.4 ms) on this host's large
    last-level cache. The buffer is freed on exit.
    """
    if mb <= 0:
        yield
        return
    _EVICT.append(_Evictor(mb))
    try:
        yield
    finally:
        _EVICT.pop()


def _evict() -> None:
    if _EVICT:
        _EVICT[-1]()


def _median_ms(fn: Callable[[], Any], reps: int, warmup: int, clock: str = "wall") -> float:
    clk = _clock(clock)
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(max(reps, 1)):
        _evict()
        t0 = clk()
        fn()
        ts.append(clk() - t0)
    return statistics.median(ts) * 1e3


def _runner(cm: CapturedModel, geom: PartGeom, backend: str = "torch", precision: str = "fp32") -> Any:
    """The worker's per-part executor for ``geom`` on ``backend`` (what a deployment runs)."""
    from ..execute.part import PartRunner

    if backend == "torch" and precision == "fp32":
        return PartRunner(cm, geom)
    try:
        return PartRunner(cm, geom, backend=backend, precision=precision)
    except TypeError:
        raise ValueError(f"this coinfer's PartRunner has no backend {backend!r} / precision {precision!r}; "
                         f"profile with --backend torch") from None


def measure_part(cm: CapturedModel, geom: PartGeom, reps: int = 5, warmup: int = 2, clock: str = "wall",
                 backend: str = "torch", precision: str = "fp32") -> float:
    """Median latency (ms) of one part through :class:`PartRunner` (``clock="cpu"``: the thread's CPU time)."""
    runner = _runner(cm, geom, backend, precision)
    x = _input_for(cm, geom)
    return _median_ms(lambda: runner(x), reps, warmup, clock)


def measure_stage_rows(cm: CapturedModel, start: str, end: str, rows_list: list[int], reps: int = 5,
                       warmup: int = 2, halo: str = "exact", clock: str = "wall") -> list[tuple[int, float]]:
    """``[(rows, median ms)]`` of stage (start, end] computing output rows [0, rows), full width."""
    g = cm.graph
    node = g[end]
    out = []
    for r in rows_list:
        if not 1 <= r <= node.height:
            raise ValueError(f"rows {r} outside 1..{node.height} of {end}")
        geom = part_geometry(g, start, end, (0, r, 0, node.width), halo)
        out.append((r, measure_part(cm, geom, reps, warmup, clock)))
    return out


def measure_whole(cm: CapturedModel, start: str, end: str, reps: int = 5, warmup: int = 2,
                  clock: str = "wall") -> float:
    """Median latency (ms) of stage (start, end] computed whole."""
    return measure_part(cm, part_geometry(cm.graph, start, end, None), reps, warmup, clock)


def run_timed(cm: CapturedModel, geom: PartGeom, reps: int = 5, warmup: int = 1, clock: str = "wall",
              stat: str = "median") -> tuple[float, list[tuple[str, float]]]:
    """One part run ``reps`` times with a clock around each node: (total ms, per-node ms).

    Follows :meth:`PartRunner.__call__` step by step (the same slicing and
    kernels), so the samples price what a worker runs. The total is the
    ``stat`` of the per-run sums (the part's latency, timer calls included:
    well under a microsecond per node); per node the ``stat`` over runs —
    ``min`` resists bursts of load from other processes. ``clock="cpu"``
    reads the thread's CPU time (what a quota-limited device computes, free
    of the throttling and of other processes).
    """
    import torch

    from ..execute.kernels import edge_inputs, run_node
    from ..execute.part import PartRunner

    clk = _clock(clock)
    runner = PartRunner(cm, geom)
    x = _input_for(cm, geom)
    per: list[list[float]] = [[] for _ in geom.nodes]
    totals: list[float] = []
    with torch.no_grad():
        for it in range(warmup + max(reps, 1)):
            bufs: dict[str, torch.Tensor] = {geom.start: x}
            run = 0.0
            if it >= warmup:
                _evict()
            for idx, (ng, node) in enumerate(zip(geom.nodes, runner.nodes)):
                t0 = clk()
                bufs[ng.name] = run_node(cm, node, edge_inputs(ng, bufs), ng, runner._cache)
                dt = (clk() - t0) * 1e3
                run += dt
                if it >= warmup:
                    per[idx].append(dt)
                for name in geom.free_after.get(idx, ()):
                    bufs.pop(name, None)
            if it >= warmup:
                totals.append(run)
    agg: Callable[[list[float]], float] = min if stat == "min" else statistics.median
    return agg(totals), [(ng.name, agg(ts)) for ng, ts in zip(geom.nodes, per)]


def time_nodes(cm: CapturedModel, geom: PartGeom, reps: int = 5, warmup: int = 1,
               stat: str = "median", clock: str = "wall") -> list[tuple[str, float]]:
    """Per-node latency (ms) of one part, in execution order: the ``median`` (or ``min``) over ``reps``."""
    return run_timed(cm, geom, reps, warmup, clock, stat)[1]


Checkpoint = Callable[["DeviceProfile", tuple[str, str], list[LayerSample]], None]


CHAIN_SCALE_MIN, CHAIN_SCALE_MAX = 0.25, 1.5


def chain_scale(prof: DeviceProfile, graph: Graph, whole_ms: float) -> float:
    """The factor on the spatial segments' chained costs that makes the whole model, as one part, cost ``whole_ms``.

    ``whole = first segment + sum(flat chained costs) + scale x sum(spatial chained costs)``
    (full height); clamped to [0.25, 1.5]; 1 when a segment's chained cost is
    missing or the spatial chained costs are too small to scale reliably.
    Only feature-map segments are scaled: what a chain saves there (layout
    conversions, fusion, cache reuse across convolutions) is what pairs
    cannot see; a flat segment after the flatten (a linear layer, memory-bound
    on its weights) costs its chained figure — measured: VGG-16's classifier
    runs in 30 ms of CPU in a request, its chained costs add up to 27.5 ms, and
    the model-wide scale of 0.86 had priced it at 23.7 ms. (MobileNetV2's
    pairs add up to 2-3x its whole-model time on a throttled device — every
    pair converts layouts at both ends — so its scale is ~0.35: the former
    lower clamp of 0.5 priced a half-model part on a 0.15-share device at 2.2x
    its measured time.)
    """
    segs = segments(graph)
    first = _full_ms(prof, (segs[0][0], segs[0][1]))
    spatial = flat = 0.0
    for s, e, split in segs[1:]:
        if (s, e) not in prof.chained:
            return 1.0
        if split:
            spatial += prof.chained[(s, e)]
        else:
            flat += prof.chained[(s, e)]
    if first is None or spatial <= 0.2 * whole_ms:
        return 1.0
    return round(min(CHAIN_SCALE_MAX, max(CHAIN_SCALE_MIN, (whole_ms - first - flat) / spatial)), 4)


def _full_ms(prof: DeviceProfile, key: tuple[str, str]) -> float | None:
    """A segment's full-height (or whole) latency in ``prof``."""
    if key in prof.stages:
        return prof.stages[key][-1][1]
    return prof.whole.get(key)


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


def profile_device(cm: CapturedModel, device: str, *, rows_points: int = 6, reps: int = 3, warmup: int = 1,
                   backend: str = "torch", precision: str = "fp32", layer_reps: int = 1,
                   resume: DeviceProfile | None = None, skip: set[tuple[str, str]] | None = None,
                   links: dict[str, LinkProbe] | None = None, progress: Progress | None = None,
                   calibrate: bool = True, clock: str = "wall", sweep: str = "geometric",
                   emulation: dict[str, Any] | None = None, checkpoint: Checkpoint | None = None,
                   chain: bool = True, known_full: dict[tuple[str, str], float] | None = None,
                   evict_mb: int = EVICT_MB) -> DeviceProfile:
    """Profile model ``cm`` on this process as device ``device``.

    For every cut-point segment: splittable ones get a rows sweep, others a
    whole latency, each point the median of ``reps`` runs (after ``warmup``)
    through the worker's :class:`PartRunner` on ``backend``.
    ``sweep="geometric"`` (default) measures :func:`geometric_sweep` (4
    points: 1, h^(1/3), h^(2/3), h) and then adds points one at a time where
    the table rises most (:func:`refine_point`), up to ``rows_points``;
    ``sweep="even"`` measures :func:`rows_sweep`. The per-layer-type
    regressions get their samples from ``layer_reps`` per-node timed passes
    (:func:`run_timed`) at the smallest and the full point of each sweep and
    of each whole segment (0: no regressions). ``clock="cpu"`` records the
    thread's CPU time (``timing: cpu``: for devices under a CPU quota, whose
    wall time the simulator derives from the quota).

    ``chain``: also measure what every segment adds when the backend runs it
    in one part after its predecessor (fusion across the boundary, the
    part's output conversion moving; may be negative): each segment with
    the one before it, at full height (about one extra run of the model),
    giving ``profile.chained``; and the whole model as one part, giving
    ``profile.chain_scale`` (fusion reaches beyond pairs; measured on
    resnet18, mobilenet_v2 and vgg16 against nested prefixes, pairs with the
    scale priced the validation's plans best: plan sums within −20…+24 %,
    most within ±10 %)
    (:func:`chain_scale`; ``profile.whole_model_ms`` keeps the measurement).

    ``resume`` (a partial profile of the same model and device) keeps its
    measured segments and samples; ``skip`` lists segments not to measure
    (the caller holds them). ``checkpoint(profile, segment, new_samples)``
    is called after every measured segment (to save partial progress).
    ``links`` are the link probes measured by the caller (the runtime);
    ``known_full``: full-height latencies of skipped segments (for the
    chained factor of the segment after one). ``evict_mb``: every timed run
    starts on cold caches (:func:`evicting`; 0: warm, back to back).
    """
    with evicting(evict_mb):
        return _profile_device(cm, device, rows_points, reps, warmup, backend, precision, layer_reps, resume, skip,
                               links, progress, calibrate, clock, sweep, emulation, checkpoint, chain, known_full)


def _profile_device(cm: CapturedModel, device: str, rows_points: int, reps: int, warmup: int, backend: str,
                    precision: str, layer_reps: int, resume: DeviceProfile | None,
                    skip: set[tuple[str, str]] | None, links: dict[str, LinkProbe] | None,
                    progress: Progress | None, calibrate: bool, clock: str, sweep: str,
                    emulation: dict[str, Any] | None, checkpoint: Checkpoint | None, chain: bool,
                    known_full: dict[tuple[str, str], float] | None) -> DeviceProfile:
    from .calibrate import machine_info, measure_host

    g = cm.graph
    fp = g.fingerprint()
    prof = DeviceProfile(device, g.name, fp, backend=backend, timing="cpu" if clock == "cpu" else "wall",
                         emulation=emulation, complete=False)
    if resume is not None and resume.fingerprint == fp and resume.device == device and resume.timing == prof.timing:
        prof.stages.update(resume.stages)
        prof.cols.update(resume.cols)
        prof.whole.update(resume.whole)
        prof.chained.update(resume.chained)
        prof.samples = list(resume.samples)
    done = set(prof.stages) | set(prof.whole) | set(skip or ())
    # the pairs and the whole model: as many repetitions as the sweep points (one run each made chain_scale
    # vary 0.35-1.1 between four identical devices: VGG-16 on eq4, 5 Dec)
    chain_reps = reps
    segs = segments(g)
    for k, (s, e, split) in enumerate(segs):
        if progress is not None:
            progress(f"{s}..{e}", k, len(segs))
        if (s, e) in done:
            continue
        new: list[LayerSample] = []
        if split:
            h, w = g[e].height, g[e].width
            rows = geometric_sweep(h, min(4, rows_points)) if sweep == "geometric" else rows_sweep(h, rows_points)
            table: dict[int, float] = {}
            todo = list(rows)
            while todo:
                r = todo.pop(0)
                table[r] = measure_part(cm, part_geometry(g, s, e, (0, r, 0, w), "exact"), reps, warmup, clock,
                                        backend, precision)
                if not todo and sweep == "geometric" and len(table) < min(rows_points, h):
                    nxt = refine_point(sorted(table.items()))
                    if nxt is not None and nxt not in table:
                        todo.append(nxt)
            prof.stages[(s, e)] = sorted(table.items())
            if w >= 4:  # narrower parts (grid tiles) at about half the height
                r_mid = max(1, h // 2)
                pts = {w: table[r_mid] if r_mid in table else
                       measure_part(cm, part_geometry(g, s, e, (0, r_mid, 0, w), "exact"), reps, warmup, clock,
                                    backend, precision)}
                for c in sorted({w // 2, w // 4} - {0, 1}):
                    pts[c] = measure_part(cm, part_geometry(g, s, e, (0, r_mid, 0, c), "exact"), reps, warmup,
                                          clock, backend, precision)
                prof.cols[(s, e)] = (r_mid, sorted(pts.items()))
            sample_at = sorted({min(table), max(table)})
            geoms = [part_geometry(g, s, e, (0, r, 0, w), "exact") for r in sample_at]
        else:
            geom = part_geometry(g, s, e, None)
            prof.whole[(s, e)] = measure_part(cm, geom, reps, warmup, clock, backend, precision)
            geoms = [geom]
        if chain and k > 0:  # in pairs: what the segment adds after its predecessor in one part
            ps = segs[k - 1][0]
            alone_prev = _full_ms(prof, (ps, s))
            if alone_prev is None and known_full:
                alone_prev = known_full.get((ps, s))
            if alone_prev is not None:
                pair = measure_part(cm, part_geometry(g, ps, e, None), chain_reps, warmup, clock, backend, precision)
                prof.chained[(s, e)] = round(pair - alone_prev, 5)
        if layer_reps > 0:
            for geom in geoms:
                new += layer_samples(g, geom, run_timed(cm, geom, layer_reps, 0, clock)[1])
        prof.samples += new
        if checkpoint is not None:
            checkpoint(prof, (s, e), new)
    if chain and len(segs) > 1:
        prof.whole_model_ms = measure_part(cm, part_geometry(g, g.input.name, g.output.name, None), chain_reps,
                                           warmup, clock, backend, precision)
        prof.chain_scale = chain_scale(prof, g, prof.whole_model_ms)
    if progress is not None:
        progress("done", len(segs), len(segs))
    prof.regressions = fit(prof.samples)
    prof.samples = []
    prof.complete = True
    prof.links = dict(links or {})
    prof.calibration = measure_host() if calibrate else None
    prof.machine = machine_info()
    prof.date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return prof
