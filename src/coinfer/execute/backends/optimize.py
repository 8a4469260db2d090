"""Exact graph optimisations of one part: the *part program* every backend executes.

:func:`part_program` turns a part's geometry (:class:`~coinfer.graph.geometry.PartGeom`)
into a list of :class:`Step` s:

* **BatchNorm folding** (inference): a ``bn`` whose only input is a ``conv``
  of the same part, where that conv's output feeds nothing but the bn
  (checked over the whole graph, so a later stage or an exit head never reads
  the un-normalised value), becomes the conv's weights and bias:
  ``w' = w·γ/√(σ²+ε)``, ``b' = (b−μ)·γ/√(σ²+ε)+β``, computed in float64 and
  rounded once to float32 (Jacob et al., 2018, §3.2 "batch normalization
  folding"; the error is one rounding of the weights, far below the core
  tolerance);
* **activation fusion**: an ``act`` whose only input is produced in this part
  by a step that writes a fresh buffer (conv, bn, add, pooling...) and that
  nobody else reads is attached to that step; the torch backend applies it in
  place (no extra buffer), onnxruntime fuses it into the convolution kernel;
* slices that cover the whole producer buffer are dropped, buffers are freed
  after their last reader.

The program keeps the per-edge padding of the geometry untouched, so border
semantics (true image borders, ``zero``-halo tile borders, avgpool divisors)
are exactly those of :mod:`coinfer.execute.kernels`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ...graph.capture import CapturedModel
from ...graph.geometry import NodeGeom, Pads, PartGeom, Region, free_after_last_read, region_shape
from ...graph.ir import GEOMETRY_OPS, Node

Tensor = torch.Tensor

# ops whose output is a fresh buffer (an activation after them may run in place)
FRESH_OUTPUT_OPS = frozenset({"conv", "bn", "add", "mul", "scale", "maxpool", "avgpool", "linear",
                              "cat", "lrn", "global_pool", "adaptive_pool"})


@dataclass
class Src:
    """One input of a step: producer buffer ``buf``, sliced by ``slice`` (None: the whole buffer)."""

    buf: str
    slice: Region | None


@dataclass
class Step:
    """One kernel call of a part: ``node``'s op (with folded params and a fused activation)."""

    out: str  # buffer written (the last fused node's name)
    node: Node  # the node whose op this step runs
    geom: NodeGeom
    srcs: list[Src]
    pads: Pads  # geometry ops: (top, bottom, left, right) of the (single) input
    params: dict[str, Tensor] = field(default_factory=dict)
    act: Node | None = None  # activation applied to the result (fused)
    fused: list[str] = field(default_factory=list)  # names of nodes folded into this step
    free: tuple[str, ...] = ()  # buffers no longer needed after this step

    @property
    def op(self) -> str:
        return self.node.op

    @property
    def whole(self) -> bool:
        return self.geom.region is None


@dataclass
class PartProgram:
    start: str
    end: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    steps: list[Step]
    regions: dict[str, Region | None]  # buffer -> absolute region it holds (None: whole tensor)
    shapes: dict[str, tuple[int, ...]]  # buffer -> its shape
    folded_bn: list[str] = field(default_factory=list)
    fused_act: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        return [s.node for s in self.steps]

    def weights_bytes(self) -> int:
        return sum(int(t.numel() * t.element_size()) for s in self.steps for t in s.params.values())


def _is_whole_slice(sl: Region | None, shape: tuple[int, ...]) -> bool:
    if sl is None:
        return True
    if len(shape) != 4:
        return True
    return sl == (0, shape[2], 0, shape[3])


def fold_bn(w: Tensor, b: Tensor | None, st: dict[str, Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """Conv weights/bias with an inference BatchNorm folded in (float64 math, float32 result)."""
    mean = st["running_mean"].double()
    var = st["running_var"].double()
    gamma = st.get("weight")
    beta = st.get("bias")
    g = torch.ones_like(mean) if gamma is None else gamma.double()
    be = torch.zeros_like(mean) if beta is None else beta.double()
    scale = g / torch.sqrt(var + eps)
    w2 = (w.double() * scale.reshape(-1, 1, 1, 1)).to(w.dtype)
    b0 = torch.zeros_like(mean) if b is None else b.double()
    b2 = ((b0 - mean) * scale + be).to(w.dtype)
    return w2.contiguous(), b2.contiguous()


def part_program(cm: CapturedModel, geom: PartGeom, *, fold: bool = True, fuse: bool = True) -> PartProgram:
    """The optimised step list of one part (see the module docstring)."""
    g = cm.graph
    nodes = {ng.name: g[ng.name] for ng in geom.nodes}
    regions: dict[str, Region | None] = {geom.start: geom.in_region}
    shapes: dict[str, tuple[int, ...]] = {geom.start: region_shape(g[geom.start], geom.in_region)}
    for ng in geom.nodes:
        regions[ng.name] = ng.region
        shapes[ng.name] = region_shape(nodes[ng.name], ng.region)
    by_name = {ng.name: ng for ng in geom.nodes}

    def sole_reader(src: str, reader: str) -> bool:
        """``reader`` is the only consumer of ``src`` in the graph, reads it whole, and src is internal."""
        if src == geom.start or src == geom.end or src not in by_name:
            return False
        if g.consumers(src) != [reader]:
            return False
        ng = by_name[reader]
        if len(ng.edges) != 1:
            return False
        e = ng.edges[0]
        return e.src == src and not any(e.pad) and _is_whole_slice(e.slice, shapes[src])

    # 1. decide fusions: node -> the step (keyed by its first node) that absorbs it
    absorbed: dict[str, str] = {}  # fused node -> head node of its step
    head_of: dict[str, str] = {}  # buffer-producing node -> head node
    folded, fused_acts = [], []
    for ng in geom.nodes:
        n = nodes[ng.name]
        head_of[n.name] = n.name
        if not n.inputs:
            continue
        src = n.inputs[0]
        if fold and n.op == "bn" and src in nodes and nodes[src].op == "conv" and src not in absorbed \
                and head_of.get(src) == src and sole_reader(src, n.name) \
                and "weight" in cm.tensors.get(src, {}) and "running_mean" in cm.tensors.get(n.name, {}):
            absorbed[n.name] = src
            head_of[n.name] = src
            folded.append(n.name)
            continue
        if fuse and n.op == "act" and src in head_of and sole_reader(src, n.name):
            head = head_of[src]
            hn = nodes[head]
            # the head's step must write a fresh buffer and carry no activation yet
            if hn.op in FRESH_OUTPUT_OPS and not any(absorbed.get(k) == head and nodes[k].op == "act"
                                                     for k in absorbed):
                absorbed[n.name] = head
                head_of[n.name] = head
                fused_acts.append(n.name)

    # 2. steps
    steps: list[Step] = []
    step_of: dict[str, Step] = {}
    for ng in geom.nodes:
        n = nodes[ng.name]
        if n.name in absorbed:
            st = step_of[absorbed[n.name]]
            st.out = n.name
            st.fused.append(n.name)
            if n.op == "bn":
                conv_st = cm.tensors[st.node.name]
                st.params["weight"], st.params["bias"] = fold_bn(conv_st["weight"], conv_st.get("bias"),
                                                                 cm.tensors[n.name], float(n.attrs["eps"]))
            else:
                st.act = n
            step_of[n.name] = st
            continue
        srcs = [Src(e.src, None if _is_whole_slice(e.slice, shapes[e.src]) else e.slice) for e in ng.edges]
        if n.op in GEOMETRY_OPS:
            pads: Pads = tuple(n.attrs["pad"]) if ng.region is None else ng.edges[0].pad
        else:
            pads = (0, 0, 0, 0)
        params = {k: v for k, v in cm.tensors.get(n.name, {}).items() if v is not None}
        if n.op == "linear" and ng.region is not None:  # a features part: its rows of the weight matrix
            c0, c1 = ng.region[2], ng.region[3]
            # a copy, not a view: a view would keep the whole matrix alive in the worker
            params = {k: v[c0:c1].clone() for k, v in params.items()}
        st = Step(n.name, n, ng, srcs, pads, params)
        steps.append(st)
        step_of[n.name] = st

    # 3. free buffers after their last reader (never the part's output)
    free = free_after_last_read([[s.buf for s in st.srcs] for st in steps], geom.end)
    for i, st in enumerate(steps):
        st.free = free.get(i, ())
    return PartProgram(geom.start, geom.end, shapes[geom.start], shapes[geom.end] if geom.nodes else
                       shapes[geom.start], steps, regions, shapes, folded, fused_acts)


def program_summary(p: PartProgram) -> dict[str, Any]:
    return {"steps": len(p.steps), "folded_bn": len(p.folded_bn), "fused_act": len(p.fused_act)}
