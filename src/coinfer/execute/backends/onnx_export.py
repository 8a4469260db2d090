"""Export one part as a static-shape ONNX graph (input region → output region).

The graph is emitted directly from the optimised part program
(:mod:`.optimize`), op by op, rather than traced through ``torch.onnx.export``:
every quantity is already static (slices, per-edge paddings, avgpool
divisors), emission takes milliseconds instead of seconds per part, and an op
that has no exact ONNX form is named precisely (the caller then runs the part
with torch). The border semantics are those of :mod:`coinfer.execute.kernels`:

* convolutions carry the geometry's (possibly asymmetric) paddings as their
  ``pads`` attribute (zeros outside the image / tile);
* max pooling pads with −∞ (ONNX ``pads`` of ``MaxPool`` are ignored
  positions), ``ceil_mode`` is resolved by the geometry into explicit pads;
* average pooling sums over zero padding and multiplies by ``kh·kw / count``
  where the geometry's per-window count differs (image borders,
  ``count_include_pad=False``, ``divisor_override``, ``ceil_mode``);
* a reader whose window lies wholly in padding reads a constant tensor.

Not exportable (→ torch fallback): LRN with an even size (its channel window
is placed differently in ONNX), adaptive pooling to a size that does not
divide the input, linear layers on more than 2-d inputs with unusual ranks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...graph.geometry import _pads, _pool_counts, full, intersect, needed_input
from ...graph.ir import Node
from .base import ExportUnsupported
from .optimize import PartProgram, Step

OPSET = 17


class _Emitter:
    def __init__(self, prog: PartProgram, graph_nodes: dict[str, Node]) -> None:
        import onnx  # noqa: F401 - fail early with ImportError
        from onnx import helper

        self.h = helper
        self.prog = prog
        self.gn = graph_nodes
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.k = 0

    # -- helpers -----------------------------------------------------------------------------
    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}__{self.k}"

    def const(self, arr: np.ndarray, base: str = "c") -> str:
        from onnx import numpy_helper

        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n))
        return n

    def add(self, op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.name(base)
        self.nodes.append(self.h.make_node(op, inputs, [out], name=out, **attrs))
        return out

    @staticmethod
    def buf(name: str) -> str:
        return f"t:{name}"

    # -- reading an input --------------------------------------------------------------------
    def read(self, st: Step, i: int) -> str:
        s = st.srcs[i]
        x = self.buf(s.buf)
        if s.slice is None:
            return x
        r0, r1, c0, c1 = s.slice
        starts = self.const(np.array([r0, c0], dtype=np.int64), "starts")
        ends = self.const(np.array([r1, c1], dtype=np.int64), "ends")
        axes = self.const(np.array([2, 3], dtype=np.int64), "axes")
        return self.add("Slice", [x, starts, ends, axes], "slice")

    def _empty(self, st: Step) -> bool:
        s = st.srcs[0]
        return s.slice is not None and (s.slice[1] <= s.slice[0] or s.slice[3] <= s.slice[2])

    def padded_constant(self, st: Step, value: float) -> str:
        """A reader whose window is wholly padding: the padded input as a constant."""
        shp = self.prog.shapes[st.srcs[0].buf]
        t, b, l, r = st.pads
        sl = st.srcs[0].slice
        assert sl is not None
        h = (sl[1] - sl[0]) + t + b
        w = (sl[3] - sl[2]) + l + r
        return self.const(np.full((shp[0], shp[1], h, w), value, dtype=np.float32), "allpad")

    def whole_form(self, st: Step) -> tuple[str, tuple[int, int, int, int]]:
        """Input and explicit pads of a geometry op computing its whole output (ceil_mode resolved)."""
        n = st.node
        src = self.gn[n.inputs[0]]
        need = needed_input(n, full(n))
        avail = intersect(need, full(src))
        x = self.buf(st.srcs[0].buf)
        if avail != full(src):
            starts = self.const(np.array([avail[0], avail[2]], dtype=np.int64), "starts")
            ends = self.const(np.array([avail[1], avail[3]], dtype=np.int64), "ends")
            axes = self.const(np.array([2, 3], dtype=np.int64), "axes")
            x = self.add("Slice", [x, starts, ends, axes], "slice")
        return x, _pads(need, avail)

    # -- ops --------------------------------------------------------------------------------
    def step(self, st: Step) -> str:
        n, a, op = st.node, st.node.attrs, st.op
        if op == "conv":
            if self._empty(st):
                x, pads = self.padded_constant(st, 0.0), (0, 0, 0, 0)
            else:
                x, pads = self.read(st, 0), st.pads
            w = st.params["weight"].detach().float().numpy()
            ins = [x, self.const(w, "w")]
            if st.params.get("bias") is not None:
                ins.append(self.const(st.params["bias"].detach().float().numpy(), "b"))
            t, b, l, r = pads
            y = self.add("Conv", ins, "conv", kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                         dilations=list(a["dilation"]), group=int(a["groups"]), pads=[t, l, b, r])
        elif op in ("maxpool", "avgpool"):
            k = list(a["kernel"])
            if st.whole:
                x, pads = self.whole_form(st)
            elif self._empty(st):
                x, pads = self.padded_constant(st, float("-inf") if op == "maxpool" else 0.0), (0, 0, 0, 0)
            else:
                x, pads = self.read(st, 0), st.pads
            t, b, l, r = pads
            if op == "maxpool":
                d = list(a["dilation"])
                ext = ((k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1)
                if max(t, b) >= ext[0] or max(l, r) >= ext[1]:
                    x = self._pad(x, pads, float("-inf"))
                    t = b = l = r = 0
                y = self.add("MaxPool", [x], "maxpool", kernel_shape=k, strides=list(a["stride"]),
                             dilations=d, pads=[t, l, b, r], ceil_mode=0)
            else:
                if max(t, b) >= k[0] or max(l, r) >= k[1]:
                    x = self._pad(x, pads, 0.0)
                    t = b = l = r = 0
                y = self.add("AveragePool", [x], "avgpool", kernel_shape=k, strides=list(a["stride"]),
                             pads=[t, l, b, r], count_include_pad=1, ceil_mode=0)
                counts = (_pool_counts(n, full(n), full(self.gn[n.inputs[0]])) if st.whole
                          else st.geom.pool_counts)
                if counts is not None:
                    rows = np.array(counts[0], dtype=np.float64)
                    cols = np.array(counts[1], dtype=np.float64)
                    div = np.maximum(rows[:, None] * cols[None, :], 1.0)
                    factor = (k[0] * k[1] / div).astype(np.float32)[None, None]
                    y = self.add("Mul", [y, self.const(factor, "poolfix")], "poolfix")
        elif op == "pad":
            if st.whole:
                x, pads = self.buf(st.srcs[0].buf), st.pads
            elif self._empty(st):
                return self._finish(st, self.padded_constant(st, float(a.get("value", 0.0))))
            else:
                x, pads = self.read(st, 0), st.pads
            y = self._pad(x, pads, float(a.get("value", 0.0))) if any(pads) else self.add("Identity", [x], "id")
        elif op == "bn":
            x = self.read(st, 0)
            c = int(st.params["running_mean"].numel())
            scale = st.params.get("weight")
            bias = st.params.get("bias")
            sc = np.ones(c, np.float32) if scale is None else scale.detach().float().numpy()
            bi = np.zeros(c, np.float32) if bias is None else bias.detach().float().numpy()
            y = self.add("BatchNormalization",
                         [x, self.const(sc, "bn_s"), self.const(bi, "bn_b"),
                          self.const(st.params["running_mean"].detach().float().numpy(), "bn_m"),
                          self.const(st.params["running_var"].detach().float().numpy(), "bn_v")],
                         "bn", epsilon=float(a["eps"]))
        elif op == "act":
            y = self.act(n, self.read(st, 0))
        elif op in ("add", "mul"):
            y = self.add("Add" if op == "add" else "Mul", [self.read(st, 0), self.read(st, 1)], op)
        elif op == "scale":
            kname = self.const(np.array(float(a["const"]), dtype=np.float32), "k")
            y = self.add("Add" if a["fn"] == "add" else "Mul", [self.read(st, 0), kname], "scale")
        elif op == "cat":
            y = self.add("Concat", [self.read(st, i) for i in range(len(st.srcs))], "cat", axis=1)
        elif op == "lrn":
            size = int(a["size"])
            if size % 2 == 0:
                raise ExportUnsupported("lrn", n.name, "an even LRN size places its window differently in ONNX")
            y = self.add("LRN", [self.read(st, 0)], "lrn", size=size, alpha=float(a["alpha"]),
                         beta=float(a["beta"]), bias=float(a["k"]))
        elif op == "global_pool":
            kind = a.get("kind", "avg")
            y = self.add("GlobalAveragePool" if kind == "avg" else "GlobalMaxPool", [self.read(st, 0)], "gpool")
            if not a.get("keepdim", False):
                y = self.add("Flatten", [y], "flatten", axis=1)
        elif op == "adaptive_pool":
            src = self.gn[n.inputs[0]]
            oh, ow = a["size"]
            x = self.read(st, 0)
            if (oh, ow) == (1, 1):
                y = self.add("GlobalAveragePool" if a["kind"] == "avg" else "GlobalMaxPool", [x], "gpool")
            elif src.height % oh == 0 and src.width % ow == 0:
                kk = [src.height // oh, src.width // ow]
                y = self.add("AveragePool" if a["kind"] == "avg" else "MaxPool", [x], "apool",
                             kernel_shape=kk, strides=kk)
            else:
                raise ExportUnsupported("adaptive_pool", n.name,
                                        f"output {oh}x{ow} does not divide the input {src.height}x{src.width}")
        elif op == "flatten":
            y = self.add("Flatten", [self.read(st, 0)], "flatten", axis=1)
        elif op == "linear":
            if len(self.prog.shapes[st.srcs[0].buf]) != 2:
                raise ExportUnsupported("linear", n.name, "a linear layer on a non-2d input")
            ins = [self.read(st, 0), self.const(st.params["weight"].detach().float().numpy(), "fc_w")]
            if st.params.get("bias") is not None:
                ins.append(self.const(st.params["bias"].detach().float().numpy(), "fc_b"))
            y = self.add("Gemm", ins, "gemm", transB=1)
        else:
            raise ExportUnsupported(op, n.name)
        if st.act is not None:
            y = self.act(st.act, y)
        return self._finish(st, y)

    def _finish(self, st: Step, y: str) -> str:
        out = self.buf(st.out)
        self.nodes.append(self.h.make_node("Identity", [y], [out], name=self.name("out")))
        return out

    def _pad(self, x: str, pads: tuple[int, int, int, int], value: float) -> str:
        t, b, l, r = pads
        p = self.const(np.array([0, 0, t, l, 0, 0, b, r], dtype=np.int64), "pads")
        v = self.const(np.array(value, dtype=np.float32), "padv")
        return self.add("Pad", [x, p, v], "pad", mode="constant")

    def act(self, n: Node, x: str) -> str:
        a = n.attrs
        kind = a["fn"]
        if kind == "relu":
            return self.add("Relu", [x], "relu")
        if kind in ("relu6", "hardtanh"):
            lo, hi = (0.0, 6.0) if kind == "relu6" else (float(a.get("min_val", -1.0)), float(a.get("max_val", 1.0)))
            return self.add("Clip", [x, self.const(np.array(lo, np.float32), "lo"),
                                     self.const(np.array(hi, np.float32), "hi")], "clip")
        if kind == "leaky_relu":
            return self.add("LeakyRelu", [x], "lrelu", alpha=float(a.get("negative_slope", 0.01)))
        if kind == "elu":
            return self.add("Elu", [x], "elu", alpha=float(a.get("alpha", 1.0)))
        if kind == "sigmoid":
            return self.add("Sigmoid", [x], "sigmoid")
        if kind == "tanh":
            return self.add("Tanh", [x], "tanh")
        if kind == "silu":
            return self.add("Mul", [x, self.add("Sigmoid", [x], "sigmoid")], "silu")
        if kind == "hardswish":
            return self.add("HardSwish", [x], "hardswish")
        if kind == "hardsigmoid":
            return self.add("HardSigmoid", [x], "hardsigmoid", alpha=1.0 / 6.0, beta=0.5)
        if kind == "gelu":
            if str(a.get("approximate", "none")) != "none":
                raise ExportUnsupported("gelu(approximate='tanh')", n.name)
            inv = self.const(np.array(1.0 / np.sqrt(2.0), np.float32), "isq2")
            e = self.add("Erf", [self.add("Mul", [x, inv], "gelu")], "erf")
            one = self.const(np.array(1.0, np.float32), "one")
            half = self.const(np.array(0.5, np.float32), "half")
            return self.add("Mul", [self.add("Mul", [x, half], "gelu"), self.add("Add", [e, one], "gelu")], "gelu")
        raise ExportUnsupported(f"activation {kind}", n.name)


def export_part(prog: PartProgram, graph_nodes: dict[str, Node], name: str = "part") -> Any:
    """The part as an ``onnx.ModelProto`` (float32, static shapes; input ``x``, output ``y``).

    Raises :class:`ExportUnsupported` naming the op when a step has no exact ONNX form.
    """
    from onnx import TensorProto, helper

    em = _Emitter(prog, graph_nodes)
    em.nodes.append(helper.make_node("Identity", ["x"], [em.buf(prog.start)], name="in"))
    for st in prog.steps:
        em.step(st)
    em.nodes.append(helper.make_node("Identity", [em.buf(prog.end)], ["y"], name="out_y"))
    graph = helper.make_graph(
        em.nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(prog.in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(prog.out_shape))],
        em.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="coinfer")
    model.ir_version = 8
    return model
