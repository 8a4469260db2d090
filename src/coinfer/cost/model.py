"""The cost model planners and the simulator read (torch-free).

:class:`CostModel` answers three questions for a model on a cluster:

*compute* — how long does device *d* take for one part of a stage
    (:meth:`CostModel.part_ms`, :meth:`CostModel.stage_ms`,
    :meth:`CostModel.node_ms`). In order of preference:

    1. the device's **measured stage table** (DistrEdge, Hou et al. 2022:
       latency is step-like in the rows computed), interpolated
       piecewise-linearly at the rows of the part, per cut-point segment of the
       stage; a part that is not a top-anchored full-width slab (a grid tile, a
       slab with halo on both sides, a zero-halo tile) is corrected by the
       ratio of the analytic costs of its actual and of the table's geometry,
       and a narrower part also by the segment's measured width points
       (``cols``: what a half- or quarter-width part costs beyond its
       analytic share);
       a segment that follows another in the same part costs its
       ``chained`` figure instead (what it adds after its predecessor: the
       backend fuses across the boundary and converts layouts once per part);
    2. the device's measured **whole-stage** latency for parts computed whole;
    3. the device's **per-layer-type regressions** (Edgent / Neurosurgeon)
       for nodes of segments that were not profiled;
    4. the **analytic** model: per node
       ``FLOPs / throughput + bytes / memory bandwidth + overhead``, divided by
       the device's scale (``min(cpu_share, threads)``, or
       ``speed_gflops / host gemm GFLOP/s`` when the cluster gives a speed),
       with the throughputs of a :class:`~coinfer.cost.calibration.HostCalibration`.

*transfer* — how long does moving *n* bytes from *a* to *b* take
    (:meth:`CostModel.transfer_ms` = link latency + wire bytes × 8 / bandwidth;
    with a bandwidth trace the trace is every link's rate, integrated over the
    transfer, as the runtime's link shaper does; wire bytes follow the codec's
    expected ratio, :mod:`coinfer.cost.wire`).

*energy* — :meth:`CostModel.energy_j` from the cluster's power figures
    (CoEdge, :mod:`coinfer.cost.energy`).

Results are cached per instance; the instance holds no other mutable state.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..cluster import Cluster, ClusterError, Device, Power
from ..graph.geometry import NodeGeom, PartGeom, Region, area, part_geometry
from ..graph.ir import Graph, Node
from .bandwidth import BandwidthTrace
from .calibration import HostCalibration, load_calibration
from .energy import dynamic_energy_j, energy_j
from .profile import DeviceProfile, ProfileSet
from .regression import features
from .runtime import BUILTIN_RUNTIME, CpuQuota, RuntimeCosts
from .wire import wire_bytes

ITEMSIZE = 4  # fp32 activations
_PARAM_READ_OPS = frozenset({"conv", "linear"})
_WINDOW_POOLS = frozenset({"maxpool", "avgpool"})
_FREE_OPS = frozenset({"input", "flatten"})  # views: no data movement


def interpolate(points: list[tuple[int, float]], rows: float) -> float:
    """Piecewise-linear interpolation of a ``[(rows, ms), ...]`` table (sorted by rows).

    Outside the measured range the nearest segment is extended; one point
    scales proportionally. Never negative.
    """
    if not points:
        raise ValueError("empty latency table")
    if len(points) == 1:
        r0, m0 = points[0]
        return max(0.0, m0 * rows / r0)
    i = 0
    while i < len(points) - 2 and rows > points[i + 1][0]:
        i += 1
    (r0, m0), (r1, m1) = points[i], points[i + 1]
    if r1 == r0:
        return max(0.0, m1)
    return max(0.0, m0 + (m1 - m0) * (rows - r0) / (r1 - r0))


def node_io(nodes: Mapping[str, Node], ng: NodeGeom, node: Node) -> tuple[int, int]:
    """(input elements read, output elements written) of ``node`` computing ``ng``."""
    n = node.shape[0] if node.shape else 1
    if ng.region is None or not node.is_feature_map:
        out = math.prod(node.shape)
    else:
        out = area(ng.region) * node.shape[1] * n
    inp = 0
    for e in ng.edges:
        src = nodes[e.src]
        if e.slice is None or not src.is_feature_map:
            inp += math.prod(src.shape)
        else:
            inp += area(e.slice) * src.shape[1] * src.shape[0]
    return inp, out


class CostModel:
    """Latency, transfer time and energy for ``graph`` on ``cluster``.

    ``profiles`` (a :class:`ProfileSet` or ``{device: DeviceProfile}``) must
    be of this model and of devices of this cluster; devices without one are
    priced analytically. ``calibration`` defaults to the cached host
    calibration (or the built-in one). ``bandwidth_trace`` defaults to the
    cluster's ``network.trace``; ``trace_start_s`` is the trace time at which
    the request starts. With ``prefer_probes`` the links use the bandwidth and
    RTT/2 probed by the profiler instead of the cluster file's figures.
    """

    def __init__(self, graph: Graph, cluster: Cluster,
                 profiles: ProfileSet | Mapping[str, DeviceProfile] | None = None, *,
                 calibration: HostCalibration | None = None,
                 bandwidth_trace: BandwidthTrace | None = None, trace_start_s: float = 0.0,
                 prefer_probes: bool = False) -> None:
        self.graph = graph
        self.cluster = cluster
        self.calibration = calibration if calibration is not None else load_calibration()
        if profiles is None:
            pset = ProfileSet()
        elif isinstance(profiles, ProfileSet):
            pset = profiles
        else:
            pset = ProfileSet(dict(profiles))
        pset = pset.select(cluster)  # the chosen execution backend's tables per device (issue 10)
        self._devices: dict[str, Device] = {d.name: d for d in cluster.devices}
        pset.check(graph, cluster.names, {d.name: d.cpu_share for d in cluster.devices},
                   emulated={d.name for d in cluster.devices if self.emulated_share(d.name) < 1.0})
        self.profiles = pset
        if bandwidth_trace is None and cluster.network.trace:
            bandwidth_trace = BandwidthTrace.load(cluster.network.trace)
        self.trace = bandwidth_trace
        self.trace_start_s = float(trace_start_s)
        self.prefer_probes = prefer_probes
        self._nodes: dict[str, Node] = {n.name: n for n in graph.nodes}
        for br in graph.exits.values():
            for n in br.nodes:
                self._nodes.setdefault(n.name, n)
        # cut-point segment (start, end] of every main-graph node
        self._segment: dict[str, tuple[str, str]] = {}
        prev = graph.input.name
        cuts = graph.cut_points()
        cut_idx = {c: graph.index(c) for c in cuts}
        j = 0
        for i, n in enumerate(graph.nodes[1:], 1):
            while j < len(cuts) and cut_idx[cuts[j]] < i:
                prev = cuts[j]
                j += 1
            if j < len(cuts):
                self._segment[n.name] = (prev, cuts[j])
        self._part_cache: dict[Any, float] = {}
        self._ref_cache: dict[Any, Any] = {}  # reference costs (float) and the whole-model PartGeom
        self._link_cache: dict[tuple[str, str], tuple[float, float]] = {}
        self._speed_cache: dict[str, float] = {}
        self._width_cache: dict[tuple[str, tuple[str, str]], list[tuple[int, float]]] = {}

    # -- devices ------------------------------------------------------------
    def device(self, name: str) -> Device:
        d = self._devices.get(name)
        if d is None:
            raise ClusterError(f"device {name!r} is not in the cluster (devices: {', '.join(self._devices)}); "
                               f"plan for this cluster or add the device to the cluster file")
        return d

    def power(self, device: str) -> Power:
        return self.device(device).power

    def emulated_share(self, device: str) -> float:
        """The share of one core the runtime's emulation gives ``device`` (1.0: not emulated).

        Local devices with ``cpu_share`` < 1 run under a cgroup quota
        (:mod:`coinfer.runtime.emulation`) unless the cluster says ``emulation: {cpu: off}`` (then they
        run at the host's speed: it used to be priced at its share, 25.6 ms predicted for 13.6 ms
        measured); remote devices are what they are.
        """
        d = self.device(device)
        if not d.is_local or self.cluster.emulation.cpu == "off":
            return 1.0
        return min(1.0, d.cpu_share)

    def quota(self, device: str) -> CpuQuota | None:
        """The device's emulated CPU quota (None when it is not emulated)."""
        s = self.emulated_share(device)
        return CpuQuota.for_share(s) if s < 1.0 else None

    def runtime_costs(self, device: str) -> RuntimeCosts:
        """The runtime's per-message CPU costs on ``device``: probed by coinfer profile, else the built-in ones."""
        prof = self.profiles.get(device)
        if prof is not None and prof.runtime is not None:
            return prof.runtime
        return BUILTIN_RUNTIME

    def _unit(self, prof: DeviceProfile) -> float:
        """Factor from a profile's figures to wall ms: 1, or 1/share for CPU-time profiles of emulated devices."""
        if prof.timing == "cpu":
            return 1.0 / self.emulated_share(prof.device)
        return 1.0

    def analytic_basis(self, device: str) -> tuple[HostCalibration, float]:
        """(calibration, scale) of the analytic model for ``device``."""
        prof = self.profiles.get(device)
        if prof is not None and prof.calibration is not None:
            # measured on the device itself (in CPU time when the profile is: then the quota scales it)
            return prof.calibration, 1.0 / self._unit(prof)
        d = self.device(device)
        if d.speed_gflops:
            return self.calibration, d.speed_gflops / self.calibration.gemm_gflops
        if d.is_local and self.cluster.emulation.cpu == "off":  # this host, unthrottled
            return self.calibration, float(min(d.threads, os.cpu_count() or 1))
        return self.calibration, min(d.cpu_share, float(d.threads))

    def source_of(self, device: str) -> str:
        """Where ``device``'s compute costs come from: profile, speed_gflops or analytic."""
        prof = self.profiles.get(device)
        if prof is not None and not prof.empty:
            return "profile"
        return "speed_gflops" if self.device(device).speed_gflops else "analytic"

    def speed(self, device: str) -> float:
        """Effective GFLOP/s of ``device`` on this model: its FLOPs over its predicted whole-model time.

        Proportional planners weight devices by it; in the analytic model it
        is proportional to the device's scale (cpu_share or speed_gflops).
        """
        s = self._speed_cache.get(device)
        if s is None:
            ms = self.part_ms(device, self._whole_geom())
            s = self.graph.flops / (ms * 1e6) if ms > 0 else math.inf
            self._speed_cache[device] = s
        return s

    def _whole_geom(self) -> PartGeom:
        key = ("whole-model",)
        g: PartGeom | None = self._ref_cache.get(key)
        if g is None:
            g = part_geometry(self.graph, self.graph.input.name, self.graph.output.name, None)
            self._ref_cache[key] = g
        return g

    # -- compute ------------------------------------------------------------
    def _node_io(self, ng: NodeGeom, node: Node) -> tuple[int, int]:
        return node_io(self._nodes, ng, node)

    @staticmethod
    def analytic_node_ms(cal: HostCalibration, scale: float, node: Node, flops: int,
                         in_elems: int, out_elems: int) -> float:
        """Analytic latency (ms) of one node, divided by the device's ``scale``.

        ``FLOPs / (gemm or depthwise GFLOP/s)`` + pooled outputs / pool rate
        + activation bytes (in + out, fp32) / ``mem_gbps`` + parameter bytes
        (conv, linear) / ``weight_gbps`` + the per-node overhead.
        """
        op = node.op
        if op in _FREE_OPS:
            return 0.0 if op == "input" else cal.node_overhead_us / 1e3 / scale
        if op == "conv" and int(node.attrs.get("groups", 1)) > 1:
            gflops = cal.dwconv_gflops
        else:
            gflops = cal.gemm_gflops
        ms = flops / (gflops * 1e6)
        if op in _WINDOW_POOLS:
            ms += out_elems / (cal.pool_gops * 1e6)
        ms += (in_elems + out_elems) * ITEMSIZE / (cal.mem_gbps * 1e6)
        if op in _PARAM_READ_OPS:
            ms += node.param_bytes / (cal.weight_gbps * 1e6)
        return (ms + cal.node_overhead_us / 1e3) / scale

    def _analytic_ngs(self, cal: HostCalibration, scale: float, ngs: list[NodeGeom]) -> float:
        total = 0.0
        for ng in ngs:
            node = self._nodes[ng.name]
            i, o = self._node_io(ng, node)
            total += self.analytic_node_ms(cal, scale, node, ng.flops, i, o)
        return total

    def _node_geom_ms(self, device: str, ng: NodeGeom, prof: DeviceProfile | None) -> float:
        node = self._nodes[ng.name]
        i, o = self._node_io(ng, node)
        if prof is not None and prof.regressions:
            fam, x = features(node, i, o, ng.flops)
            reg = prof.regressions.get(fam)
            if reg is not None:
                return reg.predict(x) * self._unit(prof)
        cal, scale = self.analytic_basis(device)
        return self.analytic_node_ms(cal, scale, node, ng.flops, i, o)

    def node_ms(self, device: str, node: Node | str, region: Region | None = None) -> float:
        """Latency of one node computing ``region`` of its output (``None``: all of it).

        Uses the device's regression for the node's layer type when profiled,
        else the analytic model. Inputs read are the region's receptive field
        clipped to the producers (no halo beyond that).
        """
        from ..graph.geometry import EdgeGeom, full, intersect, needed_input

        nd = self._nodes[node] if isinstance(node, str) else node
        edges: list[EdgeGeom] = []
        if region is None or not nd.is_feature_map:
            edges = [EdgeGeom(i, None) for i in nd.inputs]
            flops = nd.flops
        else:
            for i in nd.inputs:
                src = self._nodes[i]
                sl = intersect(needed_input(nd, region), full(src)) if src.is_feature_map else None
                edges.append(EdgeGeom(i, sl))
            flops = round(nd.flops_per_pixel * area(region) * nd.shape[0])
        ng = NodeGeom(nd.name, region, tuple(edges), None, flops)
        return self._node_geom_ms(device, ng, self.profiles.get(device))

    def part_ms(self, device: str, geom: PartGeom) -> float:
        """Compute latency (ms) of one part (its :class:`PartGeom`) on ``device``."""
        key = (device, geom.start, geom.end, geom.halo, geom.out_region)
        v = self._part_cache.get(key)
        if v is not None:
            return v
        end = self._nodes[geom.end]
        if geom.out_region is not None and len(end.shape) == 2:
            # a features part (one linear layer's output range): the whole stage's cost in
            # proportion — the layer is bound by reading its weights, and reads that share of them
            whole = replace(geom, out_region=None, nodes=[
                NodeGeom(ng.name, None, ng.edges, None, self._nodes[ng.name].flops) for ng in geom.nodes])
            v = self.part_ms(device, whole) * (geom.out_region[3] - geom.out_region[2]) / end.shape[1]
            self._part_cache[key] = v
            return v
        prof = self.profiles.get(device)
        if prof is None or prof.empty:
            self.device(device)
            cal, scale = self.analytic_basis(device)
            v = self._analytic_ngs(cal, scale, geom.nodes)
        else:
            v = self._profiled_part_ms(device, prof, geom)
        self._part_cache[key] = v
        return v

    def cpu_ms(self, device: str, geom: PartGeom) -> float:
        """CPU time (ms of one full core) of one part: what the device's quota is charged.

        ``part_ms`` is the steady-state wall time at the device's emulated
        share; the simulator runs ``cpu_ms`` through the quota instead.
        """
        return self.part_ms(device, geom) * self.emulated_share(device)

    def stage_ms(self, device: str, start: str, end: str, region: Region | None = None,
                 halo: str = "exact") -> float:
        """Latency of computing ``region`` of stage (start, end]'s output on ``device``."""
        return self.part_ms(device, part_geometry(self.graph, start, end, region, halo))

    def _profiled_part_ms(self, device: str, prof: DeviceProfile, geom: PartGeom) -> float:
        groups: dict[tuple[str, str] | None, list[NodeGeom]] = {}
        for ng in geom.nodes:
            groups.setdefault(self._segment.get(ng.name), []).append(ng)
        total = 0.0
        unit = self._unit(prof)
        for i, (seg, ngs) in enumerate(groups.items()):
            t = None if seg is None else self._segment_from_tables(prof, seg, ngs)
            if t is not None:
                t *= unit
                if i > 0 and seg in prof.chained:  # runs in one part after its predecessor: what it adds there
                    t = self._chained_ms(prof, seg, t / unit) * unit
            else:
                t = sum(self._node_geom_ms(device, ng, prof) for ng in ngs)
            total += t
        return total

    def _segment_from_tables(self, prof: DeviceProfile, seg: tuple[str, str],
                             ngs: list[NodeGeom]) -> float | None:
        e = seg[1]
        end = next((ng for ng in ngs if ng.name == e), None)
        if end is None:
            return None
        node = self._nodes[e]
        region = end.region
        whole = region is None or (node.is_feature_map and region == (0, node.height, 0, node.width))
        table = prof.stages.get(seg)
        if whole and seg in prof.whole and all(ng.region is None or self._is_full(ng) for ng in ngs):
            return prof.whole[seg]
        if table is None or not node.is_feature_map:
            return None
        rows = node.height if region is None else region[1] - region[0]
        base = interpolate(table, rows)
        ref = self._reference_ms(seg, rows)
        actual = self._analytic_ngs(self.calibration, 1.0, ngs)
        t = base * (actual / ref) if ref > 0 else base
        if region is not None and region[3] - region[2] < node.width and seg in prof.cols:
            t *= self._width_factor(prof, seg, region[3] - region[2])
        return t

    def _width_factor(self, prof: DeviceProfile, seg: tuple[str, str], cols: int) -> float:
        """What a part ``cols`` wide costs beyond its analytic share of a full-width slab (1 at full width).

        From the profile's ``cols`` points (the segment at one row count,
        narrower left-anchored widths): measured ratio to the full width over
        the analytic model's ratio for the same geometries, interpolated in
        the width, clamped to [0.5, 3].
        """
        key = (prof.device, seg)
        g = self._width_cache.get(key)
        if g is None:
            s, e = seg
            w = self._nodes[e].width
            rows, pts = prof.cols[seg]
            full = dict(pts).get(w)
            out: list[tuple[int, float]] = []
            if full:
                a_full = self._reference_ms(seg, rows)  # the full-width slab's analytic cost
                for c, ms in pts:
                    if c >= w:
                        continue
                    a = self._analytic_ngs(self.calibration, 1.0, part_geometry(self.graph, s, e, (0, rows, 0, c)).nodes)
                    if a > 0 and a_full > 0:
                        out.append((c, min(3.0, max(0.5, (ms / full) / (a / a_full)))))
            g = sorted(out) + [(w, 1.0)] if out else []
            self._width_cache[key] = g
        if not g:
            return 1.0
        if cols <= g[0][0]:
            return g[0][1]
        return interpolate(g, cols)

    def _chained_ms(self, prof: DeviceProfile, seg: tuple[str, str], alone: float) -> float:
        """A segment's cost after its predecessor in one part, from its cost ``alone`` (profile units).

        ``chained`` is measured at full height; other regions scale it by
        their share of the segment's full cost (conversions and fusion grow
        with the region like the segment does).
        """
        table = prof.stages.get(seg)
        full = table[-1][1] if table else prof.whole.get(seg)
        # chain_scale is fitted on the feature-map (swept) segments only (coinfer.cost.measure.chain_scale)
        delta = prof.chained[seg] * (prof.chain_scale if table else 1.0)
        if not full or full <= 0:
            return delta
        return delta * (alone / full)

    def _is_full(self, ng: NodeGeom) -> bool:
        n = self._nodes[ng.name]
        return ng.region == (0, n.height, 0, n.width)

    def _reference_ms(self, seg: tuple[str, str], rows: int) -> float:
        """Analytic cost (scale 1) of the geometry a stage table was measured on: rows [0, rows), full width."""
        key = (seg, rows)
        v: float | None = self._ref_cache.get(key)
        if v is None:
            s, e = seg
            node = self._nodes[e]
            g = part_geometry(self.graph, s, e, (0, rows, 0, node.width), "exact")
            v = self._analytic_ngs(self.calibration, 1.0, g.nodes)
            self._ref_cache[key] = v
        return v

    # -- transfer -----------------------------------------------------------
    def link(self, a: str, b: str) -> tuple[float, float]:
        """(bandwidth Mbit/s, one-way latency ms) from ``a`` to ``b``."""
        key = (a, b)
        v = self._link_cache.get(key)
        if v is None:
            self.device(a)
            self.device(b)
            v = self.cluster.link(a, b)
            if self.prefer_probes:
                for x, y in ((a, b), (b, a)):
                    prof = self.profiles.get(x)
                    if prof is not None and y in prof.links:
                        p = prof.links[y]
                        v = (p.bandwidth_mbps, p.rtt_ms / 2.0)
                        break
                else:
                    from .profile import ProfileError

                    raise ProfileError(
                        f"no probe of link {a}-{b} in the profiles ({self.profiles.where}); re-run coinfer profile "
                        f"on this cluster (it probes every link) or use the cluster file's links")
            if not (v[0] > 0 and v[1] >= 0):
                raise ClusterError(f"link {a}-{b}: bandwidth must be > 0 and latency >= 0 (got {v}); fix the cluster file")
            self._link_cache[key] = v
        return v

    def wire_bytes(self, nbytes: float, codec: str = "raw", quant: str | None = None) -> float:
        return wire_bytes(nbytes, codec, quant)

    def serialize_ms(self, a: str, b: str, nbytes: float, codec: str = "raw", quant: str | None = None,
                     t_ms: float = 0.0) -> float:
        """Time (ms) the bytes occupy the link a→b when sending starts at ``t_ms`` (no latency)."""
        if a == b:
            return 0.0
        bits = wire_bytes(nbytes, codec, quant) * 8.0
        if self.trace is not None:
            return self.trace.transfer_s(bits, self.trace_start_s + t_ms / 1e3) * 1e3
        mbps, _ = self.link(a, b)
        return bits / (mbps * 1e3)

    def transfer_ms(self, a: str, b: str, nbytes: float, codec: str = "raw", quant: str | None = None,
                    t_ms: float = 0.0) -> float:
        """Latency + serialisation (ms) of sending ``nbytes`` raw bytes from ``a`` to ``b`` at ``t_ms``."""
        if a == b:
            return 0.0
        return self.link(a, b)[1] + self.serialize_ms(a, b, nbytes, codec, quant, t_ms)

    def with_trace(self, trace: BandwidthTrace | None, start_s: float = 0.0) -> CostModel:
        """A copy using another bandwidth trace (compute caches are shared)."""
        c = copy.copy(self)
        c.trace = trace
        c.trace_start_s = float(start_s)
        return c

    # -- energy -------------------------------------------------------------
    def energy_j(self, device: str, busy_ms: float, idle_ms: float, tx_ms: float, rx_ms: float) -> float:
        """busy_w·busy + idle_w·idle + tx_w·tx + rx_w·rx (J) with the cluster's power figures (CoEdge)."""
        return energy_j(self.power(device), busy_ms, idle_ms, tx_ms, rx_ms)

    def dynamic_energy_j(self, device: str, busy_ms: float, tx_ms: float, rx_ms: float) -> float:
        """CoEdge's Ec + Ex (J): the energy above idle."""
        return dynamic_energy_j(self.power(device), busy_ms, tx_ms, rx_ms)

    # -- reporting ----------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "compute": {d: self.source_of(d) for d in self._devices},
            "calibration": self.calibration.source,
            "profiles": self.profiles.where if len(self.profiles) else None,
            "bandwidth_trace": None if self.trace is None else self.trace.name,
            # device -> "runs X, priced with Y's table" (ProfileSet.select; notes printed by plan / simulate)
            "backend_mismatch": {d: {"runs": w, "priced_with": h} for d, (w, h) in self.profiles.mismatched.items()},
        }


def load_cost_model(graph: Graph, cluster: Cluster, profiles_dir: str | None = None, *,
                    calibration: HostCalibration | None = None,
                    bandwidth_trace: str | BandwidthTrace | None = None, prefer_probes: bool = False) -> CostModel:
    """A :class:`CostModel` from files: profiles directory, bandwidth trace CSV (both optional)."""
    profiles = ProfileSet.load_dir(profiles_dir) if profiles_dir else None
    if prefer_probes and profiles is None:
        from .profile import ProfileError

        raise ProfileError("probed links need profiles; pass --profiles DIR (from coinfer profile)")
    trace = BandwidthTrace.load(bandwidth_trace) if isinstance(bandwidth_trace, str) else bandwidth_trace
    return CostModel(graph, cluster, profiles, calibration=calibration, bandwidth_trace=trace,
                     prefer_probes=prefer_probes)
