"""Lower a plan to one program per device (pure data, torch-free).

A program is an ordered list of :class:`Instr`. Tensors are named by the
stage that produces them (``-1`` is the model input, held by the source):

``input``              (source) the request's input arrives
``recv  T R from D``   wait for region R of tensor T from device D
``compute S.P``        compute part P of stage S (its input region is assembled
                       from local pieces of tensor S-1)
``send  T R to D``     send region R of tensor T to device D (asynchronous)
``dyn_master S``       (source) hand out the tiles of dynamic stage S to idle
                       devices, collect their outputs
``dyn_worker S``       serve tiles of dynamic stage S until the master is done
``output``             (source) the assembled output of the last stage is the result

Halos move peer to peer: a part receives from each producer exactly the
overlap of that producer's output with the input region it needs (pieces
already on the device are not sent). ``exchange: via_source`` stages
(MoDNN) instead gather the whole input at the source, which then sends every
part its input region. Dynamic stages gather their input at the source; their
outputs are gathered there too. The simulator and the runtime execute the same
programs, so their traces line up instruction by instruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..graph.geometry import (
    PartGeom,
    Region,
    intersect,
    is_empty,
    part_geometry,
    region_bytes,
    weight_share,
)
from ..graph.ir import Graph
from .plan import INPUT_TENSOR, Plan, Whole

INPUT = INPUT_TENSOR


@dataclass(frozen=True)
class Instr:
    op: str
    tensor: int = INPUT
    region: Region | None = None
    peer: str | None = None
    part: int | None = None
    nbytes: int = 0

    def text(self, flat: bool = False) -> str:
        """One line; ``flat``: the tensor is a flat ``(N, F)`` one, its region a feature range."""
        if self.region is None:
            r = ""
        elif flat:
            r = " features[{},{})".format(*self.region[2:])
        else:
            r = " rows[{},{}) cols[{},{})".format(*self.region)
        t = "input" if self.tensor == INPUT else f"s{self.tensor}"
        if self.op == "recv":
            return f"recv    {t}{r} from {self.peer} ({self.nbytes} B)"
        if self.op == "send":
            return f"send    {t}{r} to {self.peer} ({self.nbytes} B)"
        if self.op == "compute":
            return f"compute s{self.tensor}.p{self.part}{r}"
        if self.op in ("dyn_master", "dyn_worker"):
            return f"{self.op} s{self.tensor}"
        return self.op

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "tensor": self.tensor, "region": None if self.region is None else list(self.region),
                "peer": self.peer, "part": self.part, "nbytes": self.nbytes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instr:
        reg = d.get("region")
        return cls(str(d["op"]), int(d["tensor"]), None if reg is None else tuple(int(x) for x in reg),  # type: ignore[arg-type]
                   d.get("peer"), d.get("part"), int(d.get("nbytes", 0)))


@dataclass(frozen=True)
class PartInfo:
    """What a program needs to know about one part (torch-free)."""

    stage: int
    part: int
    device: str
    in_region: Region | None
    out_region: Region | None
    flops: int
    in_bytes: int
    out_bytes: int


@dataclass(frozen=True)
class StageInfo:
    stage: int
    start: str
    end: str
    halo: str
    dynamic: bool
    devices: tuple[str, ...]  # devices taking part (dynamic: the pool that pulls tiles)
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


@dataclass
class Lowered:
    """Per-device programs plus the part table both executors need."""

    plan: Plan
    graph: Graph
    programs: dict[str, list[Instr]]
    parts: dict[tuple[int, int], PartInfo]
    stages: list[StageInfo]
    geoms: dict[tuple[int, int], PartGeom] = field(default_factory=dict)

    def text(self) -> str:
        lines = []
        flat = {INPUT: len(self.stages[0].in_shape) == 2} | {s.stage: len(s.out_shape) == 2 for s in self.stages}
        for dev, prog in self.programs.items():
            lines.append(f"== {dev} ({len(prog)} instructions)")
            lines += [f"  {i:3d}  {ins.text(flat.get(ins.tensor, False))}" for i, ins in enumerate(prog)]
        return "\n".join(lines)

    def bytes_moved(self) -> int:
        return sum(i.nbytes for prog in self.programs.values() for i in prog if i.op == "send")

    def to_dict(self) -> dict[str, Any]:
        return {"programs": {d: [i.to_dict() for i in p] for d, p in self.programs.items()}}


def _gathered(plan: Plan, t: int) -> bool:
    """Is tensor t (output of stage t) collected whole at the source?"""
    last = len(plan.stages) - 1
    if t == last:
        return True
    nxt = plan.stages[t + 1]
    return _is_dynamic(plan, t + 1) or nxt.exchange == "via_source"


def _is_dynamic(plan: Plan, s: int) -> bool:
    p = plan.stages[s].partition
    return not isinstance(p, Whole) and getattr(p, "schedule", "static") == "dynamic"


def lower(plan: Plan, graph: Graph, geoms: dict[tuple[int, int], PartGeom] | None = None) -> Lowered:
    """Lower ``plan`` (validated against ``graph``, the full model) to per-device programs."""
    g = plan.validate(graph)
    bounds = plan.stage_bounds(g)
    S = len(plan.stages)
    src = plan.source
    # part tables
    parts: dict[tuple[int, int], PartInfo] = {}
    stage_parts: list[list[tuple[int, str, Region | None, Region | None]]] = []
    geoms = dict(geoms or {})
    stages: list[StageInfo] = []
    for s, (start, end) in enumerate(bounds):
        lst = []
        for p in plan.parts(g, s):
            pg = geoms.get((s, p.index))
            if pg is None:
                pg = part_geometry(g, start, end, p.region, plan.stages[s].halo)
                geoms[(s, p.index)] = pg
            info = PartInfo(s, p.index, p.device, pg.in_region, pg.out_region, pg.flops,
                            region_bytes(g[start], pg.in_region), region_bytes(g[end], pg.out_region))
            parts[(s, p.index)] = info
            lst.append((p.index, p.device, pg.in_region, pg.out_region))
        stage_parts.append(lst)
        devs = tuple(dict.fromkeys(d for _, d, _, _ in lst))
        stages.append(StageInfo(s, start, end, plan.stages[s].halo, _is_dynamic(plan, s), devs,
                                tuple(g[start].shape), tuple(g[end].shape)))

    def node_of(t: int) -> str:
        return g.input.name if t == INPUT else bounds[t][1]

    def full_region(t: int) -> Region | None:
        n = g[node_of(t)]
        return (0, n.height, 0, n.width) if n.is_feature_map else None

    def producers(t: int) -> list[tuple[str, Region | None]]:
        if t == INPUT or _is_dynamic(plan, t):
            return [(src, full_region(t))]
        return [(d, out_r) for _, d, _, out_r in stage_parts[t]]

    def nbytes(t: int, r: Region | None) -> int:
        return region_bytes(g[node_of(t)], r)

    def overlap(a: Region | None, b: Region | None) -> Region | None | bool:
        """The piece of producer region ``a`` that a reader of ``b`` needs; False when disjoint.

        ``None`` stands for a whole tensor (a non-spatial one, or a reader that
        needs all of it).
        """
        if b is None:
            return a
        if a is None:
            return b
        x = intersect(a, b)
        return False if is_empty(x) else x

    progs: dict[str, list[Instr]] = {d: [] for d in plan.devices}

    def sends_after_compute(t: int, dev: str, out_r: Region | None) -> list[Instr]:
        """Where the piece (dev, out_r) of tensor t goes once computed."""
        out = []
        if _gathered(plan, t):
            if dev != src:
                out.append(Instr("send", t, out_r, src, None, nbytes(t, out_r)))
            return out
        seen = set()
        for _, e, in_r, _ in stage_parts[t + 1]:
            if e == dev:
                continue
            x = overlap(out_r, in_r)
            if x is False or (e, x) in seen:
                continue
            seen.add((e, x))
            out.append(Instr("send", t, x, e, None, nbytes(t, x)))  # type: ignore[arg-type]
        return out

    def recvs_before_compute(s: int, dev: str, in_r: Region | None, done: set[Any]) -> list[Instr]:
        t = s - 1
        out = []
        if plan.stages[s].exchange == "via_source":
            # the source sends each device each distinct input region once (see the stage loop)
            if dev != src and (src, in_r) not in done:
                done.add((src, in_r))
                out.append(Instr("recv", t, in_r, src, None, nbytes(t, in_r)))
            return out
        for d, out_r in producers(t):
            if d == dev:
                continue
            x = overlap(out_r, in_r)
            if x is False or (d, x) in done:
                continue
            done.add((d, x))
            out.append(Instr("recv", t, x, d, None, nbytes(t, x)))  # type: ignore[arg-type]
        return out

    # the input
    progs[src].append(Instr("input", INPUT, full_region(INPUT)))
    if not (_is_dynamic(plan, 0) or plan.stages[0].exchange == "via_source"):
        progs[src] += sends_after_compute(INPUT, src, full_region(INPUT))

    for s in range(S):
        t_in = s - 1
        # gathering the stage input at the source (dynamic / via_source stages)
        if t_in != INPUT and (_is_dynamic(plan, s) or plan.stages[s].exchange == "via_source"):
            for d, out_r in producers(t_in):
                if d != src:
                    progs[src].append(Instr("recv", t_in, out_r, d, None, nbytes(t_in, out_r)))
        if plan.stages[s].exchange == "via_source" and not _is_dynamic(plan, s):
            sent = set()
            for _, e, in_r, _ in stage_parts[s]:
                if e != src and (e, in_r) not in sent:
                    sent.add((e, in_r))
                    progs[src].append(Instr("send", t_in, in_r, e, None, nbytes(t_in, in_r)))
        if _is_dynamic(plan, s):
            progs[src].append(Instr("dyn_master", s))
            for d in stages[s].devices:
                if d != src:
                    progs[d].append(Instr("dyn_worker", s))
            if s < S - 1 and not _gathered(plan, s):
                # the outputs are at the source: forward what the next stage needs
                progs[src] += sends_after_compute(s, src, full_region(s))
            continue
        done: dict[str, set[Any]] = {d: set() for d in plan.devices}
        for idx, dev, in_r, out_r in stage_parts[s]:
            progs[dev] += recvs_before_compute(s, dev, in_r, done[dev])
            progs[dev].append(Instr("compute", s, out_r, None, idx))
            progs[dev] += sends_after_compute(s, dev, out_r)

    # the output, gathered at the source
    for d, out_r in producers(S - 1):
        if d != src:
            progs[src].append(Instr("recv", S - 1, out_r, d, None, nbytes(S - 1, out_r)))
    progs[src].append(Instr("output", S - 1, full_region(S - 1)))
    return Lowered(plan, g, {d: p for d, p in progs.items() if p}, parts, stages, geoms)


def weight_shares(lowered: Lowered, graph: Graph, device: str) -> dict[str, float]:
    """node -> the share of its weights ``device`` holds to compute its parts of ``lowered``: 1 for a
    layer it computes (rows, tiles, whole), a slice for a ``features`` part; a participant of a dynamic
    stage holds every tile's layers (it may compute any). What a worker keeps after its build, and
    what ``memory_mb`` is checked against."""
    dyn = {s.stage for s in lowered.stages if s.dynamic and device in s.devices}
    share: dict[str, float] = {}
    for (s, p), info in lowered.parts.items():
        if info.device == device or s in dyn:
            for ng in lowered.geoms[(s, p)].nodes:
                w = weight_share(graph[ng.name], ng)
                share[ng.name] = min(1.0, share.get(ng.name, 0.0) + w) if w < 1.0 else 1.0
    return share
