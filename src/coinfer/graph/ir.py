"""coinfer's graph IR: a small, torch-free description of a CNN.

A :class:`Graph` is a list of :class:`Node` in topological order. Each node has
an op kind from a closed set (:data:`OPS`), its output shape, its geometry
(kernel, stride, padding, dilation, ceil mode) where it has one, FLOPs and
parameter counts. The IR is pure data: planners, the cost model and the
simulator read it without importing torch, and it round-trips through JSON so
a laptop can plan for a cluster it is not connected to.

Cut points (:meth:`Graph.cut_points`) are nodes whose single output carries all
the state still needed downstream: a stage of a plan may end there.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import CoinferError

# Op kinds. "Spatial" ops compute an output region from a local input window,
# so they can be split by rows / tiles; the rest only run as whole stages.
GEOMETRY_OPS = frozenset({"conv", "maxpool", "avgpool", "pad"})
POINTWISE_OPS = frozenset({"bn", "act", "lrn", "add", "mul", "cat", "scale"})
GLOBAL_OPS = frozenset({"global_pool", "adaptive_pool", "flatten", "linear"})
OPS = frozenset({"input"}) | GEOMETRY_OPS | POINTWISE_OPS | GLOBAL_OPS

OUTPUT = "output"  # alias accepted for the graph's final node in plans


class GraphError(CoinferError, ValueError):
    """A graph-level error with a message that names what is wrong and the fix."""


@dataclass
class Node:
    """One operation of the graph.

    ``attrs`` holds op-specific, JSON-able fields. Geometry ops carry
    ``kernel``/``stride``/``dilation`` ([h, w]) and ``pad`` ([top, bottom,
    left, right]); pools carry ``ceil_mode``; ``avgpool`` carries
    ``count_include_pad`` and ``divisor_override``; ``pad`` carries ``value``;
    ``act`` carries ``fn`` (relu, relu6, leaky_relu, ...).
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    flops: int = 0  # 2 x multiply-accumulates of the whole output (as torch's flop counter)
    params: int = 0  # learnable parameters
    param_bytes: int = 0  # bytes of parameters and buffers the node needs
    spatial: bool = True  # computable on an output region from a local input window
    target: str = ""  # where it came from (module path or function), for messages

    @property
    def is_feature_map(self) -> bool:
        return len(self.shape) == 4

    @property
    def height(self) -> int:
        return self.shape[2] if len(self.shape) == 4 else 1

    @property
    def width(self) -> int:
        return self.shape[3] if len(self.shape) == 4 else 1

    @property
    def out_bytes(self) -> int:
        return 4 * math.prod(self.shape)

    @property
    def flops_per_pixel(self) -> float:
        """FLOPs per output spatial position (all channels); 0 for non-spatial outputs."""
        if not self.is_feature_map or self.flops == 0:
            return 0.0
        return self.flops / (self.shape[0] * self.height * self.width)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "op": self.op, "inputs": list(self.inputs),
            "shape": list(self.shape), "attrs": _encode(self.attrs), "flops": self.flops,
            "params": self.params, "param_bytes": self.param_bytes, "spatial": self.spatial,
            "target": self.target,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Node:
        return cls(
            name=d["name"], op=d["op"], inputs=tuple(d["inputs"]), shape=tuple(d["shape"]),
            attrs=_decode(d.get("attrs", {})), flops=int(d.get("flops", 0)),
            params=int(d.get("params", 0)), param_bytes=int(d.get("param_bytes", 0)),
            spatial=bool(d.get("spatial", True)), target=d.get("target", ""),
        )


@dataclass
class ExitBranch:
    """An early-exit head (BranchyNet style) attached to the output of ``attach``."""

    name: str
    attach: str
    nodes: list[Node]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "attach": self.attach, "nodes": [n.to_dict() for n in self.nodes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExitBranch:
        return cls(d["name"], d["attach"], [Node.from_dict(n) for n in d["nodes"]])


@dataclass
class Graph:
    """A captured model: nodes in topological order, the first is the input."""

    name: str
    nodes: list[Node]
    exits: dict[str, ExitBranch] = field(default_factory=dict)
    exit_of: str | None = None  # set on graphs derived by for_exit()

    def __post_init__(self) -> None:
        self._index = {n.name: i for i, n in enumerate(self.nodes)}
        if len(self._index) != len(self.nodes):
            raise GraphError("duplicate node names in graph")
        if not self.nodes or self.nodes[0].op != "input":
            raise GraphError("the first node of a graph must be its input")
        self._consumers: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                if i not in self._index or self._index[i] >= self._index[n.name]:
                    raise GraphError(f"node {n.name!r} uses {i!r}, which is not an earlier node")
                self._consumers[i].append(n.name)
        self._cuts: list[str] | None = None

    # -- access -----------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        if name == OUTPUT:
            return self.nodes[-1]
        try:
            return self.nodes[self._index[name]]
        except KeyError:
            raise GraphError(f"no node named {name!r} in {self.name}") from None

    def __contains__(self, name: object) -> bool:
        return name == OUTPUT or name in self._index

    def index(self, name: str) -> int:
        if name == OUTPUT:
            return len(self.nodes) - 1
        if name not in self._index:
            raise GraphError(f"no node named {name!r} in {self.name}")
        return self._index[name]

    def consumers(self, name: str) -> list[str]:
        return self._consumers[name]

    @property
    def input(self) -> Node:
        return self.nodes[0]

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    @property
    def flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    @property
    def params(self) -> int:
        return sum(n.params for n in self.nodes)

    @property
    def param_bytes(self) -> int:
        return sum(n.param_bytes for n in self.nodes)

    def resolve(self, name: str) -> str:
        """The node name ``name`` refers to (``"output"`` is the final node)."""
        return self.nodes[self.index(name)].name

    # -- cut points and segments -------------------------------------------
    def cut_points(self) -> list[str]:
        """Nodes (excluding the input) after which only their own output is live.

        A plan's stage may end at a cut point: its single output tensor carries
        everything the rest of the network needs.
        """
        if self._cuts is None:
            last_use = {n.name: self._index[n.name] for n in self.nodes}
            for n in self.nodes:
                for i in n.inputs:
                    last_use[i] = max(last_use[i], self._index[n.name])
            last_use[self.nodes[-1].name] = len(self.nodes)
            live = 0
            cuts = []
            for idx, n in enumerate(self.nodes):
                if last_use[n.name] > idx:
                    live += 1  # produced and needed later
                for i in set(n.inputs):
                    if last_use[i] == idx:
                        live -= 1
                if idx > 0 and live == 1 and last_use[n.name] > idx:
                    cuts.append(n.name)
            self._cuts = cuts
        return list(self._cuts)

    def is_cut_point(self, name: str) -> bool:
        return self.resolve(name) in set(self.cut_points())

    def segment(self, start: str, end: str) -> list[Node]:
        """Nodes strictly after cut point ``start`` (or the input) up to and including ``end``."""
        a, b = self.index(start), self.index(end)
        if b <= a:
            raise GraphError(f"segment end {end!r} is not after its start {start!r}")
        return self.nodes[a + 1 : b + 1]

    def segment_is_spatial(self, start: str, end: str) -> bool:
        """True when every node of the segment can be computed on a region (rows / tiles)."""
        end_node = self[end]
        return end_node.is_feature_map and all(n.spatial for n in self.segment(start, end))

    def splittable_cuts(self) -> dict[str, bool]:
        """For each cut point: can the stage ending there be split (rows / grid)?

        False once a global pooling / flatten / linear has happened, as the
        plan contract says; a stage is split only if all its nodes are spatial.
        """
        out: dict[str, bool] = {}
        seen_global = False
        prev = self.input.name
        for c in self.cut_points():
            seen_global = seen_global or not all(n.spatial for n in self.segment(prev, c))
            out[c] = not seen_global and self[c].is_feature_map
            prev = c
        return out

    # -- exits --------------------------------------------------------------
    def for_exit(self, exit_name: str | None) -> Graph:
        """The graph that ends at early exit ``exit_name`` (``None``/``"final"``: self)."""
        if exit_name in (None, "final"):
            return self
        if exit_name not in self.exits:
            known = ", ".join(self.exits) or "none"
            raise GraphError(
                f"model {self.name} has no exit {exit_name!r}; its exits: {known} "
                f"(or null for the final output)"
            )
        br = self.exits[exit_name]
        cut = self.index(br.attach)
        return Graph(self.name, self.nodes[: cut + 1] + list(br.nodes), {}, exit_of=exit_name)

    # -- identity -----------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 of the structure (ops, wiring, shapes, attributes), not of the weights."""
        body = [
            [n.name, n.op, list(n.inputs), list(n.shape), _encode(n.attrs)] for n in self.nodes
        ]
        exits = {k: [[n.name, n.op, list(n.inputs), list(n.shape)] for n in v.nodes]
                 for k, v in sorted(self.exits.items())}
        blob = json.dumps({"nodes": body, "exits": exits}, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()

    # -- serialisation --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "coinfer.graph/1", "name": self.name,
            "nodes": [n.to_dict() for n in self.nodes],
            "exits": {k: v.to_dict() for k, v in self.exits.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Graph:
        if d.get("format") != "coinfer.graph/1":
            raise GraphError(f"not a coinfer.graph/1 document (format={d.get('format')!r})")
        return cls(
            d["name"], [Node.from_dict(n) for n in d["nodes"]],
            {k: ExitBranch.from_dict(v) for k, v in d.get("exits", {}).items()},
        )

    def summary(self) -> dict[str, Any]:
        """The ``coinfer inspect --json`` object (DESIGN.md contract)."""
        split = self.splittable_cuts()
        return {
            "model": self.name,
            "input_shape": list(self.input_shape),
            "fingerprint": self.fingerprint(),
            "flops": self.flops,
            "params": self.params,
            "nodes": [
                {"name": n.name, "op": n.op, "out_shape": list(n.shape), "flops": n.flops}
                for n in self.nodes
            ],
            "cut_points": [
                {"name": c, "out_shape": list(self[c].shape), "splittable": split[c]}
                for c in self.cut_points()
            ],
            "exits": {k: {"attach": v.attach, "flops": sum(n.flops for n in v.nodes)}
                      for k, v in self.exits.items()},
        }


def _encode(v: Any) -> Any:
    """JSON-safe encoding of attrs: non-finite floats become strings."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    return v


def _decode(v: Any) -> Any:
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    if isinstance(v, dict):
        return {k: _decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode(x) for x in v]
    return v


def total(nodes: Iterable[Node], attr: str) -> int:
    return sum(int(getattr(n, attr)) for n in nodes)
