"""Per-layer-type latency regressions (Edgent / Neurosurgeon), torch-free.

Neurosurgeon (Kang et al., ASPLOS 2017, §4) and Edgent (Li et al., 2018,
§III-B) predict a layer's latency on a device from a small regression per
layer *type*, fitted on profiled layers, so that shapes never profiled can
still be priced. Edgent's features:

* convolution: the amount of input feature maps and (filter size / stride)²
  × number of filters — we add their product (≈ the multiply-accumulates),
  which makes one linear model fit both shallow-wide and deep-narrow layers;
* fully connected: input and output sizes (and their product, the weights);
* pooling: input and output sizes;
* ReLU, LRN, batch norm, element-wise ops: input size.

Each model is ``ms = w · [features, 1]``, fitted by least squares with numpy.
Features are scaled (elements in millions, MACs in GFLOP units) so the
solve is well conditioned. Predictions are clamped at zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..graph.ir import Node

POOL_OPS = frozenset({"maxpool", "avgpool", "adaptive_pool", "global_pool"})

FEATURES: dict[str, tuple[str, ...]] = {
    "conv": ("in_melems", "ks2_filters_k", "gmacs", "one"),
    "dwconv": ("in_melems", "ks2_filters_k", "gmacs", "one"),
    "linear": ("in_k", "out_k", "gmacs", "one"),
    "pool": ("in_melems", "out_melems", "one"),
    "eltwise": ("in_melems", "one"),
}


def family(node: Node) -> str:
    """The regression a node belongs to: conv, dwconv, linear, pool, or its own op (act, bn...)."""
    if node.op == "conv":
        return "dwconv" if int(node.attrs.get("groups", 1)) > 1 else "conv"
    if node.op == "linear":
        return "linear"
    if node.op in POOL_OPS:
        return "pool"
    return node.op


def _kind(fam: str) -> str:
    return fam if fam in FEATURES else "eltwise"


def features(node: Node, in_elems: int, out_elems: int, flops: int) -> tuple[str, list[float]]:
    """(family, feature vector) of ``node`` computing ``out_elems`` outputs from ``in_elems`` inputs."""
    fam = family(node)
    kind = _kind(fam)
    if kind in ("conv", "dwconv"):
        kh, kw = node.attrs.get("kernel", (1, 1))
        sh, sw = node.attrs.get("stride", (1, 1))
        filters = node.shape[1]
        ks2 = (kh / sh) * (kw / sw) * filters
        return fam, [in_elems / 1e6, ks2 / 1e3, flops / 2e9, 1.0]
    if kind == "linear":
        fin = int(node.attrs.get("in", 0)) or (in_elems // max(node.shape[0], 1))
        fout = node.shape[-1]
        return fam, [fin / 1e3, fout / 1e3, flops / 2e9, 1.0]
    if kind == "pool":
        return fam, [in_elems / 1e6, out_elems / 1e6, 1.0]
    return fam, [in_elems / 1e6, 1.0]


@dataclass(frozen=True)
class LayerSample:
    """One profiled node execution: its regression family, features and median latency."""

    family: str
    x: tuple[float, ...]
    ms: float


@dataclass(frozen=True)
class LayerRegression:
    family: str
    features: tuple[str, ...]
    coef: tuple[float, ...]
    n: int  # samples fitted
    rmse_ms: float

    def predict(self, x: list[float] | tuple[float, ...]) -> float:
        return max(0.0, float(sum(c * v for c, v in zip(self.coef, x))))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "coef": list(self.coef), "n": self.n, "rmse_ms": self.rmse_ms}

    @classmethod
    def from_dict(cls, fam: str, d: dict[str, Any]) -> LayerRegression:
        return cls(fam, tuple(d["features"]), tuple(float(c) for c in d["coef"]), int(d["n"]),
                   float(d["rmse_ms"]))


def fit(samples: Iterable[LayerSample], min_samples: int = 3) -> dict[str, LayerRegression]:
    """Least-squares fit of one regression per family with at least ``min_samples`` samples."""
    by: dict[str, list[LayerSample]] = {}
    for s in samples:
        by.setdefault(s.family, []).append(s)
    out: dict[str, LayerRegression] = {}
    for fam, ss in sorted(by.items()):
        if len(ss) < min_samples:
            continue
        X = np.array([s.x for s in ss], dtype=float)
        y = np.array([s.ms for s in ss], dtype=float)
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        rmse = float(np.sqrt(np.mean((X @ coef - y) ** 2)))
        out[fam] = LayerRegression(fam, FEATURES[_kind(fam)], tuple(float(c) for c in coef), len(ss), rmse)
    return out
