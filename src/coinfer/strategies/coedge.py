"""``coedge``: energy-aware adaptive workload partitioning (Zeng et al., CoEdge, IEEE/ACM ToN 2021).

CoEdge (Zeng, Chen, Zhou, Yang, Zhang, arXiv 2012.03257, §III–IV) splits the
input rows of a CNN once: device *i* gets a share ``λ_i`` of the rows and
keeps its slab through every conv layer, exchanging after each layer only the
boundary rows (the padding) its neighbours need; the fully connected tail runs
on the requester (the source). Execution is bulk-synchronous: every layer
waits for its slowest device, so

``T = Σ_l max_i (compute_il + transmit_il) + T_tail``.

Problem P1 minimises the *dynamic* energy ``Ec + Ex`` (computation power ×
computing time + radio power × transmitting time) subject to ``T ≤ D``,
``Σ λ_i = 1``, ``a_i ≥ padding unless a_i = 0`` and per-device memory. CoEdge
sets ``a_i = λ_i H``, relaxes the integer rows to a linear program and runs
Algorithm 1: drop devices whose share is zero; while the program is infeasible
drop the device with the smallest share and re-solve; if no set is feasible,
everything runs on the single device with the lowest latency.

Our formulation (``docs/strategies/coedge.md`` has the worked example):

* stages end at every layer (:func:`~coinfer.strategies.spatial.layer_ends`);
  each stage's output rows are split with the same cumulative shares
  (``bounds_l = round(H_l · Σ_{k≤i} a_k / H)``), so the lowering moves only the
  halo rows between neighbours;
* per device and layer the compute time is linear in the rows
  (``alpha_il + beta_il · λ_i H_l``, :class:`~coinfer.strategies.spatial.RowModel`
  from the cost model), the first layer receives its input slab from the
  source, later layers receive ``halo/2`` rows from each neighbour (in
  parallel, one link each), the last layer sends its slab to the source, and
  the tail runs whole on the source;
* energy = Σ busy_w × compute + (tx_w of the sender + rx_w of the receiver) ×
  serialisation time, from the cluster's power figures (CoEdge's Ec + Ex);
* the padding constraint: every device's rows of layer *l* cover the halo the
  next layer needs from it (``λ_i ≥ max_l ceil(h_{l+1}/2) / H_l``);
* the LP (``scipy.optimize.linprog``, HiGHS) has variables ``λ_i`` and one
  epigraph variable ``t_l`` per layer; its optimum is reported as the bound
  beside the rounded plan (``PlanResult.info``); rounding is largest remainder
  over the input rows followed by a feasibility repair (moving single rows
  between neighbours while it lowers the constraint violation, then the
  objective);
* ``objective=latency`` minimises ``T`` instead (the latency-optimal split).

``per_stage=true`` (the limitation CoEdge states: one partition may not fit
every layer) gives each stage its own shares ``λ_il``; rows that change owner
between stages move between neighbours (``d_il ≥ |λ_il − λ_i,l−1|``) and a
device may sit out a stage.

Parameters (``--param``): ``per_stage``, ``devices``, ``order`` (device order
along the rows; default cluster order). ``objective`` and ``deadline_ms`` go
in the plan's params so the coordinator's re-plan solves the same problem.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph.ir import OUTPUT
from ..plan.plan import Stage, Whole
from .common import holds_weights
from .registry import Infeasible, PlanRequest, PlanResult, StrategyError, register
from .spatial import (
    Overheads,
    RowModel,
    bool_param,
    cost_model,
    int_param,
    largest_remainder,
    layer_ends,
    plan_devices,
    row_bytes,
    rows_partition,
    xfer,
)

EPS = 1e-9


@dataclass
class Instance:
    """The data of one CoEdge problem (all devices of the request, in row order)."""

    devices: list[str]
    src: int  # index of the source in ``devices``
    ends: list[str]
    starts: list[str]
    H: np.ndarray  # (L,) output rows of each stage
    Hin: np.ndarray  # (L,) input rows of each stage
    halo: np.ndarray  # (L,) extra input rows (both sides) a middle slab of stage l reads
    rb_in: np.ndarray  # (L,) bytes per input row of stage l
    rb_out: float  # bytes per output row of the last stage
    alpha: np.ndarray  # (N, L) ms
    beta: np.ndarray  # (N, L) ms per output row
    tail_ms: float  # the tail whole on the source
    pb: np.ndarray  # (N,) busy W
    ptx: np.ndarray
    prx: np.ndarray
    lat: np.ndarray  # (N, N) ms
    spb: np.ndarray  # (N, N) ms of serialisation per byte
    umax: np.ndarray  # (N,) largest share the device's memory allows (0: cannot take part)
    minrow: np.ndarray  # (L,) rows of stage l's output a participant must hold (next stage's one-sided halo)
    ov_send: np.ndarray  # (N,) runtime ms per message sent
    ov_recv: np.ndarray  # (N,) runtime ms per message received (delivery included)
    ov_kb: np.ndarray  # (N,) runtime ms per byte sent or received

    @property
    def N(self) -> int:
        return len(self.devices)

    @property
    def L(self) -> int:
        return len(self.ends)

    @property
    def H0(self) -> int:
        return int(self.Hin[0])

    def min_share(self) -> float:
        """The single-share padding bound ``max_l minrow_l / H_l``."""
        return float(max((self.minrow / self.H).max(), 0.0))


def build_instance(req: PlanRequest, devices: list[str] | None = None) -> Instance:
    g = req.graph
    costs = cost_model(req)
    devs = devices if devices is not None else plan_devices(req)
    order = req.param("order")
    if order is not None:
        if isinstance(order, str):
            order = [x.strip() for x in order.split(",") if x.strip()]
        if sorted(order) != sorted(devs):
            raise StrategyError(f"--param order must list each planned device once: {devs}")
        devs = list(order)
    ends = layer_ends(g)
    if not ends:
        raise StrategyError(f"{g.name} has no splittable layer; CoEdge splits conv layers (use local)")
    starts = [g.input.name] + ends[:-1]
    rm = RowModel(g, costs, devs)
    ov = Overheads(costs)
    N, L = len(devs), len(ends)
    alpha = np.zeros((N, L))
    beta = np.zeros((N, L))
    halo = np.zeros(L)
    for l, (s, e) in enumerate(zip(starts, ends)):
        blk = rm.block(s, e)
        for i, d in enumerate(devs):
            alpha[i, l], beta[i, l] = blk[d]
            alpha[i, l] += ov.compute(d)
        halo[l] = rm.in_halo(s, e)
    H = np.array([g[e].height for e in ends], dtype=float)
    Hin = np.array([g[s].height for s in starts], dtype=float)
    rb_in = np.array([row_bytes(g[s]) for s in starts], dtype=float)
    src = devs.index(req.source) if req.source in devs else -1
    if src < 0:
        raise StrategyError("the source must be one of the planned devices")
    tail_ms = (rm.whole_ms(req.source, ends[-1], g.output.name) + ov.compute(req.source)
               if g.resolve(ends[-1]) != g.output.name else 0.0)
    lat = np.zeros((N, N))
    spb = np.zeros((N, N))
    for i, a in enumerate(devs):
        for j, b in enumerate(devs):
            if i != j:
                lat[i, j] = costs.link(a, b)[1]
                spb[i, j] = costs.serialize_ms(a, b, 1e6) / 1e6
    pw = [costs.power(d) for d in devs]
    # memory: weights of the split part + the largest (input + output) slab of one stage
    wbytes = sum(n.param_bytes for n in g.nodes[1 : g.index(ends[-1]) + 1])
    umax = np.ones(N)
    for i, d in enumerate(devs):
        mem = costs.device(d).memory_mb
        if mem is None:
            continue
        if not holds_weights(costs, d, wbytes):
            umax[i] = 0.0
            continue
        free = mem * 1e6 - wbytes
        per_share = max((rb_in * Hin + np.array([row_bytes(g[e]) for e in ends]) * H).max(), 1.0)
        umax[i] = max(0.0, min(1.0, free / per_share))
    minrow = np.zeros(L)
    minrow[:-1] = np.ceil(halo[1:] / 2 - EPS)
    return Instance(devs, src, ends, starts, H, Hin, halo, rb_in, float(row_bytes(g[ends[-1]])), alpha, beta,
                    tail_ms, np.array([p.busy_w for p in pw]), np.array([p.tx_w for p in pw]),
                    np.array([p.recv_w for p in pw]), lat, spb, umax, minrow,
                    np.array([ov.send(d) for d in devs]), np.array([ov.recv(d) for d in devs]),
                    np.array([ov.per_byte(d) for d in devs]))


# -- the integer model (what rounding, repair and the brute-force test evaluate) ----------------------
@dataclass
class Evaluation:
    latency_ms: float
    energy_j: float  # dynamic (Ec + Ex) + the tail's compute energy
    violation: float  # 0 when every constraint holds
    stage_ms: list[float] = field(default_factory=list)

    def value(self, objective: str) -> float:
        return self.energy_j if objective == "energy" else self.latency_ms


def rows_from_shares(inst: Instance, a: np.ndarray) -> np.ndarray:
    """(N, L) output rows per stage from integer input rows ``a`` (cumulative rounding)."""
    cum = np.cumsum(a) / float(a.sum())
    R = np.zeros((inst.N, inst.L), dtype=int)
    for l in range(inst.L):
        b = np.floor(inst.H[l] * cum + 0.5).astype(int)
        b[-1] = int(inst.H[l])
        R[:, l] = np.diff(np.concatenate([[0], b]))
    return R


def evaluate(inst: Instance, R: np.ndarray, deadline_ms: float | None = None,
             a: np.ndarray | None = None) -> Evaluation:
    """Bulk-synchronous latency and energy of integer rows ``R`` (N x L), with the constraint violation.

    Per stage and device: compute + the slowest of its incoming pieces
    (link latency + serialisation + the runtime's per-message cost) + the
    runtime cost of the pieces it sends; the source also pays for scattering
    the input (stage 0) and receiving the gathered slabs (last stage).
    ``a`` (input rows per device, single-share mode) adds the padding
    constraint in CoEdge's form: ``a_i = 0`` or ``a_i >= min_share * H``;
    without it the per-stage form applies (a device holding rows of stage *l*
    holds at least the next stage's one-sided halo).
    """
    N, L = R.shape
    s = inst.src
    B = np.vstack([np.zeros((1, L), dtype=int), np.cumsum(R, axis=0)])
    idx = np.arange(N)
    not_src = idx != s
    energy = 0.0
    total = inst.tail_ms
    stage_ms = []
    viol = 0.0
    for l in range(L):
        Rl = R[:, l]
        act = Rl > 0
        scale = inst.Hin[l] / inst.H[l]
        h2 = inst.halo[l] / 2
        rb = inst.rb_in[l]
        lo = np.maximum(0.0, B[:-1, l] * scale - h2)
        hi = np.minimum(inst.Hin[l], B[1:, l] * scale + h2)
        sent = np.zeros(N)
        if l == 0:
            m = act & not_src
            nb = np.where(m, (hi - lo) * rb, 0.0)
            ser = inst.spb[s, :] * nb
            recv = np.where(m, inst.lat[s, :] + ser + inst.ov_recv + inst.ov_kb * nb, 0.0)
            sent[s] += float(np.sum(np.where(m, inst.ov_send[s] + inst.ov_kb[s] * nb, 0.0)))
            energy += float(np.sum((inst.ptx[s] + inst.prx) * ser)) / 1e3
        else:
            held_lo, held_hi = B[:-1, l - 1], B[1:, l - 1]
            has = held_hi > held_lo
            top = np.where(has, np.maximum(0.0, np.minimum(hi, held_lo) - lo), hi - lo)
            bot = np.where(has, np.maximum(0.0, hi - np.maximum(lo, held_hi)), 0.0)
            top, bot = np.where(act, top, 0.0), np.where(act, bot, 0.0)
            prev_act = R[:, l - 1] > 0
            # the active producer before / after each index at stage l - 1 (the source when none)
            before = np.maximum.accumulate(np.where(prev_act, idx, -1))
            k_top = np.concatenate([[-1], before[:-1]])
            after = np.minimum.accumulate(np.where(prev_act, idx, N)[::-1])[::-1]
            k_bot = np.concatenate([after[1:], [N]])
            k_top = np.where(k_top < 0, s, k_top)
            k_bot = np.where(k_bot >= N, s, k_bot)
            recv = np.zeros(N)
            for rows, k in ((top, k_top), (bot, k_bot)):
                m = rows > EPS
                if not m.any():
                    continue
                nb = rows * rb
                ser = inst.spb[k, idx] * nb
                r_ = inst.lat[k, idx] + ser + inst.ov_recv + inst.ov_kb * nb
                recv = np.maximum(recv, np.where(m, r_, 0.0))
                np.add.at(sent, k[m], (inst.ov_send[k] + inst.ov_kb[k] * nb)[m])
                energy += float(np.sum(np.where(m, (inst.ptx[k] + inst.prx) * ser, 0.0))) / 1e3
        c = np.where(act, inst.alpha[:, l] + inst.beta[:, l] * Rl, 0.0)
        energy += float(np.sum(inst.pb * c)) / 1e3
        done = np.where(act, c + recv, 0.0) + sent
        present = act | (sent > 0)
        if l == L - 1:
            m = act & not_src
            nb = np.where(m, Rl * inst.rb_out, 0.0)
            ser = inst.spb[:, s] * nb
            done = done + np.where(m, inst.lat[:, s] + ser + inst.ov_send + inst.ov_kb * nb, 0.0)
            energy += float(np.sum((inst.ptx + inst.prx[s]) * ser)) / 1e3
            src_in = float(np.sum(np.where(m, inst.ov_recv[s] + inst.ov_kb[s] * nb, 0.0)))
            done[s] += src_in

            present[s] = True
        t = float(done[present].max()) if present.any() else 0.0
        if a is None and inst.minrow[l] > 0:
            short = act & (Rl < inst.minrow[l])
            viol += float(np.sum(inst.minrow[l] - Rl[short])) / inst.H[l]
        stage_ms.append(t)
        total += t
    energy += inst.pb[s] * inst.tail_ms / 1e3
    if a is not None:
        need = math.ceil(inst.min_share() * inst.H0 - 1e-6)
        for i in range(N):
            if 0 < a[i] < need:
                viol += (need - a[i]) / inst.H0
            if a[i] > inst.umax[i] * inst.H0 + EPS:
                viol += (a[i] - inst.umax[i] * inst.H0) / inst.H0
    if deadline_ms is not None and total > deadline_ms:
        viol += (total - deadline_ms) / deadline_ms
    return Evaluation(total, energy, viol, stage_ms)


def _neighbour(active: list[int], i: int, side: int) -> int | None:
    """The active device before (side -1) or after (+1) index ``i`` in row order."""
    if side < 0:
        cands = [k for k in active if k < i]
        return cands[-1] if cands else None
    cands = [k for k in active if k > i]
    return cands[0] if cands else None


def evaluate_shares(inst: Instance, a: np.ndarray, deadline_ms: float | None = None) -> Evaluation:
    """:func:`evaluate` of integer input rows ``a`` (one share per device, CoEdge's form)."""
    return evaluate(inst, rows_from_shares(inst, a), deadline_ms, a)


# -- the linear program --------------------------------------------------------------------------------
@dataclass
class LPSolution:
    lam: np.ndarray  # (N,) or (N, L) shares (0 for devices outside the set)
    t: np.ndarray  # (L,) stage times
    value: float  # objective (ms or J), constants included


def solve_lp(inst: Instance, A: list[int], objective: str, deadline_ms: float | None, *,
             min_share: bool, per_stage: bool = False, active: np.ndarray | None = None) -> LPSolution | None:
    """Solve the relaxed P1 over devices ``A`` (indices in row order); None when infeasible.

    Variables: shares (one per device, or per device and stage), in per-stage
    mode the moved rows ``d_il``, and ``t_l``. Every device of ``A`` (active at
    the stage, per-stage mode) bounds ``t_l`` from below by its compute +
    receive time (+ the gather for the last stage).
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    N, L = inst.N, inst.L
    n = len(A)
    s = inst.src
    if active is None:
        active = np.zeros((N, L), dtype=bool)
        active[A, :] = True
    nl = n * L if per_stage else n
    nd = n * (L - 1) if per_stage else 0
    nv = nl + nd + L

    def lv(k: int, l: int) -> int:
        return k * L + l if per_stage else k

    def dv(k: int, l: int) -> int:  # l >= 1
        return nl + k * (L - 1) + (l - 1)

    tv = nl + nd
    rows, cols, vals, b_ub = [], [], [], []
    cost = np.zeros(nv)
    const = inst.pb[s] * inst.tail_ms / 1e3
    r = 0

    def add(coefs: list[tuple[int, float]], rhs: float) -> None:
        nonlocal r
        for c, v in coefs:
            rows.append(r)
            cols.append(c)
            vals.append(v)
        b_ub.append(rhs)
        r += 1

    for l in range(L):
        act = [k for k in range(n) if active[A[k], l]]
        idx = [A[k] for k in act]
        rb = inst.rb_in[l]
        h2 = inst.halo[l] / 2
        # the source's runtime work for others: scattering the input (stage 0), receiving the slabs (last)
        src_lin: list[tuple[int, float]] = []
        src_fixed = 0.0
        for k in act:
            j = A[k]
            if j == s:
                continue
            if l == 0:
                kb = inst.ov_kb[s] * rb
                src_fixed += inst.ov_send[s] + kb * inst.halo[0]
                src_lin.append((lv(k, l), kb * inst.Hin[0]))

            if l == L - 1:
                src_fixed += inst.ov_recv[s]
                src_lin.append((lv(k, l), inst.ov_kb[s] * inst.rb_out * inst.H[l]))

        src_in = False
        for pos, k in enumerate(act):
            i = A[k]
            a0, b0 = inst.alpha[i, l], inst.beta[i, l] * inst.H[l]
            lin: list[tuple[int, float]] = [(lv(k, l), b0)]
            fixed = a0
            cost[lv(k, l)] += inst.pb[i] * b0 / 1e3
            const += inst.pb[i] * a0 / 1e3
            if l == 0:
                if i != s:
                    sp = inst.spb[s, i] * rb
                    kb = inst.ov_kb[i] * rb
                    fixed += inst.lat[s, i] + (sp + kb) * inst.halo[0] + inst.ov_recv[i]
                    lin.append((lv(k, l), (sp + kb) * inst.Hin[0]))
                    e = (inst.ptx[s] + inst.prx[i]) / 1e3
                    const += e * sp * inst.halo[0]
                    cost[lv(k, l)] += e * sp * inst.Hin[0]
            else:
                nbs = [idx[pos - 1]] if pos > 0 else []
                nbs += [idx[pos + 1]] if pos + 1 < len(idx) else []
                worst = 0.0
                for j in nbs:
                    sp = inst.spb[j, i] * rb
                    worst = max(worst, inst.lat[j, i] + sp * h2 + inst.ov_recv[i] + inst.ov_kb[i] * rb * h2)
                    const += (inst.ptx[j] + inst.prx[i]) / 1e3 * sp * h2
                fixed += worst + len(nbs) * (inst.ov_send[i] + inst.ov_kb[i] * rb * h2)
                if per_stage:
                    sp = (max((inst.spb[j, i] for j in nbs), default=inst.spb[s, i]) + inst.ov_kb[i]) * rb
                    lin.append((dv(k, l), sp * inst.Hin[l]))
                    pe = max((inst.ptx[j] for j in nbs), default=inst.ptx[s])
                    cost[dv(k, l)] += (pe + inst.prx[i]) / 1e3 * (sp - inst.ov_kb[i] * rb) * inst.Hin[l]
            if l == L - 1 and i != s:
                sp = inst.spb[i, s] * inst.rb_out
                fixed += inst.lat[i, s] + inst.ov_send[i]
                lin.append((lv(k, l), (sp + inst.ov_kb[i] * inst.rb_out) * inst.H[l]))
                cost[lv(k, l)] += (inst.ptx[i] + inst.prx[s]) / 1e3 * sp * inst.H[l]
            if i == s:
                src_in = True
                lin += src_lin
                fixed += src_fixed
            add(lin + [(tv + l, -1.0)], -fixed)
        if not src_in and src_lin:
            add(src_lin + [(tv + l, -1.0)], -src_fixed)
    if per_stage:
        for k in range(n):
            for l in range(1, L):
                add([(lv(k, l), 1.0), (lv(k, l - 1), -1.0), (dv(k, l), -1.0)], 0.0)
                add([(lv(k, l), -1.0), (lv(k, l - 1), 1.0), (dv(k, l), -1.0)], 0.0)
    if deadline_ms is not None:
        add([(tv + l, 1.0) for l in range(L)], deadline_ms - inst.tail_ms)
    if objective == "latency":
        cost = np.zeros(nv)
        cost[tv:] = 1.0
        const = inst.tail_ms
    A_ub = coo_matrix((vals, (rows, cols)), shape=(r, nv)).tocsr()
    # sum of shares = 1 (per stage in per-stage mode)
    eq_r, eq_c = [], []
    n_eq = L if per_stage else 1
    for l in range(n_eq):
        for k in range(n):
            if per_stage and not active[A[k], l]:
                continue
            eq_r.append(l)
            eq_c.append(lv(k, l))
    A_eq = coo_matrix((np.ones(len(eq_r)), (eq_r, eq_c)), shape=(n_eq, nv)).tocsr()
    bounds: list[tuple[float, float | None]] = []
    ms = inst.min_share()
    for k in range(n):
        i = A[k]
        if per_stage:
            for l in range(L):
                if not active[i, l]:
                    bounds.append((0.0, 0.0))
                else:
                    lo = inst.minrow[l] / inst.H[l] if min_share else 0.0
                    bounds.append((min(lo, inst.umax[i]), float(inst.umax[i])))
        else:
            lo = ms if min_share else 0.0
            bounds.append((min(lo, inst.umax[i]), float(inst.umax[i])))
    bounds += [(0.0, None)] * (nd + L)
    res = linprog(cost, A_ub=A_ub, b_ub=np.array(b_ub), A_eq=A_eq, b_eq=np.ones(n_eq), bounds=bounds,
                  method="highs")
    if res.status != 0:
        return None
    x = res.x
    lam: np.ndarray
    if per_stage:
        lam = np.zeros((N, L))
        for k in range(n):
            lam[A[k], :] = x[k * L : (k + 1) * L]
    else:
        lam = np.zeros(N)
        lam[A] = x[:n]
    return LPSolution(lam, x[tv:], float(res.fun + const))


# -- rounding and repair ---------------------------------------------------------------------------------
def round_shares(inst: Instance, lam: np.ndarray, A: list[int]) -> np.ndarray:
    a = np.zeros(inst.N, dtype=int)
    counts = largest_remainder(inst.H0, [float(lam[i]) for i in A])
    a[A] = counts
    return a


def repair_shares(inst: Instance, a: np.ndarray, objective: str, deadline_ms: float | None,
                  max_iter: int = 60, target: float | None = None, tol: float = 0.002,
                  improve: int = 4) -> tuple[np.ndarray, Evaluation]:
    """Move single input rows between neighbouring participants while it lowers (violation, objective).

    Feasibility first (any number of moves, up to ``max_iter``); once feasible, at most ``improve``
    improving moves, none when within ``tol`` (relative) of ``target`` (the LP value).
    """
    ev = evaluate_shares(inst, a, deadline_ms)
    key = (ev.violation, ev.value(objective))
    improving = 0
    for _ in range(max_iter):
        if key[0] <= 0:
            if target is not None and key[1] <= target * (1 + tol) + EPS:
                break
            improving += 1
            if improving > improve:
                break
        part = [i for i in range(inst.N) if a[i] > 0]
        best = None
        for x, y in itertools.pairwise(part):
            for src_i, dst_i in ((x, y), (y, x)):
                if a[src_i] <= 1:
                    continue
                b = a.copy()
                b[src_i] -= 1
                b[dst_i] += 1
                e = evaluate_shares(inst, b, deadline_ms)
                k = (e.violation, e.value(objective))
                if k < key and (best is None or k < best[0]):
                    best = (k, b, e)
        if best is None:
            break
        key, a, ev = best
    return a, ev


def round_per_stage(inst: Instance, lam: np.ndarray, active: np.ndarray) -> np.ndarray:
    R = np.zeros((inst.N, inst.L), dtype=int)
    for l in range(inst.L):
        idx = [i for i in range(inst.N) if active[i, l] and lam[i, l] > EPS]
        R[idx, l] = largest_remainder(int(inst.H[l]), [float(lam[i, l]) for i in idx])
    return R


def repair_per_stage(inst: Instance, R: np.ndarray, objective: str, deadline_ms: float | None,
                     max_iter: int = 20) -> tuple[np.ndarray, Evaluation]:
    ev = evaluate(inst, R, deadline_ms)
    key = (ev.violation, ev.value(objective))
    for _ in range(max_iter):
        best = None
        for l in range(inst.L):
            part = [i for i in range(inst.N) if R[i, l] > 0]
            for x, y in itertools.pairwise(part):
                for s_i, d_i in ((x, y), (y, x)):
                    if R[s_i, l] <= 1:
                        continue
                    S = R.copy()
                    S[s_i, l] -= 1
                    S[d_i, l] += 1
                    e = evaluate(inst, S, deadline_ms)
                    k = (e.violation, e.value(objective))
                    if k < key and (best is None or k < best[0]):
                        best = (k, S, e)
        if best is None:
            break
        key, R, ev = best
    return R, ev


# -- Algorithm 1 --------------------------------------------------------------------------------------------
@dataclass
class Solution:
    R: np.ndarray  # (N, L) rows per stage
    a: np.ndarray | None  # input rows per device (single-share mode)
    ev: Evaluation
    lp: LPSolution
    A: list[int]
    log: list[str]
    lp_solves: int


def solve(inst: Instance, objective: str, deadline_ms: float | None, per_stage: bool = False,
          explore: int = 2) -> Solution | None:
    """CoEdge's Algorithm 1 over ``inst``; None when no device set is feasible.

    Algorithm 1 stops at the first feasible set. With ``explore`` > 0 the loop
    goes on dropping the smallest share and keeps the best set found, until
    ``explore`` sets in a row did not improve the objective (removing a
    device can remove its fixed per-layer costs: runtime messages, halos).
    """
    A = [i for i in range(inst.N) if inst.umax[i] > 0]
    log: list[str] = []
    solves = 0
    ms = inst.min_share()
    best: Solution | None = None
    stale = 0
    while A:
        names = [inst.devices[i] for i in A]
        relaxed = solve_lp(inst, A, objective, deadline_ms, min_share=False, per_stage=per_stage)
        solves += 1
        if relaxed is None:
            rank = solve_lp(inst, A, "latency", None, min_share=False, per_stage=per_stage)
            solves += 1
            assert rank is not None
            drop = _smallest(inst, rank.lam, A)
            log.append(f"infeasible over {names}: drop {inst.devices[drop]} (smallest latency-optimal share)")
            A.remove(drop)
            continue
        share = relaxed.lam if not per_stage else relaxed.lam.mean(axis=1)
        zeros = [i for i in A if share[i] * inst.H0 < 0.5]
        if zeros and len(zeros) < len(A):
            log.append(f"drop zero-share {[inst.devices[i] for i in zeros]}")
            A = [i for i in A if i not in zeros]
            continue
        active = None
        if per_stage:
            active = np.zeros((inst.N, inst.L), dtype=bool)
            for i in A:
                active[i, :] = relaxed.lam[i, :] * inst.H >= 0.5
            for l in range(inst.L):  # every stage keeps at least its largest share
                if not active[:, l].any():
                    active[max(A, key=lambda i: relaxed.lam[i, l]), l] = True
        elif len(A) * ms > 1 + EPS:
            # every set larger than floor(1/ms) is infeasible (the shares cannot sum to 1), so the
            # loop would drop the smallest share until that size: do it in one step, by this ranking
            keep = max(1, math.floor(1 / ms + EPS))
            drops = []
            while len(A) > keep:
                d = _smallest(inst, relaxed.lam, A)
                A.remove(d)
                drops.append(inst.devices[d])
            log.append(f"at most {keep} shares of >= {ms:.3f} fit: drop {drops} (smallest shares)")
            continue
        lp = solve_lp(inst, A, objective, deadline_ms, min_share=True, per_stage=per_stage, active=active)
        solves += 1
        if lp is None:
            drop = _smallest(inst, share, A)
            log.append(f"padding constraint infeasible over {names}: drop {inst.devices[drop]}")
            A.remove(drop)
            continue
        if per_stage:
            assert active is not None
            R, ev = repair_per_stage(inst, round_per_stage(inst, lp.lam, active), objective, deadline_ms)
            a = None
        else:
            a, ev = repair_shares(inst, round_shares(inst, lp.lam, A), objective, deadline_ms, target=lp.value,
                                  improve=2 if best is None else 0)
            R = rows_from_shares(inst, a)
        if ev.violation > 1e-9:
            drop = _smallest(inst, share, A)
            log.append(f"rounded shares infeasible over {names} (violation {ev.violation:.3g}): drop "
                       f"{inst.devices[drop]}")
            A.remove(drop)
            continue
        log.append(f"feasible over {names}: {ev.value(objective):.4g} {'J' if objective == 'energy' else 'ms'}")
        cand = Solution(R, a, ev, lp, list(A), list(log), solves)
        if best is None or ev.value(objective) < best.ev.value(objective) - EPS:
            best, stale = cand, 0
        else:
            stale += 1
        if best is not None and (stale >= explore or len(A) == 1 or explore <= 0):
            break
        drop = _smallest(inst, share, A)
        log.append(f"explore: drop {inst.devices[drop]}")
        A.remove(drop)
    # Algorithm 1's last resort, every device alone, is a candidate too (a zero share of the source
    # can otherwise drop the one device that needs no transfer)
    seen: set[tuple[Any, ...]] = set()
    for i in range(inst.N):
        if inst.umax[i] < 1.0 - EPS:
            continue
        # a device alone is priced by its own terms only: an identical device (eq16's sixteen) gives the
        # same evaluation and could not replace the first one, so it is not evaluated again
        sig = _alone_signature(inst, i)
        if sig in seen:
            continue
        seen.add(sig)
        a1 = np.zeros(inst.N, dtype=int)
        a1[i] = inst.H0
        ev1 = evaluate_shares(inst, a1, deadline_ms)
        if ev1.violation > 1e-9 or (best is not None and ev1.value(objective) >= best.ev.value(objective) - EPS):
            continue
        lp1 = solve_lp(inst, [i], objective, deadline_ms, min_share=True)
        solves += 1
        if lp1 is None:
            continue
        log.append(f"{inst.devices[i]} alone: {ev1.value(objective):.4g}")
        best = Solution(rows_from_shares(inst, a1), a1, ev1, lp1, [i], [], solves)
    if best is not None:
        best.log = log
        best.lp_solves = solves
    return best


def _alone_signature(inst: Instance, i: int) -> tuple[Any, ...]:
    """Every term of :func:`evaluate` for device ``i`` holding all rows alone (the rest is common)."""
    s = inst.src
    return (i == s, inst.alpha[i].tobytes(), inst.beta[i].tobytes(), float(inst.pb[i]), float(inst.ptx[i]),
            float(inst.prx[i]), float(inst.lat[s, i]), float(inst.lat[i, s]), float(inst.spb[s, i]),
            float(inst.spb[i, s]), float(inst.ov_send[i]), float(inst.ov_recv[i]), float(inst.ov_kb[i]))


def _smallest(inst: Instance, share: np.ndarray, A: list[int]) -> int:
    """The participant with the smallest share (ties: the later one in row order, the source last)."""
    sh = share if share.ndim == 1 else share.mean(axis=1)
    return min(A, key=lambda i: (sh[i], i == inst.src, -i))


# -- the planner ---------------------------------------------------------------------------------------------
def _single_device(req: PlanRequest, inst: Instance) -> tuple[str, float, float] | None:
    """(device, latency ms, dynamic energy J) of the whole model on the single fastest device that can
    hold the whole model's weights (``memory_mb``); None when no device can."""
    g = req.graph
    costs = cost_model(req)
    rm = RowModel(g, costs, inst.devices)
    best = None
    ov = Overheads(costs)
    wbytes = sum(n.param_bytes for n in g.nodes)
    for d in inst.devices:
        if not holds_weights(costs, d, wbytes):
            continue
        t_in, s_in = xfer(costs, req.source, d, g.input.out_bytes)
        t_out, s_out = xfer(costs, d, req.source, g.output.out_bytes)
        comp = rm.whole_ms(d, g.input.name, g.output.name) + ov.compute(d)
        lat = t_in + comp + t_out
        if d != req.source:
            lat += (ov.send(req.source, g.input.out_bytes) + ov.recv(d, g.input.out_bytes)
                    + ov.send(d, g.output.out_bytes) + ov.recv(req.source, g.output.out_bytes))
        p, ps = costs.power(d), costs.power(req.source)
        e = (p.busy_w * comp + (ps.tx_w + p.recv_w) * s_in + (p.tx_w + ps.recv_w) * s_out) / 1e3
        if best is None or lat < best[1]:
            best = (d, lat, e)
    return best


def _stages(req: PlanRequest, inst: Instance, R: np.ndarray) -> list[Stage]:
    stages = []
    for l, e in enumerate(inst.ends):
        bounds = [0] + list(np.cumsum(R[:, l]).astype(int))
        stages.append(rows_partition(e, inst.devices, bounds))
    if req.graph.resolve(inst.ends[-1]) != req.graph.output.name:
        stages.append(Stage(OUTPUT, Whole(req.source)))
    return stages


def _params(req: PlanRequest, per_stage: bool, devices: list[str]) -> dict[str, Any]:
    p: dict[str, Any] = {"objective": req.objective}
    if req.deadline_ms is not None:
        p["deadline_ms"] = req.deadline_ms
    if per_stage:
        p["per_stage"] = True
    if req.param("devices") is not None:
        p["devices"] = devices
    if req.param("order") is not None:
        p["order"] = devices
    return p


@register("coedge", summary="CoEdge: one row share per device for every conv layer, halo exchange, "
          "LP minimising energy under a deadline (or latency)", paper="Zeng et al., CoEdge, IEEE/ACM ToN 2021",
          exact=True, needs_costs=True, params=("per_stage", "explore", "devices", "order"), outputs=("shares",), deadline=True, objective=True)
def plan_coedge(req: PlanRequest) -> PlanResult:
    t0 = time.perf_counter()
    per_stage = bool_param(req, "per_stage", False)
    inst = build_instance(req)
    D = req.deadline_ms
    explore = int_param(req, "explore", 2, 0, 1000)
    sol = solve(inst, req.objective, D, per_stage, explore or 0)
    params = _params(req, per_stage, inst.devices)
    info: dict[str, Any] = {"objective": req.objective, "deadline_ms": D, "per_stage": per_stage,
                            "layers": inst.L, "min_share": round(inst.min_share(), 4)}
    fallback = None
    if sol is None:
        # no set meets the deadline with the objective: the latency-optimal split or the single fastest device
        lat_sol = solve(inst, "latency", None, per_stage)
        single = _single_device(req, inst)
        if single is None and lat_sol is None:
            raise StrategyError("coedge: no device's memory_mb holds the model's weights "
                                f"({sum(n.param_bytes for n in req.graph.nodes) / 1e6:.1f} MB) and no split fits; "
                                "raise memory_mb in the cluster file or add devices")
        dev, dlat, de = single if single is not None else ("", math.inf, math.inf)
        best_ms = min(dlat, lat_sol.ev.latency_ms if lat_sol else math.inf)
        if D is not None and best_ms > D:
            msg = (f"deadline {D:g} ms cannot be met: the minimum achievable latency is {best_ms:.1f} ms "
                   f"({'coedge latency-optimal split' if lat_sol and lat_sol.ev.latency_ms <= dlat else 'all on ' + dev}); "
                   f"raise --deadline-ms to at least {math.ceil(best_ms)}")
            best = None
            if lat_sol is not None and lat_sol.ev.latency_ms <= dlat:
                lp = dict(params, objective="latency")
                lp.pop("deadline_ms", None)
                best = PlanResult(req.make_plan(_stages(req, inst, lat_sol.R), "coedge", lp),
                                  {"latency_ms": lat_sol.ev.latency_ms})
            else:
                best = PlanResult(req.make_plan([Stage(OUTPUT, Whole(dev))], "coedge", params), {"latency_ms": dlat})
            raise Infeasible(msg, best)
        if lat_sol is not None and lat_sol.ev.latency_ms <= dlat:
            sol = lat_sol
            fallback = "latency-optimal split (no energy-optimal set survived rounding)"
        else:
            fallback = f"single fastest device {dev}"
            plan = req.make_plan([Stage(OUTPUT, Whole(dev))], "coedge", params)
            info.update({"fallback": fallback, "model_latency_ms": round(dlat, 3), "model_energy_j": round(de, 6),
                         "planning_ms": round((time.perf_counter() - t0) * 1e3, 2)})
            return PlanResult(plan, info)
    # Algorithm 1's last resort as a candidate too: never plan worse than the single best device
    single = _single_device(req, inst)
    dev, dlat, de = single if single is not None else ("", math.inf, math.inf)
    single_val = de if req.objective == "energy" else dlat
    if single is not None and (D is None or dlat <= D) and single_val < sol.ev.value(req.objective) - EPS:
        plan = req.make_plan([Stage(OUTPUT, Whole(dev))], "coedge", params)
        info.update({"fallback": f"single device {dev} beats the best split ({single_val:.4g} < "
                                 f"{sol.ev.value(req.objective):.4g})",
                     "lp_bound": round(sol.lp.value, 6), "split_value": round(float(sol.ev.value(req.objective)), 6),
                     "objective_value": round(float(single_val), 6), "dropping": sol.log,
                     "model_latency_ms": round(dlat, 3), "model_energy_j": round(de, 6), "devices": [dev],
                     "planning_ms": round((time.perf_counter() - t0) * 1e3, 2)})
        return PlanResult(plan, info)
    stages = _stages(req, inst, sol.R)
    if sol.a is not None:
        params["shares"] = {inst.devices[i]: int(sol.a[i]) for i in range(inst.N) if sol.a[i] > 0}
    plan = req.make_plan(stages, "coedge", params)
    value = sol.ev.value(req.objective)
    info.update({
        "devices": [inst.devices[i] for i in sol.A],
        "lp_bound": round(sol.lp.value, 6),
        "split_value": round(float(value), 6),
        "objective_value": round(float(value), 6),
        "gap_pct": round(float(100 * (value - sol.lp.value)) / max(abs(sol.lp.value), 1e-12), 3),
        "model_latency_ms": round(float(sol.ev.latency_ms), 3),
        "model_energy_j": round(float(sol.ev.energy_j), 6),
        "lp_shares": ({inst.devices[i]: round(float(sol.lp.lam[i]), 5) for i in sol.A} if not per_stage else None),
        "rows_input": ({inst.devices[i]: int(sol.a[i]) for i in sol.A} if sol.a is not None else None),
        "dropping": sol.log,
        "lp_solves": sol.lp_solves,
        "planning_ms": round((time.perf_counter() - t0) * 1e3, 2),
    })
    if fallback:
        info["fallback"] = fallback
    return PlanResult(plan, info)
