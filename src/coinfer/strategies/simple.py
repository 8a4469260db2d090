"""First planners: ``local`` and the non-optimising row splitters ``even`` / ``proportional``.

``even`` and ``proportional`` split every stage's output rows over the
devices (equally, or in proportion to each device's speed: its profiled or
configured GFLOP/s, else its ``cpu_share``), fusing consecutive layers into a
stage while the exact halo adds at most ``max_redundancy`` FLOPs (default
10%); the non-splittable tail runs whole on the source. They are not
optimised: real strategies (CoEdge, DistrEdge, ...) live in their own modules.
"""

from __future__ import annotations

from ..graph.ir import OUTPUT
from ..plan.plan import Stage, Whole
from .common import fused_boundaries, requested_devices, rows_stage, tail_stage
from .registry import PlanRequest, PlanResult, StrategyError, register


def device_speeds(req: PlanRequest) -> dict[str, float]:
    """Relative speed per device: the cost model's if given, else speed_gflops, else cpu_share."""
    if req.costs is not None:
        return {d: req.costs.speed(d) for d in req.devices}
    return {d.name: (d.speed_gflops or d.cpu_share) for d in req.cluster.devices}


@register("local", summary="everything on the source device (the baseline to beat)", params=("exit",))
def plan_local(req: PlanRequest) -> PlanResult:
    from .layerwise import requested_exit

    ex = requested_exit(req)  # --param exit=NAME: Edgent's "exit only" baseline; a bad exit -> exit 2
    return PlanResult(req.make_plan([Stage(OUTPUT, Whole(req.source))], "local", {"exit": ex} if ex else None,
                                    exit=ex))


ROWS_PARAMS = ("max_redundancy", "devices")
ROWS_OUTPUTS = ("weights",)


def _rows(req: PlanRequest, weights: dict[str, float], name: str) -> PlanResult:
    devices = requested_devices(req)  # checked; the source always included
    if devices is not None:
        weights = {d: weights[d] for d in devices}
    red = req.number("max_redundancy", 0.10)
    if red < 0:
        raise StrategyError("max_redundancy must be >= 0")
    g = req.graph
    stages = [rows_stage(g, c, weights) for c in fused_boundaries(g, weights, red)]
    if not stages or g.resolve(stages[-1].until) != g.output.name:
        stages.append(tail_stage(g, req.source))
    params = {"max_redundancy": red, "weights": {d: round(w, 4) for d, w in weights.items()}}
    return PlanResult(req.make_plan(stages, name, params), {"stages": len(stages)})


@register("even", summary="rows split equally over all devices; layers fused while the halo costs <= 10%",
          params=ROWS_PARAMS, outputs=ROWS_OUTPUTS)
def plan_even(req: PlanRequest) -> PlanResult:
    return _rows(req, {d: 1.0 for d in req.devices}, "even")


@register("proportional", summary="rows split in proportion to device speed; layers fused while the halo costs <= 10%",
          params=ROWS_PARAMS, outputs=ROWS_OUTPUTS)
def plan_proportional(req: PlanRequest) -> PlanResult:
    return _rows(req, device_speeds(req), "proportional")
