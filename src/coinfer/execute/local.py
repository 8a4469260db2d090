"""In-process execution of a whole plan through the per-part function.

Each stage's parts read exactly the input region their geometry asks for (cut
out of the assembled stage input, as a remote device would receive it) and
their outputs are written into the assembled stage output. No networking: the
distributed runtime runs the same :class:`PartRunner` s on workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..graph.capture import CapturedModel
from ..graph.geometry import PartGeom, part_geometry
from ..graph.ir import Graph
from ..plan.plan import Part, Plan
from .part import PartRunner, concat_features

Tensor = torch.Tensor


def plan_geometries(graph: Graph, plan: Plan) -> dict[tuple[int, int], PartGeom]:
    """Geometry of every part of every stage of ``plan`` over ``graph`` (exit applied)."""
    out: dict[tuple[int, int], PartGeom] = {}
    for si, (start, end) in enumerate(plan.stage_bounds(graph)):
        halo = plan.stages[si].halo
        for part in plan.parts(graph, si):
            out[(si, part.index)] = part_geometry(graph, start, end, part.region, halo)
    return out


@dataclass
class PartTiming:
    stage: int
    part: int
    device: str
    ms: float
    flops: int


@dataclass
class LocalRun:
    output: Tensor
    timings: list[PartTiming] = field(default_factory=list)


class InProcessExecutor:
    """Runs a validated plan in this process; ``executor(x)`` returns the model output."""

    def __init__(self, cm: CapturedModel, plan: Plan, *, backend: str = "torch", precision: str = "fp32",
                 cluster: Any = None, threads: int | None = None) -> None:
        """``backend``/``precision`` for every part (see :mod:`coinfer.execute.backends`), or per
        device from ``cluster`` (a :class:`~coinfer.cluster.Cluster`: each device's ``backend`` and
        ``precision``; devices it lacks use the arguments)."""
        from .backends import PartCache

        self.graph = plan.validate(cm.graph)
        self.cm = cm.for_exit(plan.exit)
        self.plan = plan
        self.geoms = plan_geometries(self.graph, plan)
        self.cache = PartCache(threads)
        devs = {d.name: d for d in cluster.devices} if cluster is not None else {}

        def choice(dev: str) -> tuple[str, str]:
            d = devs.get(dev)
            return (d.backend, d.precision) if d is not None else (backend, precision)

        self.parts: list[list[tuple[Part, PartRunner]]] = []
        for si in range(len(plan.stages)):
            self.parts.append([(p, PartRunner(self.cm, self.geoms[(si, p.index)], *choice(p.device),
                                              cache=self.cache))
                               for p in plan.parts(self.graph, si)])

    @property
    def backends(self) -> dict[str, list[str]]:
        """device -> the backends computing its parts (``auto`` resolved, fallbacks applied)."""
        out: dict[str, list[str]] = {}
        for parts in self.parts:
            for p, r in parts:
                tag = r.backend if r.precision == "fp32" else f"{r.backend}/{r.precision}"
                if tag not in out.setdefault(p.device, []):
                    out[p.device].append(tag)
        return out

    @torch.no_grad()
    def run(self, x: Tensor, timed: bool = False) -> LocalRun:
        timings: list[PartTiming] = []
        cur = x
        for si, parts in enumerate(self.parts):
            end_node = self.graph[self.plan.stages[si].until]
            single = len(parts) == 1
            flat = len(end_node.shape) == 2
            out = None if single or flat else torch.empty(end_node.shape, dtype=cur.dtype)
            pieces = []
            for part, runner in parts:
                ir = runner.geom.in_region
                xin = cur if ir is None else _crop(cur, ir)
                t0 = time.perf_counter()
                y = runner(xin)
                if timed:
                    timings.append(PartTiming(si, part.index, part.device,
                                              1e3 * (time.perf_counter() - t0), runner.geom.flops))
                if flat and not single:
                    pieces.append((part.region, y))
                elif out is None:
                    out = y
                else:
                    r = part.region
                    assert r is not None
                    out[:, :, r[0]:r[1], r[2]:r[3]] = y
            if pieces:
                out = concat_features(pieces, si)
            assert out is not None
            cur = out
        return LocalRun(cur, timings)

    def __call__(self, x: Tensor) -> Tensor:
        return self.run(x).output


def _crop(t: Tensor, r: tuple[int, int, int, int]) -> Tensor:
    if r == (0, t.shape[2], 0, t.shape[3]):
        return t
    return t[:, :, r[0]:r[1], r[2]:r[3]]


def reference_output(cm: CapturedModel, x: Tensor, exit_name: str | None = None) -> Tensor:
    """The unpartitioned model's output (or the chosen early exit's)."""
    assert cm.module is not None
    with torch.no_grad():
        if exit_name in (None, "final"):
            return cm.module(x)
        return cm.module.forward_exits(x)[exit_name]  # type: ignore[operator]


def compare(y: Tensor, ref: Tensor) -> tuple[float, float]:
    """(max abs diff, max abs diff relative to the reference's max magnitude)."""
    diff = float((y - ref).abs().max())
    scale = float(ref.abs().max()) or 1.0
    return diff, diff / scale


TOLERANCE = 1e-4  # relative to the output's max magnitude (the core's exactness criterion)
