"""Import an ONNX CNN as a coinfer-native ``torch.fx.GraphModule``.

``coinfer inspect model.onnx`` (and every MODEL argument ending in ``.onnx``)
goes through :func:`load_onnx`. The importer does not interpret ONNX at run
time: it *rebuilds* the network from the building blocks that
:mod:`coinfer.graph.capture` understands — ``nn.Conv2d``, ``nn.MaxPool2d``,
``nn.AvgPool2d``, ``nn.BatchNorm2d``, the activation modules,
``nn.ZeroPad2d`` / ``nn.ConstantPad2d``, ``nn.AdaptiveAvgPool2d`` /
``nn.AdaptiveMaxPool2d``, ``nn.Linear``, ``torch.flatten``, ``torch.mean``
over (H, W), ``torch.cat(dim=1)``, ``+`` and ``*`` — wired into a
``torch.fx.Graph``. Capturing the result therefore gives the same IR a
hand-written PyTorch model would, and every partitioning strategy applies.

Why not a converter package (see ``docs/onnx.md``): onnx2torch imports
torchvision, which cannot be installed here; onnx2fx converts exactly but
lowers every op to its own helper function, each of which capture would need
a mapping for. A direct importer of the CNN subset yields clean native ops and
precise, one-line errors for anything outside it.

What the importer does, in order:

1. load the file and validate it with ``onnx.checker``;
2. fix the one graph input to a static ``N,C,H,W`` shape (a dynamic batch
   becomes 1; other dynamic dims need ``--input-shape``);
3. reject unsupported ops reachable from the output, in one line;
4. run ONNX shape inference (strict) on the now static model;
5. translate node by node (opsets 11-19 tested; both the attribute and the
   input forms of Clip/Pad/Squeeze/Unsqueeze/ReduceMean/Split are read),
   folding shape arithmetic (``Shape -> Gather -> Concat -> Reshape`` ...)
   on constants, fusing ``MatMul + Add`` into ``nn.Linear`` and per-channel
   ``Add`` / ``Mul`` constants into the producing Conv / Linear;
6. cross-check every tensor's shape against ONNX shape inference, so a
   translation that disagrees with the ONNX semantics (e.g. a ceil-mode
   pooling corner case) is an error instead of a silently wrong model.
"""

from __future__ import annotations

import builtins
import keyword
import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx
from torch import nn

from .modelspec import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["SUPPORTED_OPS", "load_onnx"]

_FLT_MAX = float(np.finfo(np.float32).max)

#: Ops whose inputs are all constants are evaluated with numpy at import time.
_FOLDABLE = frozenset(
    {
        "Constant",
        "Identity",
        "Shape",
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Cast",
        "Reshape",
        "Slice",
        "Split",
        "Transpose",
        "ConstantOfShape",
        "Add",
        "Sub",
        "Mul",
        "Div",
    }
)


@dataclass
class _T:
    """A run-time tensor: its fx node and an example value (for shapes)."""

    node: torch.fx.Node
    example: torch.Tensor
    owner: nn.Conv2d | nn.Linear | None = None  # the Conv2d / Linear producing exactly this value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.example.shape)


_Value = Any  # _T | np.ndarray


def _first_line(e: BaseException) -> str:
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ModelError(
            "ONNX import needs the 'onnx' extra: pip install 'coinfer[onnx]'"
        ) from None
    return onnx


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    from onnx import helper

    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode("utf-8", "replace") for s in v]
        out[a.name] = v
    return out


def _label(text: str) -> str:
    s = re.sub(r"[^0-9a-zA-Z_]+", "_", text).strip("_")
    s = re.sub(r"_+", "_", s)
    if not s or s[0].isdigit():
        s = "n_" + s
    if keyword.iskeyword(s) or s in dir(builtins):
        s += "_"
    return s


class _Importer:
    """Translate one static-shaped ONNX graph into a ``torch.fx.GraphModule``."""

    def __init__(
        self,
        model: onnx.ModelProto,
        path: str,
        shape: tuple[int, int, int, int],
        input_name: str,
        onnx_shapes: dict[str, tuple[int, ...]],
    ) -> None:
        self.model = model
        self.path = path
        self.input_shape = shape
        self.input_name = input_name
        self.onnx_shapes = onnx_shapes
        self.opsets = {
            (imp.domain if imp.domain != "ai.onnx" else ""): int(imp.version)
            for imp in model.opset_import
        }
        self.graph = torch.fx.Graph()
        self.root = nn.Module()
        self.used_names: set[str] = set()
        self.values: dict[str, _Value] = {}
        self.consumers: Counter[str] = Counter()
        for n in model.graph.node:
            for i in n.input:
                if i:
                    self.consumers[i] += 1
        for o in model.graph.output:
            self.consumers[o.name] += 1
        self.node: onnx.NodeProto | None = None  # the node being translated (for errors)

    # -- errors ---------------------------------------------------------------------------
    def opset(self, node: onnx.NodeProto) -> int | str:
        return self.opsets.get(node.domain if node.domain != "ai.onnx" else "", "?")

    def fail(self, why: str) -> ModelError:
        """A one-line error about the node being translated."""
        n = self.node
        assert n is not None
        name = n.name or (n.output[0] if n.output else "?")
        return ModelError(f"ONNX node {name!r} (op {n.op_type}, opset {self.opset(n)}): {why}")

    # -- values ---------------------------------------------------------------------------
    def get(self, name: str) -> _Value | None:
        if not name:
            return None
        if name not in self.values:
            raise self.fail(f"input {name!r} is not produced by any earlier node or initializer")
        return self.values[name]

    def tensor(self, v: _Value | None, what: str = "input") -> _T:
        if isinstance(v, _T):
            return v
        raise self.fail(f"its {what} must be the image-derived tensor, not a constant")

    def const(self, v: _Value | None, what: str) -> np.ndarray:
        if isinstance(v, np.ndarray):
            return v
        if v is None:
            raise self.fail(f"its {what} is missing")
        raise self.fail(
            f"its {what} must be a constant (initializer or Constant), not computed from the input"
        )

    def scalar(self, v: _Value | None, what: str, default: float | None) -> float | None:
        if v is None:
            return default
        c = self.const(v, what)
        if c.size != 1:
            raise self.fail(f"its {what} must be a scalar, got shape {list(c.shape)}")
        return float(c.reshape(()))

    def ints(self, v: _Value | None, what: str) -> list[int] | None:
        if v is None:
            return None
        return [int(i) for i in self.const(v, what).reshape(-1)]

    def set_output(self, name: str, v: _Value) -> None:
        if isinstance(v, _T):
            want = self.onnx_shapes.get(name)
            if want is not None and want != v.shape:
                raise self.fail(
                    f"the importer computes shape {list(v.shape)} for {name!r} but ONNX "
                    f"shape inference gives {list(want)}; this variant is not supported"
                )
        self.values[name] = v

    # -- graph building -------------------------------------------------------------------
    def unique(self, base: str) -> str:
        name = _label(base)
        cand, k = name, 1
        while cand in self.used_names or hasattr(self.root, cand) or hasattr(nn.Module, cand):
            k += 1
            cand = f"{name}_{k}"
        self.used_names.add(cand)
        return cand

    def base_name(self) -> str:
        n = self.node
        assert n is not None
        return n.name or (n.output[0] if n.output else n.op_type)

    def module(self, mod: nn.Module, x: _T, suffix: str = "") -> _T:
        """Append ``mod(x)`` as a ``call_module`` node."""
        mod.eval()
        name = self.unique(self.base_name() + suffix)
        self.root.add_module(name, mod)
        fx = self.graph.call_module(name, (x.node,))
        with torch.no_grad():
            ex = mod(x.example)
        owner = mod if isinstance(mod, (nn.Conv2d, nn.Linear)) else None
        return _T(fx, ex, owner)

    def function(self, fn: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> _T:
        """Append ``fn(*args, **kwargs)`` as a ``call_function`` node (``_T`` args become nodes)."""

        def fx_arg(a: Any) -> Any:
            if isinstance(a, _T):
                return a.node
            if isinstance(a, (list, tuple)):
                return type(a)(fx_arg(b) for b in a)
            return a

        def ex_arg(a: Any) -> Any:
            if isinstance(a, _T):
                return a.example
            if isinstance(a, (list, tuple)):
                return type(a)(ex_arg(b) for b in a)
            return a

        fx = self.graph.create_node(
            "call_function",
            fn,
            tuple(fx_arg(a) for a in args),
            {k: fx_arg(v) for k, v in kwargs.items()},
            name=self.unique(self.base_name()),
        )
        with torch.no_grad():
            ex = fn(*(ex_arg(a) for a in args), **{k: ex_arg(v) for k, v in kwargs.items()})
        return _T(fx, ex)

    def flatten(self, x: _T) -> _T:
        if len(x.shape) == 2:
            return x
        return self.function(torch.flatten, x, 1)

    # -- driver ---------------------------------------------------------------------------
    def run(self, order: list[onnx.NodeProto]) -> torch.fx.GraphModule:
        from onnx import numpy_helper

        for init in self.model.graph.initializer:
            self.values[init.name] = numpy_helper.to_array(init)
        ph = self.graph.placeholder(_label(self.input_name) if self.input_name else "x")
        self.values[self.input_name] = _T(ph, torch.zeros(self.input_shape))
        for node in order:
            self.node = node
            ins = [self.get(i) for i in node.input]
            attrs = _attrs(node)
            present = [v for v in ins if v is not None]
            if node.op_type in _FOLDABLE and (
                node.op_type == "Shape" or all(isinstance(v, np.ndarray) for v in present)
            ):
                outs = self.fold(node, ins, attrs)
                for name, v in zip(node.output, outs):
                    if name:
                        self.values[name] = v
                continue
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None:  # a foldable op applied to the image tensor
                raise self.fail(
                    f"{node.op_type} of the image-derived tensor is not supported "
                    f"(only of constants, which are folded at import)"
                )
            outs = handler(node, ins, attrs)
            if not isinstance(outs, list):
                outs = [outs]
            for k, name in enumerate(node.output):
                if not name:
                    continue
                if k >= len(outs):
                    if self.consumers[name]:
                        raise self.fail(
                            f"its output #{k} ({name!r}) is used, which is not supported"
                        )
                    continue
                self.set_output(name, outs[k])
        self.node = None
        out_name = self.model.graph.output[0].name
        res = self.values.get(out_name)
        if not isinstance(res, _T):
            raise ModelError(
                f"ONNX model {self.path!r}: its output {out_name!r} does not depend on the input"
            )
        self.graph.output(res.node)
        gm = torch.fx.GraphModule(self.root, self.graph, class_name="OnnxModel")
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()
        return gm.eval()

    # -- constant folding -----------------------------------------------------------------
    def fold(
        self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]
    ) -> list[_Value]:
        from onnx import helper, numpy_helper

        op = node.op_type
        if op == "Constant":
            if "value" in a:
                return [numpy_helper.to_array(a["value"])]
            for key, dt in (
                ("value_float", np.float32),
                ("value_floats", np.float32),
                ("value_int", np.int64),
                ("value_ints", np.int64),
            ):
                if key in a:
                    return [np.asarray(a[key], dtype=dt)]
            raise self.fail(f"Constant with attributes {sorted(a)} is not supported")
        if op == "Shape":
            v = ins[0]
            shp = np.asarray(v.shape if isinstance(v, (_T, np.ndarray)) else (), dtype=np.int64)
            return [shp[a.get("start", 0) : a.get("end", len(shp))]]
        c: list[Any] = ins  # all constants (or None) from here on
        if op == "Identity":
            return [c[0]]
        if op == "Cast":
            return [c[0].astype(helper.tensor_dtype_to_np_dtype(int(a["to"])))]
        if op == "Gather":
            return [np.take(c[0], c[1].astype(np.int64), axis=int(a.get("axis", 0)))]
        if op in ("Unsqueeze", "Squeeze"):
            axes = self.ints(c[1], "axes") if len(c) > 1 and c[1] is not None else a.get("axes")
            x = c[0]
            if op == "Squeeze":
                if axes is None:
                    return [np.squeeze(x)]
                return [np.squeeze(x, axis=tuple(int(i) % x.ndim for i in axes))]
            rank = x.ndim + len(axes or [])
            for ax in sorted(int(i) % rank for i in axes or []):
                x = np.expand_dims(x, ax)
            return [x]
        if op == "ConstantOfShape":
            fill = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
            return [
                np.full([int(d) for d in c[0].reshape(-1)], fill.reshape(-1)[0], dtype=fill.dtype)
            ]
        if op == "Transpose":
            return [np.transpose(c[0], a.get("perm"))]
        if op == "Concat":
            return [np.concatenate([v for v in c if v is not None], axis=int(a["axis"]))]
        if op == "Reshape":
            target = self.reshape_target(
                c[0].shape, self.ints(c[1], "shape") or [], bool(a.get("allowzero", 0))
            )
            return [c[0].reshape(target)]
        if op == "Slice":
            x = c[0]
            if len(c) > 1:
                starts, ends = self.ints(c[1], "starts"), self.ints(c[2], "ends")
                axes = self.ints(c[3], "axes") if len(c) > 3 else None
                steps = self.ints(c[4], "steps") if len(c) > 4 else None
            else:
                starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
            assert starts is not None and ends is not None
            axes = axes or list(range(len(starts)))
            steps = steps or [1] * len(starts)
            idx = [slice(None)] * x.ndim
            for s, e, ax, st in zip(starts, ends, axes, steps):
                idx[int(ax) % x.ndim] = slice(int(s), int(e), int(st))
            return [x[tuple(idx)]]
        if op == "Split":
            x, axis = c[0], int(a.get("axis", 0))
            sizes = self.ints(c[1], "split") if len(c) > 1 and c[1] is not None else a.get("split")
            if sizes is None:
                k = int(a.get("num_outputs", len(node.output)))
                step = -(-x.shape[axis] // k)
                sizes = [min(step, x.shape[axis] - i * step) for i in range(k)]
            return list(np.split(x, np.cumsum(sizes)[:-1], axis=axis))
        fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}.get(op)
        if fn is not None:
            return [fn(c[0], c[1]).astype(np.result_type(c[0], c[1]))]
        if op == "Div":
            if np.issubdtype(c[0].dtype, np.integer):
                return [np.trunc(c[0] / c[1]).astype(c[0].dtype)]
            return [(c[0] / c[1]).astype(c[0].dtype)]
        raise self.fail("cannot fold")  # pragma: no cover

    def reshape_target(self, src: Sequence[int], shape: list[int], allowzero: bool) -> list[int]:
        out = [int(src[i]) if (v == 0 and not allowzero) else int(v) for i, v in enumerate(shape)]
        if out.count(-1) > 1:
            raise self.fail(f"reshape target {shape} has more than one -1")
        if -1 in out:
            known = math.prod(d for d in out if d != -1)
            out[out.index(-1)] = math.prod(src) // known if known else 0
        if math.prod(out) != math.prod(src):
            raise self.fail(f"cannot reshape {list(src)} to {shape}")
        return out

    # -- helpers for conv / pool padding ------------------------------------------------
    def pads(
        self,
        a: dict[str, Any],
        spatial: Sequence[int],
        kernel: Sequence[int],
        strides: Sequence[int],
        dil: Sequence[int],
    ) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) from ``pads`` or ``auto_pad``."""
        auto = a.get("auto_pad", "NOTSET") or "NOTSET"
        if auto == "NOTSET":
            p = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
            if len(p) != 4:
                raise self.fail(f"pads {p} are not 2-d (4 values expected)")
            if min(p) < 0:
                raise self.fail(f"negative pads {p} are not supported")
            return p[0], p[1], p[2], p[3]
        if auto == "VALID":
            return 0, 0, 0, 0
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            raise self.fail(f"auto_pad={auto!r} is not supported")
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dil):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin[0], begin[1], end[0], end[1]

    def spatial_attrs(
        self, a: dict[str, Any], x: _T, kernel: Sequence[int]
    ) -> tuple[list[int], list[int], tuple[int, int, int, int]]:
        if len(x.shape) != 4 or len(kernel) != 2:
            raise self.fail(
                f"only 2-d NCHW ops are supported (input shape {list(x.shape)}, "
                f"kernel {list(kernel)})"
            )
        strides = [int(v) for v in a.get("strides", [1, 1])]
        dil = [int(v) for v in a.get("dilations", [1, 1])]
        return strides, dil, self.pads(a, x.shape[2:], kernel, strides, dil)

    # -- op handlers (runtime tensors) ---------------------------------------------------
    def op_Conv(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        x = self.tensor(ins[0], "input X")
        w = self.const(ins[1], "weight W").astype(np.float32)
        b = (
            self.const(ins[2], "bias B").astype(np.float32)
            if len(ins) > 2 and ins[2] is not None
            else None
        )
        if w.ndim != 4:
            raise self.fail(f"only 2-d convolutions are supported (weight shape {list(w.shape)})")
        kernel = [int(w.shape[2]), int(w.shape[3])]
        if "kernel_shape" in a and [int(k) for k in a["kernel_shape"]] != kernel:
            raise self.fail(
                f"kernel_shape {a['kernel_shape']} does not match the weight {list(w.shape)}"
            )
        strides, dil, (t, lf, bt, r) = self.spatial_attrs(a, x, kernel)
        groups = int(a.get("group", 1))
        cin = int(w.shape[1]) * groups
        if cin != x.shape[1]:
            raise self.fail(
                f"weight {list(w.shape)} with group={groups} expects {cin} input channels, "
                f"got {x.shape[1]}"
            )
        sym = t == bt and lf == r
        conv = nn.Conv2d(
            cin,
            int(w.shape[0]),
            (kernel[0], kernel[1]),
            # strides and dilations go in as read (torch checks how many); its stubs want exactly 2
            tuple(strides),  # type: ignore[arg-type]
            (t, lf) if sym else 0,
            tuple(dil),  # type: ignore[arg-type]
            groups,
            bias=b is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(w))
            if b is not None:
                assert conv.bias is not None
                conv.bias.copy_(torch.from_numpy(b.reshape(-1)))
        if not sym:
            x = self.module(nn.ZeroPad2d((lf, r, t, bt)), x, "_pad")
        return self.module(conv, x)

    def pool(self, a: dict[str, Any], x: _T, kind: str) -> _T:
        kernel = [int(k) for k in a["kernel_shape"]]
        strides, dil, (t, lf, b, r) = self.spatial_attrs(a, x, kernel)
        ceil = bool(a.get("ceil_mode", 0))
        fits = t == b and lf == r and t <= kernel[0] // 2 and lf <= kernel[1] // 2
        if kind == "max":
            if fits:
                return self.module(
                    nn.MaxPool2d(tuple(kernel), tuple(strides), (t, lf), tuple(dil), ceil_mode=ceil), x
                )
            x = self.module(nn.ConstantPad2d((lf, r, t, b), -_FLT_MAX), x, "_pad")
            return self.module(
                nn.MaxPool2d(tuple(kernel), tuple(strides), 0, tuple(dil), ceil_mode=ceil), x
            )
        if dil != [1, 1]:
            raise self.fail(f"AveragePool with dilations {dil} is not supported")
        cip = bool(a.get("count_include_pad", 0))
        if fits:
            return self.module(nn.AvgPool2d(kernel, strides, (t, lf), ceil, cip), x)  # type: ignore[arg-type]
        if not cip:
            raise self.fail(
                f"AveragePool with pads {[t, lf, b, r]} and count_include_pad=0 is not "
                f"supported (pads must be symmetric and at most half the kernel)"
            )
        x = self.module(nn.ZeroPad2d((lf, r, t, b)), x, "_pad")
        return self.module(nn.AvgPool2d(kernel, strides, 0, ceil, True), x)  # type: ignore[arg-type]

    def op_MaxPool(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        return self.pool(a, self.tensor(ins[0]), "max")

    def op_AveragePool(
        self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]
    ) -> _T:
        return self.pool(a, self.tensor(ins[0]), "avg")

    def global_input(self, ins: list[_Value | None]) -> _T:
        x = self.tensor(ins[0])
        if len(x.shape) != 4:
            raise self.fail(f"only 4-d NCHW inputs are supported, got {list(x.shape)}")
        return x

    def op_GlobalAveragePool(
        self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]
    ) -> _T:
        return self.module(nn.AdaptiveAvgPool2d(1), self.global_input(ins))

    def op_GlobalMaxPool(
        self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]
    ) -> _T:
        return self.module(nn.AdaptiveMaxPool2d(1), self.global_input(ins))

    def op_BatchNormalization(
        self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]
    ) -> _T:
        x = self.global_input(ins)
        if int(a.get("training_mode", 0)):
            raise self.fail("BatchNormalization in training mode is not supported")
        scale, bias, mean, var = (
            self.const(v, w).astype(np.float32).reshape(-1)
            for v, w in zip(ins[1:5], ("scale", "B", "input_mean", "input_var"))
        )
        c = x.shape[1]
        if not all(t.size == c for t in (scale, bias, mean, var)):
            raise self.fail(f"BatchNormalization parameters do not have {c} channels")
        bn = nn.BatchNorm2d(c, eps=float(a.get("epsilon", 1e-5)))
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(scale))
            bn.bias.copy_(torch.from_numpy(bias))
            bn.running_mean.copy_(torch.from_numpy(mean))  # type: ignore[union-attr]
            bn.running_var.copy_(torch.from_numpy(var))  # type: ignore[union-attr]
        return self.module(bn, x)

    def op_Relu(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        return self.module(nn.ReLU(), self.tensor(ins[0]))

    def op_Sigmoid(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        return self.module(nn.Sigmoid(), self.tensor(ins[0]))

    def op_Tanh(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        return self.module(nn.Tanh(), self.tensor(ins[0]))

    def op_HardSwish(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        return self.module(nn.Hardswish(), self.tensor(ins[0]))

    def op_LeakyRelu(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        return self.module(nn.LeakyReLU(float(a.get("alpha", 0.01))), self.tensor(ins[0]))

    def op_Elu(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        return self.module(nn.ELU(float(a.get("alpha", 1.0))), self.tensor(ins[0]))

    def op_HardSigmoid(
        self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]
    ) -> _T:
        x = self.tensor(ins[0])
        alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        if abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
            return self.module(nn.Hardsigmoid(), x)
        # clip(alpha * x + beta, 0, 1) with scalar scale / shift nodes
        y = self.function(operator.mul, x, alpha)
        y = self.function(operator.add, y, beta)
        return self.module(nn.Hardtanh(0.0, 1.0), y)

    def op_Clip(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        x = self.tensor(ins[0])
        if len(ins) > 1 or "min" not in a and "max" not in a:  # opset >= 11: min / max inputs
            lo = self.scalar(ins[1] if len(ins) > 1 else None, "min", None)
            hi = self.scalar(ins[2] if len(ins) > 2 else None, "max", None)
        else:  # opset < 11: attributes
            lo, hi = a.get("min"), a.get("max")
        lo = None if lo is None or lo <= -_FLT_MAX else float(lo)
        hi = None if hi is None or hi >= _FLT_MAX else float(hi)
        if lo is None and hi is None:
            return x
        if lo == 0.0 and hi == 6.0:
            return self.module(nn.ReLU6(), x)
        if lo == 0.0 and hi is None:
            return self.module(nn.ReLU(), x)
        lo_v, hi_v = -_FLT_MAX if lo is None else lo, _FLT_MAX if hi is None else hi
        if hi_v <= lo_v:
            raise self.fail(f"Clip with min={lo_v} >= max={hi_v} is not supported")
        return self.module(nn.Hardtanh(lo_v, hi_v), x)

    def binary(self, op: str, ins: list[_Value | None]) -> _T:
        a, b = ins[0], ins[1]
        if isinstance(a, _T) and isinstance(b, _T):
            if op not in ("Add", "Mul"):
                raise self.fail(f"{op} of two tensors is not supported (only + and * are)")
            out = tuple(np.broadcast_shapes(a.shape, b.shape))
            same = a.shape == b.shape
            if not same and not (len(out) == 4 and out in (a.shape, b.shape)):
                raise self.fail(
                    f"{op} broadcasting {list(a.shape)} with {list(b.shape)} is not "
                    f"supported (shapes must match, or one side be N,C,1,1-like)"
                )
            return self.function(operator.add if op == "Add" else operator.mul, a, b)
        assert self.node is not None
        x_name = self.node.input[0]
        if isinstance(b, _T) and isinstance(a, np.ndarray):
            if op in ("Sub", "Div"):
                raise self.fail(f"{op} with a constant on the left is not supported")
            a, b, x_name = b, a, self.node.input[1]
        x = self.tensor(a)
        c = self.const(b, "second input").astype(np.float32)
        if tuple(np.broadcast_shapes(x.shape, c.shape)) != x.shape:
            raise self.fail(
                f"{op} of {list(x.shape)} with a constant of shape {list(c.shape)} "
                f"changes the tensor's shape"
            )
        if c.size == 1:
            v = float(c.reshape(()))
            if op == "Sub":
                op, v = "Add", -v
            elif op == "Div":
                op, v = "Mul", 1.0 / v
            return self.function(operator.add if op == "Add" else operator.mul, x, v)
        fused = self.fuse_affine(op, x, c) if self.consumers[x_name] == 1 else None
        if fused is not None:
            return fused
        raise self.fail(
            f"{op} with a non-scalar constant of shape {list(c.shape)} is only supported "
            f"right after a Conv / Gemm / MatMul (folded into its weights)"
        )

    def fuse_affine(self, op: str, x: _T, c: np.ndarray) -> _T | None:
        """Fold a per-channel constant ``+ - * /`` into the Conv / Linear producing ``x``.

        Only called when this node is the sole consumer of ``x``; returns None when
        ``x`` is not directly a Conv2d / Linear output or ``c`` is not per channel.
        """
        m = x.owner
        if m is None:
            return None
        cout = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        rank = len(x.shape)
        # the constant must vary along the channel axis only (axis 1)
        full = np.broadcast_to(c, (1,) * (rank - c.ndim) + c.shape) if c.ndim <= rank else c
        if (
            full.ndim != rank
            or any(d != 1 for i, d in enumerate(full.shape) if i != 1)
            or full.shape[1] != cout
        ):
            return None
        vec = torch.from_numpy(np.ascontiguousarray(full.reshape(-1)).astype(np.float32))
        if op == "Sub":
            op, vec = "Add", -vec
        elif op == "Div":
            op, vec = "Mul", 1.0 / vec
        with torch.no_grad():
            if op == "Add":
                if m.bias is None:
                    m.bias = nn.Parameter(vec.clone())
                else:
                    m.bias.add_(vec)
            else:
                m.weight.mul_(vec.view(-1, *([1] * (m.weight.dim() - 1))))
                if m.bias is not None:
                    m.bias.mul_(vec)
            ex = (
                x.example + vec.view(1, -1, *([1] * (rank - 2)))
                if op == "Add"
                else x.example * vec.view(1, -1, *([1] * (rank - 2)))
            )
        return _T(x.node, ex, m)

    def op_Add(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        return self.binary("Add", ins)

    def op_Sub(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        return self.binary("Sub", ins)

    def op_Mul(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        return self.binary("Mul", ins)

    def op_Div(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        return self.binary("Div", ins)

    def op_Concat(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        xs = [self.tensor(v, f"input #{i}") for i, v in enumerate(ins) if v is not None]
        axis = int(a["axis"])
        rank = len(xs[0].shape)
        if rank != 4 or axis % rank != 1:
            raise self.fail(
                f"Concat along axis {axis} of rank-{rank} tensors is not supported "
                f"(only channel concat, axis 1 of NCHW)"
            )
        if len(xs) == 1:
            return xs[0]
        return self.function(torch.cat, xs, dim=1)

    def op_Flatten(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        x = self.tensor(ins[0])
        axis = int(a.get("axis", 1))
        if len(x.shape) < 2 or axis % len(x.shape) != 1:
            raise self.fail(f"Flatten with axis={axis} is not supported (only axis=1: N x -1)")
        return self.flatten(x)

    def to_flat(self, x: _T, target: list[int], what: str) -> _T:
        if tuple(target) == x.shape:
            return x
        if len(target) == 2 and target[0] == x.shape[0]:
            return self.flatten(x)
        raise self.fail(
            f"{what} {list(x.shape)} -> {target} is not supported (only flattening to N x -1)"
        )

    def op_Reshape(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        x = self.tensor(ins[0])
        shape = self.ints(ins[1], "shape") or []
        return self.to_flat(
            x, self.reshape_target(x.shape, shape, bool(a.get("allowzero", 0))), "reshape"
        )

    def op_Squeeze(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        x = self.tensor(ins[0])
        axes = self.ints(ins[1], "axes") if len(ins) > 1 and ins[1] is not None else a.get("axes")
        rank = len(x.shape)
        drop = (
            {int(i) % rank for i in axes} if axes else {i for i, d in enumerate(x.shape) if d == 1}
        )
        if any(x.shape[i] != 1 for i in drop):
            raise self.fail(f"cannot squeeze axes {sorted(drop)} of {list(x.shape)}")
        return self.to_flat(x, [d for i, d in enumerate(x.shape) if i not in drop], "squeeze")

    def op_Unsqueeze(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        x = self.tensor(ins[0])
        raise self.fail(
            f"Unsqueeze of the tensor {list(x.shape)} is not supported (only reshapes "
            f"that flatten to N x -1 are)"
        )

    def linear(self, x: _T, w: np.ndarray, b: np.ndarray | None) -> _T:
        if len(x.shape) != 2 or x.shape[1] != w.shape[1]:
            raise self.fail(
                f"a fully-connected layer needs an N x {w.shape[1]} input, got {list(x.shape)}"
            )
        lin = nn.Linear(int(w.shape[1]), int(w.shape[0]), bias=b is not None)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
            if b is not None:
                assert lin.bias is not None
                lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)))
        return self.module(lin, x)

    def op_Gemm(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        x = self.tensor(ins[0], "input A")
        if int(a.get("transA", 0)):
            raise self.fail("Gemm with transA=1 is not supported")
        w = self.const(ins[1], "weight B").astype(np.float32)
        if w.ndim != 2:
            raise self.fail(f"Gemm weight must be 2-d, got {list(w.shape)}")
        w = w if int(a.get("transB", 0)) else w.T
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        if alpha != 1.0:
            w = w * np.float32(alpha)
        b = None
        if len(ins) > 2 and ins[2] is not None:
            c = self.const(ins[2], "bias C").astype(np.float32)
            if c.size not in (1, w.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
                raise self.fail(f"Gemm bias of shape {list(c.shape)} is not a per-output vector")
            b = np.broadcast_to(c.reshape(-1), (w.shape[0],)) * np.float32(beta)
        return self.linear(x, w, b)

    def op_MatMul(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        x = self.tensor(ins[0], "input A")
        w = self.const(ins[1], "weight B").astype(np.float32)
        if w.ndim != 2:
            raise self.fail(f"MatMul with a {w.ndim}-d constant is not supported")
        return self.linear(x, w.T, None)

    def op_Dropout(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        return self.tensor(ins[0])

    def op_Identity(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        return self.tensor(ins[0])

    def op_Cast(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        from onnx import TensorProto

        if int(a["to"]) != TensorProto.FLOAT:
            raise self.fail("Cast of the tensor to a type other than float32 is not supported")
        return self.tensor(ins[0])

    def reduce_axes(self, ins: list[_Value | None], a: dict[str, Any]) -> tuple[_T, bool]:
        x = self.tensor(ins[0])
        axes = self.ints(ins[1], "axes") if len(ins) > 1 and ins[1] is not None else a.get("axes")
        keep = bool(a.get("keepdims", 1))
        rank = len(x.shape)
        if not axes and not int(a.get("noop_with_empty_axes", 0)):
            axes = list(range(rank))
        if rank != 4 or sorted(int(i) % rank for i in axes or []) != [2, 3]:
            raise self.fail(
                f"reducing axes {axes} of {list(x.shape)} is not supported "
                f"(only a global pool over H, W of NCHW)"
            )
        return x, keep

    def op_ReduceMean(
        self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]
    ) -> _T:
        x, keep = self.reduce_axes(ins, a)
        return self.function(torch.mean, x, dim=(2, 3), keepdim=keep)

    def op_ReduceMax(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        x, keep = self.reduce_axes(ins, a)
        y = self.module(nn.AdaptiveMaxPool2d(1), x)
        return y if keep else self.flatten(y)

    def op_Pad(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        x = self.tensor(ins[0])
        mode = a.get("mode", "constant")
        if mode != "constant":
            raise self.fail(f"Pad mode {mode!r} is not supported (only constant)")
        rank = len(x.shape)
        if len(ins) > 1:  # opset >= 11: pads, constant_value, axes (18) inputs
            pads = self.ints(ins[1], "pads") or []
            value = self.scalar(ins[2] if len(ins) > 2 else None, "constant_value", 0.0)
            axes = self.ints(ins[3], "axes") if len(ins) > 3 else None
        else:
            pads, value, axes = (
                [int(p) for p in a.get("pads", a.get("paddings", []))],
                float(a.get("value", 0.0)),
                None,
            )
        axes = [int(i) % rank for i in axes] if axes else list(range(rank))
        if len(pads) != 2 * len(axes):
            raise self.fail(f"pads {pads} do not match {len(axes)} axes")
        begin, end = [0] * rank, [0] * rank
        for k, ax in enumerate(axes):
            begin[ax], end[ax] = pads[k], pads[k + len(axes)]
        if rank != 4 or any(begin[:2]) or any(end[:2]):
            raise self.fail(f"padding of non-spatial axes (pads {pads}) is not supported")
        if min(begin + end) < 0:
            raise self.fail(f"negative padding (cropping) {pads} is not supported")
        t, lf, b, r = begin[2], begin[3], end[2], end[3]
        if not any((t, lf, b, r)):
            return x
        mod = (
            nn.ZeroPad2d((lf, r, t, b))
            if value == 0.0
            else nn.ConstantPad2d((lf, r, t, b), value or 0.0)
        )
        return self.module(mod, x)

    def op_Split(self, node: onnx.NodeProto, ins: list[_Value | None], a: dict[str, Any]) -> _T:
        x = self.tensor(ins[0])
        raise self.fail(
            f"splitting the tensor {list(x.shape)} is not supported "
            f"(coinfer's graphs have no slicing op)"
        )


#: ONNX op types the importer accepts (runtime ops and constant-folded shape arithmetic).
SUPPORTED_OPS: tuple[str, ...] = tuple(
    sorted({n[3:] for n in dir(_Importer) if n.startswith("op_")} | _FOLDABLE)
)


def _input_of(model: onnx.ModelProto, path: str) -> tuple[str, list[int | None], int]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(
            f"ONNX model {path!r} has {len(inputs)} inputs "
            f"({', '.join(i.name for i in inputs)}); coinfer needs one image input N,C,H,W"
        )
    inp = inputs[0]
    tt = inp.type.tensor_type
    if not inp.type.HasField("tensor_type"):
        raise ModelError(f"ONNX model {path!r}: input {inp.name!r} is not a tensor")
    dims: list[int | None] = []
    if tt.HasField("shape"):
        dims = [
            int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tt.shape.dim
        ]
    else:
        dims = [None] * 4
    return inp.name, dims, int(tt.elem_type)


def _static_shape(
    path: str, name: str, dims: list[int | None], given: Sequence[int] | None
) -> tuple[int, int, int, int]:
    shown = ",".join("?" if d is None else str(d) for d in dims)
    if len(dims) != 4:
        raise ModelError(
            f"ONNX model {path!r}: input {name!r} has shape [{shown}]; coinfer needs a "
            f"4-d image input N,C,H,W"
        )
    if given is not None:
        g = [int(v) for v in given]
        if len(g) != 4 or min(g) <= 0:
            raise ModelError(
                f"--input-shape must be 4 positive integers N,C,H,W, got {list(given)}"
            )
        if any(d is not None and d != v for d, v in zip(dims, g)):
            raise ModelError(
                f"input shape {','.join(map(str, g))} (--input-shape, or the plan's model.input_shape) "
                f"contradicts the ONNX input {name!r} of shape [{shown}] in {path!r}: give the file's "
                f"shape, or re-plan with coinfer plan if the file changed since planning"
            )
        return g[0], g[1], g[2], g[3]
    if dims[0] is None:
        dims = [1, *dims[1:]]
    if any(d is None for d in dims):
        hint = ",".join("?" if d is None else str(d) for d in dims)
        raise ModelError(
            f"ONNX model {path!r}: input {name!r} has dynamic dims [{shown}]; give "
            f"--input-shape N,C,H,W (e.g. {hint.replace('?', '224')})"
        )
    return dims[0], dims[1], dims[2], dims[3]  # type: ignore[return-value]


def _load_external_data(onnx: Any, model: onnx.ModelProto, p: Path) -> None:
    """Load the weights ``model`` keeps in external data files next to ``p`` (torch 2.13's default
    export writes ``NAME.onnx.data``); a missing one is one line naming it and the fix."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    files = sorted({e.value for t in model.graph.initializer if uses_external_data(t)
                    for e in t.external_data if e.key == "location"})
    missing = [f for f in files if not (p.parent / f).is_file()]
    if missing:
        raise ModelError(
            f"ONNX file {str(p)!r} keeps its weights in external data {', '.join(map(repr, missing))}, not "
            f"found next to it ({p.parent.resolve()}): copy it beside the .onnx (on every device), or export "
            f"with external_data=False"
        )
    if files:
        try:
            load_external_data_for_model(model, str(p.parent))
        except Exception as e:  # noqa: BLE001 - a truncated or foreign data file
            raise ModelError(f"cannot read the external data of ONNX file {str(p)!r}: {_first_line(e)}") from None


def _reachable(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes the graph output depends on, in file (topological) order."""
    producer = {o: k for k, n in enumerate(model.graph.node) for o in n.output if o}
    need: set[int] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        v = stack.pop()
        k = producer.get(v)
        if k is None or k in need:
            continue
        need.add(k)
        stack.extend(i for i in model.graph.node[k].input if i)
    return [n for k, n in enumerate(model.graph.node) if k in need]


def load_onnx(
    path: str, input_shape: Sequence[int] | None = None
) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """Import the ONNX CNN at ``path`` as a coinfer-native module and its static input shape.

    Args:
        path: an ``.onnx`` file (external data next to it is loaded too).
        input_shape: ``N,C,H,W`` to use when the ONNX input has dynamic spatial or
            channel dims (``--input-shape``); must agree with the static dims.

    Returns:
        ``(module, (N, C, H, W))`` — a ``torch.fx.GraphModule`` in eval mode built
        only from ops coinfer's capture supports, and the shape it is specialised to.

    Raises:
        ModelError: the ``onnx`` extra is missing, the file is unreadable or invalid,
            the input is not one static-able N,C,H,W float tensor, or the graph uses an
            op (or op variant) outside the supported CNN subset — always one line.
    """
    onnx = _import_onnx()
    from onnx import TensorProto, shape_inference

    p = Path(path)
    if p.is_dir():
        raise ModelError(f"ONNX file {path!r} is a folder; give the .onnx file")
    if not p.is_file():
        where = "" if p.is_absolute() else f" (relative to the current directory {Path.cwd()})"
        raise ModelError(f"ONNX file {path!r} not found{where}; a plan records the path it was made "
                         f"with: run where it resolves, or plan with an absolute path")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad input file
        raise ModelError(
            f"cannot read ONNX file {path!r}: {_first_line(e)} (is it an ONNX model?)"
        ) from None
    _load_external_data(onnx, model, p)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"ONNX file {path!r} is not a valid model: {_first_line(e)}") from None
    if len(model.graph.output) != 1:
        raise ModelError(
            f"ONNX model {path!r} has {len(model.graph.output)} outputs; coinfer needs "
            f"exactly one output tensor"
        )
    name, dims, elem = _input_of(model, path)
    if elem != TensorProto.FLOAT:
        raise ModelError(
            f"ONNX model {path!r}: input {name!r} has type "
            f"{TensorProto.DataType.Name(elem)}; coinfer needs a float32 NCHW image"
        )
    shape = _static_shape(path, name, dims, input_shape)

    order = _reachable(model)
    opsets = {
        (i.domain if i.domain != "ai.onnx" else ""): int(i.version) for i in model.opset_import
    }
    bad: dict[str, str] = {}  # op -> the first node using it (file order)
    for node in order:
        dom = node.domain if node.domain != "ai.onnx" else ""
        if dom or node.op_type not in SUPPORTED_OPS:
            op = f"{dom}.{node.op_type}" if dom else node.op_type
            bad.setdefault(f"{op}' (opset {opsets.get(dom, '?')}", node.name or node.output[0])
    if bad:
        ops = ", ".join(f"'{op})" for op in bad)
        first = next(iter(bad.values()))
        hint = (" (export the logits, without the final Softmax)"
                if any(op.startswith(("Softmax'", "LogSoftmax'")) for op in bad) else "")
        raise ModelError(
            f"ONNX model {path!r} uses {'op' if len(bad) == 1 else 'ops'} {ops}, which coinfer's importer "
            f"does not support (first at node {first!r}){hint}; supported: {', '.join(SUPPORTED_OPS)}"
        )

    # fix the input shape, then infer every intermediate shape for the cross-check
    static = onnx.ModelProto()
    static.CopyFrom(model)
    for inp in static.graph.input:
        if inp.name == name:
            tshape = inp.type.tensor_type.shape
            del tshape.dim[:]
            for d in shape:
                tshape.dim.add().dim_value = int(d)
    try:
        inferred = shape_inference.infer_shapes(
            static, check_type=True, strict_mode=True, data_prop=True
        )
    except Exception as e:  # noqa: BLE001
        raise ModelError(
            f"ONNX shape inference failed on {path!r} at input shape "
            f"{list(shape)}: {_first_line(e)}"
        ) from None
    known: dict[str, tuple[int, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            known[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)

    imp = _Importer(model, path, shape, name, known)
    try:
        gm = imp.run(order)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - an importer bug or an odd model: still one line
        where = (
            f" at node {imp.node.name or imp.node.output[0]!r} ({imp.node.op_type})"
            if imp.node
            else ""
        )
        raise ModelError(f"cannot import ONNX model {path!r}{where}: {_first_line(e)}") from None
    return gm, shape
