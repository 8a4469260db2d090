"""The small Python API: plan, verify, simulate, deploy."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .cluster import Cluster, resolve_cluster
from .plan.plan import Plan

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .strategies.registry import PlanResult


def _cluster(c: Cluster | str) -> Cluster:
    return c if isinstance(c, Cluster) else resolve_cluster(str(c))


def plan_result(model: str, cluster: Cluster | str, strategy: str = "proportional", *,
                objective: str = "latency", deadline_ms: float | None = None,
                profiles: str | None = None, input_shape: Any = None, note: Callable[[str], None] | None = None,
                **params: Any) -> PlanResult:
    """Plan ``model`` over ``cluster`` with a registered strategy; returns plan and report.

    ``note``: called with one line per step of long planning work (DistrEdge profiling each emulated
    device, then training), e.g. ``print``."""
    from .cost.model import load_cost_model
    from .modelspec import capture_model
    from .strategies import PlanRequest, run

    cl = _cluster(cluster)
    cm = capture_model(model, input_shape)
    costs = load_cost_model(cm.graph, cl, profiles)
    req = PlanRequest(cm.graph, cl, model, costs, objective, deadline_ms, params, note=note)
    return run(strategy, req)


def plan(model: str, cluster: Cluster | str, strategy: str = "proportional", **kw: Any) -> Plan:
    """Plan ``model`` (zoo name or import path) over ``cluster`` (file, built-in name or Cluster)."""
    return plan_result(model, cluster, strategy, **kw).plan


def verify(plan: Plan, model: Any = None, x: torch.Tensor | None = None, seed: int = 0,
           backend: str = "torch", precision: str = "fp32") -> float:
    """Max abs difference between the plan's in-process execution and the plain model.

    ``backend``/``precision``: the execution backend of every part (:mod:`coinfer.execute.backends`)."""
    from .execute.local import InProcessExecutor, compare, reference_output
    from .graph.capture import capture
    from .inputs import random_input
    from .modelspec import capture_model

    if model is None or isinstance(model, str):
        cm = capture_model(model or plan.model.name, plan.model.input_shape)
    else:
        cm = capture(model, plan.model.input_shape, plan.model.name)
    if x is None:
        x = random_input(tuple(plan.model.input_shape), seed)
    y = InProcessExecutor(cm, plan, backend=backend, precision=precision)(x)
    return compare(y, reference_output(cm, x, plan.exit))[0]


def simulate(plan: Plan, cluster: Cluster | str, profiles: str | None = None) -> Any:
    """Predicted latency, energy, bytes and timeline of ``plan`` (no devices needed)."""
    from .sim.run import simulate_plan

    return simulate_plan(plan, _cluster(cluster), profiles)


def deploy(plan: Plan, cluster: Cluster | str, **kw: Any) -> Any:
    """Start a session on the cluster's workers: ``with deploy(p, c) as s: y = s(x)``."""
    from .runtime.coordinator import deploy as _deploy

    return _deploy(plan, _cluster(cluster), **kw)
