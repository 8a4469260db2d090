"""A deployment on one worker: the plan, this device's program and its compiled parts.

The worker builds only the layers its parts need: the model is captured from
its name (zoo name + seed, the weights package, or an import path on this
device), checked against the plan's fingerprint, and restricted to the nodes
of this device's parts (dynamic stages: every tile of the stage, since any
device may pull any tile).

Every part is compiled once here by the device's execution backend
(:mod:`coinfer.execute.backends`; ``backend``/``precision`` come from the
cluster file through the deploy message), parts identical up to translation
share one compiled part. The model is captured for this deployment only (not
the process-wide memo of :func:`coinfer.modelspec.capture_model`), and once
the parts are built every tensor they do not hold is released and the heap
trimmed, so the worker keeps about one copy of the weights its parts need.
"""

from __future__ import annotations

import ctypes
import gc
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import CoinferError
from ..execute.backends import PartCache
from ..execute.part import PartRunner
from ..graph.capture import CapturedModel
from ..plan.lower import Instr, Lowered, lower, weight_shares
from ..plan.plan import Plan, PlanError


class DeployError(CoinferError, ValueError):
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
    sched_state: dict[int, dict[str, Any]] = field(default_factory=dict)  # per dynamic stage, across requests
    backend: str = "torch"
    precision: str = "fp32"
    threads: int | None = None
    cache: PartCache = field(default_factory=PartCache)
    memory: dict[str, Any] = field(default_factory=dict)  # weights_bytes, rss_bytes after the build

    def runner(self, stage: int, part: int) -> PartRunner:
        r = self.runners.get((stage, part))
        if r is None:
            r = PartRunner(self.cm, self.lowered.geoms[(stage, part)], self.backend, self.precision,
                           self.threads, cache=self.cache)
            self.runners[(stage, part)] = r
        return r

    def backends_used(self) -> list[str]:
        """The backends computing this device's parts (``auto`` resolved; ``name/precision`` if reduced)."""
        out: list[str] = []
        for r in self.runners.values():
            tag = r.backend if r.precision == "fp32" else f"{r.backend}/{r.precision}"
            if tag not in out:
                out.append(tag)
        return out

    @property
    def dynamic_stages(self) -> set[int]:
        return {s.stage for s in self.lowered.stages if s.dynamic}


def _capture(name: str, shape: Any, seed: int) -> CapturedModel:
    """The model captured for one deployment (not memoised: the worker keeps only its parts' weights)."""
    from ..graph.capture import capture
    from ..modelspec import load_module

    src = load_module(name, shape, seed)
    return capture(src.module, src.input_shape, name)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return 0


def trim_heap() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def build(dep: str, plan_json: str, device: str, coord: str, seed: int = 0,
          cm: CapturedModel | None = None, *, backend: str = "auto", precision: str = "fp32",
          threads: int | None = None) -> Deployment:
    """Parse, validate and compile ``plan_json`` for ``device`` (raises DeployError)."""
    from ..execute.backends import BackendError, check_backend
    from ..modelspec import ModelError

    t0 = time.perf_counter()
    try:
        plan = Plan.from_json(plan_json)
    except PlanError as e:
        raise DeployError(f"bad plan: {e}") from None
    if device not in plan.devices:
        raise DeployError(f"this worker is {device!r}, which is not in the plan's devices {plan.devices}")
    try:
        check_backend(backend, precision, where=f"device {device}")
    except BackendError as e:
        raise DeployError(str(e)) from None
    if cm is None:
        try:
            cm = _capture(plan.model.name, plan.model.input_shape, seed)
        except (ModelError, ValueError) as e:
            raise DeployError(f"cannot build model {plan.model.name!r} on {device}: {e}") from None
    try:
        lowered = lower(plan, cm.graph)
    except (PlanError, ValueError) as e:
        if "fingerprint" in str(e):  # the coordinator checked the plan against its own copy of the model
            raise DeployError(f"the model {plan.model.name!r} on {device} differs from the one the plan was made "
                              f"with ({e}); install the same version of the model on every device") from None
        raise DeployError(f"plan does not fit model {plan.model.name!r} on {device}: {e}") from None
    program = lowered.programs.get(device, [])
    cme = cm.for_exit(plan.exit)
    # keep only the state of the nodes this device computes
    share = weight_shares(lowered, cme.graph, device)  # node -> share of its weights needed here
    dyn = {s.stage for s in lowered.stages if s.dynamic and device in s.devices}
    mine = set(share)
    cme = cme.restrict(mine)
    weights = sum(cme.graph[n].param_bytes * share[n] for n in mine if n in cme.graph)
    del cm
    d = Deployment(dep, plan, device, lowered, program, cme, coord, backend=backend, precision=precision,
                   threads=threads, cache=PartCache(threads))
    for ins in program:
        if ins.op == "compute":
            d.runner(ins.tensor, ins.part)  # type: ignore[arg-type]
    for (s, p) in lowered.parts:
        if s in dyn:  # any participant may compute any tile of a dynamic stage
            d.runner(s, p)
    # the compiled parts hold what they need (folded weights, sessions): drop the rest
    for r in d.runners.values():
        r.drop_model_state()
    d.cm = cme.restrict(set())
    del cme
    gc.collect()
    trim_heap()
    d.memory = {"weights_bytes": int(weights), "rss_bytes": _rss_bytes()}
    d.build_ms = (time.perf_counter() - t0) * 1e3
    return d
