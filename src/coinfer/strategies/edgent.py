"""Edgent: device-edge co-inference with early exit (Li, Zhou, Chen 2018; TWC 2020). Torch-free.

**Static bandwidth** — Algorithm 1 of "Edge Intelligence: On-Demand Deep
Learning Model Co-Inference with Device-Edge Synergy" (arXiv 1806.07840,
§III-C): for each exit *i*, from the most accurate to the least, find the
partition point *p\\** minimising the predicted latency

    A(i, p) = Σ_{j<p} ES_j + Σ_{k≥p} ED_k + Input/B + D_{p−1}/B

(the edge server runs the layers before *p*, the device the rest); the first
exit whose A(i, p\\*) meets the deadline is the answer. We price both orders
(:mod:`coinfer.strategies.layerwise`: Edgent's, and Neurosurgeon's with the
front on the device), keep the faster per exit and report in
``PlanResult.info["won"]`` which order won. Partition points are the cut
points of the exit's graph. Exits are tried deepest first (Edgent's premise:
deeper is more accurate); ``--param prefer=accuracy`` orders them by the
trained exits' held-out accuracy instead (``--param accuracy={...}`` or the
cache of ``coinfer train exits``), which the plan reports either way. No exit meeting
the deadline -> :class:`~coinfer.strategies.registry.Infeasible` (CLI exit 1)
naming the fastest configuration and its latency.

**Dynamic bandwidth** (``--param mode=dynamic``; the TWC 2020 extension, whose
published details we could not verify — our choices, documented in
docs/strategies/edgent.md): bandwidth *states* come from a historical
bandwidth trace (``--param trace=FILE`` or the cluster's ``network.trace``) by
change-point detection (``ruptures`` PELT, L2 cost on log bandwidth) and a
1-D k-means of the segment levels into ``states`` groups (default 3). For
each state, every (exit, order, cut) is priced at the state's planning
bandwidth (its ``plan_quantile`` quantile, default the 10th percentile) and
the **configuration map** keeps the one maximising Edgent's reward

    R = exp(accuracy) + w · L_min / L     if L ≤ deadline, else 0

(L the predicted latency, L_min the fastest configuration's in that state:
the throughput term normalised to (0, 1]; ``w = throughput_weight``, default
0.01, so throughput only breaks near-ties of accuracy). The map goes into ``strategy.params["config_map"]``; at run time
:class:`coinfer.runtime.adapters.EdgentAdapter` estimates the bandwidth from
observed transfers, finds the state and switches before the next request.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from ..cost.bandwidth import BandwidthTrace
from ..cost.model import CostModel
from ..graph.ir import Graph
from ..plan.plan import Plan
from .layerwise import (
    FRONT_OTHER,
    FRONT_SOURCE,
    LAYERWISE_OUTPUTS,
    ORDER_NAMES,
    ChainTable,
    Config,
    Verifier,
    all_configs,
    chain_table,
    choice_of,
    fast_request,
    fastest,
    need_costs,
    orders_of,
    others_of,
    verify_count,
)
from .registry import Infeasible, PlanRequest, PlanResult, StrategyError, register

MODES = ("static", "dynamic")
#: default weight of the throughput term of the reward: it breaks near-ties of accuracy (a configuration
#: gives up at most ~0.4 accuracy points near 95 % for any speed-up), as Edgent's goal is accuracy first
THROUGHPUT_WEIGHT = 0.01


# -- exits and their accuracies ---------------------------------------------------------------------------
def exit_depth(graph: Graph, name: str | None) -> int:
    """Position of an exit along the main path (the final output is the deepest)."""
    if name in (None, "final"):
        return len(graph.nodes)
    return graph.index(graph.exits[str(name)].attach)


def accuracies(req: PlanRequest) -> dict[str, float] | None:
    """Per-exit accuracy: ``--param accuracy={...}``, else the trained exits' cache, else None."""
    acc = req.param("accuracy")
    if acc is None:
        try:
            from ..train.exits import cached_accuracies
        except ImportError:  # pragma: no cover
            return None
        return cached_accuracies(req.model)
    if not isinstance(acc, dict) or not acc:
        raise StrategyError("--param accuracy must be a JSON object of exit -> accuracy in [0, 1], "
                            "e.g. accuracy='{\"exit1\": 0.8, \"final\": 0.95}'")
    known = {*req.graph.exits, "final"}
    out: dict[str, float] = {}
    for k, v in acc.items():
        if k not in known:
            raise StrategyError(f"--param accuracy names exit {k!r}, which {req.model} does not have; "
                                f"exits: {', '.join(sorted(known))}")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise StrategyError(f"--param accuracy[{k!r}] = {v!r} is not a number in [0, 1]") from None
        if not 0.0 <= x <= 1.0:
            raise StrategyError(f"--param accuracy[{k!r}] = {x} must be in [0, 1]")
        out[k] = x
    return out


PREFER = ("depth", "accuracy")


def candidate_exits(req: PlanRequest, acc: dict[str, float] | None) -> list[str | None]:
    """Exits to try, the most accurate first.

    ``--param prefer=depth`` (default, Algorithm 1): deepest first — Edgent's
    premise that a deeper exit is more accurate; ``prefer=accuracy``: by the
    measured accuracy (ties: deeper first).
    """
    g = req.graph
    if not g.exits:
        raise StrategyError(
            f"model {req.model} has no early exits, and edgent chooses among exits; use a model with exits "
            f"(alexnet, alexnet_digits, resnet18, resnet18_digits) or --strategy neurosurgeon for a cut only")
    want = req.param("exits")
    if want is None and req.param("exit") is not None:  # a single exit: only that one is considered
        want = [str(req.param("exit"))]
    names = [*g.exits, "final"]
    if want is not None:
        if isinstance(want, str):
            want = [w.strip() for w in want.split(",") if w.strip()]
        if not isinstance(want, list) or not want:
            raise StrategyError("--param exits must be a list of exit names, e.g. exits=exit3,exit4,final")
        bad = [w for w in want if w not in names]
        if bad:
            raise StrategyError(f"unknown exit(s) {bad} for {req.model}; its exits: {', '.join(names)}")
        names = [n for n in names if n in want]
    if acc is not None:
        missing = [n for n in names if n not in acc]
        if missing:
            raise StrategyError(f"accuracies are missing for exit(s) {missing}; give all of "
                                f"{', '.join(names)} in --param accuracy or retrain (coinfer train exits)")
    prefer = str(req.param("prefer", "depth"))
    if prefer not in PREFER:
        raise StrategyError(f"--param prefer={prefer!r} is unknown; use depth (Algorithm 1: deepest exit first) "
                            f"or accuracy (the measured accuracies)")
    if prefer == "accuracy" and acc is None:
        raise StrategyError(f"--param prefer=accuracy needs the exits' accuracies: train them (coinfer train exits "
                            f"--model {req.model}) or pass --param accuracy={{...}}")
    depth = {n: exit_depth(g, n) for n in names}
    names.sort(key=lambda n: ((-acc[n]) if (acc and prefer == "accuracy") else 0.0, -depth[n]))
    return [None if n == "final" else n for n in names]


def _budget(req: PlanRequest) -> tuple[float, float]:
    if req.deadline_ms is None:
        raise StrategyError("edgent needs a latency requirement: --deadline-ms D (milliseconds, > 0)")
    try:
        margin = req.number("margin", 0.0)
    except (TypeError, ValueError):
        margin = -1.0
    if not 0.0 <= margin < 1.0:
        raise StrategyError(f"--param margin={req.param('margin')!r} must be in [0, 1): the fraction of the "
                            f"deadline kept free for prediction error")
    return req.deadline_ms * (1.0 - margin), margin


@dataclass
class ExitTables:
    """Chain tables of every candidate exit (priced once per planning call)."""

    exits: list[str | None]
    tables: dict[str | None, ChainTable]


def exit_tables(req: PlanRequest, costs: CostModel, exits: list[str | None], others: list[str]) -> ExitTables:
    devs = [req.source, *others]
    return ExitTables(exits, {e: chain_table(req.graph, costs, devs, e) for e in exits})


def configs_of(t: ChainTable, costs: CostModel, req: PlanRequest, others: list[str],
               orders: tuple[str, ...]) -> list[Config]:
    return all_configs(t, costs, req.source, others, orders, what="edgent")


def _latency(c: Config) -> tuple[float, float]:
    return (c.latency_ms, c.source_energy_j)


def _describe(c: Config, acc: dict[str, float] | None) -> dict[str, Any]:
    d = c.describe()
    if acc is not None:
        d["accuracy"] = acc.get(c.exit_name)
    return d


def _won(best: Config, configs: list[Config], verifier: Verifier, costs: CostModel) -> dict[str, Any]:
    """Which order won for the chosen exit, with each order's best split (simulated when it was)."""
    by: dict[str, Any] = {}
    for o in (FRONT_OTHER, FRONT_SOURCE):
        cs = [c for c in configs if c.order == o and c.kind == "split"]
        if cs:
            b = verifier.cached(min(cs, key=_latency), costs)
            by[ORDER_NAMES[o]] = {"config": b.label, "latency_ms": round(b.latency_ms, 3), "priced_by": b.via}
    won = ORDER_NAMES[best.order] if best.kind == "split" else best.kind
    return {"won": won, "best_split_by_order": by}


def plan_static(req: PlanRequest, costs: CostModel) -> PlanResult:
    """Edgent Algorithm 1 at the cost model's bandwidth."""
    budget, margin = _budget(req)
    acc = accuracies(req)
    exits = candidate_exits(req, acc)
    others = others_of(req)
    orders = orders_of(req)
    verifier = Verifier(req, verify_count(req))
    tables = exit_tables(req, costs, exits, others)
    tried: list[dict[str, Any]] = []
    overall: Config | None = None
    for e in exits:
        configs = configs_of(tables.tables[e], costs, req, others, orders)
        # A(i, p*): the fastest configuration of exit i (chain-ranked, the best few simulated)
        best = min(verifier.refine(configs, costs, _latency), key=_latency)
        tried.append({"exit": best.exit_name, "config": best.label, "latency_ms": round(best.latency_ms, 3),
                      "meets": best.latency_ms <= budget})
        if overall is None or best.latency_ms < overall.latency_ms:
            overall = best
        if best.latency_ms <= budget:
            if acc is None and best.exit_name not in (None, "final") and req.note is not None:
                # QA (stop 26): on a fresh clone the chosen exit's head has seeded random weights
                req.note(f"exit {best.exit_name}'s head is not trained (coinfer train exits --model {req.model}): "
                         f"its outputs are a random head's until then")
            info = {**_describe(best, acc), **_won(best, configs, verifier, costs), "exits_tried": tried,
                    "deadline_ms": req.deadline_ms, "budget_ms": round(budget, 3),
                    "accuracy_source": _acc_source(req, acc)}
            return PlanResult(_plan(req, best, {"mode": "static", **_extra(margin)}), info)
    assert overall is not None
    best_plan = _plan(req, overall, {"mode": "static", **_extra(margin)})
    raise Infeasible(
        f"edgent: no exit meets the {req.deadline_ms:g} ms deadline"
        + (f" (budget {budget:.1f} ms after margin {margin:g})" if margin else "")
        + f"; the fastest configuration is {overall.label} at {overall.latency_ms:.1f} ms "
        f"(relax --deadline-ms, raise the bandwidth, or allow shallower exits)",
        PlanResult(best_plan, {**_describe(overall, acc), "exits_tried": tried}))


def _acc_source(req: PlanRequest, acc: dict[str, float] | None) -> str:
    src = "param" if req.param("accuracy") is not None else ("trained (coinfer train exits)" if acc else "none")
    return f"exits tried by {req.param('prefer', 'depth')}; accuracies: {src}"


def _extra(margin: float) -> dict[str, Any]:
    return {"margin": margin} if margin else {}


def _plan(req: PlanRequest, c: Config, extra: dict[str, Any]) -> Plan:
    params: dict[str, Any] = {"objective": req.objective, "deadline_ms": req.deadline_ms, **extra,
                              "config": c.label, "choice": choice_of(c)}
    return fast_request(req).make_plan(c.stages(req.source), "edgent", params, exit=c.exit)


# -- dynamic bandwidth: states and the configuration map ---------------------------------------------------
@dataclass(frozen=True)
class BandwidthStates:
    """Bandwidth states found in a trace: centres (ascending), thresholds, per-row labels."""

    centers: tuple[float, ...]  # Mbit/s, geometric mean of each state's rows
    plan_mbps: tuple[float, ...]  # the bandwidth each state is planned for (a low quantile)
    thresholds: tuple[float, ...]  # len(centers) - 1 boundaries (geometric midpoints)
    labels: tuple[int, ...]  # state of every trace row
    breakpoints: tuple[int, ...]  # row indices where a detected segment starts (change points)

    def state_of(self, mbps: float) -> int:
        """The state whose band contains ``mbps``."""
        i = 0
        while i < len(self.thresholds) and mbps >= self.thresholds[i]:
            i += 1
        return i

    def to_dict(self) -> dict[str, Any]:
        return {"centers_mbps": [round(c, 4) for c in self.centers],
                "plan_mbps": [round(c, 4) for c in self.plan_mbps],
                "thresholds_mbps": [round(c, 4) for c in self.thresholds],
                "breakpoints": list(self.breakpoints)}


def _kmeans_1d(values: list[float], weights: list[float], k: int, iters: int = 100) -> list[int]:
    """Deterministic weighted 1-D k-means (initial centres at the value quantiles); labels by rank of centre."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    centers = [values[order[min(len(order) - 1, int((j + 0.5) * len(order) / k))]] for j in range(k)]
    labels = [0] * len(values)
    for _ in range(iters):
        labels = [min(range(k), key=lambda j: abs(v - centers[j])) for v in values]
        new = []
        for j in range(k):
            w = sum(weights[i] for i in range(len(values)) if labels[i] == j)
            new.append(sum(values[i] * weights[i] for i in range(len(values)) if labels[i] == j) / w if w else centers[j])
        if new == centers:
            break
        centers = new
    rank = {j: r for r, j in enumerate(sorted(range(k), key=lambda j: centers[j]))}
    return [rank[x] for x in labels]


def bandwidth_states(trace: BandwidthTrace, n_states: int = 3, *, penalty: float | None = None,
                     min_size: int = 2, plan_quantile: float = 0.1) -> BandwidthStates:
    """Change-point detection (ruptures PELT, L2 cost on log2 bandwidth) + k-means of the segment levels.

    The penalty defaults to a BIC-like ``2 σ² ln n`` with σ the noise of
    log2 bandwidth estimated from the median absolute successive difference.
    """
    import numpy as np
    import ruptures as rpt

    if n_states < 1:
        raise StrategyError(f"--param states={n_states} must be >= 1")
    y = np.log2(np.asarray(trace.mbps, dtype=float))
    n = len(y)
    if n < 2 * min_size:
        bkps = [n]
    else:
        if penalty is None:
            d = np.abs(np.diff(y))
            sigma = max(1.4826 * float(np.median(d)) / math.sqrt(2.0), 0.05)
            penalty = 2.0 * sigma ** 2 * math.log(n) * 4.0
        bkps = rpt.Pelt(model="l2", min_size=min_size, jump=1).fit(y.reshape(-1, 1)).predict(pen=penalty)
    starts = [0, *bkps[:-1]]
    seg_mean = [float(y[a:b].mean()) for a, b in zip(starts, bkps)]
    seg_len = [float(b - a) for a, b in zip(starts, bkps)]
    k = min(n_states, len({round(m, 6) for m in seg_mean}))
    seg_state = _kmeans_1d(seg_mean, seg_len, k)
    labels = [0] * n
    for (a, b), s in zip(zip(starts, bkps), seg_state):
        labels[a:b] = [s] * (b - a)
    centers, plan = [], []
    for s in range(k):
        rows = y[[i for i in range(n) if labels[i] == s]]
        centers.append(float(2 ** rows.mean()))
        plan.append(float(2 ** np.quantile(rows, plan_quantile)))
    thresholds = tuple(math.sqrt(a * b) for a, b in itertools.pairwise(centers))
    return BandwidthStates(tuple(centers), tuple(plan), thresholds, tuple(labels), tuple(starts[1:]))


def constant_trace(mbps: float) -> BandwidthTrace:
    return BandwidthTrace.from_points([(0.0, mbps)], f"{mbps:g} Mbit/s")


def reward(c: Config, acc: dict[str, float], budget: float, l_min: float, weight: float) -> float:
    """Edgent's reward: exp(accuracy) + weight · L_min / L if the latency meets the budget, else 0."""
    if c.latency_ms > budget:
        return 0.0
    return math.exp(acc[c.exit_name]) + weight * (l_min / c.latency_ms if c.latency_ms > 0 else 1.0)


def _entry(c: Config, req: PlanRequest, acc: dict[str, float], r: float) -> dict[str, Any]:
    return {"config": c.label, "exit": c.exit, "stages": [s.to_dict() for s in c.stages(req.source)],
            "latency_ms": round(c.latency_ms, 3), "accuracy": acc[c.exit_name], "reward": round(r, 6),
            "uses_link": c.kind != "local", "order": ORDER_NAMES[c.order], "cut": c.cut}


def plan_dynamic(req: PlanRequest, costs: CostModel) -> PlanResult:
    budget, margin = _budget(req)
    acc = accuracies(req)
    if acc is None:
        raise StrategyError(
            f"edgent dynamic weighs accuracy in its reward, and {req.model} has no measured exit accuracies; "
            f"train them (coinfer train exits --model {req.model}) or pass --param accuracy={{...}}")
    path = req.param("trace") or req.cluster.network.trace
    if not path:
        raise StrategyError("edgent dynamic needs a historical bandwidth trace: --param trace=FILE.csv (t_s,mbps) "
                            "or network.trace in the cluster file")
    trace = BandwidthTrace.load(str(path))
    n_states = req.number("states", 3, kind=int)
    weight = req.number("throughput_weight", THROUGHPUT_WEIGHT)
    if not weight >= 0:
        raise StrategyError(f"--param throughput_weight={weight} must be >= 0")
    q = req.number("plan_quantile", 0.1)
    if not 0.0 <= q <= 1.0:
        raise StrategyError(f"--param plan_quantile={q} must be in [0, 1]")
    pen = req.param("penalty")
    states = bandwidth_states(trace, n_states, penalty=None if pen is None else float(pen), plan_quantile=q)
    exits = candidate_exits(req, acc)
    others = others_of(req)
    orders = orders_of(req)
    verifier = Verifier(req, verify_count(req))
    cmap: list[dict[str, Any]] = []
    for s, (center, bw) in enumerate(zip(states.centers, states.plan_mbps)):
        c_s = costs.with_trace(constant_trace(bw))
        tables = exit_tables(req, c_s, exits, others)
        chain = [c for e in exits for c in configs_of(tables.tables[e], c_s, req, others, orders)]
        l0 = min(c.latency_ms for c in chain)

        def by_reward(c: Config, l0: float = l0) -> float:
            return -reward(c, acc, budget, l0, weight)

        # rank by the chain arithmetic's reward, simulate the best few (and the fastest), score again
        configs = verifier.refine(chain, c_s, by_reward, _latency)
        l_min = min(c.latency_ms for c in configs)
        scored = [(reward(c, acc, budget, l_min, weight), c) for c in configs]
        r_best, best = max(scored, key=lambda rc: (rc[0], -rc[1].latency_ms))
        feasible = r_best > 0
        if not feasible:
            best = fastest(configs)
        entry = {"state": s, "mbps": round(center, 4), "plan_mbps": round(bw, 4),
                 "lo_mbps": round(states.thresholds[s - 1], 4) if s > 0 else 0.0,
                 "hi_mbps": round(states.thresholds[s], 4) if s < len(states.thresholds) else None,
                 "feasible": feasible, **_entry(best, req, acc, r_best)}
        if best.kind == "local":
            # the state's configuration sends nothing over the link: when the adapter needs a fresh
            # bandwidth sample it runs one request on the best link-crossing configuration (a probe)
            link = [c for c in chain if c.kind != "local"]
            if link:
                link = verifier.refine(link, c_s, by_reward, _latency)
                r_p, probe = max(((reward(c, acc, budget, l_min, weight), c) for c in link),
                                 key=lambda rc: (rc[0], -rc[1].latency_ms))
                entry["probe"] = _entry(probe, req, acc, r_p)
        cmap.append(entry)
    start = states.labels[0]
    first = cmap[start]
    params: dict[str, Any] = {"objective": req.objective, "deadline_ms": req.deadline_ms, "mode": "dynamic",
                              **_extra(margin), "config": first["config"], "state": start,
                              "trace": str(path), "throughput_weight": weight, "bandwidth_states": states.to_dict(),
                              "config_map": cmap, "states": n_states, "plan_quantile": q}
    # what else it was made with, so that a re-plan (a device died) makes the same kind of map
    for key in ("accuracy", "penalty", "exits", "prefer"):
        if req.param(key) is not None:
            params[key] = req.param(key)
    from ..plan.plan import Stage

    stages = [Stage.from_dict(d, "config_map") for d in first["stages"]]
    plan = fast_request(req).make_plan(stages, "edgent", params, exit=first["exit"])
    info = {"mode": "dynamic", "states": states.to_dict(), "start_state": start,
            "config_map": [{k: v for k, v in e.items() if k != "stages"} for e in cmap]}
    return PlanResult(plan, info)


@register("edgent", summary="most accurate early exit + best device/edge cut meeting --deadline-ms; "
          "dynamic bandwidth via a configuration map", paper="Li, Zhou, Chen, Edgent, arXiv 1806.07840 "
          "(static); IEEE TWC 2020 (dynamic)", needs_costs=True,
          params=("mode", "exits", "exit", "prefer", "accuracy", "margin", "device", "order", "verify", "trace",
                  "states", "plan_quantile", "throughput_weight", "penalty"),
          outputs=(*LAYERWISE_OUTPUTS, "state", "bandwidth_states", "config_map"), deadline=True)
def plan_edgent(req: PlanRequest) -> PlanResult:
    """Edgent (see the module docstring): ``--param mode=static`` (default) or ``mode=dynamic``."""
    mode = str(req.param("mode", "static"))
    if mode not in MODES:
        raise StrategyError(f"--param mode={mode!r} is unknown; use static or dynamic")
    costs = need_costs(req)
    return plan_static(req, costs) if mode == "static" else plan_dynamic(req, costs)
