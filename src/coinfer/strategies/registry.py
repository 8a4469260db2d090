"""One registry of planning strategies, by name. Torch-free.

A strategy is a pure function ``PlanRequest -> PlanResult``: it reads the
graph IR, the cluster, a cost model and the objective, and returns a plan. It
never measures (profilers do) and never touches sockets or torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..cluster import Cluster
from ..errors import CoinferError
from ..graph.ir import Graph
from ..plan.plan import ModelRef, Plan, Stage, StrategyRef, Wire

if TYPE_CHECKING:  # pragma: no cover
    from ..cost.model import CostModel

OBJECTIVES = ("latency", "energy")
FC_SPLIT = "fc_split"  # a parameter every strategy takes: split the FC tail by features (features.py)


class StrategyError(CoinferError, ValueError):
    """Bad strategy input (exit 2): unknown name, bad parameter..."""


class Infeasible(CoinferError):
    """No configuration meets the constraint (exit 1); carries the best effort."""

    def __init__(self, message: str, best: PlanResult | None = None) -> None:
        super().__init__(message)
        self.best = best


@dataclass
class PlanRequest:
    graph: Graph
    cluster: Cluster
    model: str  # zoo name or import path, recorded in the plan
    costs: CostModel | None = None
    objective: str = "latency"
    deadline_ms: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    #: progress of long planning work (DistrEdge profiles every emulated device first, then trains): one
    #: line per step; ``coinfer plan`` prints them to stderr. Never part of the plan.
    note: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise StrategyError(f"objective {self.objective!r} is unknown; use latency or energy")
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise StrategyError(f"--deadline-ms must be > 0 (got {self.deadline_ms})")

    @property
    def devices(self) -> list[str]:
        return self.cluster.names

    @property
    def source(self) -> str:
        return self.cluster.source

    def cost_model(self) -> CostModel:
        """The request's cost model, or the analytic one for this graph and cluster (no profiles)."""
        if self.costs is None:
            from ..cost.model import CostModel as _CostModel

            self.costs = _CostModel(self.graph, self.cluster)
        return self.costs

    def param(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def number(self, key: str, default: Any = None, kind: type[float | int] = float) -> Any:
        """Parameter ``key`` as a float (or int); a value that is not one is a StrategyError naming it."""
        v = self.params.get(key, default)
        if v is None or isinstance(v, bool):
            return v if v is None else kind(v)
        try:
            return kind(v)
        except (TypeError, ValueError):
            what = "an integer" if kind is int else "a number"
            raise StrategyError(f"--param {key}={v!r}: must be {what}") from None

    def make_plan(self, stages: list[Stage], strategy: str, params: dict[str, Any] | None = None,
                  exit: str | None = None, wire: Wire | None = None) -> Plan:
        g = self.graph
        return Plan(
            model=ModelRef(self.model, tuple(g.input_shape), g.fingerprint()),
            devices=list(self.devices), source=self.source, stages=stages,
            strategy=StrategyRef(strategy, dict(params or {})), exit=exit, wire=wire or Wire(),
        )


@dataclass
class PlanResult:
    plan: Plan
    info: dict[str, Any] = field(default_factory=dict)


StrategyFn = Callable[[PlanRequest], PlanResult]


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    fn: StrategyFn
    summary: str
    paper: str
    exact: bool  # plans equal the unpartitioned model (halo exact, lossless wire)
    needs_costs: bool
    params: tuple[str, ...] = ()  # the parameters it reads (``--param key=value``), fc_split last
    outputs: tuple[str, ...] = ()  # keys its plans carry in strategy.params that are not parameters
    deadline: bool = False  # it plans for ``PlanRequest.deadline_ms`` (--deadline-ms); else that is ignored
    objective: bool = False  # it plans for ``PlanRequest.objective`` (--objective); else that is ignored
    objectives: tuple[str, ...] = ("latency", "energy")  # the objectives it accepts (aofl: latency only)


_REGISTRY: dict[str, StrategyInfo] = {}

#: keys any plan's ``strategy.params`` may carry whatever its strategy: the request's objective and
#: deadline, and what the runtime reads from a plan (the tile scheduler, ADCNN's late-tile deadline)
PLAN_KEYS = ("objective", "deadline_ms", "scheduler", "scheduler_params", "tile_deadline_ms")


def register(name: str, *, summary: str, params: tuple[str, ...], outputs: tuple[str, ...] = (),
             paper: str = "", exact: bool = True, needs_costs: bool = False,
             deadline: bool = False, objective: bool = False,
             objectives: tuple[str, ...] = ("latency", "energy")) -> Callable[[StrategyFn], StrategyFn]:
    """Register planner ``name``.

    ``params``: every parameter it reads, directly or through a helper (``devices`` via
    :func:`coinfer.strategies.spatial.plan_devices` …); ``fc_split``, which :func:`run` reads for
    every strategy, is added. Any other name is refused (:func:`check_params`). ``outputs``: the
    other keys it writes into its plans' ``strategy.params`` (``config``, ``shares`` …), accepted
    back when a plan's own parameters re-plan it (:data:`PLAN_KEYS` are accepted for every strategy).
    ``deadline``: it plans for the request's ``deadline_ms`` (``coinfer plan`` notes that a strategy
    without it ignores ``--deadline-ms``). ``objective``: likewise for the request's ``objective``
    (``--objective``; a strategy that only minimises latency and refuses ``energy`` declares it too,
    with ``objectives=("latency",)``: ``coinfer strategies`` shows "latency only").
    """
    declared = tuple(dict.fromkeys([*params, FC_SPLIT]))

    def deco(fn: StrategyFn) -> StrategyFn:
        if name in _REGISTRY:
            raise RuntimeError(f"strategy {name!r} registered twice")
        _REGISTRY[name] = StrategyInfo(name, fn, summary, paper, exact, needs_costs, declared, tuple(outputs),
                                       deadline, objective, tuple(objectives))
        return fn
    return deco


def _load_all() -> None:
    from . import catalog  # noqa: F401  (imports every strategy module)


def names() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def close_match(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to a misspelt ``name``, if any is close (the "did you mean" of the strategy,
    parameter and name-list errors)."""
    m = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return m[0] if m else None


def info(name: str) -> StrategyInfo:
    _load_all()
    if name not in _REGISTRY:
        close = close_match(name, _REGISTRY)
        hint = f" (did you mean {close}?)" if close else ""
        raise StrategyError(f"unknown strategy {name!r}{hint}; known: {', '.join(_REGISTRY)} (coinfer strategies)")
    return _REGISTRY[name]


def check_params(name: str, params: Mapping[str, Any], *, plan_keys: bool = False) -> None:
    """Refuse a parameter strategy ``name`` does not read: a misspelt ``--param`` would otherwise be
    ignored and the plan made with the default. One line naming the key(s), a close match, the strategy
    and the parameters it takes.

    ``plan_keys``: also accept what its plans carry in ``strategy.params`` besides parameters (its
    declared ``outputs`` and :data:`PLAN_KEYS`), so that a plan's own parameters re-plan it
    (:func:`coinfer.runtime.coordinator.default_replan`). :func:`run` checks so; ``coinfer plan``
    checks the user's ``--param`` without them.
    """
    s = info(name)
    ok = set(s.params) | (set(s.outputs) | set(PLAN_KEYS) if plan_keys else set())
    bad = [str(k) for k in params if k not in ok]
    if not bad:
        return
    close = {k: m for k in bad if (m := close_match(k, s.params))}
    takes = f"strategy {name} takes: {', '.join(s.params)}"
    if len(bad) == 1:
        hint = f" (did you mean {close[bad[0]]}?)" if close else ""
        raise StrategyError(f"--param {bad[0]}: unknown parameter{hint}; {takes}")
    hint = f" ({'; '.join(f'{k}: did you mean {m}?' for k, m in close.items())})" if close else ""
    raise StrategyError(f"--param {', '.join(bad)}: unknown parameters{hint}; {takes}")


def flag_param(v: object, key: str) -> bool:
    """A true/false strategy parameter (``--param key=true``); anything else is a StrategyError."""
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    t = str(v).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise StrategyError(f"--param {key}={v!r}: use true or false")


def run(name: str, req: PlanRequest) -> PlanResult:
    """Plan with strategy ``name``; the plan is validated against the graph.

    ``params["fc_split"]`` (any strategy; ``modnn`` defaults to true): the
    plan's fully connected tail is then split by output features over the
    devices (:func:`coinfer.strategies.features.split_fc_tail`).

    A parameter the strategy does not read is a :class:`StrategyError` (:func:`check_params`; the
    keys its plans carry besides parameters are accepted, so a plan's own parameters re-plan it).
    """
    s = info(name)
    check_params(name, req.params, plan_keys=True)
    asked = req.params.get(FC_SPLIT)
    fc = None if asked is None else flag_param(asked, FC_SPLIT)
    if s.needs_costs or fc:
        req.cost_model()
    res = s.fn(req)
    if fc is None:
        fc = bool(res.plan.strategy.params.get(FC_SPLIT, False))
    if fc:
        from .features import feature_stage_ends, split_fc_tail

        plan = split_fc_tail(res.plan, req.graph, req.costs, res.plan.devices_used_names())
        if plan is not res.plan:
            res = PlanResult(plan, dict(res.info, fc_split=feature_stage_ends(plan)))
    res.plan.validate(req.graph)
    return res
