"""Layer-wise planners: ``offload`` and ``neurosurgeon`` (and the chain pricing Edgent reuses). Torch-free.

A *layer-wise* plan runs the model as a chain over at most two devices: the
source (which holds the input and wants the result) and one other device,
cut at one of the graph's cut points (:meth:`coinfer.graph.ir.Graph.cut_points`;
with an early exit, the cut points of ``graph.for_exit(exit)``, which include
the exit head's). Two orders exist:

``front_source`` (Neurosurgeon, Kang et al., ASPLOS 2017, §5: the mobile runs
    the layers up to the cut and ships that activation to the server, which
    runs the rest and returns the result);
``front_other`` (Edgent, Li, Zhou, Chen 2018, §III-C, Algorithm 1: the *edge
    server* runs the layers before the partition point — the device first
    uploads its input — and the device runs the rest).

Cutting at the input in the Neurosurgeon order (or at the output in Edgent's)
is full offloading; cutting at the output (at the input) is local execution.

:func:`chain_table` prices every (order, cut) of one exit with the cost model
exactly as the simulator prices the lowered plan: per-device compute of each
cut-point segment (:meth:`~coinfer.cost.model.CostModel.part_ms` on the
geometry the lowering uses), and link latency + serialisation
(:meth:`~coinfer.cost.model.CostModel.transfer_ms`, integrated over a bandwidth
trace from the time the transfer starts) for the input / activation / result.
The source's energy is the simulator's: busy_w·busy + idle_w·(T − busy) +
tx_w·tx + rx_w·rx (Neurosurgeon's "mobile energy").

That chain arithmetic is the *ideal machine* (free messages, devices at their
steady CPU share) and ranks every configuration in microseconds. The
simulator also prices what the runtime itself costs (per-message CPU, the
emulated devices' CPU quota bursts, the coordinator's hops): the best
``verify`` configurations of the ranking (default 4) are then simulated
(:func:`coinfer.sim.engine.simulate` on the lowered plan) and decisions use
the simulated latency and source energy. ``--param verify=0`` decides on the
chain arithmetic alone.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..cost.model import CostModel
from ..graph.geometry import PartGeom, part_geometry
from ..graph.ir import OUTPUT, Graph, GraphError
from ..plan.plan import Plan, Stage, Whole
from .common import holds_weights
from .registry import Infeasible, PlanRequest, PlanResult, StrategyError, register

FRONT_SOURCE = "front_source"  # Neurosurgeon's order
FRONT_OTHER = "front_other"  # Edgent's order
ORDERS = (FRONT_SOURCE, FRONT_OTHER)
ORDER_NAMES = {FRONT_SOURCE: "neurosurgeon", FRONT_OTHER: "edgent"}
_ORDER_PARAM = {"both": ORDERS, "neurosurgeon": (FRONT_SOURCE,), FRONT_SOURCE: (FRONT_SOURCE,),
                "edgent": (FRONT_OTHER,), FRONT_OTHER: (FRONT_OTHER,)}


@dataclass(frozen=True)
class Config:
    """One layer-wise configuration and its predicted cost.

    ``cut`` is the cut point ending the front part (the graph's input name
    when the front is empty); ``k`` its index in :attr:`ChainTable.cuts`.
    ``kind`` is ``local``, ``offload`` or ``split``.
    """

    exit: str | None
    order: str
    other: str
    k: int
    cut: str
    latency_ms: float
    source_energy_j: float
    source_busy_ms: float
    bytes_moved: int
    kind: str
    via: str = "chain"  # "chain": the ideal-machine arithmetic; "simulator": simulated
    chain_ms: float = 0.0  # the chain arithmetic's latency (kept when simulated)

    @property
    def exit_name(self) -> str:
        return self.exit or "final"

    @property
    def label(self) -> str:
        if self.kind == "local":
            return f"{self.exit_name}@local"
        if self.kind == "offload":
            return f"{self.exit_name}@offload:{self.other}"
        return f"{self.exit_name}@{self.cut}:{ORDER_NAMES[self.order]}:{self.other}"

    def stages(self, source: str) -> list[Stage]:
        """The plan stages of this configuration."""
        if self.kind == "local":
            return [Stage(OUTPUT, Whole(source))]
        if self.kind == "offload":
            return [Stage(OUTPUT, Whole(self.other))]
        front, back = (source, self.other) if self.order == FRONT_SOURCE else (self.other, source)
        return [Stage(self.cut, Whole(front)), Stage(OUTPUT, Whole(back))]

    def describe(self) -> dict[str, Any]:
        return {"config": self.label, "exit": self.exit_name, "order": ORDER_NAMES[self.order],
                "device": self.other, "cut": self.cut, "kind": self.kind,
                "latency_ms": round(self.latency_ms, 3), "source_energy_j": round(self.source_energy_j, 6),
                "bytes_moved": self.bytes_moved, "priced_by": self.via}


@dataclass
class ChainTable:
    """Per-segment costs of one exit's chain on the source and the other devices."""

    graph: Graph  # graph.for_exit(exit)
    exit: str | None
    cuts: list[str]  # [input, cut points..., output]
    out_bytes: list[int]  # bytes of the tensor at each cut (input first)
    prefix: dict[str, list[float]]  # device -> cumulative compute ms at each cut (prefix[d][0] = 0)


class _FpGraph(Graph):
    """A copy of a graph that memoises its fingerprint and its exit graphs.

    Planners lower (and so validate) many candidate plans of one graph; the
    fingerprint (a sha256 of the structure) and ``for_exit`` would otherwise
    be recomputed for each.
    """

    def __init__(self, g: Graph) -> None:
        super().__init__(g.name, g.nodes, g.exits, g.exit_of)
        self._fp: str | None = None
        self._exit_graphs: dict[str | None, Graph] = {}
        self.memo: GraphMemo | None = None  # the memo this copy belongs to

    def fingerprint(self) -> str:
        if self._fp is None:
            self._fp = Graph.fingerprint(self)
        return self._fp

    def for_exit(self, exit_name: str | None) -> Graph:
        key = None if exit_name in (None, "final") else exit_name
        g = self._exit_graphs.get(key)
        if g is None:
            g = Graph.for_exit(self, exit_name)
            self._exit_graphs[key] = g
        return g


@dataclass
class GraphMemo:
    """Per-graph memo of a planner's pure, structural work (kept while the graph lives)."""

    graph: _FpGraph
    geoms: dict[tuple[str, str], PartGeom] = field(default_factory=dict)  # Whole-stage geometries
    lowered: dict[tuple[str, str | None], dict[tuple[int, int], PartGeom]] = field(default_factory=dict)

    def geom(self, g: Graph, start: str, end: str) -> PartGeom:
        key = (start, end)  # node names are unique across the main path and the exit heads
        pg = self.geoms.get(key)
        if pg is None:
            node = g[end]
            region = (0, node.height, 0, node.width) if node.is_feature_map else None
            pg = part_geometry(g, start, end, region)  # the geometry the lowering gives a Whole stage
            self.geoms[key] = pg
        return pg


#: graph id -> (weak reference, memo); an entry leaves with its graph. Graphs are immutable by
#: convention (captured once, then only read), which is what makes this memo safe.
_MEMOS: dict[int, tuple[weakref.ref[Graph], GraphMemo]] = {}


def memo(graph: Graph) -> GraphMemo:
    """The :class:`GraphMemo` of ``graph`` (the same object while it is alive)."""
    if isinstance(graph, _FpGraph) and graph.memo is not None:
        return graph.memo
    hit = _MEMOS.get(id(graph))
    if hit is not None and hit[0]() is graph:
        return hit[1]
    fg = graph if isinstance(graph, _FpGraph) else _FpGraph(graph)
    m = GraphMemo(fg)
    fg.memo = m
    _MEMOS[id(graph)] = (weakref.ref(graph), m)
    weakref.finalize(graph, _MEMOS.pop, id(graph), None)
    return m


def fast_request(req: PlanRequest) -> PlanRequest:
    """``req`` over the memo graph (plans made from it skip recomputing the fingerprint)."""
    m = memo(req.graph)
    return req if req.graph is m.graph else replace(req, graph=m.graph)


def exit_graph(graph: Graph, exit_name: str | None) -> Graph:
    try:
        return memo(graph).graph.for_exit(exit_name)
    except GraphError as e:
        raise StrategyError(str(e)) from None


def chain_table(graph: Graph, costs: CostModel, devices: Iterable[str], exit_name: str | None = None) -> ChainTable:
    """Prefix compute times of every cut of exit ``exit_name`` on each of ``devices``."""
    g = exit_graph(graph, exit_name)
    mm = memo(graph)
    cuts = [g.input.name, *g.cut_points()]
    if cuts[-1] != g.output.name:  # pragma: no cover - the output is always a cut point
        cuts.append(g.output.name)
    out_bytes = [g[c].out_bytes for c in cuts]
    prefix: dict[str, list[float]] = {}
    for d in devices:
        acc = [0.0]
        for a, b in itertools.pairwise(cuts):
            acc.append(acc[-1] + costs.part_ms(d, mm.geom(g, a, b)))
        prefix[d] = acc
    return ChainTable(g, exit_name, cuts, out_bytes, prefix)


def price(t: ChainTable, costs: CostModel, source: str, other: str, order: str, k: int,
          codec: str = "raw", quant: str | None = None) -> Config:
    """Latency and source energy of cutting ``t`` at index ``k`` in ``order`` (see the module doc)."""
    K = len(t.cuts) - 1
    S, O = t.prefix[source], t.prefix[other]
    tx = rx = 0.0
    moved = 0

    def xfer(a: str, b: str, nbytes: int, at: float) -> float:
        nonlocal tx, rx, moved
        ser = costs.serialize_ms(a, b, nbytes, codec, quant, at)
        if a == source:
            tx += ser
        else:
            rx += ser
        moved += nbytes
        return at + ser + costs.link(a, b)[1]

    local = (order == FRONT_SOURCE and k == K) or (order == FRONT_OTHER and k == 0)
    offload = (order == FRONT_SOURCE and k == 0) or (order == FRONT_OTHER and k == K)
    if local:
        T, busy, kind = S[K], S[K], "local"
    elif order == FRONT_SOURCE:
        busy = S[k]
        t1 = xfer(source, other, t.out_bytes[k], S[k])
        T = xfer(other, source, t.out_bytes[K], t1 + O[K] - O[k])
        kind = "offload" if offload else "split"
    else:
        t1 = xfer(source, other, t.out_bytes[0], 0.0) + O[k]
        t2 = xfer(other, source, t.out_bytes[k], t1)
        busy = S[K] - S[k]
        T = t2 + busy
        kind = "offload" if offload else "split"
    energy = costs.energy_j(source, busy, max(0.0, T - busy), tx, rx)
    cut = t.cuts[k]
    if kind == "offload":
        order, k, cut = FRONT_SOURCE, 0, t.cuts[0]  # one canonical form of full offloading
    elif kind == "local":
        order, k, cut = FRONT_SOURCE, K, t.cuts[K]
    return Config(t.exit, order, other if kind != "local" else source, k, cut, T, energy, busy, moved, kind,
                  "chain", T)


def fits_memory(t: ChainTable, costs: CostModel, source: str, c: Config) -> bool:
    """Whether each device of ``c`` holds the weights of its part (``memory_mb``; :func:`holds_weights`)."""
    g = t.graph
    k = g.index(c.cut) if c.kind == "split" else (len(g.nodes) - 1 if c.kind == "local" else 0)
    front = sum(n.param_bytes for n in g.nodes[1 : k + 1])
    back = sum(n.param_bytes for n in g.nodes[k + 1 :])
    if c.kind == "local":
        return holds_weights(costs, source, front)
    if c.kind == "offload":
        return holds_weights(costs, c.other, front + back)
    a, b = (source, c.other) if c.order == FRONT_SOURCE else (c.other, source)
    return holds_weights(costs, a, front) and holds_weights(costs, b, back)


def fitting(t: ChainTable, costs: CostModel, source: str, configs: list[Config], what: str) -> list[Config]:
    """``configs`` whose devices hold their parts' weights; none → one-line :class:`StrategyError`."""
    ok = [c for c in configs if fits_memory(t, costs, source, c)]
    if configs and not ok:
        mb = sum(n.param_bytes for n in t.graph.nodes) / 1e6
        raise StrategyError(f"{what}: no configuration fits the devices' memory_mb (the model's weights are "
                            f"{mb:.1f} MB); raise memory_mb in the cluster file or add a device with more memory")
    return ok


def all_configs(t: ChainTable, costs: CostModel, source: str, others: Iterable[str],
                orders: Iterable[str] = ORDERS, codec: str = "raw", quant: str | None = None,
                what: str = "layer-wise") -> list[Config]:
    """Every distinct configuration of one exit whose parts fit the devices' ``memory_mb``: local, and
    each (other, order, cut)."""
    K = len(t.cuts) - 1
    out: dict[str, Config] = {}
    lo = price(t, costs, source, source, FRONT_SOURCE, K, codec, quant)
    out[lo.label] = lo
    for o in others:
        for order in orders:
            for k in range(K + 1):
                c = price(t, costs, source, o, order, k, codec, quant)
                out.setdefault(c.label, c)
    return fitting(t, costs, source, list(out.values()), what)


def others_of(req: PlanRequest) -> list[str]:
    """The devices a layer-wise plan may pair with the source (``--param device=NAME`` picks one)."""
    want = req.param("device")
    others = [d for d in req.devices if d != req.source]
    if want is not None:
        if want == req.source or want not in req.devices:
            raise StrategyError(f"--param device={want!r} must be a device other than the source "
                                f"{req.source!r}; choose one of {others}")
        return [str(want)]
    return others


def orders_of(req: PlanRequest) -> tuple[str, ...]:
    o = str(req.param("order", "both"))
    if o not in _ORDER_PARAM:
        raise StrategyError(f"--param order={o!r} is unknown; use both, neurosurgeon (front on the source) "
                            f"or edgent (front on the other device)")
    return _ORDER_PARAM[o]


def requested_exit(req: PlanRequest) -> str | None:
    """``--param exit=NAME`` (an early exit of the model; ``final`` or absent: the main output)."""
    e = req.param("exit")
    if e in (None, "final", "null"):
        return None
    if not req.graph.exits:
        raise StrategyError(f"model {req.model} has no early exits, so --param exit={e} cannot apply; drop it, "
                            f"or use a model with exits (alexnet, alexnet_digits, resnet18, resnet18_digits)")
    if e not in req.graph.exits:
        raise StrategyError(f"model {req.model} has no exit {e!r}; its exits: "
                            f"{', '.join([*req.graph.exits, 'final'])}")
    return str(e)


def need_costs(req: PlanRequest) -> CostModel:
    return req.cost_model()


def score(c: Config, objective: str) -> tuple[float, float]:
    return (c.source_energy_j, c.latency_ms) if objective == "energy" else (c.latency_ms, c.source_energy_j)


def verify_count(req: PlanRequest) -> int:
    v = req.param("verify", 4)
    try:
        n = int(v)
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise StrategyError(f"--param verify={v!r} must be an integer >= 0 (configurations to simulate; "
                            f"0: decide on the chain arithmetic)")
    return n


class Verifier:
    """Simulates configurations (lowered like the runtime runs them) and caches the results."""

    def __init__(self, req: PlanRequest, n: int) -> None:
        self.req = fast_request(req)
        self.n = n
        self.memo = memo(req.graph)
        self._done: dict[tuple[int, str], Config] = {}

    def simulate(self, c: Config, costs: CostModel) -> Config:
        if c.via == "simulator":
            return c
        key = (id(costs), c.label)
        hit = self._done.get(key)
        if hit is not None:
            return hit
        from ..plan.lower import lower
        from ..sim.engine import simulate

        plan = self.req.make_plan(c.stages(self.req.source), "verify", exit=c.exit)
        gkey = (c.label, c.exit)
        low = lower(plan, self.memo.graph, self.memo.lowered.get(gkey))
        self.memo.lowered[gkey] = low.geoms
        res = simulate(low, costs)
        src = self.req.source
        out = replace(c, latency_ms=res.latency_ms, source_energy_j=res.device_energy_j.get(src, 0.0),
                      source_busy_ms=res.busy_ms.get(src, 0.0), via="simulator", chain_ms=c.latency_ms)
        self._done[key] = out
        return out

    def cached(self, c: Config, costs: CostModel) -> Config:
        """``c`` simulated if it already was, else as priced by the chain arithmetic."""
        return self._done.get((id(costs), c.label), c)

    def refine(self, configs: list[Config], costs: CostModel, *keys: Any) -> list[Config]:
        """The union of the ``n`` best of ``configs`` under each sort key, simulated (none if n = 0)."""
        if self.n == 0:
            return list(configs)
        pick: dict[str, Config] = {}
        for key in keys:
            for c in sorted(configs, key=key)[: self.n]:
                pick.setdefault(c.label, c)
        return [self.simulate(c, costs) for c in pick.values()]


def choose(req: PlanRequest, configs: list[Config], what: str, costs: CostModel,
           verifier: Verifier) -> tuple[Config, list[Config]]:
    """The best configuration for the objective among those meeting the deadline (if any).

    Ranked by the chain arithmetic; the ``verify`` best by the objective
    (among those the arithmetic finds feasible) and by latency are
    simulated and the decision is taken on the simulated figures.
    """
    dl = req.deadline_ms
    feas0 = configs if dl is None else [c for c in configs if c.latency_ms <= dl]
    cands = verifier.refine(feas0 or configs, costs, lambda c: score(c, req.objective))
    cands += verifier.refine(configs, costs, lambda c: (c.latency_ms, c.source_energy_j))
    uniq = {c.label: c for c in cands}
    cands = list(uniq.values())
    feasible = cands if dl is None else [c for c in cands if c.latency_ms <= dl]
    if not feasible:
        fast = min(cands, key=lambda c: c.latency_ms)
        raise Infeasible(
            f"{what}: no configuration meets the {dl:g} ms deadline; the fastest is "
            f"{fast.label} at {fast.latency_ms:.1f} ms (relax --deadline-ms or add a faster device)",
            PlanResult(plan_of(req, fast, what), {"fastest": fast.describe()}))
    best = min(feasible, key=lambda c: score(c, req.objective))
    return best, feasible


def choice_of(c: Config) -> dict[str, Any]:
    d: dict[str, Any] = {"exit": c.exit_name, "kind": c.kind, "order": ORDER_NAMES[c.order], "cut": c.cut,
                         "predicted_ms": round(c.latency_ms, 3)}
    if c.kind != "local":
        d["device"] = c.other
    return d


#: what a layer-wise plan records besides parameters: the configuration's label and what it chose
LAYERWISE_OUTPUTS = ("config", "choice")


def plan_of(req: PlanRequest, c: Config, strategy: str, extra: dict[str, Any] | None = None) -> Plan:
    params: dict[str, Any] = {"objective": req.objective}
    if req.deadline_ms is not None:
        params["deadline_ms"] = req.deadline_ms
    params["config"] = c.label
    params["choice"] = choice_of(c)  # an output: not read back as a parameter when re-planning
    params.update(extra or {})
    return fast_request(req).make_plan(c.stages(req.source), strategy, params, exit=c.exit)


@register("offload", summary="the whole model on the device with the lowest predicted end-to-end latency",
          paper="the full-offloading baseline of Neurosurgeon (ASPLOS 2017) and Edgent", needs_costs=True,
          params=("device", "exit", "verify"), outputs=LAYERWISE_OUTPUTS, deadline=True, objective=True)
def plan_offload(req: PlanRequest) -> PlanResult:
    """Send the input to one other device, run everything there, return the result.

    Among the devices other than the source, the one with the lowest
    predicted end-to-end latency (input upload + compute + result download);
    ``--objective energy`` picks the lowest source energy instead. A deadline
    restricts the choice; none meeting it -> :class:`Infeasible`.
    """
    costs = need_costs(req)
    ex = requested_exit(req)
    others = others_of(req)
    if not others:
        raise StrategyError(f"offload needs a device besides the source {req.source!r}; the cluster has only it "
                            f"(use --strategy local)")
    t = chain_table(req.graph, costs, [req.source, *others], ex)
    K = len(t.cuts) - 1
    verifier = Verifier(req, max(verify_count(req), len(others)) if verify_count(req) else 0)
    configs = fitting(t, costs, req.source, [price(t, costs, req.source, o, FRONT_SOURCE, 0) for o in others],
                      "offload")
    best, feasible = choose(req, configs, "offload", costs, verifier)
    local = price(t, costs, req.source, req.source, FRONT_SOURCE, K)
    if verifier.n:
        local = verifier.simulate(local, costs)
    info = {**best.describe(), "candidates": [c.describe() for c in feasible],
            "local_latency_ms": round(local.latency_ms, 3)}
    return PlanResult(plan_of(req, best, "offload"), info)


@register("neurosurgeon", summary="one cut between the source and one other device, both orders; "
          "latency or source energy", paper="Kang et al., Neurosurgeon, ASPLOS 2017", needs_costs=True,
          params=("device", "order", "exit", "verify"), outputs=LAYERWISE_OUTPUTS, deadline=True, objective=True)
def plan_neurosurgeon(req: PlanRequest) -> PlanResult:
    """Neurosurgeon (Kang et al., ASPLOS 2017, §5, Algorithm 1): the best single cut.

    For every other device and every cut point, in both orders (front on the
    source as in Neurosurgeon, front on the other device as in Edgent), the
    predicted latency and source energy; the minimum of ``--objective``
    (latency, or the source's energy as Neurosurgeon's "mobile energy")
    wins, among configurations meeting ``--deadline-ms`` when one is given.
    Parameters: ``device`` (pair with this device only), ``order``
    (both | neurosurgeon | edgent), ``exit`` (plan an early exit's graph).
    """
    costs = need_costs(req)
    ex = requested_exit(req)
    others = others_of(req)
    orders = orders_of(req)
    t = chain_table(req.graph, costs, [req.source, *others], ex)
    configs = all_configs(t, costs, req.source, others, orders, what="neurosurgeon")
    verifier = Verifier(req, verify_count(req))
    best, _ = choose(req, configs, "neurosurgeon", costs, verifier)
    per_order: dict[str, Any] = {}
    for o in orders:
        # each order's own best (a split in that order; local / offload belong to both)
        cs = [c for c in configs if c.order == o and c.kind == "split"]
        if cs:
            b = min(cs, key=lambda c: score(c, req.objective))
            per_order[ORDER_NAMES[o]] = verifier.cached(b, costs).describe()
    info = {**best.describe(), "won": ORDER_NAMES[best.order] if best.kind == "split" else best.kind,
            "best_split_per_order": per_order, "candidates": len(configs)}
    return PlanResult(plan_of(req, best, "neurosurgeon"), info)


def fastest(configs: list[Config]) -> Config:
    return min(configs, key=lambda c: (c.latency_ms, c.source_energy_j))
