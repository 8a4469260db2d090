"""The ``torch`` backend: eager PyTorch over the optimised part program.

Each :class:`~.optimize.Step` is compiled once into a closure with its
arguments bound (folded weights, resolved paddings, avgpool divisors,
in-place activation), so a call is a straight walk over closures.
Optimisations (all exact): BatchNorm folded into convolutions, activations
applied in place on the fresh output of the step before them, and the
channels-last memory format for parts with convolutions (``layout="static"``,
the default: measured on every zoo model at one thread it is faster or equal
— VGG-16 −13 %, MobileNetV2 −28 %, GoogLeNet −48 %, ResNet-50 ±2 %;
``layout="auto"`` times both layouts on the part at build instead).

Reduced precision (``bf16``/``fp16``): weights and the input are cast once,
the output is returned as float32. Approximate; only when asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ...graph.capture import CapturedModel
from ...graph.geometry import PartGeom
from ..kernels import _split_pad
from .base import CompiledPart
from .optimize import PartProgram, Step, part_program

Tensor = torch.Tensor
NEG_INF = float("-inf")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def act_fn(node: Any, inplace: bool) -> Callable[[Tensor], Tensor]:
    """The activation of ``node`` (attrs ``fn`` + its arguments), in place when allowed."""
    a = node.attrs
    kind = a["fn"]
    if kind == "relu":
        return torch.relu_ if inplace else torch.relu
    if kind in ("relu6", "hardtanh"):
        lo, hi = (0.0, 6.0) if kind == "relu6" else (float(a.get("min_val", -1.0)), float(a.get("max_val", 1.0)))
        if inplace:
            return lambda x: F.hardtanh_(x, lo, hi)
        return lambda x: F.hardtanh(x, lo, hi)
    if kind == "leaky_relu":
        s = float(a.get("negative_slope", 0.01))
        return (lambda x: F.leaky_relu_(x, s)) if inplace else (lambda x: F.leaky_relu(x, s))
    if kind == "elu":
        al = float(a.get("alpha", 1.0))
        return (lambda x: F.elu_(x, al)) if inplace else (lambda x: F.elu(x, al))
    if kind == "silu":
        return lambda x: F.silu(x, inplace=inplace)
    if kind == "hardswish":
        return lambda x: F.hardswish(x, inplace=inplace)
    if kind == "hardsigmoid":
        return lambda x: F.hardsigmoid(x, inplace=inplace)
    if kind == "sigmoid":
        return torch.sigmoid_ if inplace else torch.sigmoid
    if kind == "tanh":
        return torch.tanh_ if inplace else torch.tanh
    if kind == "gelu":
        approx = str(a.get("approximate", "none"))
        return lambda x: F.gelu(x, approximate=approx)
    raise ValueError(f"internal: unknown activation {kind!r}")  # pragma: no cover


BLOCK_BYTES = 1 << 18  # one block of a layout conversion: well inside L2
BLOCKED_ABOVE = 1 << 20  # smaller tensors convert as fast in one copy


def nchw_contiguous(y: Tensor) -> Tensor:
    """A 4-d tensor in the default (NCHW) memory format, converted in blocks of rows.

    torch's own ``contiguous()`` of a channels-last tensor slows down ~5x once
    the tensor outgrows the cache (measured, one thread: (1, 64, 224, 224)
    21.7 ms, (1, 64, 56, 224) 5.7 ms; copied here in blocks of rows that fit
    in L2: 4.6 and 1.1 ms). A copy, so exact. (The other direction, NCHW to
    channels-last, does not have the problem.)
    """
    if y.is_contiguous():
        return y
    if y.dim() != 4 or y.numel() * y.element_size() < BLOCKED_ABOVE \
            or not y.is_contiguous(memory_format=torch.channels_last):
        return y.contiguous()
    n, c, h, w = y.shape
    out = torch.empty((n, c, h, w), dtype=y.dtype)
    src = y.permute(0, 2, 3, 1)  # NHWC, contiguous
    rows = max(1, BLOCK_BYTES // (n * w * c * y.element_size()))
    for r in range(0, h, rows):
        out[:, :, r:r + rows].copy_(src[:, r:r + rows].permute(0, 3, 1, 2))
    return out


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


def compile_step(cm: CapturedModel, st: Step, dtype: torch.dtype, channels_last: bool) -> Callable[[list[Tensor]], Tensor]:
    """A closure ``f(inputs) -> output`` for one step, arguments bound."""
    n, a, op = st.node, st.node.attrs, st.op
    p = {k: _cast(v, dtype) for k, v in st.params.items()}
    post = act_fn(st.act, inplace=n.op in ("conv", "bn", "add", "mul", "scale", "maxpool", "avgpool", "linear",
                                           "cat", "lrn", "global_pool", "adaptive_pool")) if st.act else None
    whole = st.whole

    def fin(f: Callable[[list[Tensor]], Tensor]) -> Callable[[list[Tensor]], Tensor]:
        if post is None:
            return f
        return lambda xs: post(f(xs))

    if op == "conv":
        w, b = p["weight"], p.get("bias")
        assert w is not None  # a conv step always has its weight
        if channels_last and w.dim() == 4:
            w = w.contiguous(memory_format=torch.channels_last)
        (nh, nw), extra = _split_pad(st.pads)
        stride, dil, groups = tuple(a["stride"]), tuple(a["dilation"]), int(a["groups"])
        if any(extra):
            return fin(lambda xs: F.conv2d(F.pad(xs[0], extra), w, b, stride, (nh, nw), dil, groups))
        return fin(lambda xs: F.conv2d(xs[0], w, b, stride, (nh, nw), dil, groups))
    if op == "maxpool":
        k, s, d = tuple(a["kernel"]), tuple(a["stride"]), tuple(a["dilation"])
        pads = st.pads
        if whole and pads[0] == pads[1] and pads[2] == pads[3]:
            ceil = bool(a["ceil_mode"])
            return fin(lambda xs: F.max_pool2d(xs[0], k, s, (pads[0], pads[2]), d, ceil))
        (nh, nw), extra = _split_pad(pads, (k[0] // 2, k[1] // 2))
        if any(extra):
            return fin(lambda xs: F.max_pool2d(F.pad(xs[0], extra, value=NEG_INF), k, s, (nh, nw), d, False))
        return fin(lambda xs: F.max_pool2d(xs[0], k, s, (nh, nw), d, False))
    if op == "avgpool":
        k, s = tuple(a["kernel"]), tuple(a["stride"])
        if whole:
            t, _b, l, _r = a["pad"]
            ceil, cip, dov = bool(a["ceil_mode"]), a.get("count_include_pad", True), a.get("divisor_override")
            return fin(lambda xs: F.avg_pool2d(xs[0], k, s, (t, l), ceil, cip, dov))
        pads = st.pads
        fp = (pads[2], pads[3], pads[0], pads[1])
        counts = st.geom.pool_counts
        padf: Callable[[Tensor], Tensor] = (lambda x: F.pad(x, fp)) if any(pads) else (lambda x: x)
        if counts is None:
            return fin(lambda xs: F.avg_pool2d(padf(xs[0]), k, s, 0, False, True))
        rows = torch.tensor(counts[0], dtype=dtype)
        cols = torch.tensor(counts[1], dtype=dtype)
        div = (rows[:, None] * cols[None, :]).clamp_min(1.0)
        return fin(lambda xs: F.avg_pool2d(padf(xs[0]), k, s, 0, False, True, divisor_override=1) / div)
    if op == "pad":
        pads = st.pads
        if not any(pads):
            return fin(lambda xs: xs[0])
        fp = (pads[2], pads[3], pads[0], pads[1])
        val = float(a.get("value", 0.0))
        return fin(lambda xs: F.pad(xs[0], fp, value=val))
    if op == "bn":
        rm, rv, bw, bb, eps = p["running_mean"], p["running_var"], p.get("weight"), p.get("bias"), float(a["eps"])
        return fin(lambda xs: F.batch_norm(xs[0], rm, rv, bw, bb, False, 0.0, eps))
    if op == "act":
        f = act_fn(n, inplace=False)
        return fin(lambda xs: f(xs[0]))
    if op == "add":
        return fin(lambda xs: xs[0] + xs[1])
    if op == "mul":
        return fin(lambda xs: xs[0] * xs[1])
    if op == "scale":
        c = float(a["const"])
        if a["fn"] == "add":
            return fin(lambda xs: xs[0] + c)
        return fin(lambda xs: xs[0] * c)
    if op == "cat":
        return fin(lambda xs: torch.cat(xs, 1))
    if op == "lrn":
        size, alpha, beta, kk = a["size"], a["alpha"], a["beta"], a["k"]
        return fin(lambda xs: F.local_response_norm(xs[0], size, alpha, beta, kk))
    if op == "global_pool":
        keep = bool(a.get("keepdim", False))
        if a.get("kind", "avg") == "avg":
            return fin(lambda xs: xs[0].mean((2, 3), keepdim=keep))
        return fin(lambda xs: xs[0].amax((2, 3), keepdim=keep))
    if op == "adaptive_pool":
        size = tuple(a["size"])
        af = F.adaptive_avg_pool2d if a["kind"] == "avg" else F.adaptive_max_pool2d
        return fin(lambda xs: af(xs[0], size))
    if op == "flatten":
        return fin(lambda xs: xs[0].reshape(xs[0].shape[0], -1))
    if op == "linear":
        lw, lb = p["weight"], p.get("bias")
        assert lw is not None  # a linear step always has its weight
        return fin(lambda xs: F.linear(xs[0], lw, lb))
    raise ValueError(f"internal: no torch kernel for op {op!r} (node {n.name})")  # pragma: no cover


class TorchPart(CompiledPart):
    """A part run by eager torch over closures (see the module docstring)."""

    def __init__(self, cm: CapturedModel, geom: PartGeom, precision: str = "fp32", *,
                 layout: str = "static", program: PartProgram | None = None) -> None:
        prog = program or part_program(cm, geom)
        super().__init__("torch", precision, prog.in_shape, prog.out_shape)
        self.program = prog
        self.dtype = DTYPES[precision]
        self._cm: CapturedModel | None = cm
        self.notes.update(folded_bn=len(prog.folded_bn), fused_act=len(prog.fused_act))
        self._plan = [([(s.buf, s.slice) for s in st.srcs], st.out, st.free) for st in prog.steps]
        self._start, self._end = prog.start, prog.end
        if layout == "static":  # measured: channels-last never loses on the zoo (docs/backends.md)
            layout = "channels_last" if self._has_conv() else "contiguous"
        if layout == "auto" and not self._layout_worth_timing():
            layout = "contiguous"
        self.channels_last = layout == "channels_last"
        if layout == "auto":
            self._fns, self.channels_last = self._faster(self._compile(False), self._compile(True))
        else:
            self._fns = self._compile(self.channels_last)
        self.notes["layout"] = "channels_last" if self.channels_last else "contiguous"
        # the closures hold what they need (channels-last weight copies, folded weights): drop the
        # program (it may be shared with other backends building the same part) and the model
        self._cm = None
        self.program = None  # type: ignore[assignment]

    def _compile(self, cl: bool) -> list[Callable[[list[Tensor]], Tensor]]:
        cm = self._cm
        assert cm is not None  # compiled only in __init__, before the model is dropped
        return [compile_step(cm, st, self.dtype, cl) for st in self.program.steps]

    def _has_conv(self) -> bool:
        return len(self.in_shape) == 4 and any(st.op == "conv" for st in self.program.steps)

    def _layout_worth_timing(self) -> bool:
        """Only parts with sizeable 4-d convolutions can gain from channels-last."""
        return len(self.in_shape) == 4 and any(st.op == "conv" for st in self.program.steps) \
            and self.geom_flops() > 2e7

    def geom_flops(self) -> float:
        return float(sum(st.geom.flops for st in self.program.steps))

    def _faster(self, a: list[Any], b: list[Any]) -> tuple[list[Any], bool]:
        x = torch.randn(self.in_shape, generator=torch.Generator().manual_seed(0))
        ta, tb = [], []
        with torch.no_grad():
            self._run(x, a, False)
            self._run(x, b, True)
            for _ in range(2):
                t0 = time.perf_counter()
                self._run(x, a, False)
                ta.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                self._run(x, b, True)
                tb.append(time.perf_counter() - t0)
        self.notes["layout_ms"] = {"contiguous": round(min(ta) * 1e3, 3), "channels_last": round(min(tb) * 1e3, 3)}
        return (b, True) if min(tb) < 0.97 * min(ta) else (a, False)

    def _run(self, x: Tensor, fns: list[Callable[[list[Tensor]], Tensor]], cl: bool) -> Tensor:
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        if cl and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        bufs: dict[str, Tensor] = {self._start: x}
        for f, (srcs, out, free) in zip(fns, self._plan):
            ins = []
            for buf, sl in srcs:
                t = bufs[buf]
                if sl is not None:
                    t = t[:, :, sl[0]:sl[1], sl[2]:sl[3]]
                ins.append(t)
            bufs[out] = f(ins)
            for name in free:
                bufs.pop(name, None)
        y = bufs[self._end]
        if y.dim() == 4 and not y.is_contiguous():
            y = nchw_contiguous(y)
        if y.dtype != torch.float32:
            y = y.float()
        return y

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        return self._run(x, self._fns, self.channels_last)

    def release(self) -> None:
        self._fns = []
        self._plan = []
