"""DistrEdge's layer-volume splitter as a gymnasium environment over the simulator.

Hou, Guan, Han & Zhang, IPDPS 2022 (PAPERS.md §3), the splitter's MDP:

* one **step per layer volume** (the volumes come from the LC-PSS
  partitioner, :func:`coinfer.strategies.distredge.partition_volumes`);
* **state** ``s_l``: the devices' accumulated latencies after volumes
  1..l-1 (ms, divided by ``t_ref``, the fastest single device's whole-model
  latency) and the height, depth (channels), filter size and stride of
  volume l's last layer (normalised by the input height, the widest map,
  7 and 4);
* **action**: |D|-1 continuous cut positions in [-1, 1] (the paper's [A, B]),
  sorted and mapped to rows ``round(H_l·(x+1)/2)``; device k (in cluster
  order) computes rows [cut_{k-1}, cut_k) of the volume's output (possibly
  none);
* **reward**: 0 until the last volume, then ``t_ref / T`` — the paper's 1/T
  in units of ``t_ref`` — where T is the latency of the resulting plan
  simulated by :func:`coinfer.sim.simulate` (the same lowered programs the
  runtime runs) with the profiled cost model. ``shaping="progress"`` adds
  ``-(Δ max accumulated latency)/t_ref`` per step (reported separately;
  off by default).

The accumulated latencies are an event-free estimate (each device starts a
volume when its input pieces have arrived from their holders, then computes
its part: :meth:`CostModel.part_ms` over the exact geometry), which is what
the state needs; the reward uses the full simulation. Every episode's
latency and splits are recorded (:attr:`DistrEdgeEnv.history`).

Torch-free (gymnasium and numpy only); the agents live in
:mod:`coinfer.train.distredge`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from ..cost.model import CostModel
from ..graph.geometry import PartGeom, part_geometry
from ..graph.ir import GEOMETRY_OPS, Graph
from ..plan.lower import lower
from ..plan.plan import Plan, Wire
from ..sim import simulate
from ..strategies.distredge import actions_to_rows, build_plan, volume_rows
from ..strategies.registry import PlanRequest


def volume_features(g: Graph, start: str, end: str) -> tuple[int, int, int, int]:
    """(height, depth, filter size, stride) of the volume's last layer (the last conv/pool for k, s)."""
    from ..graph.geometry import stage_nodes

    n = g[end]
    k, s = 1, 1
    for node in reversed(stage_nodes(g, start, end)):
        if node.op in GEOMETRY_OPS and node.op != "pad":
            k = int(node.attrs.get("kernel", (1, 1))[0])
            s = int(node.attrs.get("stride", (1, 1))[0])
            break
    return n.height, n.shape[1] if n.is_feature_map else 1, k, s


class DistrEdgeEnv(gym.Env):
    """Split each layer volume's rows among the devices; reward ``t_ref / T`` at the end."""

    # gym.Env annotates metadata without ClassVar although it is a class attribute (ruff's RUF012 wants one)
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}  # type: ignore[misc]

    def __init__(self, req: PlanRequest, costs: CostModel, boundaries: list[str], tail: str,
                 wire: Wire = Wire(), params: dict[str, Any] | None = None, shaping: str = "none") -> None:
        super().__init__()
        self.req = req
        self.g = req.graph
        self.costs = costs
        self.boundaries = list(boundaries)
        self.devices = list(req.devices)
        self.D = len(self.devices)
        self.source = req.source
        self.tail = tail
        self.wire = wire
        self.params = dict(params or {})
        self.shaping = shaping
        g = self.g
        starts = [g.input.name] + self.boundaries[:-1]
        self.volumes = list(zip(starts, self.boundaries))
        self.t_ref = min(costs.stage_ms(d, g.input.name, g.output.name, None) for d in self.devices)
        maxc = max((n.shape[1] for n in g.nodes if n.is_feature_map), default=1)
        self.features = []
        for s, e in self.volumes:
            h, c, k, st = volume_features(g, s, e)
            self.features.append([h / g.input.height, c / maxc, k / 7.0, st / 4.0])
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.D - 1,), np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.D + 4,), np.float32)
        self._geoms: dict[tuple[str, str, int, int], PartGeom] = {}
        self._rows_cache: dict[Any, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        # memos: late in training most episodes repeat a split (rows are integers), and both the
        # state update and the simulation are pure functions of the splits so far
        self._adv_memo: dict[tuple[Any, ...], tuple[np.ndarray, list[tuple[str, int, int]]]] = {}
        self._sim_memo: dict[tuple[Any, ...], float] = {}
        self._reset_state()

    # -- mechanics --------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self.l = 0
        self.acc = np.zeros(self.D)
        self.holders: list[tuple[str, int, int]] = [(self.source, 0, self.g.input.height)]
        self.splits: list[list[tuple[int, int]]] = []

    def _obs(self) -> np.ndarray:
        f = self.features[min(self.l, len(self.volumes) - 1)]
        return np.concatenate([self.acc / self.t_ref, f]).astype(np.float32)

    def geom(self, s: str, e: str, a: int, b: int) -> PartGeom:
        key = (s, e, a, b)
        gm = self._geoms.get(key)
        if gm is None:
            gm = part_geometry(self.g, s, e, (a, b, 0, self.g[e].width), "exact")
            self._geoms[key] = gm
        return gm

    def _advance(self, rows: list[tuple[int, int]]) -> None:
        """Accumulated latencies after the devices compute ``rows`` of the current volume (memoised)."""
        key = tuple(tuple(r) for r in self.splits) + (tuple(rows),)
        hit = self._adv_memo.get(key)
        if hit is not None:
            self.acc, self.holders = hit[0].copy(), list(hit[1])
            return
        self._advance_uncached(rows)
        self._adv_memo[key] = (self.acc.copy(), list(self.holders))

    def _advance_uncached(self, rows: list[tuple[int, int]]) -> None:
        s, e = self.volumes[self.l]
        g = self.g
        a = np.array([r[0] for r in rows])
        b = np.array([r[1] for r in rows])
        il, ih, _ = volume_rows(g, s, e, a, b, self._rows_cache)
        rb = g[s].out_bytes / max(1, g[s].height)
        acc = self.acc.copy()
        for i, d in enumerate(self.devices):
            if rows[i][1] <= rows[i][0]:
                continue
            start = acc[i]
            for hd, pa, pb in self.holders:
                j = self.devices.index(hd)
                ov = max(0, min(int(ih[i]), pb) - max(int(il[i]), pa))
                if ov and hd != d:
                    t = self.acc[j] + self.costs.transfer_ms(hd, d, ov * rb, self.wire.codec, self.wire.quant)
                    start = max(start, t)
                elif hd == d:
                    start = max(start, self.acc[j])
            acc[i] = start + self.costs.part_ms(d, self.geom(s, e, rows[i][0], rows[i][1]))
        self.acc = acc
        self.holders = [(d, r[0], r[1]) for d, r in zip(self.devices, rows) if r[1] > r[0]]

    def plan(self, splits: list[list[tuple[int, int]]] | None = None, tail: str | None = None) -> Plan:
        return build_plan(self.req, self.boundaries, splits if splits is not None else self.splits,
                          tail or self.tail, self.devices, self.params, self.wire)

    def simulate(self, splits: list[list[tuple[int, int]]] | None = None, tail: str | None = None) -> float:
        """Simulated latency (ms) of the plan with ``splits`` (default: this episode's); memoised."""
        sp = splits if splits is not None else self.splits
        key = (tuple(tuple(tuple(r) for r in v) for v in sp), tail or self.tail)
        T = self._sim_memo.get(key)
        if T is None:
            T = self._simulate_uncached(sp, tail)
            self._sim_memo[key] = T
        return T

    def _simulate_uncached(self, splits: list[list[tuple[int, int]]], tail: str | None) -> float:
        plan = self.plan(splits, tail)
        geoms = {}
        vol = {e: (s, e) for s, e in self.volumes}  # stages of whole volumes on one device may be merged
        for si, stage in enumerate(plan.stages):
            p = stage.partition
            if hasattr(p, "parts"):
                s, e = vol[stage.until]
                for k, rp in enumerate(p.parts):
                    geoms[(si, k)] = self.geom(s, e, rp.rows[0], rp.rows[1])
        return simulate(lower(plan, self.g, geoms), self.costs).latency_ms

    # -- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._reset_state()
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        _, e = self.volumes[self.l]
        rows = actions_to_rows(np.asarray(action, dtype=np.float64), self.g[e].height, self.D)
        before = float(self.acc.max())
        self._advance(rows)
        self.splits.append(rows)
        self.l += 1
        reward = 0.0
        if self.shaping == "progress":
            reward -= (float(self.acc.max()) - before) / self.t_ref
        done = self.l >= len(self.volumes)
        info: dict[str, Any] = {}
        if done:
            T = self.simulate()
            reward += self.t_ref / T if T > 0 else 0.0
            rec = {"episode": len(self.history), "latency_ms": T, "splits": [list(map(list, r)) for r in self.splits]}
            self.history.append({"episode": rec["episode"], "latency_ms": T})
            if self.best is None or T < self.best["latency_ms"]:
                self.best = rec
            info["latency_ms"] = T
        return self._obs(), float(reward), done, False, info

    # -- helpers for callers -----------------------------------------------------------------------
    def rollout(self, act: Any) -> tuple[list[list[tuple[int, int]]], float]:
        """Run one deterministic episode with ``act(obs) -> action``; return (splits, latency)."""
        obs, _ = self.reset()
        splits = []
        T = math.nan
        while True:
            a = act(obs)
            _, e = self.volumes[self.l]
            splits.append(actions_to_rows(np.asarray(a, dtype=np.float64), self.g[e].height, self.D))
            obs, _, done, _, info = self._step_no_record(a)
            if done:
                T = info["latency_ms"]
                break
        return splits, T

    def _step_no_record(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        n = len(self.history)
        best = self.best
        out = self.step(action)
        del self.history[n:]
        self.best = best
        return out
