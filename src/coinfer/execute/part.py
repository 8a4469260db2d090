"""Compute one part of one stage from just its input region.

This is the function a remote device runs: it receives the region of the
stage input its part needs (with halo for ``exact``, its own tile for
``zero``), pads only at true image borders (or tile borders for ``zero``), and
returns its output region. The in-process executor, the workers and
``verify`` all call it unchanged.

The computation itself is delegated to an execution backend
(:mod:`coinfer.execute.backends`): ``torch`` (default; eager over the
optimised part program), ``onnxruntime``, ``openvino`` or ``auto`` (the
fastest measured on the part), in ``fp32`` (exact) or an explicitly requested
reduced precision (approximate).
"""

from __future__ import annotations

import torch

from ..errors import CoinferError
from ..graph.capture import CapturedModel
from ..graph.geometry import PartGeom, Region, region_shape
from .backends import CompiledPart, PartCache, build_part

Tensor = torch.Tensor


class PartInputError(CoinferError, ValueError):
    pass


class PartRunner:
    """A compiled part: geometry resolved and the backend built once, called per request.

    ``backend``/``precision``: see :mod:`coinfer.execute.backends`; ``threads``
    defaults to torch's thread count; ``cache`` shares compiled parts that are
    identical up to translation (one per deployment).
    """

    def __init__(self, cm: CapturedModel, geom: PartGeom, backend: str = "torch", precision: str = "fp32",
                 threads: int | None = None, cache: PartCache | None = None) -> None:
        self.cm = cm
        self.geom = geom
        g = cm.graph
        self.nodes = [g[ng.name] for ng in geom.nodes]
        self.in_shape = region_shape(g[geom.start], geom.in_region)
        self.out_shape = region_shape(g[geom.end], geom.out_region)
        self._cache: dict[object, Tensor] = {}  # kernels.run_node's avgpool divisors (profiler's time_nodes)
        if cache is not None:
            self.part: CompiledPart = cache.get(cm, geom, backend, precision)
        else:
            self.part = build_part(cm, geom, backend, precision, threads)

    def drop_model_state(self) -> None:
        """Forget the captured model's tensors (the compiled part keeps what it needs): a worker
        calls this after building its parts so that only one copy of the weights stays resident."""
        self.cm = self.cm.restrict(set())
        self._cache.clear()

    @property
    def backend(self) -> str:
        """The backend that computes this part (``auto`` resolved, fallbacks applied)."""
        return self.part.backend

    @property
    def precision(self) -> str:
        return self.part.precision

    @property
    def exact(self) -> bool:
        return self.part.exact

    def __call__(self, x: Tensor) -> Tensor:
        if tuple(x.shape) != self.in_shape:
            raise PartInputError(
                f"part input has shape {list(x.shape)}, expected {list(self.in_shape)} "
                f"(region {self.geom.in_region} of {self.geom.start})"
            )
        with torch.no_grad():
            return self.part(x)


def concat_features(pieces: list[tuple[Region | None, Tensor]], tensor: int | str = "") -> Tensor:
    """A flat ``(N, F)`` tensor from pieces holding feature ranges ``(0, 1, c0, c1)`` that tile ``0..F``."""
    srt = sorted(pieces, key=lambda p: 0 if p[0] is None else p[0][2])
    at = 0
    for r, v in srt:
        c0 = 0 if r is None else r[2]
        if c0 != at:
            raise RuntimeError(f"internal: features [{at},{c0}) of s{tensor} are missing")
        at = c0 + v.shape[1]
    return srt[0][1] if len(srt) == 1 else torch.cat([v for _, v in srt], dim=1)


def run_part(cm: CapturedModel, geom: PartGeom, x: Tensor, backend: str = "torch",
             precision: str = "fp32") -> Tensor:
    """One-shot convenience over :class:`PartRunner`."""
    return PartRunner(cm, geom, backend, precision)(x)
