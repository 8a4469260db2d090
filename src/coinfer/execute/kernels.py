"""Per-op torch kernels that compute a node on an already-sliced input region.

Padding that the geometry asks for is applied here: symmetric amounts use the
op's native padding argument (no copy), the asymmetric remainder an explicit
``F.pad`` with the op's padding value (0 for convolutions, ``-inf`` for max
pooling). Average pooling divides by the exact per-window count so borders
match torch's ``count_include_pad`` / ``ceil_mode`` semantics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..graph.capture import CapturedModel
from ..graph.geometry import NodeGeom, Pads
from ..graph.ir import Node

Tensor = torch.Tensor
NEG_INF = float("-inf")


def _split_pad(p: Pads, allow: tuple[int, int] | None = None) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """(native (h, w), extra F.pad (left, right, top, bottom)) for pads (t, b, l, r)."""
    t, b, l, r = p
    nh, nw = min(t, b), min(l, r)
    if allow is not None:
        nh, nw = min(nh, allow[0]), min(nw, allow[1])
    return (nh, nw), (l - nw, r - nw, t - nh, b - nh)


def _whole_pads(node: Node) -> Pads:
    t, b, l, r = node.attrs["pad"]
    return (t, b, l, r)


def conv(node: Node, st: dict[str, Tensor], x: Tensor, pads: Pads) -> Tensor:
    a = node.attrs
    (nh, nw), extra = _split_pad(pads)
    if any(extra):
        x = F.pad(x, extra)
    return F.conv2d(x, st["weight"], st.get("bias"), a["stride"], (nh, nw), a["dilation"], a["groups"])


def maxpool(node: Node, x: Tensor, pads: Pads, whole: bool) -> Tensor:
    a = node.attrs
    kh, kw = a["kernel"]
    if whole and pads[0] == pads[1] and pads[2] == pads[3]:
        return F.max_pool2d(x, a["kernel"], a["stride"], (pads[0], pads[2]), a["dilation"], a["ceil_mode"])
    (nh, nw), extra = _split_pad(pads, (kh // 2, kw // 2))
    if any(extra):
        x = F.pad(x, extra, value=NEG_INF)
    return F.max_pool2d(x, a["kernel"], a["stride"], (nh, nw), a["dilation"], False)


def avgpool(node: Node, x: Tensor, pads: Pads, geom: NodeGeom | None, cache: dict[object, Tensor]) -> Tensor:
    a = node.attrs
    if geom is None or geom.region is None:  # whole tensor: torch's own semantics
        t, _b, l, _r = a["pad"]
        return F.avg_pool2d(x, a["kernel"], a["stride"], (t, l), a["ceil_mode"],
                            a.get("count_include_pad", True), a.get("divisor_override"))
    if any(pads):
        x = F.pad(x, (pads[2], pads[3], pads[0], pads[1]))
    if geom.pool_counts is None:
        return F.avg_pool2d(x, a["kernel"], a["stride"], 0, False, True)
    s = F.avg_pool2d(x, a["kernel"], a["stride"], 0, False, True, divisor_override=1)
    key = (node.name, geom.region)
    div = cache.get(key)
    if div is None:
        rows = torch.tensor(geom.pool_counts[0], dtype=s.dtype)
        cols = torch.tensor(geom.pool_counts[1], dtype=s.dtype)
        div = (rows[:, None] * cols[None, :]).clamp_min(1.0)
        cache[key] = div
    return s / div


def pad(node: Node, x: Tensor, pads: Pads) -> Tensor:
    if not any(pads):
        return x
    return F.pad(x, (pads[2], pads[3], pads[0], pads[1]), value=float(node.attrs.get("value", 0.0)))


def bn(node: Node, st: dict[str, Tensor], x: Tensor) -> Tensor:
    return F.batch_norm(x, st["running_mean"], st["running_var"], st.get("weight"), st.get("bias"),
                        False, 0.0, node.attrs["eps"])


def edge_inputs(ng: NodeGeom, bufs: dict[str, Tensor]) -> list[Tensor]:
    """``ng``'s inputs from the computed buffers, each cut to the region its edge reads (a view)."""
    ins = []
    for e in ng.edges:
        t = bufs[e.src]
        if e.slice is not None:
            r0, r1, c0, c1 = e.slice
            if (r0, c0) != (0, 0) or r1 != t.shape[2] or c1 != t.shape[3]:
                t = t[:, :, r0:r1, c0:c1]
        ins.append(t)
    return ins


def run_node(cm: CapturedModel, node: Node, inputs: list[Tensor], geom: NodeGeom | None,
             cache: dict[object, Tensor]) -> Tensor:
    """Compute ``node`` on its (sliced) inputs; ``geom`` carries the region paddings."""
    op = node.op
    st = cm.tensors.get(node.name, {})
    whole = geom is None or geom.region is None
    if op in ("conv", "maxpool", "avgpool", "pad"):
        pads = _whole_pads(node) if whole else geom.edges[0].pad  # type: ignore[union-attr]
        x = inputs[0]
        if op == "conv":
            return conv(node, st, x, pads)
        if op == "maxpool":
            return maxpool(node, x, pads, whole)
        if op == "avgpool":
            return avgpool(node, x, pads, geom, cache)
        if whole:
            return pad(node, x, pads)
        return pad(node, x, pads)
    if op == "act":
        return cm.fns[node.name](inputs[0])
    if op == "bn":
        return bn(node, st, inputs[0])
    if op == "add":
        return inputs[0] + inputs[1]
    if op == "mul":
        return inputs[0] * inputs[1]
    if op == "scale":
        c = node.attrs["const"]
        return inputs[0] + c if node.attrs["fn"] == "add" else inputs[0] * c
    if op == "cat":
        return torch.cat(inputs, 1)
    if op == "lrn":
        a = node.attrs
        return F.local_response_norm(inputs[0], a["size"], a["alpha"], a["beta"], a["k"])
    if op == "global_pool":
        x = inputs[0]
        if node.attrs.get("kind", "avg") == "avg":
            return x.mean((2, 3), keepdim=node.attrs.get("keepdim", False))
        return x.amax((2, 3), keepdim=node.attrs.get("keepdim", False))
    if op == "adaptive_pool":
        fn: Callable[..., Tensor] = (F.adaptive_avg_pool2d if node.attrs["kind"] == "avg"
                                     else F.adaptive_max_pool2d)
        return fn(inputs[0], node.attrs["size"])
    if op == "flatten":
        return inputs[0].reshape(inputs[0].shape[0], -1)
    if op == "linear":
        return F.linear(inputs[0], st["weight"], st.get("bias"))
    raise ValueError(f"internal: no kernel for op {op!r} (node {node.name})")  # pragma: no cover
