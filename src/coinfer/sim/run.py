"""Entry points: simulate a plan file (captures the model) or a plan over a graph you hold.

:func:`simulate_plan` is what ``coinfer simulate`` and :func:`coinfer.simulate`
call: it rebuilds the model's graph by name (this imports torch — it is the
entry point, not the core), loads profiles and the bandwidth trace, lowers
the plan and runs :func:`coinfer.sim.engine.simulate`.
:func:`simulate_lowered` stays torch-free, for planners that already hold the
graph and a cost model.
"""

from __future__ import annotations

from typing import Any

from ..cluster import Cluster, ClusterError
from ..cost.bandwidth import BandwidthTrace
from ..cost.calibration import HostCalibration
from ..cost.model import CostModel, load_cost_model
from ..graph.geometry import PartGeom
from ..graph.ir import Graph
from ..plan.lower import lower
from ..plan.plan import Plan
from .engine import simulate
from .result import SimResult


def check_devices(plan: Plan, cluster: Cluster, what: str = "simulate") -> None:
    """Refuse a cluster lacking one of the plan's devices (``coinfer simulate`` and ``verify --cluster``)."""
    missing = [d for d in plan.devices if d not in cluster.names]
    if missing:
        raise ClusterError(
            f"the plan uses device(s) {missing} that the cluster does not have (devices: "
            f"{', '.join(cluster.names)}); {what} with the cluster the plan was made for or re-plan "
            f"with coinfer plan --cluster"
        )


def simulate_lowered(plan: Plan, graph: Graph, costs: CostModel, *,
                     geoms: dict[tuple[int, int], PartGeom] | None = None,
                     bandwidth_trace: BandwidthTrace | None = None, nic: str = "per_link",
                     overheads: bool = True) -> SimResult:
    """Lower ``plan`` over ``graph`` (the full model) and simulate it; torch-free.

    Planners pass the graph and cost model they already have (and, when they
    simulate many variants, the part geometries they computed). ``overheads``:
    see :func:`coinfer.sim.engine.simulate`.
    """
    return simulate(lower(plan, graph, geoms), costs, bandwidth_trace=bandwidth_trace, nic=nic, overheads=overheads)


def simulate_plan(plan: Plan, cluster: Cluster | str, profiles_dir: str | None = None, *,
                  calibration: HostCalibration | None = None,
                  bandwidth_trace: str | BandwidthTrace | None = None, nic: str = "per_link",
                  overheads: bool = True, probed_links: bool = False) -> SimResult:
    """Simulate a plan on ``cluster``: capture its model by name, build the cost model, lower, simulate.

    ``probed_links``: price links with the bandwidth and RTT/2 that ``coinfer
    profile`` probed (every link the plan uses must have been probed).
    """
    from ..modelspec import capture_model

    if isinstance(cluster, str):  # a built-in name or a YAML path, as coinfer.simulate takes
        from ..cluster import resolve_cluster

        cluster = resolve_cluster(cluster)
    check_devices(plan, cluster)
    cm = capture_model(plan.model.name, plan.model.input_shape)
    costs = load_cost_model(cm.graph, cluster, profiles_dir, calibration=calibration,
                            bandwidth_trace=bandwidth_trace, prefer_probes=probed_links)
    return simulate(lower(plan, cm.graph), costs, nic=nic, overheads=overheads)


def predicted(res: SimResult) -> dict[str, Any]:
    """The ``plan.predicted`` object: the simulator's summary plus where its costs came from."""
    out = res.summary()
    out["source"] = "simulator"
    out["costs"] = "profiles" if any(v == "profile" for v in res.costs.get("compute", {}).values()) else "analytic"
    out["calibration"] = res.costs.get("calibration")
    return out
