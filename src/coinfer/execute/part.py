"""Compute one part of one stage from just its input region.

This is the function a remote device runs: it receives the region of the
stage input its part needs (with halo for ``exact``, its own tile for
``zero``), pads only at true image borders (or tile borders for ``zero``), and
returns its output region. The in-process executor, the workers and
``verify`` all call it unchanged.
"""

from __future__ import annotations

import torch

from ..graph.capture import CapturedModel
from ..graph.geometry import PartGeom, region_shape
from .kernels import run_node

Tensor = torch.Tensor


class PartInputError(ValueError):
    pass


class PartRunner:
    """A compiled part: geometry resolved once, called per request."""

    def __init__(self, cm: CapturedModel, geom: PartGeom) -> None:
        self.cm = cm
        self.geom = geom
        g = cm.graph
        self.nodes = [g[ng.name] for ng in geom.nodes]
        self.in_shape = region_shape(g[geom.start], geom.in_region)
        self.out_shape = region_shape(g[geom.end], geom.out_region)
        self._cache: dict[object, Tensor] = {}

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        if tuple(x.shape) != self.in_shape:
            raise PartInputError(
                f"part input has shape {list(x.shape)}, expected {list(self.in_shape)} "
                f"(region {self.geom.in_region} of {self.geom.start})"
            )
        g = self.geom
        bufs: dict[str, Tensor] = {g.start: x}
        for idx, (ng, node) in enumerate(zip(g.nodes, self.nodes)):
            ins = []
            for e in ng.edges:
                t = bufs[e.src]
                if e.slice is not None:
                    r0, r1, c0, c1 = e.slice
                    if (r0, c0) != (0, 0) or r1 != t.shape[2] or c1 != t.shape[3]:
                        t = t[:, :, r0:r1, c0:c1]
                ins.append(t)
            bufs[ng.name] = run_node(self.cm, node, ins, ng, self._cache)
            for name in g.free_after.get(idx, ()):
                bufs.pop(name, None)
        return bufs[g.end]


def run_part(cm: CapturedModel, geom: PartGeom, x: Tensor) -> Tensor:
    """One-shot convenience over :class:`PartRunner`."""
    return PartRunner(cm, geom)(x)
