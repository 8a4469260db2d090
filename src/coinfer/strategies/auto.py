"""``auto``: the best plan coinfer can find — every strategy, then a refinement search.

The papers each search one family of plans (one cut, one share vector, one
tile grid, …). ``auto`` asks every registered exact strategy for its plan,
scores each with the simulator on the same cost model (latency; or energy
subject to the deadline), then improves the best few by hill climbing over
moves no single paper makes together:

* shift a row boundary between neighbouring parts of a stage;
* fuse two consecutive row stages (fewer exchanges, more halo compute) or
  split a fused stage at an inner cut point (the reverse);
* drop the slowest device from a stage (its rows go to the others);
* run a whole stage on another device;
* switch an exact plan's wire codec to lz4 (lossless) when links are slow;
* split the fully connected tail by output features over the devices
  (MoDNN's FC partition, :mod:`coinfer.strategies.features`).

Every move keeps the plan exact, so the result verifies like the rest. By
construction its predicted objective is no worse than any strategy it
consulted; ``PlanResult.info`` lists every candidate's prediction and how
much the refinement gained.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..graph.ir import Graph
from ..plan.plan import Plan, RowPart, Rows, Stage, Whole, Wire
from .common import describe_overflows, memory_overflows, name_list, split_rows
from .registry import Infeasible, PlanRequest, PlanResult, StrategyError, info, names, register, run

SKIP_BY_DEFAULT = {"auto", "distredge"}  # distredge trains a policy: opt in with include=[...]


def _score(req: PlanRequest, plan: Plan, cache: dict[str, tuple[float, float, float]]) -> tuple[float, float, float]:
    """(objective, latency_ms, energy_j) of ``plan`` predicted by the simulator; memoised."""
    key = plan.to_json()
    hit = cache.get(key)
    if hit is not None:
        return hit
    from ..sim.run import simulate_lowered

    res = simulate_lowered(plan, req.graph, req.cost_model())
    lat, energy = res.latency_ms, res.energy_j
    if req.objective == "energy":
        obj = energy if req.deadline_ms is None or lat <= req.deadline_ms else 1e9 + lat
    else:
        obj = lat
    cache[key] = (obj, lat, energy)
    return cache[key]


def _rows_variants(g: Graph, plan: Plan, speeds: dict[str, float]) -> list[Plan]:
    out: list[Plan] = []
    st = plan.stages
    for i, s in enumerate(st):
        p = s.partition
        if isinstance(p, Rows) and p.schedule == "static":
            parts = sorted(p.parts, key=lambda rp: rp.rows[0])
            h = g[s.until].height
            for j in range(len(parts) - 1):
                a, b = parts[j], parts[j + 1]
                for d in sorted({1, max(1, h // 16)}):
                    for sign in (-1, 1):
                        cut = a.rows[1] + sign * d
                        if a.rows[0] < cut < b.rows[1]:
                            new = list(parts)
                            new[j] = RowPart(a.device, (a.rows[0], cut))
                            new[j + 1] = RowPart(b.device, (cut, b.rows[1]))
                            out.append(_with_stage(plan, i, replace(s, partition=Rows(tuple(new), p.schedule))))
            if len(parts) > 1:  # drop the slowest device of this stage
                slow = min(parts, key=lambda rp: speeds.get(rp.device, 0.0)).device
                keep = {rp.device: speeds.get(rp.device, 1.0) for rp in parts if rp.device != slow}
                out.append(_with_stage(plan, i, _rows_stage(g, s, keep)))
        elif isinstance(p, Whole):
            for dev in plan.devices:
                if dev != p.device:
                    out.append(_with_stage(plan, i, replace(s, partition=Whole(dev))))
    # fuse consecutive row stages with the same device set
    for i in range(len(st) - 1):
        sa, sb = st[i], st[i + 1]
        if isinstance(sa.partition, Rows) and isinstance(sb.partition, Rows) and sa.halo == sb.halo == "exact" \
                and sb.exchange == "direct":
            w = {rp.device: max(1, rp.rows[1] - rp.rows[0]) for rp in sb.partition.parts}
            fused = _rows_stage(g, sb, {d: float(v) for d, v in w.items()})
            out.append(replace(plan, stages=st[:i] + [fused] + st[i + 2:]))
    return out


def _rows_stage(g: Graph, s: Stage, weights: dict[str, float]) -> Stage:
    parts = split_rows(g[s.until].height, weights)
    if len(parts) == 1:
        return Stage(s.until, Whole(parts[0][0]))
    return Stage(s.until, Rows(tuple(RowPart(d, r) for d, r in parts)), s.halo, s.exchange)


def _with_stage(plan: Plan, i: int, stage: Stage) -> Plan:
    return replace(plan, stages=plan.stages[:i] + [stage] + plan.stages[i + 1:])


def _wire_variants(plan: Plan) -> list[Plan]:
    if plan.wire.codec == "raw" and plan.wire.quant is None:
        return [replace(plan, wire=Wire("lz4", None))]
    return []


def _fc_variants(req: PlanRequest, plan: Plan) -> list[Plan]:
    """The plan with its fully connected tail split by features (when it has one to split)."""
    from .features import split_fc_tail

    new = split_fc_tail(plan, req.graph, req.cost_model(), req.devices)
    return [] if new is plan else [new]


def _refine(req: PlanRequest, start: Plan, deadline: float, score: Callable[[Plan], float],
            speeds: dict[str, float]) -> tuple[Plan, int]:
    best, best_s, steps = start, score(start), 0
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        for cand in _rows_variants(req.graph, best, speeds) + _wire_variants(best) + _fc_variants(req, best):
            if time.monotonic() >= deadline:
                break
            try:
                cand.validate(req.graph)
                s = score(cand)
            except (ValueError, KeyError):
                continue
            if s < best_s * (1 - 1e-4):
                best, best_s, improved = cand, s, True
                steps += 1
                break
    return best, steps


def _strategy_names(v: object, key: str) -> list[str] | None:
    """``--param include=`` / ``exclude=``: strategy names, comma-separated (``even,coedge``) or a list;
    None when not given. An unknown name is a StrategyError with a close match and the known names
    (it used to be ignored: ``include=foo`` then found no plan, ``exclude=foo`` excluded nothing)."""
    if v is None:
        return None
    items = name_list(v, key, names(), "strategy")
    if key == "include" and not items:
        raise StrategyError("--param include is empty; name strategies, e.g. include=even,coedge")
    return items


@register("auto", summary="every exact strategy scored by the simulator, then refined by local search",
          paper="coinfer (this project)", needs_costs=True, params=("budget_s", "include", "exclude"),
          outputs=("base", "refine_steps"), deadline=True, objective=True)
def plan_auto(req: PlanRequest) -> PlanResult:
    budget = req.number("budget_s", 4.0)
    include = _strategy_names(req.param("include"), "include")
    exclude = set(_strategy_names(req.param("exclude"), "exclude") or [])
    if budget <= 0:
        raise StrategyError("budget_s must be > 0 (seconds of planning)")
    t_end = time.monotonic() + budget
    cache: dict[str, tuple[float, float, float]] = {}
    pool = [n for n in names() if (include and n in include) or (not include and n not in SKIP_BY_DEFAULT)]
    cands: list[tuple[float, str, Plan]] = []
    report: dict[str, Any] = {}
    # memory_mb: a plan that puts more weights on a device than it holds is not a candidate (several
    # strategies do not plan for it); memory_overflows computes nothing when the cluster sets none

    for name in pool:
        if name in exclude or name == "auto" or not info(name).exact:
            continue
        sub = PlanRequest(req.graph, req.cluster, req.model, req.cost_model(), req.objective, req.deadline_ms, {},
                          note=req.note)
        try:
            res = run(name, sub)
            over = memory_overflows(res.plan, req.graph, req.cluster)
            if over:
                report[name] = {"memory": describe_overflows(over)}
                continue
            obj, lat, en = _score(req, res.plan, cache)
        except Infeasible as e:
            report[name] = {"infeasible": str(e).splitlines()[0][:200]}
            continue
        except Exception as e:  # noqa: BLE001 - a strategy that cannot plan here is skipped, not fatal
            report[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
            continue
        report[name] = {"latency_ms": round(lat, 3), "energy_j": round(en, 5)}
        cands.append((obj, name, res.plan))
    if not cands:
        short = [k for k, v in report.items() if "memory" in v or "memory_mb" in str(v.get("error", ""))]
        if short:
            raise StrategyError(f"auto: no strategy's plan fits the devices' memory_mb ({', '.join(short)} "
                                f"need more); raise memory_mb in the cluster file or add devices")
        raise Infeasible("no strategy produced a plan for this model and cluster: "
                         + "; ".join(f"{k}: {v}" for k, v in report.items()))
    cands.sort(key=lambda c: c[0])
    speeds = {d: req.cost_model().speed(d) for d in req.devices}

    def score(p: Plan) -> float:  # a refinement that overflows a device's memory is never better
        return float("inf") if memory_overflows(p, req.graph, req.cluster) else _score(req, p, cache)[0]

    best_obj, best_from, best_plan, steps = cands[0][0], cands[0][1], cands[0][2], 0
    for i, (obj, name, plan) in enumerate(cands[:3]):
        remaining = t_end - time.monotonic()
        if remaining <= 0:
            break
        refined, n = _refine(req, plan, time.monotonic() + remaining / (3 - i), score, speeds)
        s = score(refined)
        if s < best_obj:
            best_obj, best_from, best_plan, steps = s, name, refined, n
    _, lat, en = _score(req, best_plan, cache)
    if req.objective == "energy" and req.deadline_ms is not None and lat > req.deadline_ms:
        fastest = min(cands, key=lambda c: _score(req, c[2], cache)[1])
        raise Infeasible(f"no plan meets {req.deadline_ms:g} ms; the fastest found ({fastest[1]}) takes "
                         f"{_score(req, fastest[2], cache)[1]:.1f} ms")
    params: dict[str, Any] = {"objective": req.objective, "base": best_from, "refine_steps": steps, "budget_s": budget}
    for key in ("include", "exclude"):  # what it was made with: a re-plan (a device died) asks the same
        if req.param(key) is not None:
            params[key] = req.param(key)
    if req.deadline_ms is not None:
        params["deadline_ms"] = req.deadline_ms
    plan = replace(best_plan, strategy=replace(best_plan.strategy, name="auto", params=params), predicted=None)
    first = next(c for c in cands if c[1] == best_from)
    gain = round(1 - best_obj / first[0], 4) if first[0] else 0.0
    return PlanResult(plan, {
        "candidates": report, "chosen_from": best_from, "refine_steps": steps,
        "predicted_latency_ms": round(lat, 3), "predicted_energy_j": round(en, 5),
        "gain_over_base": gain, "evaluations": len(cache),
        "summary": f"best of {len(cands)} strategies' plans: {best_from}, then {steps} refinement step(s) "
                   f"({100 * gain:.1f} % better {req.objective}); {len(cache)} plans simulated",
    })
