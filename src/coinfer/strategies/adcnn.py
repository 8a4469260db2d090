"""``adcnn``: ADCNN's fully decomposable spatial partition (Zhang, Lin & Zhang, ICPP 2020).

PAPERS.md §4. Three ingredients, each a plan field the runtime already
executes:

* **FDSP** (§3 of the paper): the conv part of the model is cut into an
  R×C grid of tiles, each computed as an *independent, zero-padded image*
  (``halo: zero`` — no data moves between tiles, the result is approximate);
  the source (the paper's central node) gathers the tile outputs and runs
  the rest of the model whole. The accuracy lost at tile borders is
  recovered by fine-tuning with the same tiling in the loop
  (``coinfer train fdsp``, :mod:`coinfer.train.fdsp`).
* **Compression** (§4): tile outputs pass a clipped ReLU, are quantised to
  4 bits and run-length coded (``wire: {codec: raw, quant: int4}``); 8-bit
  and lossless lz4/zstd are the alternatives (``--param wire=...``).
* **Adaptive scheduling** (§5): ``schedule: dynamic`` with the runtime's
  ``adcnn`` tile scheduler (:class:`coinfer.runtime.schedulers.AdcnnScheduler`):
  running rates ``s_k <- (1-γ)s_k + γ·(results within T_L)``, each tile to
  the device that least increases ``max_k x_k/s_k``; optionally a deadline
  after which late tiles are zero-filled (off by default).

Parameters (``--param key=value``):

``grid``      ``RxC`` (e.g. ``4x4``) or ``auto`` (default): the grid with the
              lowest simulated latency among the squares 2x2 … 8x8 (the paper
              uses 8x8 for VGG-16 / ResNet-34 and 4x4 for YOLO) and, our
              addition, the grids of exactly one tile per pool device (7
              workers: 7x1; 8: 8x1, 4x2 — :func:`auto_grids`); one with more
              tiles only when ≥ :data:`FINER_GRID_MARGIN` faster.
``until``     cut point ending the FDSP stage; default: the last splittable
              cut point whose feature map has at least R rows and C columns
              ("the conv part"). A grid finer than the feature map is an error.
``head``      cut point up to which the source computes whole before the
              tiles; ``auto`` (default) = ``input``: the tiles start at the
              image, as in the paper (the central node cuts the *input* into
              tiles). The plan's one wire codec applies to every transfer, so
              with ``wire=int4`` the image tiles are 4-bit quantised too
              (symmetric, 15 levels: they are signed after normalisation);
              fine-tuning has that quantiser in its loop. ``act`` starts the
              tiles after the first activation (the source computes the first
              conv, and only non-negative feature maps are quantised) — it
              keeps the image exact but moves 10-20x more bytes (e.g. VGG-16:
              64x224x224 instead of 3x224x224) and costs the source the codec
              time of all of it: 1.1-1.2x slower in simulation on eq8, which
              does not count codec time (docs/strategies/adcnn.md). Or a cut
              point name.
``tail``      device running the rest of the model after the tiles: ``auto``
              (default) is the source — the paper's central node — when the
              wire is quantised (the output would otherwise come back
              quantised), else the device that finishes the rest first,
              counting the transfers there and back; ``source``, or a device
              name (the model output then crosses the wire codec).
``wire``      ``int4`` (default: 4 bit + RLE), ``int8``, ``raw``, ``lz4``,
              ``zstd``, or ``<quant>+<codec>`` such as ``int4+zstd``.
``lossless``  ``true`` forbids quantised wires (``wire=int4`` then is an error).
``fc_split``  unset (default): the tail's big linear layers are split by
              output features over the plan's devices when that simulates
              faster (MoDNN's FC partition, ``features.py``); ``false``
              keeps the paper's whole tail, ``true`` always splits.
``pool``      ``all`` (every device computes tiles, the source too),
              ``workers`` (the source only scatters, gathers and runs the
              head and tail, as ADCNN's central node) or ``auto`` (default:
              the faster of the two in simulation).
``depth``     tiles a device may hold at once (the paper's node storage);
              default ``auto``: the lowest simulated latency among 1, 2, 4
              and all tiles (ties go to the smaller, more adaptive depth). ``gamma`` (0.9) and ``window_ms`` (T_L; default
              max(30 ms, 2x the fastest device's predicted tile time) — the
              paper's 30 ms assumes its Pi tiles) tune the rate estimate.
``tile_deadline_ms``  zero-fill tiles later than this after the stage starts
              (default: none).

Torch-free: planning reads the graph, the cost model and the simulator.
"""

from __future__ import annotations

import math
from typing import Any

from ..cost.model import CostModel
from ..graph.geometry import part_geometry
from ..graph.ir import OUTPUT, Graph, GraphError
from ..plan.plan import Grid, Stage, Whole, Wire
from .common import requested_devices
from .registry import FC_SPLIT, PlanRequest, PlanResult, StrategyError, flag_param, register

#: ``grid=auto`` takes a finer grid only when it simulates at least this much faster (see ``plan``)
FINER_GRID_MARGIN = 0.10
GRIDS_AUTO = ((2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 8))
WIRES = {"int4": ("raw", "int4"), "int8": ("raw", "int8"), "int8c": ("raw", "int8c"), "raw": ("raw", None),
         "lz4": ("lz4", None), "zstd": ("zstd", None)}


def auto_grids(pool_sizes: Any) -> list[tuple[int, int]]:
    """``grid=auto``'s candidates: the square grids 2x2 … 8x8 and, for each tile pool of n devices,
    the grids of exactly n tiles (R x C = n, R >= C, both <= 8: 8 -> 8x1, 4x2; 7 -> 7x1) — one tile
    per device, no second round of tiles; fewest tiles first (the finer-grid margin compares in
    that order)."""
    grids = set(GRIDS_AUTO)
    for n in (n for n in pool_sizes if n >= 2):
        grids.update((n // c, c) for c in range(1, 9) if n % c == 0 and c <= n // c <= 8)
    return sorted(grids, key=lambda rc: (rc[0] * rc[1], rc[0] - rc[1]))


def parse_grid(v: Any) -> tuple[int, int] | None:
    """``"4x4"`` / ``"4"`` / ``4`` / ``[4, 4]`` -> (4, 4); ``"auto"``/None -> None."""
    if v is None or v == "auto":
        return None
    try:
        if isinstance(v, (list, tuple)) and len(v) == 2:
            r, c = int(v[0]), int(v[1])
        elif isinstance(v, int):
            r = c = v
        else:
            txt = str(v).lower().replace("×", "x")
            a, _, b = txt.partition("x")
            r, c = int(a), int(b or a)
    except (TypeError, ValueError):
        raise StrategyError(f"grid {v!r} is not RxC (e.g. 4x4) or auto") from None
    if r < 1 or c < 1 or r * c < 2:
        raise StrategyError(f"grid {v!r} must have at least 2 tiles, e.g. 2x2 (got {r}x{c})")
    return r, c


def parse_wire(v: Any, lossless: bool) -> Wire:
    """``int4`` / ``int8`` / ``int8c`` / ``raw`` / ``lz4`` / ``zstd`` / ``int4+zstd`` -> :class:`Wire`."""
    txt = str(v or "int4").lower()
    quant: str | None = None
    codec = "raw"
    for piece in txt.split("+"):
        if piece in ("int4", "int8", "int8c"):
            quant = piece
        elif piece in ("raw", "lz4", "zstd"):
            codec = piece
        else:
            raise StrategyError(f"wire {v!r} is unknown; use int4, int8, int8c, raw, lz4, zstd or e.g. int4+zstd")
    if lossless and quant is not None:
        raise StrategyError(
            f"wire {txt} quantises activations ({quant}) but the plan was asked to be lossless "
            f"(lossless=true); use --param wire=raw, lz4 or zstd, or drop lossless=true"
        )
    return Wire(codec, quant)


def boundaries(size: int, n: int) -> tuple[int, ...]:
    """``n`` near-equal tiles over ``size``: [0, ..., size]."""
    return tuple(round(i * size / n) for i in range(n + 1))


def _splittable(g: Graph) -> list[str]:
    return [c for c, ok in g.splittable_cuts().items() if ok]


def fdsp_end(g: Graph, grid: tuple[int, int], until: str | None = None, start: str | None = None) -> str:
    """The cut point ending the FDSP stage: ``until`` checked, or the deepest one the grid fits."""
    r, c = grid
    split = _splittable(g)
    if not split:
        raise StrategyError(f"{g.name} has no splittable cut point: FDSP needs a convolutional part")
    s0 = -1 if start is None else g.index(g.resolve(start))
    if until is not None:
        if until not in g:
            raise StrategyError(f"until={until!r} is not a node of {g.name}; see coinfer inspect {g.name}")
        end = g.resolve(until)
        if end not in split:
            raise StrategyError(f"until={until!r} is not a splittable cut point of {g.name}; "
                                f"choose one of {split[0]} ... {split[-1]} (coinfer inspect {g.name})")
        if g.index(end) <= s0:
            raise StrategyError(f"until={until!r} must come after head={start!r}")
        n = g[end]
        if n.height < r or n.width < c:
            raise StrategyError(
                f"grid {r}x{c} is finer than the {n.height}x{n.width} feature map at {end}; use a grid of "
                f"at most {n.height}x{n.width} or an earlier --param until=..."
            )
        return end
    fits = [x for x in split if g.index(x) > s0 and g[x].height >= r and g[x].width >= c]
    if not fits:
        n = g.input
        raise StrategyError(
            f"grid {r}x{c} is finer than every feature map of {g.name} (input {n.height}x{n.width}); "
            f"use a smaller grid such as 2x2"
        )
    return fits[-1]


def tile_geoms(g: Graph, start: str, end: str, grid: tuple[int, int]) -> list[Any]:
    """Zero-halo geometry of every tile (row-major); refuses a grid finer than a feature map."""
    r, c = grid
    n = g[end]
    rows, cols = boundaries(n.height, r), boundaries(n.width, c)
    out = []
    for i in range(r):
        for j in range(c):
            try:
                out.append(part_geometry(g, start, end, (rows[i], rows[i + 1], cols[j], cols[j + 1]), "zero"))
            except GraphError as e:
                raise StrategyError(str(e)) from None
    return out


def first_activation(g: Graph) -> str | None:
    """The first splittable cut point (not the last) holding an activation's output."""
    split = _splittable(g)
    return next((c for c in split[:-1] if g[c].op == "act"), None)


def choose_head(g: Graph, head: Any, wire: Wire) -> str | None:
    """The cut point the source computes to before the tiles (None: tiles start at the input).

    ``auto`` / ``input``: none — the paper's central node tiles the input image
    (ADCNN §3, FDSP). ``act``: the first activation output (:func:`first_activation`),
    so that only non-negative feature maps cross a quantised wire.
    """
    if head in (None, "none", "input", "auto"):
        return None
    if head == "act":
        return first_activation(g)
    split = _splittable(g)
    if head not in g or g.resolve(str(head)) not in split[:-1]:
        raise StrategyError(f"head={head!r} is not a splittable cut point of {g.name} before the last one; "
                            f"use auto, input, act or a cut point from coinfer inspect {g.name}")
    return g.resolve(str(head))


def fdsp_layout(g: Graph, grid: tuple[int, int], wire: Wire, head: Any = "auto",
                until: str | None = None) -> tuple[str | None, str]:
    """(head, until) of an ADCNN plan for ``grid``: what the planner and FDSP fine-tuning share."""
    h = choose_head(g, head, wire)
    return h, fdsp_end(g, grid, until, h)


def _pool(req: PlanRequest, costs: CostModel, which: str) -> list[str]:
    if which not in ("all", "workers"):
        raise StrategyError(f"pool={which!r} is unknown; use auto, all or workers")
    devs = [d for d in req.devices if which == "all" or d != req.source]
    if not devs:
        raise StrategyError("pool=workers leaves no device besides the source; use pool=all")
    return sorted(devs, key=lambda d: -costs.speed(d))  # fastest first


def build_plan(req: PlanRequest, costs: CostModel, grid: tuple[int, int], head: str | None, until: str,
               tail: str, wire: Wire, pool: list[str], sched: dict[str, Any], extra: dict[str, Any]) -> Any:
    g = req.graph
    n = g[until]
    r, c = grid
    rows, cols = boundaries(n.height, r), boundaries(n.width, c)
    k = 0
    mat = []
    for _ in range(r):
        row = []
        for _ in range(c):
            row.append(pool[k % len(pool)])
            k += 1
        mat.append(tuple(row))
    stages = []
    if head is not None:
        stages.append(Stage(head, Whole(req.source)))
    stages.append(Stage(until, Grid(rows, cols, tuple(mat), "dynamic"), "zero"))
    if g.resolve(until) != g.output.name:
        stages.append(Stage(OUTPUT, Whole(tail)))
    params = {"grid": f"{r}x{c}", "until": until, "head": head, "tail": tail, "scheduler": "adcnn",
              "scheduler_params": sched, **extra}
    return req.make_plan(stages, "adcnn", params, wire=wire)


def _tile_rates(costs: CostModel, g: Graph, geoms: list[Any], pool: list[str], wire: Wire,
                src: str, head: str | None) -> tuple[dict[str, float], float]:
    """Predicted mean per-tile time per device (compute, or its transfers if longer) and the fastest.

    As the runtime does (``Plan.wire_for``), tiles that are the model output are not quantised, tiles of
    the model input only by int4."""
    _, q_in = wire.for_tensor(model_input=head is None)
    _, q_out = wire.for_tensor(model_output=g.resolve(geoms[0].end) == g.output.name)
    sample = geoms[:: max(1, len(geoms) // 4)]
    per: dict[str, float] = {}
    for d in pool:
        tot = 0.0
        for geom in sample:
            comp = costs.part_ms(d, geom)
            if d != src:
                nin = math.prod(geom.in_shape(g)) * 4
                nout = math.prod(geom.out_shape(g)) * 4
                xfer = costs.transfer_ms(src, d, nin, wire.codec, q_in) + \
                    costs.transfer_ms(d, src, nout, wire.codec, q_out)
                comp = max(comp, xfer)
            tot += comp
        per[d] = tot / len(sample)
    return per, min(per.values())


def choose_tail(req: PlanRequest, costs: CostModel, end: str, wire: Wire, which: str) -> str:
    """The device running the non-tiled rest: the source (the paper's central node) or, with
    ``auto``, the device that finishes it first counting the transfers there and back."""
    g = req.graph
    src = req.source
    if which == "source":
        return src
    if which != "auto":
        if which not in req.devices:
            raise StrategyError(f"tail={which!r} is not source, auto or a device of the cluster {req.devices}")
        return which
    if g.resolve(end) == g.output.name or wire.quant is not None:
        # a quantised wire: the tile outputs, gathered (quantised) at the source, would be quantised a
        # second time on their way to another tail device
        return src
    nin, nout = g[end].out_bytes, g.output.out_bytes
    best, best_ms = src, math.inf
    for d in req.devices:
        ms = costs.stage_ms(d, end, g.output.name, None)
        if d != src:
            ms += costs.transfer_ms(src, d, nin, wire.codec, wire.quant) + \
                costs.transfer_ms(d, src, nout, wire.codec, wire.quant)
        if ms < best_ms * (1 - 1e-3):
            best, best_ms = d, ms
    return best


@register("adcnn", summary="ADCNN: zero-halo (FDSP) grid tiles, 4-bit+RLE transfers, rate-based dynamic tiles",
          paper="Zhang, Lin, Zhang. Adaptive Distributed CNN Inference at the Network Edge with ADCNN. ICPP 2020",
          exact=False, needs_costs=True, params=("grid", "until", "head", "tail", "wire", "lossless", "pool", "depth",
                                                 "gamma", "window_ms", "tile_deadline_ms", "devices"))
def plan_adcnn(req: PlanRequest) -> PlanResult:
    """FDSP grid over the conv part, chosen (or given) grid, ADCNN scheduling and compression."""
    from ..plan.lower import lower
    from ..sim import simulate

    g = req.graph
    costs = req.costs if req.costs is not None else CostModel(g, req.cluster)
    lossless = flag_param(req.param("lossless", False), "lossless")
    wire = parse_wire(req.param("wire", "raw" if lossless else "int4"), lossless)
    split = _splittable(g)
    if not split:
        raise StrategyError(f"{g.name} has no splittable cut point: FDSP needs a convolutional part")
    head = choose_head(g, req.param("head", "auto"), wire)
    start = head if head is not None else g.input.name
    devices = requested_devices(req)  # checked; the source always included (pool=workers leaves it out)
    pool_p = str(req.param("pool", "auto"))
    pool_names = ["all", "workers"] if pool_p == "auto" and len(req.devices) > 1 else \
        (["all"] if pool_p == "auto" else [pool_p])
    pools = {}
    for name in pool_names:
        pl = _pool(req, costs, name)
        if devices is not None:
            pl = [d for d in pl if d in devices]
        if pl:
            pools[name] = pl
    if not pools:
        raise StrategyError(f"--param devices={','.join(devices or [])} leaves no device in the tile pool; "
                          "add a device or use pool=all")
    depth = req.param("depth", "auto")
    try:
        depth = None if depth == "auto" else int(depth)
        gamma = req.number("gamma", 0.9)
        dl = req.param("tile_deadline_ms")
        dl = None if dl in (None, "none") else float(dl)
    except (TypeError, ValueError):
        raise StrategyError("depth must be an integer, gamma and tile_deadline_ms numbers") from None
    if (depth is not None and depth < 1) or not 0 < gamma <= 1 or (dl is not None and dl <= 0):
        raise StrategyError("need depth >= 1, 0 < gamma <= 1 and tile_deadline_ms > 0")
    given = parse_grid(req.param("grid", "auto"))
    until_p = req.param("until")
    grids = [given] if given is not None else auto_grids(len(pl) for pl in pools.values())
    if until_p is not None:
        fdsp_end(g, (1, 2), until_p, head)  # a bad node name or order is an error whatever the grid
    tried: list[dict[str, Any]] = []
    best = None
    last_err: StrategyError | None = None
    for grid in grids:
        try:
            end = fdsp_end(g, grid, until_p, head)
            tg = tile_geoms(g, start, end, grid)
        except StrategyError as e:
            if given is not None:
                raise
            last_err = e
            continue
        tail = choose_tail(req, costs, end, wire, str(req.param("tail", "auto")))
        per, fastest = _tile_rates(costs, g, tg, list(req.devices), wire, req.source, head)
        window = req.number("window_ms", max(30.0, 2.0 * fastest))
        ntiles = grid[0] * grid[1]
        depths = [depth] if depth is not None else sorted({1, 2, 4, ntiles})
        si = 0 if head is None else 1
        geoms: dict[Any, Any] = {(si, k): geom for k, geom in enumerate(tg)}
        for pname, pool in pools.items():
            rates = {d: round(window / max(per[d], 1e-6), 4) for d in pool}
            extra: dict[str, Any] = {"pool": pname}
            if dl is not None:
                extra["tile_deadline_ms"] = dl
            for dep in depths:
                sched = {"depth": dep, "gamma": gamma, "window_ms": round(window, 3), "rates": rates}
                plan = build_plan(req, costs, grid, head, end, tail, wire, pool, sched, extra)
                lowered = lower(plan, g, geoms)
                geoms = lowered.geoms
                lat = simulate(lowered, costs).latency_ms
                tried.append({"grid": f"{grid[0]}x{grid[1]}", "until": end, "pool": pname, "depth": dep,
                              "latency_ms": round(lat, 3)})
                # a finer grid must win clearly: the cost model underestimates what each extra tile
                # costs on the workers (eq8 YOLOv2-tiny: 4x4 simulated 4 % faster than 3x3, measured
                # 1.6x slower), so a near-tie goes to the coarser grid
                margin = FINER_GRID_MARGIN if best is not None and ntiles > best[3] else 1e-3
                if best is None or lat < best[0] * (1 - margin):
                    best = (lat, plan, pool, ntiles)
    if best is None:
        raise StrategyError(f"no grid of {', '.join(f'{r}x{c}' for r, c in grids)} fits: {last_err}")
    lat, plan, pool, _ = best
    fc_split: list[str] | None = None
    if req.params.get(FC_SPLIT) is None:  # auto: the tail's big linear layers split by features when faster
        from .features import feature_stage_ends, split_fc_tail

        alt = split_fc_tail(plan, g, costs, plan.devices_used_names())
        if alt is not plan:
            alt_lat = simulate(lower(alt, g), costs).latency_ms
            if alt_lat < lat * (1 - 1e-3):
                fc_split = feature_stage_ends(alt)
                plan, lat = alt, alt_lat
    sp = plan.strategy.params
    info = {"grid": sp["grid"], "until": sp["until"], "head": head, "tail": sp["tail"], "wire": wire.to_dict(),
            "pool": pool, "depth": sp["scheduler_params"]["depth"], "predicted_latency_ms": round(lat, 3),
            "tried": tried, "exact": False, "fc_split": fc_split}
    wire_txt = "+".join(x for x in (wire.quant, wire.codec) if x and x != "raw") or "raw"
    info["summary"] = (f"grid {sp['grid']} until {sp['until']}, tiles on {', '.join(pool)} (depth "
                       f"{info['depth']}), wire {wire_txt}"
                       + (f", classifier split by features ({len(fc_split)} stages)" if fc_split else "")
                       + f"; best of {len(tried)} simulated candidates; approximate (zero-padded tiles)")
    return PlanResult(plan, info)
