"""Capture an ``nn.Module`` into coinfer's IR with torch.fx and shape propagation.

Both module and functional forms are recognised (``nn.Conv2d`` or
``F.conv2d`` on ``get_attr`` weights, ``nn.ZeroPad2d`` or ``F.pad``,
``torch.flatten`` or ``x.view(x.size(0), -1)``...). Anything else raises
:class:`UnsupportedOpError` naming the node and the op — never a silently
wrong result.

The result is a :class:`CapturedModel`: the torch-free :class:`Graph` plus the
tensors (weights, BN statistics) and callables each node needs, which the
executor uses to compute any region of any node.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .ir import ExitBranch, Graph, GraphError, Node
from .propagate import propagate_shapes


class UnsupportedOpError(GraphError):
    """A node of the traced model that coinfer cannot execute by regions."""

    def __init__(self, node: str, op: str, why: str = "") -> None:
        self.node, self.op = node, op
        extra = f" ({why})" if why else ""
        super().__init__(
            f"node {node!r} uses {op}, which coinfer cannot partition{extra}; supported ops are "
            f"listed in docs/concepts.md#supported-ops — rewrite it with those or keep it out of the model"
        )


@dataclass
class CapturedModel:
    """A graph plus the torch state to execute any part of it."""

    graph: Graph
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    fns: dict[str, Callable[..., torch.Tensor]] = field(default_factory=dict)
    module: nn.Module | None = None

    def for_exit(self, exit_name: str | None) -> CapturedModel:
        return CapturedModel(self.graph.for_exit(exit_name), self.tensors, self.fns, self.module)

    def restrict(self, names: set[str]) -> CapturedModel:
        """A copy holding only the state of ``names`` (a worker keeps only its parts' layers)."""
        return CapturedModel(
            self.graph,
            {k: v for k, v in self.tensors.items() if k in names},
            {k: v for k, v in self.fns.items() if k in names},
            None,
        )


_ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
    nn.Tanh: "tanh", nn.GELU: "gelu", nn.ELU: "elu", nn.Hardtanh: "hardtanh",
}
_ACT_FUNCS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.leaky_relu: "leaky_relu",
    F.silu: "silu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid", torch.tanh: "tanh", F.tanh: "tanh", F.gelu: "gelu",
    F.elu: "elu", F.hardtanh: "hardtanh",
}
_ACT_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
_IDENTITY_MODULES = (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Identity)
_IDENTITY_FUNCS = {F.dropout, F.dropout2d, torch.dropout}
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}


def _pair(v: Any) -> list[int]:
    if isinstance(v, (tuple, list)):
        return [int(v[0]), int(v[1])] if len(v) == 2 else [int(v[0]), int(v[0])]
    return [int(v), int(v)]


def _act_fn(kind: str, kwargs: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    if kind == "relu":
        return torch.relu
    if kind == "relu6":
        return lambda x: F.hardtanh(x, 0.0, 6.0)
    if kind == "hardtanh":
        lo, hi = float(kwargs.get("min_val", -1.0)), float(kwargs.get("max_val", 1.0))
        return lambda x: F.hardtanh(x, lo, hi)
    if kind == "leaky_relu":
        slope = float(kwargs.get("negative_slope", 0.01))
        return lambda x: F.leaky_relu(x, slope)
    if kind == "elu":
        alpha = float(kwargs.get("alpha", 1.0))
        return lambda x: F.elu(x, alpha)
    if kind == "gelu":
        approx = str(kwargs.get("approximate", "none"))
        return lambda x: F.gelu(x, approximate=approx)
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "silu": F.silu, "sigmoid": torch.sigmoid, "hardswish": F.hardswish,
        "hardsigmoid": F.hardsigmoid, "tanh": torch.tanh}
    return fns[kind]


def _same_pad(k: int, s: int, d: int, size: int) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


class _Builder:
    def __init__(self, gm: torch.fx.GraphModule, name: str) -> None:
        self.gm = gm
        self.name = name
        self.nodes: list[Node] = []
        self.tensors: dict[str, dict[str, torch.Tensor]] = {}
        self.fns: dict[str, Callable[..., torch.Tensor]] = {}
        self.alias: dict[str, str] = {}  # fx node name -> IR node name (identity ops vanish)
        self.modules = dict(gm.named_modules())

    # -- helpers ------------------------------------------------------------
    def shape(self, n: torch.fx.Node) -> tuple[int, ...]:
        tm = n.meta.get("tensor_meta")
        if tm is None or not hasattr(tm, "shape"):
            raise UnsupportedOpError(n.name, _describe(n, self.modules), "it does not produce one tensor")
        return tuple(int(d) for d in tm.shape)

    def ref(self, a: Any, n: torch.fx.Node) -> str:
        if not isinstance(a, torch.fx.Node):
            raise UnsupportedOpError(n.name, _describe(n, self.modules), "expects a tensor input")
        if a.name not in self.alias:
            raise UnsupportedOpError(n.name, _describe(n, self.modules), f"its input {a.name!r} is not a tensor op")
        return self.alias[a.name]

    def is_tensor(self, a: Any) -> bool:
        return isinstance(a, torch.fx.Node) and a.name in self.alias

    def attr_tensor(self, a: Any, n: torch.fx.Node) -> torch.Tensor | None:
        if a is None:
            return None
        if isinstance(a, torch.fx.Node) and a.op == "get_attr":
            obj: Any = self.gm
            for part in str(a.target).split("."):
                obj = getattr(obj, part)
            return obj.detach()
        raise UnsupportedOpError(n.name, _describe(n, self.modules), "weights must be parameters or buffers")

    def add(self, n: torch.fx.Node, op: str, inputs: list[str], attrs: dict[str, Any] | None = None,
            tensors: Mapping[str, torch.Tensor | None] | None = None,
            fn: Callable[..., torch.Tensor] | None = None, flops: int = 0, spatial: bool = True) -> None:
        shape = self.shape(n)
        present = {k: v for k, v in (tensors or {}).items() if v is not None}
        params = sum(int(v.numel()) for k, v in present.items() if k in ("weight", "bias"))
        pbytes = sum(int(v.numel() * v.element_size()) for v in present.values())
        target = str(n.target) if n.op != "call_function" else getattr(n.target, "__name__", str(n.target))
        self.nodes.append(Node(n.name, op, tuple(inputs), shape, attrs or {}, int(flops), params,
                               pbytes, spatial, target))
        if present:
            self.tensors[n.name] = present
        if fn is not None:
            self.fns[n.name] = fn
        self.alias[n.name] = n.name

    # -- op handlers ----------------------------------------------------------
    def conv(self, n: torch.fx.Node, x: str, w: torch.Tensor, b: torch.Tensor | None,
             stride: Any, padding: Any, dilation: Any, groups: int) -> None:
        if w.dim() != 4:
            raise UnsupportedOpError(n.name, "a non-2d convolution")
        kh, kw = int(w.shape[2]), int(w.shape[3])
        s, d = _pair(stride), _pair(dilation)
        in_shape = self.nodes[self.nodes_index(x)].shape
        if isinstance(padding, str):
            if padding == "valid":
                pad = [0, 0, 0, 0]
            else:  # 'same' (stride 1): torch puts the extra on the bottom/right
                pt, pb = _same_pad(kh, 1, d[0], in_shape[2])
                pl, pr = _same_pad(kw, 1, d[1], in_shape[3])
                pad = [pt, pb, pl, pr]
        else:
            p = _pair(padding)
            pad = [p[0], p[0], p[1], p[1]]
        out = self.shape(n)
        flops = 2 * math.prod(out) * int(w.shape[1]) * kh * kw
        attrs = {"kernel": [kh, kw], "stride": s, "dilation": d, "pad": pad, "groups": int(groups),
                 "cin": int(in_shape[1]), "cout": int(w.shape[0])}
        self.add(n, "conv", [x], attrs, {"weight": w, "bias": b}, flops=flops)

    def pool(self, n: torch.fx.Node, kind: str, x: str, kernel: Any, stride: Any, padding: Any,
             dilation: Any, ceil_mode: bool, count_include_pad: bool = True,
             divisor_override: int | None = None) -> None:
        k = _pair(kernel)
        s = _pair(stride if stride not in (None, [], ()) else kernel)
        p = _pair(padding)
        attrs: dict[str, Any] = {"kernel": k, "stride": s, "dilation": _pair(dilation),
                                 "pad": [p[0], p[0], p[1], p[1]], "ceil_mode": bool(ceil_mode)}
        if kind == "avgpool":
            if attrs["dilation"] != [1, 1]:
                raise UnsupportedOpError(n.name, "avg_pool2d with dilation")
            attrs["count_include_pad"] = bool(count_include_pad)
            attrs["divisor_override"] = divisor_override
        self.add(n, kind, [x], attrs)

    def pad(self, n: torch.fx.Node, x: str, pads: Any, value: float, mode: str = "constant") -> None:
        if mode != "constant":
            raise UnsupportedOpError(n.name, f"pad mode {mode!r}", "only constant padding is supported")
        pads = [int(v) for v in pads]
        if len(pads) == 2:
            pads = pads + [0, 0]
        if len(pads) != 4:
            raise UnsupportedOpError(n.name, "padding of a non-spatial dimension")
        left, right, top, bottom = pads
        if min(pads) < 0:
            raise UnsupportedOpError(n.name, "negative padding (cropping)")
        attrs = {"kernel": [1, 1], "stride": [1, 1], "dilation": [1, 1],
                 "pad": [top, bottom, left, right], "value": float(value)}
        self.add(n, "pad", [x], attrs)

    def nodes_index(self, name: str) -> int:
        for i in range(len(self.nodes) - 1, -1, -1):
            if self.nodes[i].name == name:
                return i
        raise KeyError(name)

    def node_shape(self, name: str) -> tuple[int, ...]:
        return self.nodes[self.nodes_index(name)].shape

    def binary(self, n: torch.fx.Node, op: str, a: Any, b: Any) -> None:
        if self.is_tensor(a) and self.is_tensor(b):
            ia, ib = self.ref(a, n), self.ref(b, n)
            sa, sb, so = self.node_shape(ia), self.node_shape(ib), self.shape(n)
            spatial = sa == so and sb == so
            if not spatial and not (len(so) == 4 and {sa, sb} >= {so}):
                raise UnsupportedOpError(n.name, f"{op} with broadcasting {sa} x {sb}")
            # SE-style scaling by a pooled vector: fine, but only inside a whole stage
            self.add(n, op, [ia, ib], spatial=spatial)
        elif self.is_tensor(a) or self.is_tensor(b):
            t, c = (a, b) if self.is_tensor(a) else (b, a)
            if not isinstance(c, (int, float)):
                raise UnsupportedOpError(n.name, f"{op} with a non-scalar constant")
            attrs = {"fn": op, "const": float(c)}
            self.add(n, "scale", [self.ref(t, n)], attrs)
        else:
            raise UnsupportedOpError(n.name, f"{op} of two constants")

    def flatten_like(self, n: torch.fx.Node, x: str) -> None:
        src = self.node_shape(x)
        out = self.shape(n)
        if len(out) != 2 or out[0] != src[0] or out[1] != math.prod(src[1:]):
            raise UnsupportedOpError(n.name, f"reshape {src} -> {out}", "only flatten to (N, -1) is supported")
        if src == out:
            self.alias[n.name] = x
            return
        self.add(n, "flatten", [x], spatial=False)

    def linear(self, n: torch.fx.Node, x: str, w: torch.Tensor, b: torch.Tensor | None) -> None:
        out = self.shape(n)
        flops = 2 * math.prod(out) * int(w.shape[1])
        self.add(n, "linear", [x], {"in": int(w.shape[1]), "out": int(w.shape[0])},
                 {"weight": w, "bias": b}, flops=flops, spatial=False)

    def bn(self, n: torch.fx.Node, x: str, mean: torch.Tensor | None, var: torch.Tensor | None,
           w: torch.Tensor | None, b: torch.Tensor | None, eps: float) -> None:
        if mean is None or var is None:
            raise UnsupportedOpError(n.name, "batch norm without running statistics")
        if len(self.node_shape(x)) != 4:
            raise UnsupportedOpError(n.name, "batch norm on a non-4d tensor")
        self.add(n, "bn", [x], {"eps": float(eps)},
                 {"running_mean": mean, "running_var": var, "weight": w, "bias": b})

    def act(self, n: torch.fx.Node, x: str, kind: str, kwargs: dict[str, Any]) -> None:
        clean = {k: v for k, v in kwargs.items() if k != "inplace" and isinstance(v, (int, float, str))}
        self.add(n, "act", [x], {"fn": kind, **clean}, fn=_act_fn(kind, clean))

    def global_pool(self, n: torch.fx.Node, x: str, kind: str, keepdim: bool) -> None:
        self.add(n, "global_pool", [x], {"kind": kind, "keepdim": bool(keepdim)}, spatial=False)

    def adaptive(self, n: torch.fx.Node, x: str, kind: str, size: Any) -> None:
        src = self.node_shape(x)
        out = self.shape(n)
        if src == out:
            self.alias[n.name] = x
            return
        self.add(n, "adaptive_pool", [x], {"kind": kind, "size": list(out[2:])}, spatial=False)

    # -- dispatch -------------------------------------------------------------
    def visit(self, n: torch.fx.Node) -> None:
        if n.op == "placeholder":
            if self.nodes:
                raise UnsupportedOpError(n.name, "a second model input", "models take one image tensor")
            self.add(n, "input", [])
            return
        if n.op in ("get_attr", "output"):
            return
        if "tensor_meta" not in n.meta or not hasattr(n.meta["tensor_meta"], "shape"):
            return  # meta values: x.size(0), getitem on sizes... consumed through shapes
        args, kw = list(n.args), dict(n.kwargs)

        def arg(i: int, key: str, default: Any = None) -> Any:
            if i < len(args):
                return args[i]
            return kw.get(key, default)

        if n.op == "call_module":
            m = self.modules[str(n.target)]
            x = self.ref(args[0], n) if args else self.ref(kw.get("input"), n)
            if isinstance(m, _IDENTITY_MODULES):
                self.alias[n.name] = x
            elif isinstance(m, nn.Conv2d):
                if m.padding_mode != "zeros":
                    raise UnsupportedOpError(n.name, f"Conv2d with padding_mode={m.padding_mode!r}")
                self.conv(n, x, m.weight.detach(), None if m.bias is None else m.bias.detach(),
                          m.stride, m.padding, m.dilation, m.groups)
            elif isinstance(m, nn.MaxPool2d):
                if m.return_indices:
                    raise UnsupportedOpError(n.name, "MaxPool2d(return_indices=True)")
                self.pool(n, "maxpool", x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
            elif isinstance(m, nn.AvgPool2d):
                self.pool(n, "avgpool", x, m.kernel_size, m.stride, m.padding, 1, m.ceil_mode,
                          m.count_include_pad, m.divisor_override)
            elif isinstance(m, nn.BatchNorm2d):
                self.bn(n, x, m.running_mean, m.running_var,
                        None if m.weight is None else m.weight.detach(),
                        None if m.bias is None else m.bias.detach(), m.eps)
            elif type(m) in _ACT_MODULES:
                kind = _ACT_MODULES[type(m)]
                self.act(n, x, kind, {k: getattr(m, k) for k in ("negative_slope", "alpha", "min_val",
                                                                  "max_val", "approximate") if hasattr(m, k)})
            elif isinstance(m, nn.LocalResponseNorm):
                self.add(n, "lrn", [x], {"size": m.size, "alpha": m.alpha, "beta": m.beta, "k": m.k})
            elif isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)):
                self.pad(n, x, m.padding, float(getattr(m, "value", 0.0)))
            elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                kind = "avg" if isinstance(m, nn.AdaptiveAvgPool2d) else "max"
                self.adaptive(n, x, kind, m.output_size)
            elif isinstance(m, nn.Flatten):
                self.flatten_like(n, x)
            elif isinstance(m, nn.Linear):
                self.linear(n, x, m.weight.detach(), None if m.bias is None else m.bias.detach())
            else:
                raise UnsupportedOpError(n.name, f"module {type(m).__name__} ({n.target})")
            return

        if n.op == "call_function":
            f = n.target
            if f in (F.conv2d, torch.conv2d):
                self.conv(n, self.ref(arg(0, "input"), n), self.attr_tensor(arg(1, "weight"), n),  # type: ignore[arg-type]
                          self.attr_tensor(arg(2, "bias"), n), arg(3, "stride", 1), arg(4, "padding", 0),
                          arg(5, "dilation", 1), int(arg(6, "groups", 1)))
            elif f in _ACT_FUNCS:
                kwargs = dict(kw)
                if _ACT_FUNCS[f] == "leaky_relu" and len(args) > 1:
                    kwargs["negative_slope"] = args[1]
                if _ACT_FUNCS[f] == "hardtanh" and len(args) > 2:
                    kwargs["min_val"], kwargs["max_val"] = args[1], args[2]
                self.act(n, self.ref(args[0], n), _ACT_FUNCS[f], kwargs)
            elif f in _IDENTITY_FUNCS:
                self.alias[n.name] = self.ref(arg(0, "input"), n)
            elif f in (F.max_pool2d, torch.max_pool2d):
                if arg(6, "return_indices", False):
                    raise UnsupportedOpError(n.name, "max_pool2d(return_indices=True)")
                self.pool(n, "maxpool", self.ref(args[0], n), arg(1, "kernel_size"), arg(2, "stride"),
                          arg(3, "padding", 0), arg(4, "dilation", 1), bool(arg(5, "ceil_mode", False)))
            elif f in (F.avg_pool2d, torch._C._nn.avg_pool2d):
                self.pool(n, "avgpool", self.ref(args[0], n), arg(1, "kernel_size"), arg(2, "stride"),
                          arg(3, "padding", 0), 1, bool(arg(4, "ceil_mode", False)),
                          bool(arg(5, "count_include_pad", True)), arg(6, "divisor_override"))
            elif f in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
                kind = "avg" if f is F.adaptive_avg_pool2d else "max"
                self.adaptive(n, self.ref(args[0], n), kind, arg(1, "output_size"))
            elif f is F.pad:
                self.pad(n, self.ref(args[0], n), arg(1, "pad"), float(arg(3, "value", 0.0) or 0.0),
                         arg(2, "mode", "constant"))
            elif f is F.batch_norm:
                if arg(5, "training", False):
                    raise UnsupportedOpError(n.name, "batch_norm in training mode")
                self.bn(n, self.ref(args[0], n), self.attr_tensor(arg(1, "running_mean"), n),
                        self.attr_tensor(arg(2, "running_var"), n), self.attr_tensor(arg(3, "weight"), n),
                        self.attr_tensor(arg(4, "bias"), n), float(arg(7, "eps", 1e-5)))
            elif f in (operator.add, operator.iadd, torch.add):
                if "alpha" in kw and kw["alpha"] != 1:
                    raise UnsupportedOpError(n.name, "add with alpha")
                self.binary(n, "add", args[0], args[1])
            elif f in (operator.mul, operator.imul, torch.mul):
                self.binary(n, "mul", args[0], args[1])
            elif f is torch.cat:
                tensors = arg(0, "tensors")
                dim = arg(1, "dim", 0)
                if len(self.shape(n)) != 4 or dim not in (1, -3):
                    raise UnsupportedOpError(n.name, f"torch.cat along dim {dim}", "only channel concat")
                self.add(n, "cat", [self.ref(t, n) for t in tensors])
            elif f is torch.flatten:
                self.flatten_like(n, self.ref(args[0], n))
            elif f is F.linear:
                self.linear(n, self.ref(args[0], n), self.attr_tensor(arg(1, "weight"), n),  # type: ignore[arg-type]
                            self.attr_tensor(arg(2, "bias"), n))
            elif f is torch.mean:
                self._mean(n, args, kw)
            else:
                raise UnsupportedOpError(n.name, f"function {getattr(f, '__name__', f)}")
            return

        if n.op == "call_method":
            meth = str(n.target)
            if meth in _IDENTITY_METHODS:
                self.alias[n.name] = self.ref(args[0], n)
            elif meth in ("view", "reshape", "flatten"):
                self.flatten_like(n, self.ref(args[0], n))
            elif meth in _ACT_METHODS:
                self.act(n, self.ref(args[0], n), _ACT_METHODS[meth], {})
            elif meth in ("add", "add_"):
                self.binary(n, "add", args[0], args[1])
            elif meth in ("mul", "mul_"):
                self.binary(n, "mul", args[0], args[1])
            elif meth == "mean":
                self._mean(n, args, kw)
            else:
                raise UnsupportedOpError(n.name, f"tensor method .{meth}()")
            return
        raise UnsupportedOpError(n.name, f"fx op {n.op}")  # pragma: no cover

    def _mean(self, n: torch.fx.Node, args: list[Any], kw: dict[str, Any]) -> None:
        x = self.ref(args[0], n)
        dims = args[1] if len(args) > 1 else kw.get("dim")
        keep = bool(args[2] if len(args) > 2 else kw.get("keepdim", False))
        rank = len(self.node_shape(x))
        if isinstance(dims, int):
            dims = (dims,)
        if dims is None or rank != 4 or sorted(int(d) % 4 for d in dims) != [2, 3]:
            raise UnsupportedOpError(n.name, f"mean over dims {dims}", "only global (H, W) mean")
        self.global_pool(n, x, "avg", keep)


def _describe(n: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    if n.op == "call_module":
        return f"module {type(modules[str(n.target)]).__name__} ({n.target})"
    if n.op == "call_function":
        return f"function {getattr(n.target, '__name__', n.target)}"
    return f"{n.op} {n.target}"


def _trace(model: nn.Module, example: torch.Tensor, what: str) -> torch.fx.GraphModule:
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - report any tracing failure as a user error
        first = (str(e).splitlines() or [type(e).__name__])[0]
        fix = ("create the module in __init__ (or call torch.nn.functional in forward)"
               if "not installed as a submodule" in first else "no data-dependent control flow")
        raise GraphError(f"torch.fx could not trace {what}: {first} — models must be fx-traceable ({fix})") from None
    propagate_shapes(gm, example, what)
    return gm


def _build(gm: torch.fx.GraphModule, name: str, prefix: str = "") -> _Builder:
    b = _Builder(gm, name)
    for n in gm.graph.nodes:
        b.visit(n)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    res = out.args[0]
    if not isinstance(res, torch.fx.Node) or res.name not in b.alias:
        raise UnsupportedOpError("output", "a model output that is not one tensor")
    final = b.alias[res.name]
    if b.nodes[-1].name != final:
        # drop nodes after the output producer that the output does not use
        keep = b.nodes_index(final)
        b.nodes = b.nodes[: keep + 1]
    if prefix:
        ren = {nd.name: prefix + nd.name for nd in b.nodes}
        b.nodes = [Node(ren[nd.name], nd.op, tuple(ren[i] for i in nd.inputs), nd.shape, nd.attrs,
                        nd.flops, nd.params, nd.param_bytes, nd.spatial, nd.target) for nd in b.nodes]
        b.tensors = {ren[k]: v for k, v in b.tensors.items()}
        b.fns = {ren[k]: v for k, v in b.fns.items()}
    return b


def capture(model: nn.Module, input_shape: tuple[int, ...] | list[int], name: str | None = None) -> CapturedModel:
    """Trace ``model`` at ``input_shape`` into a :class:`CapturedModel`.

    Exit heads (``model.exit_points`` / ``model.exit_heads``, see
    :mod:`coinfer.zoo`) are captured as :class:`ExitBranch` es of the graph.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 4 or min(input_shape) <= 0:
        raise GraphError(f"input shape must be 1,C,H,W with positive sizes, got {list(input_shape)}")
    model = model.eval()
    example = torch.zeros(input_shape)
    gm = _trace(model, example, f"model {name or type(model).__name__}")
    b = _build(gm, name or type(model).__name__)
    if len(b.nodes) < 2:  # only the input: nothing to plan (plan then failed on an empty cut-point list)
        raise GraphError(f"model {name or type(model).__name__} computes nothing (its output is its input); "
                         f"coinfer needs at least one operation")
    exits: dict[str, ExitBranch] = {}
    tensors, fns = dict(b.tensors), dict(b.fns)
    points: dict[str, str] = getattr(model, "exit_points", {}) or {}
    heads = getattr(model, "exit_heads", None)
    if points and heads is not None:
        # the fx node producing each submodule's output: the last node traced inside it
        # (containers such as ResNet's ``layer1`` have no node of their own)
        attach_of: dict[str, str] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module":
                attach_of[str(n.target)] = n.name
            for path in (n.meta.get("nn_module_stack") or {}):
                if path in points.values():
                    attach_of[path] = n.name
        acts: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            hooks = [model.get_submodule(p).register_forward_hook(
                lambda _m, _i, o, p=p: acts.__setitem__(p, o)) for p in points.values()]
            try:
                model(example)
            finally:
                for h in hooks:
                    h.remove()
        for ename, path in points.items():
            if path not in attach_of:
                raise GraphError(f"exit {ename!r} attaches to {path!r}, which is not a called submodule")
            attach = b.alias.get(attach_of[path], attach_of[path])
            if tuple(acts[path].shape) != tuple(b.node_shape(attach)):
                raise GraphError(f"exit {ename!r}: could not locate the output of {path!r} in the traced graph")
            head_gm = _trace(heads[ename], acts[path], f"exit head {ename}")
            hb = _build(head_gm, ename, prefix=f"{ename}.")
            head_nodes = hb.nodes[1:]
            inp = hb.nodes[0].name
            head_nodes = [Node(nd.name, nd.op, tuple(attach if i == inp else i for i in nd.inputs),
                               nd.shape, nd.attrs, nd.flops, nd.params, nd.param_bytes, nd.spatial,
                               nd.target) for nd in head_nodes]
            exits[ename] = ExitBranch(ename, attach, head_nodes)
            tensors.update(hb.tensors)
            fns.update(hb.fns)
    graph = Graph(name or type(model).__name__, b.nodes, exits)
    for e in exits.values():
        if not graph.is_cut_point(e.attach):
            raise GraphError(f"exit {e.name!r} attaches at {e.attach!r}, which is not a cut point")
    return CapturedModel(graph, tensors, fns, model)
