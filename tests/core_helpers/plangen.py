"""Random plans for property tests, and invariant checks of lowered programs.

The generators take a hypothesis ``draw`` so failures shrink to small plans;
plans are built as :class:`coinfer.plan.Plan` objects (not JSON) and cover:
random stage boundaries among cut points, whole / rows / grid stages, 1..6
devices, 1-row (1-column) slivers, parts touching the image borders, random
device assignment, and (rarely) dynamic schedules and via-source exchanges.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st

from coinfer.graph.geometry import features_layer, region_bytes
from coinfer.graph.ir import OUTPUT, Graph
from coinfer.plan.lower import INPUT, Lowered
from coinfer.plan.plan import (
    FeaturePart,
    Features,
    Grid,
    ModelRef,
    Plan,
    RowPart,
    Rows,
    Stage,
    StrategyRef,
    Whole,
)

Draw = Callable[[st.SearchStrategy[Any]], Any]
DEVICE_NAMES = ("d0", "d1", "d2", "d3", "d4", "d5")


def boundaries(draw: Draw, size: int, max_parts: int) -> list[int]:
    """Strictly increasing 0 = b0 < ... < bk = size with 1 <= k <= max_parts.

    Biased towards slivers: boundaries at 1 and size-1 (1-row parts touching
    the image border) and pairs of adjacent boundaries (1-row parts inside).
    """
    k = draw(st.integers(1, max(1, min(max_parts, size))))
    if k == 1:
        return [0, size]
    inner: set[int] = set()
    style = draw(st.sampled_from(["random", "even", "slivers"]))
    if style == "even":
        inner = {round(i * size / k) for i in range(1, k)}
    elif style == "slivers":
        cands = [1, size - 1]
        b = draw(st.integers(1, size - 1))
        cands += [b, min(b + 1, size - 1)]
        inner = set(draw(st.lists(st.sampled_from(cands), min_size=1, max_size=k - 1)))
    while len(inner) < k - 1:
        inner.add(draw(st.integers(1, size - 1)))
    inner.discard(0)
    inner.discard(size)
    return [0, *sorted(inner), size]


def stage_is_splittable(g: Graph, start: str, end: str) -> bool:
    return g.splittable_cuts().get(end, False) and g.segment_is_spatial(start, end)


@st.composite
def random_plan(draw: Draw, g: Graph, *, max_stages: int = 5, max_parts: int = 6,
                max_tiles: int = 9, allow_zero: bool = False, allow_dynamic: bool = True,
                final_whole: bool = True, require_split: bool = True,
                model_name: str | None = None) -> Plan:
    """A valid random plan over ``g``.

    With ``require_split`` (default) at least one stage is split by rows or grid
    (when the model has a splittable cut point), so that small example counts
    still exercise partitioned execution.
    """
    ndev = draw(st.integers(1, len(DEVICE_NAMES)))
    devices = list(DEVICE_NAMES[:ndev])
    if draw(st.booleans()):
        devices = draw(st.permutations(devices))
    source = draw(st.sampled_from(devices))
    cuts = g.cut_points()
    out = g.output.name
    inner_cuts = [c for c in cuts if c != out]
    n_inner = draw(st.integers(0, min(max_stages - 1, len(inner_cuts))))
    # bias boundaries towards splittable cut points so that split stages are frequent
    chosen = sorted(set(draw(st.lists(st.sampled_from(inner_cuts), min_size=n_inner, max_size=n_inner)))
                    if inner_cuts and n_inner else set(), key=g.index)
    forced = None
    splittable = [c for c, ok in g.splittable_cuts().items() if ok and not (c == out and final_whole)]
    if require_split and splittable:
        forced = draw(st.sampled_from(splittable))
        if forced != out:
            chosen = sorted(set(chosen) | {forced}, key=g.index)
    ends = [*chosen, out]
    dev = st.sampled_from(devices)
    stages: list[Stage] = []
    prev = g.input.name
    for i, end in enumerate(ends):
        until = OUTPUT if end == out and draw(st.booleans()) else end
        last = i == len(ends) - 1
        node = g[end]
        kinds = ["whole"]
        if stage_is_splittable(g, prev, end) and not (last and final_whole):
            kinds += ["rows", "rows", "grid", "grid"]
        elif features_layer(g, prev, end)[0] is not None:
            kinds += ["features"]
        kind = draw(st.sampled_from(kinds[1:] if end == forced else kinds))
        halo = "zero" if allow_zero and kind != "whole" and draw(st.booleans()) else "exact"
        schedule = "dynamic" if allow_dynamic and kind != "whole" and draw(st.integers(0, 7)) == 0 else "static"
        exchange = "via_source" if allow_dynamic and kind != "features" and draw(st.integers(0, 7)) == 0 \
            else "direct"
        if kind == "features":
            halo = "exact"
            b = boundaries(draw, node.shape[1], max_parts)
            part: Any = Features(tuple(FeaturePart(draw(dev), (a, c)) for a, c in itertools.pairwise(b)))
        elif kind == "whole":
            part = Whole(draw(dev))
        elif kind == "rows":
            b = boundaries(draw, node.height, max_parts)
            part = Rows(tuple(RowPart(draw(dev), (a, c)) for a, c in itertools.pairwise(b)), schedule)
        else:
            nr = draw(st.integers(1, min(3, node.height)))
            nc = draw(st.integers(1, max(1, min(3, node.width, max_tiles // nr))))
            rb = boundaries(draw, node.height, nr)
            cb = boundaries(draw, node.width, nc)
            devs = tuple(tuple(draw(dev) for _ in cb[1:]) for _ in rb[1:])
            part = Grid(tuple(rb), tuple(cb), devs, schedule)
        stages.append(Stage(until, part, halo if kind != "whole" else "exact", exchange))
        prev = end
    return Plan(ModelRef(model_name or g.name, tuple(g.input_shape), g.fingerprint()), devices, source,
                stages, StrategyRef("random", {}))


# --------------------------------------------------------------------------- lowering checks


class _Held:
    """Which pixels of which tensors a device holds (boolean masks; None: a whole non-spatial tensor)."""

    def __init__(self, shapes: dict[int, tuple[int, ...]]) -> None:
        self.shapes = shapes
        self.masks: dict[int, Any] = {}

    def _mask(self, t: int) -> Any:
        if t not in self.masks:
            sh = self.shapes[t]
            self.masks[t] = np.zeros(sh[2:], bool) if len(sh) == 4 else \
                np.zeros((1, sh[1]) if len(sh) == 2 else (1, 1), bool)  # flat: feature ranges
        return self.masks[t]

    def add(self, t: int, r: tuple[int, int, int, int] | None) -> None:
        m = self._mask(t)
        if r is None:
            m[...] = True
        else:
            m[r[0]:r[1], r[2]:r[3]] = True

    def has(self, t: int, r: tuple[int, int, int, int] | None) -> bool:
        m = self._mask(t)
        return bool(m.all() if r is None else m[r[0]:r[1], r[2]:r[3]].all())


def check_lowered(low: Lowered) -> None:
    """Invariants of lowered per-device programs (raises AssertionError with details).

    * every recv has exactly one matching send (same tensor, region, reversed peers), no duplicates;
    * nbytes of every transfer equal the region's bytes; sent and received totals match;
    * walking each program in order, a device only sends data it holds, and every compute finds
      its whole input region held locally (so each part's recvs precede its compute);
    * the source ends with the full output.
    """
    g, plan = low.graph, low.plan
    bounds = plan.stage_bounds(g)
    node_of = {INPUT: g.input.name, **{s: e for s, (_, e) in enumerate(bounds)}}
    shapes = {t: tuple(g[n].shape) for t, n in node_of.items()}
    sends: dict[tuple[str, str, int, Any], int] = {}
    recvs: dict[tuple[str, str, int, Any], int] = {}
    for dev, prog in low.programs.items():
        for ins in prog:
            if ins.op in ("send", "recv"):
                assert ins.peer is not None and ins.peer != dev, f"{dev}: {ins.text()} to itself"
                assert ins.peer in plan.devices, ins.text()
                want = region_bytes(g[node_of[ins.tensor]], ins.region)
                assert ins.nbytes == want, f"{dev}: {ins.text()} has {ins.nbytes} B, region holds {want} B"
                key = (dev, ins.peer, ins.tensor, ins.region) if ins.op == "send" else \
                    (ins.peer, dev, ins.tensor, ins.region)
                book = sends if ins.op == "send" else recvs
                book[key] = book.get(key, 0) + 1
    for k, n in recvs.items():
        assert n == 1, f"recv {k} appears {n} times"
        assert sends.get(k) == 1, f"recv {k} has {sends.get(k, 0)} matching sends"
    for k, n in sends.items():
        assert n == 1 and k in recvs, f"send {k} has no matching recv"
    total_sent = sum(i.nbytes for p in low.programs.values() for i in p if i.op == "send")
    total_recv = sum(i.nbytes for p in low.programs.values() for i in p if i.op == "recv")
    assert total_sent == total_recv == low.bytes_moved()

    # data-flow walk: a send needs data held; a compute needs its input region held
    held = {d: _Held(shapes) for d in low.programs}
    dyn_pool = {s.stage: set(s.devices) for s in low.stages if s.dynamic}
    # parts by (stage, part): PartInfo
    pending = {d: list(p) for d, p in low.programs.items()}
    pos = {d: 0 for d in pending}
    # simple scheduler: run instructions in order per device; a recv may run only once
    # the matching send has run; iterate until no progress.
    sent: set[tuple[str, str, int, Any]] = set()
    dyn_done: set[int] = set()
    progress = True
    while progress:
        progress = False
        for d, prog in pending.items():
            while pos[d] < len(prog):
                ins = prog[pos[d]]
                if ins.op == "input":
                    held[d].add(INPUT, ins.region)
                elif ins.op == "send":
                    assert held[d].has(ins.tensor, ins.region), f"{d} sends {ins.text()} it does not hold"
                    sent.add((d, ins.peer, ins.tensor, ins.region))  # type: ignore[arg-type]
                elif ins.op == "recv":
                    if (ins.peer, d, ins.tensor, ins.region) not in sent:
                        break  # wait for the sender
                    held[d].add(ins.tensor, ins.region)
                elif ins.op == "compute":
                    info = low.parts[(ins.tensor, ins.part)]  # type: ignore[index]
                    assert info.device == d, f"{d} computes part {info} of another device"
                    assert held[d].has(ins.tensor - 1, info.in_region), (
                        f"{d} computes s{ins.tensor}.p{ins.part} without its input region "
                        f"{info.in_region} of tensor {ins.tensor - 1}")
                    assert ins.region == info.out_region
                    held[d].add(ins.tensor, info.out_region)
                elif ins.op == "dyn_master":
                    s = ins.tensor
                    assert held[d].has(s - 1, None if len(shapes[s - 1]) != 4 else
                                       (0, shapes[s - 1][2], 0, shapes[s - 1][3]))
                    held[d].add(s, None)
                    dyn_done.add(s)
                elif ins.op == "dyn_worker":
                    assert d in dyn_pool.get(ins.tensor, set())
                elif ins.op == "output":
                    assert d == plan.source
                    last = len(plan.stages) - 1
                    assert ins.tensor == last
                    assert held[d].has(last, None), "the source does not hold the whole output"
                else:  # pragma: no cover
                    raise AssertionError(f"unknown instruction {ins.op}")
                pos[d] += 1
                progress = True
    stuck = {d: prog[pos[d]].text() for d, prog in pending.items() if pos[d] < len(prog)}
    assert not stuck, f"programs deadlock at {stuck}"
    # every static part is computed exactly once, on its device
    computed = [(i.tensor, i.part) for p in low.programs.values() for i in p if i.op == "compute"]
    assert len(computed) == len(set(computed))
    static = {k for k, v in low.parts.items() if not low.stages[v.stage].dynamic}
    assert set(computed) == static
    assert low.programs[plan.source][-1].op == "output"
