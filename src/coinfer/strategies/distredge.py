"""``distredge``: layer volumes + a learned (DDPG) row splitter (Hou, Guan, Han & Zhang, IPDPS 2022).

PAPERS.md §3. Two parts, as in the paper:

**CNN partitioner (LC-PSS)** — :func:`partition_volumes`. Consecutive layers
are grouped into *layer volumes*: each volume is one stage of the plan,
computed fused with its halo redundantly (``halo: exact``), exchanging data
only at volume boundaries. A partition (a set of boundaries among the
splittable cut points) is scored ``Cp = α·T + (1-α)·O`` averaged over
``n_random`` random row splits of every volume over the devices (the same
splits for every candidate: common random numbers), with T the data moved at
volume boundaries (the input scatter, the halo/redistribution exchange
between consecutive volumes, the final gather) and O the operations computed
(redundant halos included). Boundaries are added greedily, the best per loop,
until none lowers ``Cp`` (paper defaults α = 0.75, 100 random splits).
*Our choice where the paper is silent:* T and O are put on one scale —
milliseconds — by dividing the bytes by the cluster's mean link rate and the
FLOPs by the devices' summed speed (from the profiled cost model); rows
follow exact receptive-field arithmetic, vectorised over the random splits
(:func:`volume_rows`).

**Layer-volume splitter** — a DDPG agent (stable-baselines3) that, volume by
volume, splits the volume's output rows among the devices
(:mod:`coinfer.train.distredge_env`, :mod:`coinfer.train.distredge`). State:
the devices' accumulated latencies so far and the height, depth, filter size
and stride of the volume's last layer; action: |D|-1 cut positions in
[-1, 1], sorted and mapped to rows ``round(H·(x+1)/2)``; reward 0 until the
last volume, then ``1/T`` with T the simulated latency of the whole plan
(:func:`coinfer.sim.simulate` over the profiled, nonlinear latency tables).
The non-splittable tail runs whole on the device that finishes it first.

Parameters (``--param key=value``): ``train_episodes`` (default 4000, the
paper's), ``algo`` (ddpg | td3 | sac), ``alpha`` (0.75), ``n_random`` (100),
``max_volumes`` (none), ``seed`` (0), ``shaping`` (none | progress: reward
shaping, off by default: docs/strategies/distredge.md), ``anchors`` (default true: also
simulate the splits that need no learning — every volume whole on one device, rows in proportion
to speed — and keep one if it beats the policy; ``false`` = the paper's policy alone), ``policy`` (a policy file to load
instead of the cache), ``retrain`` (ignore the cache), ``costs``
(``auto``: the ``--profiles DIR`` tables when given, else emulated profiles
of the local devices, measured once and cached; ``cpu``: the same tables in
CPU time at full speed, the quota applied by the cost model — robust to a
busy machine; ``analytic``: the analytic
cost model — not the paper's method, for quick looks and tests), ``wire`` (raw | lz4 | zstd —
DistrEdge plans are exact, so quantised wires are refused).

Planning trains (or loads the cached policy for this cluster, model and
profiles) and emits an ordinary plan; the policy code imports torch lazily,
so ``import coinfer.strategies`` stays torch-free.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cluster import Cluster
from ..cost.model import CostModel
from ..graph.ir import GEOMETRY_OPS, OUTPUT, Graph
from ..plan.plan import Plan, RowPart, Rows, Stage, Whole, Wire
from .registry import PlanRequest, PlanResult, StrategyError, flag_param, register

ALGOS = ("ddpg", "td3", "sac")
DEFAULTS: dict[str, Any] = {"train_episodes": 4000, "algo": "ddpg", "alpha": 0.75, "n_random": 100,
                            "max_volumes": None, "seed": 0}
#: valid (low, high) of the numeric settings, high None for no cap: ``coinfer plan -s distredge``
#: (:func:`check_settings`) and ``coinfer train distredge`` (typer ``min=`` / ``max=``) share them
LIMITS: dict[str, tuple[float, float | None]] = {"train_episodes": (1, None), "alpha": (0.0, 1.0),
                                                 "n_random": (1, None), "max_volumes": (1, None),
                                                 "seed": (0, None)}


def check_settings(names: dict[str, str] | None = None, **values: float | None) -> None:
    """Refuse a numeric setting outside :data:`LIMITS` (one line naming it and its range).

    ``names`` maps a setting to what the user typed (default: the plan parameter name)."""
    for key, v in values.items():
        lo, hi = LIMITS[key]
        if v is None and key == "max_volumes":
            continue
        if v is None or not (v >= lo and (hi is None or v <= hi)):
            need = f"between {lo:g} and {hi:g}" if hi is not None else f">= {lo:g}"
            shown = (names or {}).get(key, key)
            raise StrategyError(f"{shown} must be {need} (got {v}); give a value in that range")


# -- receptive fields along rows, vectorised over many splits -------------------------------------
@dataclass(frozen=True)
class _RowNode:
    name: str
    height: int
    flops_per_row: float
    row_bytes: int
    inputs: tuple[tuple[str, int, int, int, int], ...]  # (src, kernel, stride, dilation, pad_top)


def _row_nodes(g: Graph, start: str, end: str) -> list[_RowNode]:
    from ..graph.geometry import stage_nodes

    out = []
    for n in stage_nodes(g, start, end):
        if n.op in GEOMETRY_OPS:
            a = n.attrs
            k = int(a.get("kernel", (1, 1))[0])
            s = int(a.get("stride", (1, 1))[0])
            d = int(a.get("dilation", (1, 1))[0])
            t = int(a["pad"][0])
            ins = tuple((i, k, s, d, t) for i in n.inputs)
        else:
            ins = tuple((i, 1, 1, 1, 0) for i in n.inputs)
        h = n.height
        out.append(_RowNode(n.name, h, n.flops / max(1, h * n.shape[0]), n.out_bytes // max(1, h), ins))
    return out


def volume_rows(g: Graph, start: str, end: str, a: np.ndarray, b: np.ndarray,
                cache: dict[Any, Any] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For output rows [a, b) of stage (start, end] (arrays, one per part), exact halo:

    returns (input row start, input row end, FLOPs) per part. Empty parts (a >= b) need and cost nothing.
    """
    key = (start, end)
    nodes = None if cache is None else cache.get(key)
    if nodes is None:
        nodes = _row_nodes(g, start, end)
        if cache is not None:
            cache[key] = nodes
    lo: dict[str, np.ndarray] = {end: a.astype(np.int64)}
    hi: dict[str, np.ndarray] = {end: b.astype(np.int64)}
    flops = np.zeros(a.shape, dtype=np.float64)
    for n in reversed(nodes):
        if n.name not in lo:
            continue
        l0 = np.clip(lo[n.name], 0, n.height)
        h0 = np.clip(hi[n.name], 0, n.height)
        # a need lying wholly in padding still computes one real row (geometry._require)
        out_side = (h0 <= l0) & (hi[n.name] > lo[n.name])
        if out_side.any():
            l0 = np.where(out_side, np.clip(lo[n.name], 0, n.height - 1), l0)
            h0 = np.where(out_side, l0 + 1, h0)
        rows = np.maximum(0, h0 - l0)
        flops += rows * n.flops_per_row
        for src, k, s, d, t in n.inputs:
            nl = l0 * s - t
            nh = (h0 - 1) * s - t + d * (k - 1) + 1
            if src in lo:
                lo[src] = np.minimum(lo[src], nl)
                hi[src] = np.maximum(hi[src], nh)
            else:
                lo[src] = nl
                hi[src] = nh
    hs = g[start].height
    empty = a >= b
    il = np.where(empty, 0, np.clip(lo.get(start, a), 0, hs))
    ih = np.where(empty, 0, np.clip(hi.get(start, b), 0, hs))
    return il, ih, np.where(empty, 0.0, flops)


def rows_from_fractions(height: int, fr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row ranges [a, b) per device from split fractions (last axis: devices, summing to 1)."""
    c = np.round(np.cumsum(fr, axis=-1) * height).astype(np.int64)
    c[..., -1] = height
    a = np.concatenate([np.zeros(c.shape[:-1] + (1,), np.int64), c[..., :-1]], axis=-1)
    return a, c


# -- the partitioner (LC-PSS) ---------------------------------------------------------------------
@dataclass
class VolumeScore:
    """Cp of one partition and its two terms (ms), averaged over the random splits."""

    boundaries: list[str]
    cp: float
    t_ms: float
    o_ms: float


@dataclass
class Partitioner:
    """LC-PSS over ``graph``'s splittable cut points for ``devices`` (source first holds the input)."""

    graph: Graph
    devices: list[str]
    source: str
    speeds: dict[str, float]  # GFLOP/s per device (the cost model's)
    mean_mbps: float
    alpha: float = 0.75
    n_random: int = 100
    seed: int = 0
    _rows: dict[Any, Any] = field(default_factory=dict)
    _o: dict[tuple[str, str], float] = field(default_factory=dict)
    _t: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.fr = rng.dirichlet(np.ones(len(self.devices)), size=self.n_random)  # (n, D)
        self.src_idx = self.devices.index(self.source)
        self.total_speed = sum(self.speeds[d] for d in self.devices)

    def _split(self, node: str) -> tuple[np.ndarray, np.ndarray]:
        return rows_from_fractions(self.graph[node].height, self.fr)

    def o_flops(self, s: str, e: str) -> float:
        v = self._o.get((s, e))
        if v is None:
            a, b = self._split(e)
            _, _, fl = volume_rows(self.graph, s, e, a.ravel(), b.ravel(), self._rows)
            v = float(fl.sum()) / self.n_random
            self._o[(s, e)] = v
        return v

    def t_bytes(self, s: str, e: str) -> float:
        """Bytes into volume (s, e] from whoever holds its input (the source for the graph input)."""
        key = (s, e, "in")
        v = self._t.get(key)
        if v is None:
            g = self.graph
            a, b = self._split(e)
            il, ih, _ = volume_rows(g, s, e, a.ravel(), b.ravel(), self._rows)
            il = il.reshape(a.shape)
            ih = ih.reshape(a.shape)
            rb = g[s].out_bytes / max(1, g[s].height)
            if s == g.input.name:  # the source scatters the input
                need = np.maximum(0, ih - il)
                need[:, self.src_idx] = 0
                v = float(need.sum()) * rb / self.n_random
            else:  # device j holds rows [pa_j, pb_j) of s (its split of the previous volume)
                pa, pb = self._split(s)
                ov = np.maximum(0, np.minimum(ih[:, :, None], pb[:, None, :])
                                - np.maximum(il[:, :, None], pa[:, None, :]))  # (n, i, j)
                D = len(self.devices)
                ov[:, np.arange(D), np.arange(D)] = 0
                v = float(ov.sum()) * rb / self.n_random
            self._t[key] = v
        return v

    def score(self, boundaries: list[str]) -> VolumeScore:
        g = self.graph
        prev = g.input.name
        t = o = 0.0
        for c in boundaries:
            o += self.o_flops(prev, c)
            t += self.t_bytes(prev, c)
            prev = c
        last = boundaries[-1]
        t += g[last].out_bytes * (len(self.devices) - 1) / len(self.devices)  # the gather for the tail
        t_ms = t * 8.0 / (self.mean_mbps * 1e3)
        o_ms = o / (self.total_speed * 1e6)
        return VolumeScore(list(boundaries), self.alpha * t_ms + (1 - self.alpha) * o_ms, t_ms, o_ms)

    def greedy(self, max_volumes: int | None = None) -> tuple[VolumeScore, list[VolumeScore]]:
        """Start with one volume over the whole spatial part; add the best boundary while Cp drops."""
        g = self.graph
        split = [c for c, ok in g.splittable_cuts().items() if ok]
        if not split:
            raise StrategyError(f"{g.name} has no splittable cut point; DistrEdge needs a convolutional part")
        cur = self.score([split[-1]])
        history = [cur]
        while max_volumes is None or len(cur.boundaries) < max_volumes:
            best = None
            for c in split[:-1]:
                if c in cur.boundaries:
                    continue
                cand = sorted(cur.boundaries + [c], key=g.index)
                sc = self.score(cand)
                if best is None or sc.cp < best.cp:
                    best = sc
            if best is None or best.cp >= cur.cp * (1 - 1e-9):
                break
            cur = best
            history.append(cur)
        return cur, history


def partition_volumes(req: PlanRequest, costs: CostModel, alpha: float = 0.75, n_random: int = 100,
                      seed: int = 0, max_volumes: int | None = None) -> tuple[list[str], dict[str, Any]]:
    """The layer-volume boundaries (cut points, in order; the last ends the spatial part) and a report."""
    devs = list(req.devices)
    mbps = [costs.link(a, b)[0] for a in devs for b in devs if a != b] or [100.0]
    part = Partitioner(req.graph, devs, req.source, {d: costs.speed(d) for d in devs},
                       sum(mbps) / len(mbps), alpha, n_random, seed)
    best, hist = part.greedy(max_volumes)
    return best.boundaries, {"cp": round(best.cp, 4), "t_ms": round(best.t_ms, 3), "o_ms": round(best.o_ms, 3),
                             "loops": len(hist) - 1, "volumes": len(best.boundaries)}


# -- plans from splits ---------------------------------------------------------------------------
def actions_to_rows(x: np.ndarray | list[float], height: int, n_dev: int) -> list[tuple[int, int]]:
    """|D|-1 actions in [-1, 1] -> sorted cut positions -> per-device row ranges (some may be empty)."""
    xs = sorted(float(min(1.0, max(-1.0, v))) for v in list(x)[: n_dev - 1])
    cuts = [0] + [round(height * (v + 1.0) / 2.0) for v in xs] + [height]
    return [(cuts[i], cuts[i + 1]) for i in range(n_dev)]


def volume_stage(g: Graph, end: str, devices: list[str], rows: list[tuple[int, int]]) -> Stage:
    parts = tuple(RowPart(d, r) for d, r in zip(devices, rows) if r[1] > r[0])
    if len(parts) == 1:
        return Stage(end, Whole(parts[0].device))
    return Stage(end, Rows(parts), "exact")


def build_plan(req: PlanRequest, boundaries: list[str], splits: list[list[tuple[int, int]]], tail: str,
               devices: list[str], params: dict[str, Any], wire: Wire) -> Plan:
    g = req.graph
    stages = [volume_stage(g, e, devices, r) for e, r in zip(boundaries, splits)]
    if g.resolve(boundaries[-1]) != g.output.name:
        stages.append(Stage(OUTPUT, Whole(tail)))
    # consecutive volumes whole on one device are one stage (no hand-over to itself)
    merged: list[Stage] = []
    for st in stages:
        if merged and isinstance(st.partition, Whole) and merged[-1].partition == st.partition:
            merged[-1] = Stage(st.until, st.partition)
        else:
            merged.append(st)
    return req.make_plan(merged, "distredge", params, wire=wire)


def choose_tail(g: Graph, costs: CostModel, last: str, devices: list[str], source: str) -> str:
    """The device that runs the non-splittable rest fastest, counting the gather and the return."""
    if g.resolve(last) == g.output.name:
        return source
    nin, nout = g[last].out_bytes, g.output.out_bytes
    best, best_ms = source, math.inf
    for d in devices:
        ms = costs.stage_ms(d, last, g.output.name, None)
        others = [x for x in devices if x != d]
        if others:
            ms += sum(costs.transfer_ms(x, d, nin / len(devices)) for x in others) / len(others)
        if d != source:
            ms += costs.transfer_ms(d, source, nout)
        if ms < best_ms:
            best, best_ms = d, ms
    return best


# -- identity of what a policy was trained for ------------------------------------------------------
#: the per-device fields :func:`cluster_fingerprint` covers, in its order (after the name)
DEVICE_FIELDS = ("cpu_share", "threads", "speed_gflops", "backend", "precision")


def cluster_description(cluster: Cluster) -> dict[str, Any]:
    """Devices (order, shares, threads, speeds) and links: what a trained policy depends on, as stored
    in its metadata (``cluster_desc``) so that a mismatch can name what differs."""
    devs = [[d.name, *(getattr(d, f) for f in DEVICE_FIELDS)] for d in cluster.devices]
    names = cluster.names
    links = [[a, b, *cluster.link(a, b)] for a in names for b in names if a < b]
    out: dict[str, Any] = json.loads(json.dumps({"source": cluster.source, "devices": devs, "links": links},
                                                default=str))
    return out


def cluster_fingerprint(cluster: Cluster) -> str:
    """The digest of :func:`cluster_description`."""
    blob = json.dumps(cluster_description(cluster), sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def cluster_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two :func:`cluster_description` s, e.g. ``d1 cpu_share 0.25 → 0.7``,
    ``link d0-d1 (100.0, 0.5) → (10.0, 0.5)`` (link: bandwidth Mbit/s, latency ms)."""
    diffs = []
    if old.get("source") != new.get("source"):
        diffs.append(f"source {old.get('source')} → {new.get('source')}")
    od = {d[0]: d[1:] for d in old.get("devices", [])}
    nd = {d[0]: d[1:] for d in new.get("devices", [])}
    if list(od) != list(nd):
        diffs.append(f"devices {list(od)} → {list(nd)}")
    for name in (n for n in nd if n in od):
        for f, a, b in zip(DEVICE_FIELDS, od[name], nd[name], strict=False):
            if a != b:
                diffs.append(f"{name} {f} {a} → {b}")
    ol = {(x[0], x[1]): tuple(x[2:]) for x in old.get("links", [])}
    nl = {(x[0], x[1]): tuple(x[2:]) for x in new.get("links", [])}
    changed: dict[tuple[tuple[Any, ...], tuple[Any, ...]], list[str]] = {}
    for k in (k for k in nl if k in ol and ol[k] != nl[k]):
        changed.setdefault((ol[k], nl[k]), []).append(f"{k[0]}-{k[1]}")
    for (a, b), pairs in changed.items():
        which = f"every link ({len(pairs)})" if len(pairs) == len(nl) > 1 else "link " + ", ".join(pairs)
        diffs.append(f"{which} (Mbit/s, ms) {a} → {b}")
    return diffs


def costs_fingerprint(costs: CostModel) -> str:
    """Where the latencies come from (profile tables digest or analytic), per device."""
    parts: dict[str, list[str] | str] = {}
    for d in costs.cluster.names:
        prof = costs.profiles.get(d)
        if prof is None or prof.empty:
            parts[d] = ["analytic", costs.calibration.source]
        else:
            parts[d] = hashlib.sha256(prof.to_json().encode()).hexdigest()[:16]
    return "sha256:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@register("distredge", summary="DistrEdge: layer volumes (LC-PSS) split by a DDPG policy trained on the simulator",
          paper="Hou, Guan, Han, Zhang. DistrEdge: Speeding up CNN Inference on Distributed Edge Devices. "
                "IPDPS 2022 (arXiv 2202.01699)",
          exact=True, needs_costs=True, params=(*DEFAULTS, "policy", "retrain", "costs", "wire", "shaping", "anchors"),
          outputs=("volumes",))
def plan_distredge(req: PlanRequest) -> PlanResult:
    """Partition into layer volumes, then split each with the trained (or cached) policy."""
    wire_p = str(req.param("wire", "raw")).lower()
    if "int" in wire_p:
        raise StrategyError(
            f"wire={wire_p}: DistrEdge plans are exact (lossless-only) and {wire_p} quantises activations; "
            f"use --param wire=raw, lz4 or zstd (or the adcnn strategy for 4-bit transfers)"
        )
    if wire_p not in ("raw", "lz4", "zstd"):
        raise StrategyError(f"wire={wire_p!r} is unknown; use raw, lz4 or zstd")
    algo = str(req.param("algo", DEFAULTS["algo"])).lower()
    if algo not in ALGOS:
        raise StrategyError(f"algo={algo!r} is unknown; use one of {', '.join(ALGOS)}")
    try:
        episodes = req.number("train_episodes", DEFAULTS["train_episodes"], kind=int)
        alpha = req.number("alpha", DEFAULTS["alpha"])
        n_random = req.number("n_random", DEFAULTS["n_random"], kind=int)
        seed = req.number("seed", DEFAULTS["seed"], kind=int)
        mv = req.param("max_volumes")
        max_volumes = None if mv in (None, "none") else int(mv)
    except (TypeError, ValueError):
        raise StrategyError("train_episodes, n_random, seed and max_volumes must be integers, alpha a number") \
            from None
    check_settings(train_episodes=episodes, alpha=alpha, n_random=n_random, max_volumes=max_volumes, seed=seed)
    shaping = str(req.param("shaping", "none")).lower()
    if shaping not in ("none", "progress"):
        raise StrategyError(f"shaping={shaping!r} is unknown; use none (the paper's reward 1/T) or progress")
    if len(req.devices) < 2:
        raise StrategyError("distredge splits volumes over several devices; the cluster has one (use local)")
    from ..train.distredge import plan_with_policy  # lazy: gymnasium / stable-baselines3 / torch

    return plan_with_policy(req, algo=algo, episodes=episodes, alpha=alpha, n_random=n_random, seed=seed,
                            max_volumes=max_volumes, wire=Wire(wire_p, None),
                            policy=req.param("policy"), retrain=flag_param(req.param("retrain", False), "retrain"),
                            profiles=str(req.param("costs", "auto")), shaping=shaping,
                            use_anchors=flag_param(req.param("anchors", True), "anchors"), note=req.note)
