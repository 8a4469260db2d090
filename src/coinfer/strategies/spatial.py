"""Machinery shared by the spatial planners (MoDNN, DeepThings, CoEdge, AOFL; DistrEdge, ADCNN). Torch-free.

What it offers (all pure arithmetic over the graph IR and a :class:`~coinfer.cost.model.CostModel`):

* :func:`cost_model` — the request's cost model, or an analytic one when the
  caller gave none (the coordinator re-plans with ``costs=None``).
* :func:`plan_devices` — the devices a planner may use (``--param devices=[..]``
  restricts them; the source is always kept), in cluster order.
* :func:`layer_ends` — the splittable cut points that end a *layer*: a stage
  boundary before every segment that reads its neighbours' rows (a window op:
  kernel or stride > 1), pointwise segments merged into the layer before.
  MoDNN's and CoEdge's per-layer stages end there.
* :class:`FastCosts` — per-device part / node latencies where devices priced
  by the same analytic basis share one evaluation (their latencies differ only
  by the ``1/scale`` factor), which keeps planning for 16 devices fast.
* :class:`RowModel` — *linear* costs of a row slab: device ``d`` computing
  ``r`` output rows of block ``(start, end]`` (exact halo computed
  redundantly inside the block) costs ``alpha + beta * r`` ms; built from
  per-node costs (full node and one row) and the halo each node adds for a
  middle slab, so every block of a dynamic programme costs O(1) after a
  prefix sum. Also whole-segment latencies (:meth:`RowModel.whole_ms`), the
  halo rows a block reads (:meth:`RowModel.in_halo`) and 2-D tile costs
  (:meth:`RowModel.tile_ms`).
* :func:`bounds_from_fractions`, :func:`rows_partition`, :func:`even_bounds`,
  :func:`assign_tiles`, :func:`grid_stage` — building rows / grid stages.
* :func:`equal_finish` — rows that make ``alpha_d + beta_d * r_d`` equal over
  the devices (water filling, dropping devices whose fixed cost alone exceeds
  the finish time): the proportional split of AOFL-style planners.
* :func:`xfer` — (latency + serialisation, serialisation) of a transfer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..cost.model import CostModel
from ..graph.geometry import PartGeom, needed_input, stage_nodes
from ..graph.ir import GEOMETRY_OPS, OUTPUT, Graph, Node
from ..plan.plan import Grid, RowPart, Rows, Stage, Whole
from .common import requested_devices
from .registry import PlanRequest, StrategyError, flag_param

WINDOW_OPS = frozenset({"conv", "maxpool", "avgpool"})


# -- request helpers ------------------------------------------------------------------------
def cost_model(req: PlanRequest) -> CostModel:
    """The request's cost model; an analytic one over its graph and cluster when none was given."""
    if req.costs is None:
        req.costs = CostModel(req.graph, req.cluster)
    return req.costs


def plan_devices(req: PlanRequest) -> list[str]:
    """Devices the planner may use: ``params["devices"]`` (:func:`~coinfer.strategies.common.requested_devices`:
    checked, the source always included) or all, in cluster order."""
    want = requested_devices(req)
    return list(req.cluster.names) if want is None else want


def int_param(req: PlanRequest, key: str, default: int | None, lo: int = 1, hi: int = 10**6) -> int | None:
    v = req.param(key, default)
    if v is None:
        return None
    try:
        iv = int(v)
    except (TypeError, ValueError):
        raise StrategyError(f"--param {key} must be an integer (got {v!r})") from None
    if not lo <= iv <= hi:
        raise StrategyError(f"--param {key} must be in [{lo}, {hi}] (got {iv})")
    return iv


def bool_param(req: PlanRequest, key: str, default: bool = False) -> bool:
    return flag_param(req.param(key, default), key)


# -- graph helpers ----------------------------------------------------------------------------
def splittable(graph: Graph) -> list[str]:
    """Splittable cut points in order."""
    return [c for c, ok in graph.splittable_cuts().items() if ok]


def is_window(node: Node) -> bool:
    """Does ``node`` read neighbouring rows (kernel or stride > 1)?"""
    if node.op not in WINDOW_OPS:
        return False
    k = tuple(node.attrs.get("kernel", (1, 1)))
    s = tuple(node.attrs.get("stride", (1, 1)))
    return k != (1, 1) or s != (1, 1)


def layer_ends(graph: Graph) -> list[str]:
    """Splittable cut points that end a layer (see the module doc); the last splittable cut is always one."""
    sp = splittable(graph)
    if not sp:
        return []
    win = []
    prev = graph.input.name
    for c in sp:
        win.append(any(is_window(n) for n in graph.segment(prev, c)))
        prev = c
    return [c for i, c in enumerate(sp) if i == len(sp) - 1 or win[i + 1]]


def conv_count(graph: Graph, upto: str) -> int:
    """Number of conv nodes up to and including ``upto``."""
    idx = graph.index(upto)
    return sum(1 for n in graph.nodes[: idx + 1] if n.op == "conv")


def row_bytes(node: Node) -> int:
    """Bytes of one full-width row of a feature map (fp32, all channels)."""
    if not node.is_feature_map:
        return node.out_bytes
    return 4 * node.shape[0] * node.shape[1] * node.width


# -- row / grid stage builders ------------------------------------------------------------------
def bounds_from_fractions(size: int, cum: Sequence[float]) -> list[int]:
    """Boundaries ``[0, .., size]`` at ``round(size * c)`` for cumulative fractions ``cum`` (last = 1)."""
    out = [0]
    for c in cum:
        out.append(min(size, max(out[-1], math.floor(size * c + 0.5))))
    out[-1] = size
    return out


def rows_partition(until: str, devices: Sequence[str], bounds: Sequence[int], *, exchange: str = "direct",
                   halo: str = "exact") -> Stage:
    """A rows stage from boundaries (one per device, empty parts dropped); one part becomes ``whole``."""
    parts = [RowPart(d, (int(a), int(b))) for d, a, b in zip(devices, bounds, bounds[1:]) if b > a]
    if not parts:
        raise ValueError("rows_partition: no rows to assign")
    if len(parts) == 1:
        return Stage(until, Whole(parts[0].device), exchange=exchange)
    return Stage(until, Rows(tuple(parts)), halo, exchange)


def even_bounds(size: int, parts: int) -> list[int]:
    """``parts`` near-equal ranges over ``size`` (the first ones get the extra unit)."""
    if not 1 <= parts <= size:
        raise ValueError(f"cannot split {size} into {parts} non-empty parts")
    return [round(i * size / parts) for i in range(parts + 1)]


def largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    """Integers proportional to ``weights`` summing to ``total`` (Hamilton's method)."""
    s = sum(weights)
    if s <= 0:
        raise ValueError("largest_remainder needs a positive weight")
    exact = [total * w / s for w in weights]
    base = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - base[i], reverse=True)
    for i in order[: total - sum(base)]:
        base[i] += 1
    return base


def assign_tiles(n_tiles: int, weights: Mapping[str, float], *, everyone: bool = True) -> list[str]:
    """Owner of each tile (raster order) in proportion to ``weights``, contiguous per device.

    With ``everyone`` every device with a positive weight gets at least one
    tile when there are enough tiles (a dynamic stage's pool is the devices
    that own a tile, so this keeps them all able to steal).
    """
    devs = [d for d, w in weights.items() if w > 0]
    counts = largest_remainder(n_tiles, [weights[d] for d in devs])
    if everyone and n_tiles >= len(devs):
        while 0 in counts:
            i0 = counts.index(0)
            j = max(range(len(counts)), key=lambda k: counts[k])
            counts[j] -= 1
            counts[i0] += 1
    out: list[str] = []
    for d, c in zip(devs, counts):
        out += [d] * c
    return out


def grid_stage(graph: Graph, until: str, rows: int, cols: int, owners: Sequence[str], *,
               schedule: str = "static", halo: str = "exact") -> Stage:
    """An R x C grid stage over ``until``'s output with tile owners in raster order."""
    node = graph[until]
    rb, cb = even_bounds(node.height, rows), even_bounds(node.width, cols)
    if len(owners) != rows * cols:
        raise ValueError(f"grid {rows}x{cols} needs {rows * cols} owners, got {len(owners)}")
    mat = tuple(tuple(owners[i * cols + j] for j in range(cols)) for i in range(rows))
    return Stage(until, Grid(tuple(rb), tuple(cb), mat, schedule), halo)


def tail_whole(graph: Graph, after: str | None, device: str) -> list[Stage]:
    """The non-split rest of the model whole on ``device`` (nothing when ``after`` is the output)."""
    if after is not None and graph.resolve(after) == graph.output.name:
        return []
    return [Stage(OUTPUT, Whole(device))]


# -- transfers ------------------------------------------------------------------------------------
def xfer(costs: CostModel, a: str, b: str, nbytes: float) -> tuple[float, float]:
    """(latency + serialisation, serialisation) in ms of ``nbytes`` raw bytes a -> b (0 when a == b)."""
    if a == b or nbytes <= 0:
        return 0.0, 0.0
    ser = costs.serialize_ms(a, b, nbytes)
    return costs.link(a, b)[1] + ser, ser


class Overheads:
    """Steady-state wall ms the runtime's own software path costs per message and compute instruction.

    From the cost model's :class:`~coinfer.cost.runtime.RuntimeCosts` (CPU µs
    of one full core, probed by ``coinfer profile`` or built in) divided by the
    device's emulated CPU share: on a 0.15-share device one message costs
    milliseconds, which decides whether a layer-by-layer plan pays off. A
    cost model without runtime costs gives zeros.
    """

    def __init__(self, costs: CostModel) -> None:
        self.costs = costs
        self._cache: dict[str, tuple[float, float, float, float, float]] = {}

    def _of(self, d: str) -> tuple[float, float, float, float, float]:
        v = self._cache.get(d)
        if v is None:
            rc_fn = getattr(self.costs, "runtime_costs", None)
            share_fn = getattr(self.costs, "emulated_share", None)
            if rc_fn is None or share_fn is None:
                v = (0.0, 0.0, 0.0, 0.0, 0.0)
            else:
                rc = rc_fn(d)
                sh = max(float(share_fn(d)), 1e-3)
                v = ((rc.send_us + rc.send_io_us) / 1e3 / sh, rc.recv_us / 1e3 / sh + rc.delivery_ms,
                     rc.per_kb_us / 1024.0 / 1e3 / sh, rc.compute_us / 1e3 / sh, rc.per_kb_us * 0.25 / 1024.0 / 1e3 / sh)
            self._cache[d] = v
        return v

    def send(self, d: str, nbytes: float = 0.0) -> float:
        """Wall ms ``d`` spends sending one message of ``nbytes``."""
        s, _, kb, _, _ = self._of(d)
        return s + kb * nbytes

    def recv(self, d: str, nbytes: float = 0.0) -> float:
        """Wall ms until a message of ``nbytes`` that arrived at ``d`` is usable (delivery included)."""
        _, r, kb, _, _ = self._of(d)
        return r + kb * nbytes

    def recv_cpu(self, d: str, nbytes: float = 0.0) -> float:
        """Wall ms of ``d``'s CPU spent receiving one message (no delivery delay)."""
        _, r, kb, _, _ = self._of(d)
        return r - self._delivery(d) + kb * nbytes

    def _delivery(self, d: str) -> float:
        rc_fn = getattr(self.costs, "runtime_costs", None)
        return float(rc_fn(d).delivery_ms) if rc_fn is not None and self._of(d)[1] > 0 else 0.0

    def per_byte(self, d: str) -> float:
        return self._of(d)[2]

    def compute(self, d: str, in_bytes: float = 0.0) -> float:
        """Wall ms of one compute instruction's bookkeeping on ``d``."""
        _, _, _, c, kb = self._of(d)
        return c + kb * in_bytes


def slab_rows(graph: Graph, start: str, end: str, r0: int, r1: int) -> dict[str, tuple[int, int]]:
    """Rows every node of block (start, end] (and ``start``) computes for output rows [r0, r1) (exact halo).

    The row half of :func:`~coinfer.graph.geometry.part_geometry` (full-width
    slabs), without the slices and paddings: fast enough for planners that
    price hundreds of blocks.
    """
    end = graph.resolve(end)
    req: dict[str, tuple[int, int]] = {end: (r0, r1)}
    for n in reversed(stage_nodes(graph, start, end)):
        a, b = req[n.name]
        a, b = max(a, 0), min(b, n.height)
        req[n.name] = (a, b)
        if n.op in GEOMETRY_OPS and n.is_feature_map:
            need = needed_input(n, (a, b, 0, n.width))
            lo, hi = need[0], need[1]
        else:
            lo, hi = a, b
        for i in n.inputs:
            src = graph[i]
            if not src.is_feature_map:
                continue
            x0, x1 = max(lo, 0), min(hi, src.height)
            if x1 <= x0:  # the need lies wholly in padding: one real row (as the geometry keeps)
                x0 = min(max(lo, 0), src.height - 1)
                x1 = x0 + 1
            old = req.get(i)
            req[i] = (x0, x1) if old is None else (min(old[0], x0), max(old[1], x1))
    return req


# -- fast per-device costs ------------------------------------------------------------------------
class FastCosts:
    """Per-device latencies; devices priced by one analytic basis share one evaluation.

    In the analytic model every node's latency is divided by the device's
    ``scale``, so ``part_ms(d) = part_ms(ref) * scale_ref / scale_d`` for all
    devices without a profile that use the same calibration. Profiled devices
    are evaluated on their own.
    """

    def __init__(self, costs: CostModel, devices: Iterable[str]) -> None:
        self.costs = costs
        self.ref: dict[str, tuple[str, float]] = {}
        groups: dict[int, tuple[str, float]] = {}
        for d in devices:
            if costs.source_of(d) == "profile":
                self.ref[d] = (d, 1.0)
                continue
            cal, scale = costs.analytic_basis(d)
            r = groups.setdefault(id(cal), (d, scale))
            self.ref[d] = (r[0], r[1] / scale)

    @property
    def refs(self) -> list[str]:
        return list(dict.fromkeys(r for r, _ in self.ref.values()))

    def part_ms(self, device: str, geom: PartGeom) -> float:
        r, f = self.ref[device]
        return self.costs.part_ms(r, geom) * f

    def node_ms(self, device: str, node: Node | str, region: Any = None) -> float:
        r, f = self.ref[device]
        return self.costs.node_ms(r, node, region) * f

    def factor(self, device: str) -> tuple[str, float]:
        return self.ref[device]


class RowModel:
    """Linear row-slab and tile costs of blocks of a graph (see the module doc).

    ``block(start, end)`` returns ``{device: (alpha_ms, beta_ms_per_row)}`` for
    a slab of ``r`` output rows of block ``(start, end]`` computed with exact
    halo: ``alpha + beta * r``. Per node ``n`` the latency is modelled as
    ``fixed_n + per_row_n * rows_n`` (fitted on the full node and a one-row
    slab through the cost model), and a slab of ``r`` output rows computes
    ``r * H_n / H_end + halo_n`` rows of node ``n``, where ``halo_n`` is read
    off the geometry of a middle slab (both neighbours present). Edge slabs
    have half the halo, so the model is slightly pessimistic for them.
    """

    def __init__(self, graph: Graph, costs: CostModel, devices: Iterable[str]) -> None:
        self.graph = graph
        self.costs = costs
        self.devices = list(devices)
        self.fast = FastCosts(costs, self.devices)
        self._lin: dict[tuple[str, str], tuple[float, float]] = {}
        self._halo: dict[str, tuple[int, dict[str, float]]] = {}  # end -> (start index, {node: halo rows})
        self._prefix: dict[str, list[float]] = {}
        self._blocks: dict[tuple[str, str, str], tuple[float, float]] = {}

    # per node ---------------------------------------------------------------------------------
    def node_lin(self, ref: str, name: str) -> tuple[float, float]:
        """(fixed ms, ms per full-width row) of node ``name`` on reference device ``ref``."""
        key = (ref, name)
        v = self._lin.get(key)
        if v is None:
            node = self.graph[name]
            full = self.costs.node_ms(ref, node, None)
            if not node.is_feature_map or node.height <= 1:
                v = (full, 0.0) if not node.is_feature_map else (0.0, full)
            else:
                one = self.costs.node_ms(ref, node, (0, 1, 0, node.width))
                per = max(0.0, (full - one) / (node.height - 1))
                v = (max(0.0, one - per), per)
            self._lin[key] = v
        return v

    def whole_ms(self, device: str, start: str, end: str) -> float:
        """Latency of computing ``(start, end]`` whole on ``device`` (sum of node latencies)."""
        ref, f = self.fast.factor(device)
        pre = self._prefix.get(ref)
        if pre is None:
            pre = [0.0]
            for n in self.graph.nodes:
                fx, pr = self.node_lin(ref, n.name) if n.op != "input" else (0.0, 0.0)
                pre.append(pre[-1] + fx + pr * (n.height if n.is_feature_map else 0))
            self._prefix[ref] = pre
        a, b = self.graph.index(start), self.graph.index(end)
        return (pre[b + 1] - pre[a + 1]) * f

    # halos ------------------------------------------------------------------------------------
    def halos(self, start: str, end: str) -> dict[str, float]:
        """Extra rows each node of block (start, end] computes for a middle slab (start node included)."""
        g = self.graph
        end = g.resolve(end)
        si = g.index(start)
        cached = self._halo.get(end)
        if cached is None or cached[0] > si:
            node = g[end]
            H = node.height
            r = max(1, H // 3)
            a = (H - r) // 2
            rows = slab_rows(g, start, end, a, a + r)
            h = {name: max(0.0, (r1 - r0) - r * g[name].height / H) for name, (r0, r1) in rows.items()
                 if g[name].is_feature_map}
            cached = (si, h)
            self._halo[end] = cached
        return cached[1]

    def in_halo(self, start: str, end: str) -> float:
        """Extra input rows (both sides together) a middle slab of block (start, end] reads."""
        return self.halos(start, end).get(self.graph.resolve(start), 0.0)

    # blocks -----------------------------------------------------------------------------------
    def block_ref(self, ref: str, start: str, end: str) -> tuple[float, float]:
        g = self.graph
        end = g.resolve(end)
        H = g[end].height
        h = self.halos(start, end)
        a, b = g.index(start), g.index(end)
        alpha = beta = 0.0
        for n in g.nodes[a + 1 : b + 1]:
            fx, pr = self.node_lin(ref, n.name)
            if not n.is_feature_map:
                alpha += fx
                continue
            alpha += fx + pr * h.get(n.name, 0.0)
            beta += pr * n.height / H
        return alpha, beta

    def block(self, start: str, end: str, devices: Iterable[str] | None = None) -> dict[str, tuple[float, float]]:
        """``{device: (alpha_ms, beta_ms_per_output_row)}`` of a row slab of block (start, end]."""
        out = {}
        for d in devices if devices is not None else self.devices:
            ref, f = self.fast.factor(d)
            key = (ref, start, end)
            v = self._blocks.get(key)
            if v is None:
                v = self._blocks[key] = self.block_ref(ref, start, end)
            out[d] = (v[0] * f, v[1] * f)
        return out

    def tile_ms(self, device: str, start: str, end: str, rows: float, cols: float,
                sides_r: int = 2, sides_c: int = 2) -> float:
        """Latency of a ``rows x cols`` output tile of block (start, end] (exact halo).

        ``sides_r`` / ``sides_c``: how many of the tile's sides along each axis
        border another tile (0..2); each contributes half the middle-slab halo.
        Square kernels are assumed (the column halo equals the row halo).
        """
        g = self.graph
        end = g.resolve(end)
        ref, f = self.fast.factor(device)
        H, W = g[end].height, g[end].width
        h = self.halos(start, end)
        a, b = g.index(start), g.index(end)
        total = 0.0
        for n in g.nodes[a + 1 : b + 1]:
            fx, pr = self.node_lin(ref, n.name)
            if not n.is_feature_map:
                total += fx
                continue
            hn = h.get(n.name, 0.0)
            rr = min(n.height, rows * n.height / H + hn * sides_r / 2)
            cc = min(n.width, cols * n.width / W + hn * sides_c / 2)
            total += fx + pr * rr * cc / n.width
        return total * f


# -- splits ---------------------------------------------------------------------------------------
def equal_finish(alpha: Mapping[str, float], beta: Mapping[str, float], size: float,
                 max_devices: int | None = None) -> tuple[float, dict[str, float]]:
    """Continuous rows ``r_d`` minimising ``max_d alpha_d + beta_d r_d`` with ``sum r_d = size``.

    Water filling: all chosen devices finish at ``tau``; a device whose fixed
    cost ``alpha_d`` alone reaches ``tau`` gets nothing. With ``max_devices``
    the best prefix of devices ordered by ``alpha_d + beta_d * size / k`` is
    kept. Returns ``(tau, {device: rows})``.
    """
    devs = [d for d in alpha if beta[d] > 0 or alpha[d] >= 0]
    if not devs:
        raise ValueError("equal_finish needs devices")
    zero_beta = [d for d in devs if beta[d] <= 0]
    if zero_beta:  # a free device takes everything
        d = min(zero_beta, key=lambda x: alpha[x])
        return alpha[d], {d: float(size)}
    active = sorted(devs, key=lambda d: alpha[d] + beta[d] * size / len(devs))
    if max_devices is not None:
        active = active[:max_devices]
    while True:
        inv = sum(1.0 / beta[d] for d in active)
        tau = (size + sum(alpha[d] / beta[d] for d in active)) / inv
        drop = [d for d in active if alpha[d] >= tau]
        if not drop or len(active) == 1:
            break
        worst = max(drop, key=lambda d: alpha[d])
        active.remove(worst)
    if len(active) == 1:
        d = active[0]
        return alpha[d] + beta[d] * size, {d: float(size)}
    return tau, {d: max(0.0, (tau - alpha[d]) / beta[d]) for d in active}


def integer_rows(size: int, rows: Mapping[str, float], order: Sequence[str], min_rows: int = 1) -> list[tuple[str, int]]:
    """Round continuous ``rows`` (summing to ``size``) to integers >= ``min_rows``, in ``order``."""
    devs = [d for d in order if rows.get(d, 0.0) > 0]
    while True:
        counts = largest_remainder(size, [rows[d] for d in devs])
        small = [i for i, c in enumerate(counts) if c < min_rows]
        if not small or len(devs) == 1:
            break
        devs.pop(min(small, key=lambda i: rows[devs[i]]))
    return [(d, c) for d, c in zip(devs, counts) if c > 0]
