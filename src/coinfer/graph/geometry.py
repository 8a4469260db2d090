"""Receptive-field arithmetic: which input region a part of a stage needs.

Torch-free. A *region* is ``(r0, r1, c0, c1)``, half-open rows and columns in
a tensor's own coordinates. For a stage (the nodes between two cut points) and
an output region, :func:`part_geometry` computes, for every node of the stage,
the region it must compute and, for every edge, which slice of the producer's
buffer it reads and how much padding surrounds it. The executor (``execute``)
follows that recipe with torch; the cost model reads its FLOPs.

Two halo modes:

``exact``
    every node computes what its consumers need (overlapping halos computed
    redundantly, as DeepThings' fused tiles); positions outside the *image*
    get the op's own padding. The result equals the unpartitioned model.
``zero``
    ADCNN's FDSP: each node computes only the part's *own* share of its output
    (the output boundaries mapped proportionally onto every feature map), and
    whatever lies outside that share is treated as outside the image — zero
    padding for convolutions, ``-inf`` for max pooling. No halo data moves;
    the result is approximate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ir import GEOMETRY_OPS, Graph, GraphError, Node

Region = tuple[int, int, int, int]
Pads = tuple[int, int, int, int]  # top, bottom, left, right

HALO_MODES = ("exact", "zero")


def area(r: Region) -> int:
    return max(0, r[1] - r[0]) * max(0, r[3] - r[2])


def intersect(a: Region, b: Region) -> Region:
    return (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]))


def union(a: Region | None, b: Region) -> Region:
    if a is None:
        return b
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def is_empty(r: Region) -> bool:
    return r[1] <= r[0] or r[3] <= r[2]


def contains(outer: Region, inner: Region) -> bool:
    return outer[0] <= inner[0] and inner[1] <= outer[1] and outer[2] <= inner[2] and inner[3] <= outer[3]


def full(node: Node) -> Region:
    return (0, node.height, 0, node.width)


def shift(r: Region, origin: Region) -> Region:
    """``r`` expressed relative to the top-left corner of ``origin``."""
    return (r[0] - origin[0], r[1] - origin[0], r[2] - origin[2], r[3] - origin[2])


def _axis_need(o0: int, o1: int, k: int, s: int, d: int, p: int) -> tuple[int, int]:
    return o0 * s - p, (o1 - 1) * s - p + d * (k - 1) + 1


def needed_input(node: Node, region: Region) -> Region:
    """Input region (unclipped; may extend beyond the image) that computes ``region`` of ``node``."""
    if node.op not in GEOMETRY_OPS:
        return region
    a = node.attrs
    kh, kw = a.get("kernel", (1, 1))
    sh, sw = a.get("stride", (1, 1))
    dh, dw = a.get("dilation", (1, 1))
    t, _b, l, _r = a["pad"]
    r0, r1 = _axis_need(region[0], region[1], kh, sh, dh, t)
    c0, c1 = _axis_need(region[2], region[3], kw, sw, dw, l)
    return (r0, r1, c0, c1)


def map_boundary(b: int, size_from: int, size_to: int) -> int:
    """Map a tile boundary between feature maps of different sizes (rounding half up)."""
    return (2 * b * size_to + size_from) // (2 * size_from)


def map_region(r: Region, src: Node, dst: Node) -> Region:
    return (
        map_boundary(r[0], src.height, dst.height), map_boundary(r[1], src.height, dst.height),
        map_boundary(r[2], src.width, dst.width), map_boundary(r[3], src.width, dst.width),
    )


@dataclass(frozen=True)
class EdgeGeom:
    """How a node reads one input: a slice of the producer's buffer plus padding."""

    src: str
    slice: Region | None  # relative to the producer buffer's origin; None: the whole tensor
    pad: Pads = (0, 0, 0, 0)


@dataclass(frozen=True)
class NodeGeom:
    name: str
    region: Region | None  # absolute output region this part computes; None: whole tensor
    edges: tuple[EdgeGeom, ...]
    # avgpool only: per-output-row and per-output-column counts of the positions
    # that enter the divisor (None when every window divides by kh*kw).
    pool_counts: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    flops: int = 0


@dataclass
class PartGeom:
    """Everything needed to compute one part of one stage, in execution order."""

    start: str  # the stage's input node (a cut point or the graph input)
    end: str  # the stage's output node
    halo: str
    out_region: Region | None
    in_region: Region | None  # region of the stage input the part needs (absolute)
    nodes: list[NodeGeom]
    free_after: dict[int, tuple[str, ...]] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    def in_shape(self, graph: Graph) -> tuple[int, ...]:
        return region_shape(graph[self.start], self.in_region)

    def out_shape(self, graph: Graph) -> tuple[int, ...]:
        return region_shape(graph[self.end], self.out_region)


def region_shape(node: Node, region: Region | None) -> tuple[int, ...]:
    if region is None:
        return tuple(node.shape)
    if not node.is_feature_map:
        if len(node.shape) == 2:  # a feature range [c0, c1) of a flat (N, F) tensor
            return (node.shape[0], region[3] - region[2])
        return tuple(node.shape)
    return (node.shape[0], node.shape[1], region[1] - region[0], region[3] - region[2])


def feature_region(c0: int, c1: int) -> Region:
    """The region of a flat ``(N, F)`` tensor holding features ``[c0, c1)`` (a ``features`` part)."""
    return (0, 1, c0, c1)


FEATURE_SUFFIX_OPS = frozenset({"act"})  # element-wise ops that may follow the split linear layer


def features_layer(graph: Graph, start: str, end: str) -> tuple[str | None, str]:
    """The linear layer a ``features`` partition of stage (start, end] splits, or (None, why not).

    A stage can be split by output features (MoDNN's partition of fully connected
    layers) when its output is flat ``(N, F)`` and it computes exactly one linear
    layer followed only by element-wise activations: every part then needs the
    whole stage input, computes the rows ``[c0, c1)`` of the weight matrix, and
    its outputs concatenate to the stage output exactly. Nodes before the linear
    layer (a flatten, a global pooling — not spatial ones) are computed by every part.
    """
    start, end = graph.resolve(start), graph.resolve(end)
    if len(graph[end].shape) != 2:
        return None, f"its output {end} is not a flat (N, F) tensor"
    nodes = stage_nodes(graph, start, end)
    lin = [n for n in nodes if n.op == "linear"]
    if len(lin) != 1:
        return None, (f"it has {len(lin)} linear layers; end the stage right after one linear layer "
                      f"(and its activation)")
    before = nodes[:nodes.index(lin[0])]
    spatial = [n for n in before if n.spatial]
    if spatial:
        return None, (f"it computes {spatial[-1].name} ({spatial[-1].op}), which every part would repeat, "
                      f"before the linear layer; start the stage after the last splittable cut point")
    after = nodes[nodes.index(lin[0]) + 1:]
    prev = lin[0].name
    for n in after:
        if n.op not in FEATURE_SUFFIX_OPS or list(n.inputs) != [prev]:
            return None, (f"{n.name} ({n.op}) follows the linear layer {lin[0].name}; only element-wise "
                          f"activations may; end the stage at {prev}")
        prev = n.name
    return lin[0].name, ""


def weight_share(node: Node, ng: NodeGeom) -> float:
    """The share of ``node``'s parameters a part computing ``ng`` needs (a features part: its rows)."""
    if node.op == "linear" and ng.region is not None and len(node.shape) == 2:
        return (ng.region[3] - ng.region[2]) / node.shape[1]
    return 1.0


def _features_geometry(graph: Graph, start: str, end: str, nodes: list[Node], out_region: Region) -> PartGeom:
    lin, why = features_layer(graph, start, end)
    if lin is None:
        raise GraphError(f"stage ({start}, {end}] cannot be split by features: {why}")
    F = graph[end].shape[1]
    c0, c1 = out_region[2], out_region[3]
    if out_region[:2] != (0, 1) or not 0 <= c0 < c1 <= F:
        raise GraphError(f"features [{c0},{c1}) of {end} are empty or outside 0..{F}")
    geoms: list[NodeGeom] = []
    split = False
    for n in nodes:
        split = split or n.name == lin
        r = out_region if split else None
        fl = round(n.flops * (c1 - c0) / F) if split else n.flops
        geoms.append(NodeGeom(n.name, r, tuple(EdgeGeom(i, None) for i in n.inputs), None, fl))
    return PartGeom(start, end, "exact", out_region, None, geoms,
                    free_after_last_read([[e.src for e in ng.edges] for ng in geoms], end))


def free_after_last_read(reads: list[list[str]], keep: str) -> dict[int, tuple[str, ...]]:
    """Step index -> the buffers read for the last time at that step (``reads[i]``: what step i
    reads), except ``keep`` (a part's output). Shared by the geometry and the part program."""
    last: dict[str, int] = {}
    for idx, bufs in enumerate(reads):
        for b in bufs:
            last[b] = idx
    free: dict[int, list[str]] = {}
    for name, idx in last.items():
        if name != keep:
            free.setdefault(idx, []).append(name)
    return {k: tuple(v) for k, v in free.items()}


def region_bytes(node: Node, region: Region | None, itemsize: int = 4) -> int:
    n = 1
    for d in region_shape(node, region):
        n *= d
    return n * itemsize


def _pads(need: Region, avail: Region) -> Pads:
    return (avail[0] - need[0], need[1] - avail[1], avail[2] - need[2], need[3] - avail[3])


def _require(need: Region, node: Node) -> Region:
    """The region of ``node`` to compute for a reader that needs ``need`` (unclipped).

    Along an axis where the need lies wholly in padding, one real row/column is
    kept so the reader can still slice an (empty) piece of the buffer.
    """
    r0, r1, c0, c1 = intersect(need, full(node))
    if r1 <= r0:
        r0 = min(max(need[0], 0), node.height - 1)
        r1 = r0 + 1
    if c1 <= c0:
        c0 = min(max(need[2], 0), node.width - 1)
        c1 = c0 + 1
    return (r0, r1, c0, c1)


def _pool_counts(node: Node, region: Region, valid: Region) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    a = node.attrs
    kh, kw = a["kernel"]
    sh, sw = a["stride"]
    t, b, l, r = a["pad"]
    if a.get("divisor_override"):
        dv = int(a["divisor_override"])
        rows = tuple([dv] * (region[1] - region[0]))
        return rows, tuple([1] * (region[3] - region[2]))
    inc = a.get("count_include_pad", True)
    lo_r, hi_r = (valid[0] - t, valid[1] + b) if inc else (valid[0], valid[1])
    lo_c, hi_c = (valid[2] - l, valid[3] + r) if inc else (valid[2], valid[3])

    def counts(o0: int, o1: int, k: int, s: int, p: int, lo: int, hi: int) -> tuple[int, ...]:
        out = []
        for o in range(o0, o1):
            w0 = o * s - p
            out.append(max(0, min(w0 + k, hi) - max(w0, lo)))
        return tuple(out)

    rows = counts(region[0], region[1], kh, sh, t, lo_r, hi_r)
    cols = counts(region[2], region[3], kw, sw, l, lo_c, hi_c)
    if all(c == kh for c in rows) and all(c == kw for c in cols):
        return None
    return rows, cols


def stage_nodes(graph: Graph, start: str, end: str) -> list[Node]:
    """Nodes of the stage (start, end] that contribute to ``end``'s output."""
    seg = graph.segment(start, end)
    names = {n.name for n in seg}
    needed = {graph.resolve(end)}
    for n in reversed(seg):
        if n.name in needed:
            needed.update(i for i in n.inputs if i in names)
    return [n for n in seg if n.name in needed]


def part_geometry(graph: Graph, start: str, end: str, out_region: Region | None, halo: str = "exact") -> PartGeom:
    """Compute regions, slices and paddings for one part of stage (start, end].

    ``out_region=None`` means the whole output (required for stages that are
    not spatial). Raises :class:`GraphError` with the fix when the region is
    invalid or (``zero`` halo) too fine for an intermediate feature map.
    """
    if halo not in HALO_MODES:
        raise GraphError(f"unknown halo mode {halo!r}; use one of {', '.join(HALO_MODES)}")
    start, end = graph.resolve(start), graph.resolve(end)
    nodes = stage_nodes(graph, start, end)
    end_node = graph[end]
    spatial = graph.segment_is_spatial(start, end)
    if out_region is not None and not spatial and end_node.is_feature_map and out_region == full(end_node):
        out_region = None  # a whole partition of a non-spatial stage ending at a feature map
    if out_region is not None and len(end_node.shape) == 2:
        if out_region == feature_region(0, end_node.shape[1]):
            out_region = None  # all the features: the whole stage
        elif features_layer(graph, start, end)[0] is not None:
            return _features_geometry(graph, start, end, nodes, out_region)
    if out_region is not None and not spatial:
        raise GraphError(
            f"stage ({start}, {end}] is not splittable (it contains global pooling, flatten, "
            f"linear or a non-local op); give it a whole partition"
        )
    if out_region is None and spatial:
        out_region = full(end_node)
    if out_region is not None and (is_empty(out_region) or not contains(full(end_node), out_region)):
        raise GraphError(
            f"region rows [{out_region[0]},{out_region[1]}) cols [{out_region[2]},{out_region[3]}) "
            f"is empty or outside {end}'s output {end_node.height}x{end_node.width}"
        )

    # 1. the region each node computes, and the extent of valid data it holds
    regions: dict[str, Region | None] = {}
    valid: dict[str, Region | None] = {}
    involved = [graph[start]] + nodes
    if out_region is None:
        for n in involved:
            regions[n.name] = None
            valid[n.name] = full(n) if n.is_feature_map else None
    elif halo == "exact":
        req: dict[str, Region] = {end: out_region}
        for n in reversed(nodes):
            clipped = intersect(req[n.name], full(n))
            req[n.name] = clipped
            for i in n.inputs:
                req[i] = union(req.get(i), _require(needed_input(n, clipped), graph[i]))
        for n in involved:
            regions[n.name] = req[n.name]
            valid[n.name] = full(n)
    else:  # zero halo: every node owns the proportional share of the output tile
        for n in involved:
            own = map_region(out_region, end_node, n)
            if is_empty(own):
                raise GraphError(
                    f"tile rows [{out_region[0]},{out_region[1]}) cols [{out_region[2]},{out_region[3]}) "
                    f"of {end} maps to an empty region of {n.name} ({n.height}x{n.width}): the grid is "
                    f"finer than that feature map; use fewer rows/cols"
                )
            regions[n.name] = own
            valid[n.name] = own

    # 2. per node: edges (slices into producer buffers + padding), flops
    geoms: list[NodeGeom] = []
    for n in nodes:
        r = regions[n.name]
        edges = []
        for i in n.inputs:
            src = graph[i]
            rs = regions[i]
            if r is None or rs is None:
                edges.append(EdgeGeom(i, None))
                continue
            need = needed_input(n, r)
            vs = valid[i]
            assert vs is not None
            avail = intersect(need, vs)
            sl, pads = shift(avail, rs), _pads(need, avail)
            if avail[1] <= avail[0]:  # the reader sees only padding along rows
                sl, pads = (0, 0, sl[2], sl[3]), (need[1] - need[0], 0, pads[2], pads[3])
            if avail[3] <= avail[2]:
                sl, pads = (sl[0], sl[1], 0, 0), (pads[0], pads[1], need[3] - need[2], 0)
            elif not contains(rs, avail):  # pragma: no cover - guarded by construction
                raise GraphError(f"internal: {n.name} reads outside what {src.name} computed")
            edges.append(EdgeGeom(i, sl, pads))
        counts = None
        if n.op == "avgpool" and r is not None:
            counts = _pool_counts(n, r, valid[n.inputs[0]] or full(graph[n.inputs[0]]))
        fl = n.flops if r is None else round(n.flops_per_pixel * area(r) * n.shape[0])
        geoms.append(NodeGeom(n.name, r, tuple(edges), counts, fl))

    # 3. free buffers after their last use inside the part
    return PartGeom(start, end, halo, regions[end], regions[start], geoms,
                    free_after_last_read([[e.src for e in ng.edges] for ng in geoms], end))


def halo_rows(graph: Graph, start: str, end: str, out_region: Region) -> int:
    """Extra input rows (beyond a proportional share) an exact part reads: a quick halo size."""
    g = part_geometry(graph, start, end, out_region, "exact")
    assert g.in_region is not None
    own = map_region(out_region, graph[end], graph[start])
    return (own[0] - g.in_region[0]) + (g.in_region[1] - own[1])
