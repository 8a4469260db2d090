"""A deployment on one worker: the plan, this device's program and its compiled parts.

The worker builds only the layers its parts need: the model is captured from
its name (zoo name + seed, the weights package, or an import path on this
device), checked against the plan's fingerprint, and restricted to the nodes
of this device's parts (dynamic stages: every tile of the stage, since any
device may pull any tile).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..execute.part import PartRunner
from ..graph.capture import CapturedModel
from ..plan.lower import Instr, Lowered, lower
from ..plan.plan import Plan, PlanError


class DeployError(ValueError):
    pass


@dataclass
class Deployment:
    dep: str
    plan: Plan
    device: str
    lowered: Lowered
    program: list[Instr]
    cm: CapturedModel
    coord: str
    runners: dict[tuple[int, int], PartRunner] = field(default_factory=dict)
    build_ms: float = 0.0

    def runner(self, stage: int, part: int) -> PartRunner:
        r = self.runners.get((stage, part))
        if r is None:
            r = PartRunner(self.cm, self.lowered.geoms[(stage, part)])
            self.runners[(stage, part)] = r
        return r

    @property
    def dynamic_stages(self) -> set[int]:
        return {s.stage for s in self.lowered.stages if s.dynamic}


def build(dep: str, plan_json: str, device: str, coord: str, seed: int = 0,
          cm: CapturedModel | None = None) -> Deployment:
    """Parse, validate and compile ``plan_json`` for ``device`` (raises DeployError)."""
    from ..modelspec import ModelError, capture_model

    t0 = time.perf_counter()
    try:
        plan = Plan.from_json(plan_json)
    except PlanError as e:
        raise DeployError(f"bad plan: {e}") from None
    if device not in plan.devices:
        raise DeployError(f"this worker is {device!r}, which is not in the plan's devices {plan.devices}")
    if cm is None:
        try:
            cm = capture_model(plan.model.name, plan.model.input_shape, seed)
        except (ModelError, ValueError) as e:
            raise DeployError(f"cannot build model {plan.model.name!r} on {device}: {e}") from None
    try:
        lowered = lower(plan, cm.graph)
    except (PlanError, ValueError) as e:
        raise DeployError(f"plan does not fit model {plan.model.name!r} on {device}: {e}") from None
    program = lowered.programs.get(device, [])
    cme = cm.for_exit(plan.exit)
    # keep only the state of the nodes this device computes
    mine: set[str] = set()
    dyn = {s.stage for s in lowered.stages if s.dynamic and device in s.devices}
    for (s, p), info in lowered.parts.items():
        if info.device == device or s in dyn:
            mine.update(ng.name for ng in lowered.geoms[(s, p)].nodes)
    cme = cme.restrict(mine)
    d = Deployment(dep, plan, device, lowered, program, cme, coord)
    for ins in program:
        if ins.op == "compute":
            d.runner(ins.tensor, ins.part)  # type: ignore[arg-type]
    d.build_ms = (time.perf_counter() - t0) * 1e3
    return d
