"""The small Python API: plan, verify, simulate, deploy."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .cluster import Cluster, parse_cluster, resolve_cluster
from .plan.plan import Plan

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .graph.capture import CapturedModel
    from .runtime.coordinator import Session
    from .strategies.registry import PlanResult


def _cluster(c: Cluster | str | os.PathLike[str] | dict[str, Any]) -> Cluster:
    """A Cluster, a YAML path, a built-in name, or the cluster as plain data (the YAML's mapping)."""
    if isinstance(c, Cluster):
        return c
    if isinstance(c, dict):
        return parse_cluster(c)
    if not isinstance(c, (str, os.PathLike)):
        raise TypeError(f"cluster must be a Cluster, a YAML path, a built-in name or a dict like the YAML "
                        f"(got {type(c).__name__})")
    return resolve_cluster(os.fspath(c))


def _plan(p: Plan | str | os.PathLike[str]) -> Plan:
    """A Plan, or the path of a plan JSON file."""
    if isinstance(p, Plan):
        return p
    if not isinstance(p, (str, os.PathLike)):
        raise TypeError(f"plan must be a Plan or the path of a plan JSON file (got {type(p).__name__})")
    return Plan.load(os.fspath(p))


def _model_name(model: Any) -> str:
    """Planning needs a model every device can build: a zoo name, an import path or an .onnx file."""
    if isinstance(model, os.PathLike):
        return os.fspath(model)
    if not isinstance(model, str):
        from .modelspec import ModelError

        raise ModelError(f"model must be a zoo name, an import path 'package.module:factory' importable on every "
                         f"device, or an .onnx file (got a {type(model).__name__}): the workers build the model "
                         f"from that name — coinfer.capture and coinfer.verify take a module, planning does not")
    return model


def plan_result(model: str, cluster: Cluster | str | dict[str, Any], strategy: str = "proportional", *,
                objective: str = "latency", deadline_ms: float | None = None,
                profiles: str | None = None, input_shape: Any = None, note: Callable[[str], None] | None = None,
                **params: Any) -> PlanResult:
    """Plan ``model`` over ``cluster`` with a registered strategy; returns plan and report.

    ``note``: called with one line per step of long planning work (DistrEdge profiling each emulated
    device, then training), e.g. ``print``."""
    from .cost.model import load_cost_model
    from .modelspec import capture_model
    from .strategies import PlanRequest, run

    model = _model_name(model)
    cl = _cluster(cluster)
    cm = capture_model(model, input_shape)
    costs = load_cost_model(cm.graph, cl, profiles)
    req = PlanRequest(cm.graph, cl, model, costs, objective, deadline_ms, params, note=note)
    res = run(strategy, req)
    # the plan's prediction with the same cost model (coinfer plan wrote it; plans made here had none)
    from .plan.lower import lower
    from .sim import simulate as _simulate
    from .sim.run import predicted

    res.plan.predicted = {**(res.plan.predicted or {}), **predicted(_simulate(lower(res.plan, cm.graph), costs))}
    return res


def plan(model: str, cluster: Cluster | str | dict[str, Any], strategy: str = "proportional", **kw: Any) -> Plan:
    """Plan ``model`` (zoo name or import path) over ``cluster`` (file, built-in name or Cluster)."""
    return plan_result(model, cluster, strategy, **kw).plan


def verify(plan: Plan | str, model: Any = None, x: torch.Tensor | None = None, seed: int = 0,
           backend: str = "torch", precision: str = "fp32") -> float:
    """Max abs difference between the plan's in-process execution and the plain model.

    ``backend``/``precision``: the execution backend of every part (:mod:`coinfer.execute.backends`)."""
    import numpy as np
    import torch

    from .execute.local import InProcessExecutor, compare, reference_output
    from .graph.capture import capture
    from .inputs import InputError, random_input
    from .modelspec import capture_model

    plan = _plan(plan)
    if model is None or isinstance(model, str):
        cm = capture_model(model or plan.model.name, plan.model.input_shape)
    else:
        cm = capture(model, plan.model.input_shape, plan.model.name)
        _warn_other_weights(plan, cm)
    if x is None:
        x = random_input(tuple(plan.model.input_shape), seed)
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    x = x.detach().to(torch.float32)
    if tuple(x.shape) != tuple(plan.model.input_shape):
        raise InputError(f"input shape {list(x.shape)} != plan input {list(plan.model.input_shape)}")
    y = InProcessExecutor(cm, plan, backend=backend, precision=precision)(x)
    return compare(y, reference_output(cm, x, plan.exit))[0]


def simulate(plan: Plan | str, cluster: Cluster | str | dict[str, Any], profiles: str | None = None) -> Any:
    """Predicted latency, energy, bytes and timeline of ``plan`` (no devices needed)."""
    from .sim.run import simulate_plan

    return simulate_plan(_plan(plan), _cluster(cluster), profiles)


def deploy(plan: Plan | str, cluster: Cluster | str | dict[str, Any], **kw: Any) -> Session:
    """Start a session on the cluster's workers: ``with deploy(p, c) as s: y = s(x)``.

    The workers build the model named by the plan (``plan.model.name``: zoo weights, seeded weights, or
    what an import path's factory loads on each device) — not a module object of the caller's. Keyword
    options are :class:`~coinfer.runtime.coordinator.Session`'s (``timeout_s``, ``dead_after_s``,
    ``failover``, ``replan``, ``keys``, ``addresses`` …; see :func:`coinfer.runtime.coordinator.deploy`).
    A cluster given by name or file whose devices ``coinfer up`` runs uses those workers."""
    from .runtime.coordinator import deploy as _deploy

    if "addresses" not in kw and isinstance(cluster, (str, os.PathLike)):
        # the workers `coinfer up` started for this cluster, as coinfer run uses them (QA: the API
        # started a second set of local workers beside them)
        from .runtime import upstate

        up = upstate.read(os.fspath(cluster))
        if up:
            kw = {**kw, "addresses": up["addresses"], "cpu_modes": up.get("cpu_modes")}
    return _deploy(_plan(plan), _cluster(cluster), **kw)


def _warn_other_weights(plan: Plan, cm: CapturedModel) -> None:
    """verify() was given a module: warn when its weights are not those the workers will build from
    ``plan.model.name`` — verify checks the partition with the given weights, deploy uses the name's."""
    from .modelspec import capture_model

    name = plan.model.name
    try:
        named = capture_model(name, plan.model.input_shape)
    except Exception:  # noqa: BLE001 - cannot be built here: nothing to compare with
        return
    import torch

    same = named.graph.fingerprint() == cm.graph.fingerprint() and all(
        (o := named.tensors.get(node, {}).get(k)) is not None and o.shape == t.shape and torch.equal(o, t)
        for node, ts in cm.tensors.items() for k, t in ts.items())
    if not same:
        warnings.warn(f"the model given to verify is not {name!r} as the workers build it (other weights or "
                      f"layers): verify checked the partition with this model, coinfer.deploy will compute with "
                      f"{name!r}'s weights — to deploy your weights, plan an import path 'package.module:factory' "
                      f"whose factory loads them on every device", UserWarning, stacklevel=3)
