"""FDSP fine-tuning: train a model with ADCNN's tiling and quantisation in the loop.

ADCNN (Zhang, Lin & Zhang, ICPP 2020; PAPERS.md §4) computes every tile of
the conv part as an independent zero-padded image (FDSP); the error at tile
borders is recovered by *fine-tuning with the same tiling in the training
loop*. This module does that with exactly the arithmetic the deployed plan
runs:

* :class:`FdspForward` runs a model the way an ``adcnn`` plan does — the
  head whole (on the source), the FDSP stage tile by tile through the
  core's own per-node kernels (:func:`coinfer.execute.kernels.run_node`) and
  zero-halo geometry (:func:`coinfer.graph.geometry.part_geometry`), the
  tail whole — but differentiably: the captured graph's tensors are swapped
  for the module's live parameters. With ``quant`` the tile inputs and
  outputs (the tensors that cross the wire) go through a fake quantiser
  that mirrors :mod:`coinfer.compress.codecs` (per message: per sample),
  with a straight-through gradient.
* :func:`finetune_digits` — a small CNN on scikit-learn's digits, labelled:
  the unpartitioned model is trained first (cached), then fine-tuned with
  FDSP in the loop; accuracies before / after on the held-out split.
* :func:`distill` — a model with real weights (``efficientnet_lite0``) is the
  teacher *unpartitioned*; a copy is fine-tuned with FDSP in the loop to
  match its soft outputs (KL, temperature 2) on augmented sample images
  (``skimage.data``: random resized crops, flips, colour jitter). Reports
  top-1 agreement with the teacher before / after on fresh augmentations.
* :class:`WireExecutor` — runs a plan in-process with the real wire codecs
  applied to every tensor that would cross a link (every tile's input and
  output, a stage on another device than the data), to measure a plan's
  accuracy or agreement over many images without starting workers.

Fine-tuned weights go to ``coinfer.paths.cache_dir("fdsp")`` as ``.npz``
(plain arrays, no pickle); a plan uses them through the import path
``coinfer.train.fdsp:fdsp_<model>_<R>x<C>_<wire>`` (e.g.
``coinfer.train.fdsp:fdsp_digits_cnn_2x2_int4``), and the unpartitioned
digits CNN is ``coinfer.train.fdsp:digits_cnn``.

This module imports torch; the planner (:mod:`coinfer.strategies.adcnn`)
does not.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..graph.capture import CapturedModel, capture
from ..graph.geometry import PartGeom, part_geometry
from ..graph.ir import Graph
from ..paths import cache_dir, write_text
from ..plan.plan import Grid, Plan, Whole, Wire

Tensor = torch.Tensor
Progress = Callable[[str, int, int, dict[str, float]], None]  # (phase, done, total, metrics)

DIGITS_SHAPE = (1, 1, 32, 32)
DIGITS_SPEC = "coinfer.train.fdsp:digits_cnn"
SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "colorwheel")
HELDOUT_IMAGES = ("logo",)
INT4 = Wire("raw", "int4")  # ADCNN's wire: 4-bit + run-length coding


class FdspError(UserError):
    """Bad fine-tuning input (exit 2 in the CLI)."""


# -- the digits CNN ---------------------------------------------------------------------------
class DigitsCNN(nn.Module):
    """A small VGG-like CNN for 32x32 digits: 5 conv layers (16-32-64-64-64), two max pools, FC head.

    Feature maps 32x32 -> 16x16 -> 8x8, so FDSP grids up to 8x8 fit the conv
    part; like VGG the classifier sees a spatial map (pooled to 4x4), so it
    can combine what independent tiles found where.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(64 * 16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def load_digits(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn digits upsampled to 32x32, normalised; a stratified 80/20 split (fixed seed)."""
    from sklearn.datasets import load_digits as _ld
    from sklearn.model_selection import train_test_split

    d = _ld()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=DIGITS_SHAPE[2:], mode="bilinear", align_corners=False)
    x = (x - 0.25) / 0.35
    y = torch.tensor(d.target, dtype=torch.long)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=0.2, random_state=seed, stratify=d.target)
    return x[tr], y[tr], x[te], y[te]


def _shift(x: Tensor, g: torch.Generator, px: int = 2) -> Tensor:
    """Random translation by up to ``px`` pixels (zero fill), per batch."""
    dy, dx = (int(v) for v in torch.randint(-px, px + 1, (2,), generator=g))
    return torch.roll(F.pad(x, (px, px, px, px)), (dy, dx), (2, 3))[:, :, px:-px, px:-px]


def _weights_path(name: str) -> Path:
    return cache_dir("fdsp") / f"{name}.npz"


def save_weights(module: nn.Module, path: Path) -> None:
    """State dict as a plain ``.npz`` (no pickle)."""
    arrays = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_weights(module: nn.Module, path: Path) -> nn.Module:
    with np.load(path, allow_pickle=False) as z:
        sd = {k: torch.from_numpy(z[k].copy()) for k in z.files}
    module.load_state_dict(sd)
    return module.eval()


def digits_cnn() -> nn.Module:
    """The unpartitioned digits CNN with its trained weights (``coinfer train fdsp --model digits_cnn`` trains them)."""
    p = _weights_path("digits_cnn")
    if not p.is_file():
        raise FdspError(f"no trained digits CNN at {p}; run: coinfer train fdsp --model digits_cnn --grid 2x2")
    return load_weights(DigitsCNN(), p)


def variant_name(model: str, grid: tuple[int, int], wire: Wire) -> str:
    """``fdsp_<model>_<R>x<C>_<wire>``: the cache name (and import attribute) of fine-tuned weights."""
    w = wire.quant or "fp32"
    if wire.codec != "raw":
        w += f"+{wire.codec}"
    return f"fdsp_{model}_{grid[0]}x{grid[1]}_{w}".replace("+", "_")


def train_command(name: str) -> str:
    """The ``coinfer train fdsp`` command that trains variant ``name`` (:func:`variant_name` inverted)."""
    m = re.fullmatch(r"fdsp_(.+)_(\d+)x(\d+)_([a-z0-9]+)(?:_([a-z0-9]+))?", name)
    if m is None:
        return "coinfer train fdsp --model MODEL --grid RxC --wire WIRE (see coinfer train fdsp --help)"
    model, r, c, quant, codec = m.groups()
    wire = "+".join(x for x in ((None if quant == "fp32" else quant), codec) if x) or "raw"
    return f"coinfer train fdsp --model {model} --grid {r}x{c} --wire {wire}"


def base_module(model: str) -> nn.Module:
    """The unpartitioned model: the digits CNN or a zoo model (real weights where the zoo has them)."""
    if model == "digits_cnn":
        return digits_cnn()
    from .. import zoo

    try:
        return zoo.get(model)
    except (KeyError, ValueError) as e:
        raise FdspError(f"FDSP fine-tuning: {str(e).strip(chr(34) + chr(39))}; or digits_cnn") from None


def __getattr__(name: str) -> Callable[[], nn.Module]:
    """``fdsp_<model>_<R>x<C>_<wire>``: a loader of fine-tuned weights (import-path models in plans)."""
    if not name.startswith("fdsp_"):
        raise AttributeError(name)
    p = _weights_path(name)

    def load() -> nn.Module:
        if not p.is_file():
            raise FdspError(f"no fine-tuned weights {p}; train them with: {train_command(name)}")
        meta = json.loads(p.with_suffix(".json").read_text())
        return load_weights(base_module(meta["model"]), p)

    return load


# -- fake quantisation (mirrors coinfer.compress.codecs, per sample, straight-through) ----------
def fake_quant(x: Tensor, quant: str | None) -> Tensor:
    """What ``codecs.encode`` + ``decode`` with ``quant`` do to each sample of ``x``; STE gradient.

    ``int8``: affine over [min, max], 255 steps; ``int8c``: the same per channel plane (per sample and
    channel for 3+ dimensions, as the codec's groups). ``int4``: ADCNN's clipped
    ReLU to [0, max] with 15 steps when the sample is non-negative, else
    symmetric [-7, 7] steps of max|x|/7.
    """
    if quant is None:
        return x
    dims = tuple(range(1, x.dim()))
    xd = x.detach().double()  # the codecs compute in float64: same rounding at the .5 boundaries
    if quant in ("int8", "int8c"):
        if quant == "int8c":
            dims = tuple(range(2, x.dim())) if x.dim() >= 3 else dims
        lo = xd.amin(dims, keepdim=True)
        hi = xd.amax(dims, keepdim=True)
        if quant == "int8c":  # the codec stores scale and zero as float32
            lo = lo.float().double()
            scale = ((hi - lo) / 255.0).float().double()
        else:
            scale = (hi - lo) / 255.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round((xd - lo) / safe), 0, 255) * scale + lo
    elif quant == "int4":
        lo = xd.amin(dims, keepdim=True)
        pos = lo >= 0
        c = xd.amax(dims, keepdim=True)
        s_pos = c / 15.0
        m = xd.abs().amax(dims, keepdim=True)
        s_sym = m / 7.0
        sp = torch.where(s_pos > 0, s_pos, torch.ones_like(s_pos))
        ss = torch.where(s_sym > 0, s_sym, torch.ones_like(s_sym))
        q_pos = torch.round(torch.clamp(xd, min=0.0) / sp).clamp(0, 15) * s_pos
        q_sym = torch.clamp(torch.round(xd / ss), -7, 7) * s_sym
        q = torch.where(pos, q_pos, q_sym)
    else:
        raise FdspError(f"quant {quant!r} is unknown; use int8, int8c, int4 or none")
    return x + (q.to(x.dtype) - x).detach()


# -- differentiable execution of plan-shaped pieces ---------------------------------------------
def live_model(module: nn.Module, shape: tuple[int, ...], name: str) -> CapturedModel:
    """Capture ``module`` and point the graph's tensors at its live parameters (for gradients)."""
    cm = capture(module, shape, name)
    by_ptr: dict[tuple[int, tuple[int, ...]], Tensor] = {}
    for _, t in list(module.named_parameters()) + list(module.named_buffers()):
        by_ptr[(t.data_ptr(), tuple(t.shape))] = t
    tensors: dict[str, dict[str, Tensor]] = {}
    for node, d in cm.tensors.items():
        nd = {}
        for k, v in d.items():
            live = by_ptr.get((v.data_ptr(), tuple(v.shape)))
            if live is None:
                raise FdspError(f"{name}: {node}.{k} is not a parameter or buffer of the module "
                                f"(the capture transformed it); FDSP fine-tuning cannot train it")
            nd[k] = live
        tensors[node] = nd
    return CapturedModel(cm.graph, tensors, cm.fns, module)


def run_geom(cm: CapturedModel, geom: PartGeom, x: Tensor, cache: dict[object, Tensor]) -> Tensor:
    """:class:`~coinfer.execute.part.PartRunner` without ``no_grad``: the deployed arithmetic, differentiable."""
    from ..execute.kernels import edge_inputs, run_node

    g = cm.graph
    bufs: dict[str, Tensor] = {geom.start: x}
    for idx, ng in enumerate(geom.nodes):
        node = g[ng.name]
        bufs[ng.name] = run_node(cm, node, edge_inputs(ng, bufs), ng, cache)
        for name in geom.free_after.get(idx, ()):
            bufs.pop(name, None)
    return bufs[geom.end]


@dataclass
class FdspLayout:
    """Where the FDSP stage sits: ``head`` (None: the input) to ``until``, an R×C grid, the wire."""

    head: str | None
    until: str
    grid: tuple[int, int]
    wire: Wire

    def to_dict(self) -> dict[str, Any]:
        return {"head": self.head, "until": self.until, "grid": f"{self.grid[0]}x{self.grid[1]}",
                "wire": self.wire.to_dict()}


def layout_for(graph: Graph, grid: tuple[int, int], wire: Wire, head: Any = "auto",
               until: str | None = None) -> FdspLayout:
    """The layout the ``adcnn`` planner would choose for ``grid`` (shared code: plans and training agree)."""
    from ..strategies.adcnn import fdsp_layout
    from ..strategies.registry import StrategyError

    try:
        h, u = fdsp_layout(graph, grid, wire, head, until)
    except StrategyError as e:
        raise FdspError(str(e)) from None
    return FdspLayout(h, u, grid, wire)


def layout_of_plan(plan: Plan, graph: Graph) -> FdspLayout:
    """The FDSP layout of an ``adcnn`` plan (one zero-halo grid stage)."""
    bounds = plan.stage_bounds(graph)
    for i, s in enumerate(plan.stages):
        p = s.partition
        if isinstance(p, Grid) and s.halo == "zero":
            start = bounds[i][0]
            head = None if start == graph.input.name else start
            return FdspLayout(head, bounds[i][1], (len(p.rows) - 1, len(p.cols) - 1), plan.wire)
    raise FdspError("the plan has no zero-halo grid stage (not an adcnn / FDSP plan)")


class FdspForward(nn.Module):
    """The model as an ADCNN plan computes it — head whole, FDSP tiles, tail whole — differentiable.

    Tile inputs and outputs pass :func:`fake_quant` with the layout's wire
    quantisation as the runtime applies it (:meth:`Plan.wire_for`: never to the
    model output, to the model input only with int4; ``quant_tiles=False``
    turns it off). Works on batches (a
    tile's quantisation statistics are per sample, as one message per request).
    """

    def __init__(self, module: nn.Module, shape: tuple[int, ...], layout: FdspLayout, name: str = "model",
                 quant_tiles: bool = True) -> None:
        super().__init__()
        self.module = module
        self.cm = live_model(module, shape, name)
        g = self.cm.graph
        self.layout = layout
        # as the runtime (Wire.for_tensor): tiles of the model input are quantised by int4 only, tiles
        # that are the model output never
        self.q_in = layout.wire.for_tensor(model_input=layout.head is None)[1] if quant_tiles else None
        start = layout.head or g.input.name
        self.head = None if layout.head is None else part_geometry(g, g.input.name, layout.head, None)
        from ..strategies.adcnn import boundaries

        n = g[layout.until]
        r, c = layout.grid
        rows, cols = boundaries(n.height, r), boundaries(n.width, c)
        self.tiles = [part_geometry(g, start, layout.until, (rows[i], rows[i + 1], cols[j], cols[j + 1]), "zero")
                      for i in range(r) for j in range(c)]
        self.out_shape = tuple(n.shape[1:])
        self.tail = None if g.resolve(layout.until) == g.output.name else \
            part_geometry(g, layout.until, g.output.name, None)
        self.q_out = layout.wire.for_tensor(model_output=self.tail is None)[1] if quant_tiles else None
        self._cache: dict[object, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        cur = x if self.head is None else run_geom(self.cm, self.head, x, self._cache)
        out = cur.new_zeros((cur.shape[0], *self.out_shape))
        for geom in self.tiles:
            ir, orr = geom.in_region, geom.out_region
            assert ir is not None and orr is not None
            xin = fake_quant(cur[:, :, ir[0]:ir[1], ir[2]:ir[3]], self.q_in)
            y = fake_quant(run_geom(self.cm, geom, xin, self._cache), self.q_out)
            out[:, :, orr[0]:orr[1], orr[2]:orr[3]] = y
        return out if self.tail is None else run_geom(self.cm, self.tail, out, self._cache)


# -- evaluation of a plan with the real wire codecs ---------------------------------------------
class WireExecutor:
    """Run a plan in-process with the wire codecs applied where tensors would cross a link.

    Every part of a *dynamic* stage counts as remote (its input and output
    are encoded; the source's own tiles would not be — a conservative
    bound); a part of a static stage is encoded when its device differs
    from the one holding the data (the source after a gather), and so is
    the final output when the last stage is not on the source — each with
    the codec the runtime uses for that tensor (:meth:`Plan.wire_for`: the
    model output is never quantised, the model input only by int4). Exact for
    the plans ``adcnn`` makes (whole head on the source, a dynamic grid, a
    whole tail); for row stages with halo exchange it approximates each
    part's input as one message.
    """

    def __init__(self, cm: CapturedModel, plan: Plan, **executor: Any) -> None:
        """``executor``: passed to the :class:`~coinfer.execute.local.InProcessExecutor` that computes
        the parts (backend, precision, cluster)."""
        from ..execute.local import InProcessExecutor

        self.inner = InProcessExecutor(cm, plan, **executor)
        self.plan = plan
        #: per message: count, raw float32 bytes, bytes on the wire, and the codec's CPU time
        #: (encode on the sender + decode on the receiver, wall ms on this process's core)
        self.stats: dict[str, float] = {"messages": 0, "raw_bytes": 0, "wire_bytes": 0, "encode_ms": 0.0,
                                        "decode_ms": 0.0}

    def _send(self, t: Tensor, tensor: int) -> Tensor:
        """``t`` (a piece of ``tensor``, the output of that stage) through the wire codecs the runtime
        uses for it (:meth:`Plan.wire_for`), one message per sample, with byte and time counts."""
        from ..compress.codecs import decode, encode

        codec, quant = self.plan.wire_for(tensor)
        outs = []
        for i in range(t.shape[0]):
            a = t[i:i + 1].detach().contiguous().numpy()
            t0 = time.perf_counter()
            meta, buf = encode(a, codec, quant)
            t1 = time.perf_counter()
            y = decode(meta, bytes(memoryview(buf).cast("B")))
            t2 = time.perf_counter()
            self.stats["messages"] += 1
            self.stats["raw_bytes"] += int(a.size * 4)
            self.stats["wire_bytes"] += int(meta["nbytes"])
            self.stats["encode_ms"] += (t1 - t0) * 1e3
            self.stats["decode_ms"] += (t2 - t1) * 1e3
            outs.append(torch.from_numpy(np.array(y)))
        return torch.cat(outs, 0)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        ex = self.inner
        plan = self.plan
        src = plan.source
        holder = src
        cur = x
        for si, parts in enumerate(ex.parts):
            stage = plan.stages[si]
            end_node = ex.graph[stage.until]
            p = stage.partition
            dynamic = not isinstance(p, Whole) and getattr(p, "schedule", "static") == "dynamic"
            if len(parts) == 1:
                part, runner = parts[0]
                remote = dynamic or part.device != holder
                ir = runner.geom.in_region
                xin = cur if ir is None else cur[:, :, ir[0]:ir[1], ir[2]:ir[3]]
                if remote:
                    xin = self._send(xin, si - 1)
                cur = _batched(runner, xin)
                holder = src if dynamic else part.device
                if dynamic and remote:
                    cur = self._send(cur, si)
                continue
            out = torch.empty((cur.shape[0], *end_node.shape[1:]), dtype=cur.dtype)
            for part, runner in parts:
                ir = runner.geom.in_region
                xin = cur if ir is None else cur[:, :, ir[0]:ir[1], ir[2]:ir[3]]
                if dynamic or part.device != holder:
                    xin = self._send(xin, si - 1)
                y = _batched(runner, xin)
                if dynamic or part.device != src:
                    y = self._send(y, si)  # gathered at the source (dynamic stages; an approximation otherwise)
                r = part.region
                assert r is not None
                out[:, :, r[0]:r[1], r[2]:r[3]] = y
            cur = out
            holder = src
        if holder != src:
            cur = self._send(cur, len(plan.stages) - 1)
        return cur


def _batched(runner: Any, x: Tensor) -> Tensor:
    """A PartRunner expects batch 1; run a batch sample by sample."""
    if x.shape[0] == 1:
        return runner(x)
    return torch.cat([runner(x[i:i + 1]) for i in range(x.shape[0])], 0)


# -- training -----------------------------------------------------------------------------------
@dataclass
class FdspReport:
    """Before/after figures of one fine-tuning run (all measured; nothing is a constant)."""

    model: str
    grid: str
    wire: dict[str, Any]
    head: str | None
    until: str
    kind: str  # "labels" (digits) or "distillation"
    metric: str  # "accuracy" or "agreement"
    unpartitioned: float  # the plain model's accuracy (1.0 for agreement: the teacher itself)
    fdsp_before: float
    fdsp_after: float
    plain_after: float  # the fine-tuned weights without tiling
    eval_images: int
    train_steps: int
    train_s: float
    weights: str
    model_spec: str
    curve: list[tuple[int, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    reduced: bool = False  # fewer epochs / steps than the defaults, or part of the digits only
    kept: str | None = None  # not saved: the full-budget weights left in place (see _save_variant)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _accuracy(fn: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, batch: int = 256) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            correct += int((fn(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / max(1, len(y))


#: the unpartitioned digits CNN's full training budget (``--base-epochs``' default)
BASE_EPOCHS = 25


def _base_meta_path() -> Path:
    return _weights_path("digits_cnn").with_suffix(".json")


def _cached_base(p: Path) -> dict[str, Any] | None:
    """How the cached digits CNN was trained (``{"epochs", "seed"}``), None when there is none. A checkpoint
    from before this record was the default run (25 epochs, seed 0)."""
    if not p.is_file():
        return None
    try:
        meta = json.loads(_base_meta_path().read_text())
        return {"epochs": int(meta["epochs"]), "seed": int(meta["seed"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {"epochs": BASE_EPOCHS, "seed": 0}


def train_digits_base(epochs: int = BASE_EPOCHS, seed: int = 0, progress: Progress | None = None,
                      force: bool = False, limit: int | None = None) -> tuple[nn.Module, float]:
    """Train (or load) the unpartitioned digits CNN; returns it and its test accuracy.

    The cached CNN is used when it was trained with the same ``epochs`` and ``seed`` (it used to be used
    whatever they were: ``--base-epochs`` did nothing once a base was cached, and a 1-epoch base, once
    cached, served every later run and plan). Otherwise it is trained; the result replaces the cached one
    unless it is a reduced run (``epochs`` below :data:`BASE_EPOCHS` over a full-budget cache, without
    ``force``) — ``limit`` (tests: the first ``limit`` training images) is never saved over a cache.
    """
    p = _weights_path("digits_cnn")
    xtr, ytr, xte, yte = load_digits(seed)
    limited = limit is not None and limit < len(ytr)
    xtr, ytr = xtr[:limit], ytr[:limit]
    cached = _cached_base(p)
    if cached == {"epochs": epochs, "seed": seed} and not force:
        m = load_weights(DigitsCNN(), p)
        return m, _accuracy(m, xte, yte)
    torch.manual_seed(seed)
    m = DigitsCNN()
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    g = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        m.train()
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(ytr), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(m(_shift(xtr[idx], g)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if progress is not None:
            progress("base", ep + 1, epochs, {"loss": float(loss.detach())})
    m.eval()
    reduced = cached is not None and cached["epochs"] >= BASE_EPOCHS and epochs < BASE_EPOCHS
    if not (limited and cached is not None) and (force or not reduced):
        save_weights(m, p)
        write_text(_base_meta_path(), json.dumps({"epochs": epochs, "seed": seed}) + "\n")
    return m, _accuracy(m, xte, yte)


#: the full budgets (the CLI's defaults): a run below them is "reduced" and does not replace full weights
DIGITS_EPOCHS = 12
DISTILL_STEPS = 150


def finetune_digits(grid: tuple[int, int], wire: Wire = INT4, epochs: int = DIGITS_EPOCHS,
                    base_epochs: int = BASE_EPOCHS, lr: float = 5e-4, seed: int = 0, head: Any = "auto",
                    until: str | None = None, progress: Progress | None = None,
                    save: bool = True, limit: int | None = None, force: bool = False) -> FdspReport:
    """Fine-tune the digits CNN with FDSP (and the wire's quantisation) in the loop.

    ``limit``: use only the first ``limit`` training and test images (tests). A run below the full
    budget (``epochs`` < :data:`DIGITS_EPOCHS`, ``limit``) does not replace full-budget weights unless
    ``force`` (:func:`_save_variant`).
    """
    lay = layout_for(capture(DigitsCNN().eval(), DIGITS_SHAPE, DIGITS_SPEC).graph, grid, wire, head, until)
    base, acc_plain = train_digits_base(base_epochs, seed, progress, limit=limit)
    xtr, ytr, xte, yte = load_digits(seed)
    reduced = epochs < DIGITS_EPOCHS or base_epochs < BASE_EPOCHS or (limit is not None and limit < len(ytr))
    xtr, ytr, xte, yte = xtr[:limit], ytr[:limit], xte[:limit], yte[:limit]
    acc_plain = _accuracy(base, xte, yte)
    student = copy.deepcopy(base)
    fwd = FdspForward(student, DIGITS_SHAPE, lay, DIGITS_SPEC)
    before = _accuracy(fwd, xte, yte)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    gen = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    steps = 0
    curve = [(0, before)]
    for ep in range(epochs):
        perm = torch.randperm(len(ytr), generator=gen)
        for i in range(0, len(ytr), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(fwd(_shift(xtr[idx], gen)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        sched.step()
        acc = _accuracy(fwd, xte, yte)
        curve.append((steps, acc))
        if progress is not None:
            progress("fdsp", ep + 1, epochs, {"loss": float(loss.detach()), "acc": acc})
    train_s = time.perf_counter() - t0
    after = _accuracy(fwd, xte, yte)
    name = variant_name("digits_cnn", grid, wire)
    wpath = _weights_path(name)
    rep = FdspReport("digits_cnn", f"{grid[0]}x{grid[1]}", wire.to_dict(), lay.head, lay.until, "labels",
                     "accuracy", acc_plain, before, after, _accuracy(student.eval(), xte, yte), len(yte), steps,
                     round(train_s, 2), str(wpath), f"coinfer.train.fdsp:{name}", curve, reduced=reduced)
    if save:
        _save_variant(student, name, rep, force)
    return rep


def _save_variant(module: nn.Module, name: str, rep: FdspReport, force: bool = False) -> None:
    """Write the weights and their report, unless ``rep`` is a reduced-budget run and the weights there
    come from a full-budget one (a JSON without ``reduced``, written before the key existed, counts as
    full): then ``rep.kept`` names them and nothing is written (``force`` writes anyway)."""
    p = _weights_path(name)
    if rep.reduced and not force and p.is_file():
        try:
            old = json.loads(p.with_suffix(".json").read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and not old.get("reduced", False):
            rep.kept = str(p)
            return
    save_weights(module, p)
    p.with_suffix(".json").write_text(json.dumps(rep.to_dict(), indent=1))


# -- augmented sample images (distillation) ------------------------------------------------------
def _images(names: tuple[str, ...]) -> list[Tensor]:
    import skimage.data

    out = []
    for n in names:
        img = np.asarray(getattr(skimage.data, n)())
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = img[..., :3]
        t = torch.tensor(img, dtype=torch.float32).permute(2, 0, 1) / 255.0
        out.append(t)
    return out


def augment(img: Tensor, size: int, g: torch.Generator) -> Tensor:
    """Random resized crop (area 15–100 %, aspect 3/4–4/3), horizontal flip, colour jitter ±30 %; ImageNet-normalised."""
    from ..zoo.images import IMAGENET_MEAN, IMAGENET_STD

    _, H, W = img.shape
    u = torch.rand(6, generator=g).tolist()
    area = H * W * (0.15 + 0.85 * u[0])
    ar = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
    h = min(H, max(8, round(math.sqrt(area / ar))))
    w = min(W, max(8, round(math.sqrt(area * ar))))
    top = int(u[2] * (H - h + 1))
    left = int(u[3] * (W - w + 1))
    x = img[:, top:top + h, left:left + w].unsqueeze(0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if u[4] < 0.5:
        x = x.flip(3)
    j = (torch.rand(3, generator=g) * 0.6 + 0.7).tolist()  # brightness, contrast, saturation
    x = x * j[0]
    mean = x.mean()
    x = (x - mean) * j[1] + mean
    grey = x.mean(1, keepdim=True)
    x = ((x - grey) * j[2] + grey).clamp(0, 1)
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def augmented_batch(images: list[Tensor], n: int, size: int, g: torch.Generator) -> Tensor:
    idx = torch.randint(len(images), (n,), generator=g).tolist()
    return torch.cat([augment(images[i], size, g) for i in idx], 0)


def augmented_set(n: int, size: int = 224, seed: int = 1, names: tuple[str, ...] = SAMPLE_IMAGES) -> Tensor:
    """``n`` augmented views of the sample images (deterministic for a seed)."""
    return augmented_batch(_images(names), n, size, torch.Generator().manual_seed(seed))


def _agreement(fn: Callable[[Tensor], Tensor], ref: Tensor, x: Tensor, batch: int = 16) -> float:
    same = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            same += int((fn(x[i:i + batch]).argmax(1) == ref[i:i + batch]).sum())
    return same / max(1, len(x))


def distill(model: str, grid: tuple[int, int], wire: Wire = INT4, steps: int = DISTILL_STEPS,
            batch: int = 8, lr: float = 2e-5, temperature: float = 2.0, eval_images: int = 96, seed: int = 0,
            head: Any = "auto", until: str | None = None, progress: Progress | None = None,
            save: bool = True, force: bool = False) -> FdspReport:
    """Distil the unpartitioned ``model`` (teacher) into a copy running FDSP (student).

    Loss: KL(teacher ‖ student) at ``temperature`` on augmented views of the
    sample images; batch-norm statistics are frozen (the deployed kernels
    use running statistics). Agreement = top-1 equal to the teacher's, on
    ``eval_images`` fresh augmentations (another seed) plus the held-out
    image(s). ``lr`` 2e-5 (Adam): with 1e-4 the student drifted from the teacher even untiled
    (EfficientNet-Lite0, 2x2, 40 steps of 6 images: tiled agreement 0.48 vs 0.54 at 2e-5, untiled
    0.56 vs 0.67; benchmarks/adcnn).
    """
    from .. import zoo

    teacher = base_module(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    shape = tuple(zoo.entry(model).input_shape) if model != "digits_cnn" else DIGITS_SHAPE
    if model == "digits_cnn" or shape[1] != 3:
        raise FdspError(f"distillation on sample images needs an RGB model; {model} takes {list(shape)}")
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    g = capture(student, shape, model).graph
    lay = layout_for(g, grid, wire, head, until)
    fwd = FdspForward(student, shape, lay, model)
    size = shape[2]
    train_imgs = _images(SAMPLE_IMAGES)
    gen = torch.Generator().manual_seed(seed)
    x_eval = torch.cat([augmented_set(eval_images, size, seed + 1000),
                        augmented_set(max(8, eval_images // 8), size, seed + 2000, HELDOUT_IMAGES)], 0)
    with torch.no_grad():
        ref = torch.cat([teacher(x_eval[i:i + 16]) for i in range(0, len(x_eval), 16)]).argmax(1)
    before = _agreement(fwd, ref, x_eval)
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    T = temperature
    t0 = time.perf_counter()
    curve = [(0, before)]
    every = max(1, steps // 10)
    for k in range(steps):
        xb = augmented_batch(train_imgs, batch, size, gen)
        with torch.no_grad():
            pt = F.softmax(teacher(xb) / T, 1)
        loss = F.kl_div(F.log_softmax(fwd(xb) / T, 1), pt, reduction="batchmean") * T * T
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (k + 1) % every == 0 or k + 1 == steps:
            if k + 1 == steps or (k + 1) % (every * 2) == 0:
                curve.append((k + 1, _agreement(fwd, ref, x_eval)))
            if progress is not None:
                progress("distill", k + 1, steps, {"loss": float(loss.detach())})
    train_s = time.perf_counter() - t0
    after = _agreement(fwd, ref, x_eval)
    plain_after = _agreement(student.eval(), ref, x_eval)
    name = variant_name(model, grid, wire)
    rep = FdspReport(model, f"{grid[0]}x{grid[1]}", wire.to_dict(), lay.head, lay.until, "distillation",
                     "agreement", 1.0, before, after, plain_after, len(x_eval), steps, round(train_s, 2),
                     str(_weights_path(name)), f"coinfer.train.fdsp:{name}", curve,
                     {"batch": batch, "lr": lr, "temperature": T, "train_images": list(SAMPLE_IMAGES),
                      "heldout_images": list(HELDOUT_IMAGES)}, reduced=steps < DISTILL_STEPS)
    if save:
        _save_variant(student, name, rep, force)
    return rep


def finetune(model: str, grid: tuple[int, int], wire: Wire, **kw: Any) -> FdspReport:
    """``digits_cnn``: labelled fine-tuning; any RGB zoo model: distillation from its unpartitioned self."""
    if model == "digits_cnn":
        kw.pop("steps", None)
        kw.pop("batch", None)
        kw.pop("eval_images", None)
        return finetune_digits(grid, wire, **kw)
    kw.pop("epochs", None)
    kw.pop("base_epochs", None)
    return distill(model, grid, wire, **kw)


def iter_batches(x: Tensor, batch: int) -> Iterator[Tensor]:
    for i in range(0, len(x), batch):
        yield x[i:i + batch]
