"""Graph capture (coinfer.graph.capture) and the IR (coinfer.graph.ir): ops, geometry attributes,
FLOPs against torch's flop counter, published MACs / params, cut points, errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from core_helpers import user_models as um
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from coinfer import zoo
from coinfer.graph.capture import UnsupportedOpError, capture
from coinfer.graph.ir import Graph, GraphError

# --------------------------------------------------------------------------- ops and attributes


def test_user_model_ops_and_geometry_attributes(captured) -> None:  # type: ignore[no-untyped-def]
    g = captured("user:user_net").graph
    ops = {n.name: n.op for n in g.nodes}
    assert ops["x"] == "input" and ops["view"] == "flatten" and ops["fc"] == "linear"
    assert ops["conv2d"] == "conv"  # F.conv2d on get_attr weights
    assert ops["pad"] == ops["pad_1"] == "pad"  # nn.ZeroPad2d and F.pad
    assert ops["cat"] == "cat" and ops["add"] == "add" and ops["leaky_relu"] == "act"
    a = {n.name: n.attrs for n in g.nodes}
    assert a["stem"]["stride"] == [2, 2] and a["stem"]["pad"] == [1, 1, 1, 1]
    assert a["pad"]["pad"] == [2, 0, 0, 1]  # ZeroPad2d((l=0, r=1, t=2, b=0)) -> [top, bottom, left, right]
    assert a["pad_1"]["pad"] == [0, 2, 1, 0]  # F.pad(x, (1, 0, 0, 2))
    assert a["dil"]["dilation"] == [2, 2]
    assert a["conv2d"]["groups"] == 2 and a["dw"]["groups"] == 16
    assert a["br5"]["kernel"] == [5, 3] and a["br5"]["pad"] == [2, 2, 1, 1]
    assert a["down"]["kernel"] == [4, 4]
    assert a["mp"]["ceil_mode"] is True
    assert a["ap1"]["count_include_pad"] is False and a["ap2"]["count_include_pad"] is True
    assert a["act"]["fn"] == "leaky_relu" and a["act"]["negative_slope"] == pytest.approx(0.1)
    assert a["leaky_relu"]["negative_slope"] == pytest.approx(0.2)
    assert g["cat"].inputs == ("br1", "br3", "br5")
    assert g["view"].spatial is False and g["fc"].spatial is False
    # parameter counts and bytes
    m = um.user_net()
    assert g.params == sum(p.numel() for p in m.parameters())
    assert g.param_bytes >= 4 * g.params


def test_capture_is_transparent_for_identity_ops() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)
            self.d = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.d(self.c(x)).contiguous()
            y = F.dropout(y, 0.1, training=False)
            return torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)

    g = capture(M(), (1, 3, 8, 8)).graph
    assert [n.op for n in g.nodes] == ["input", "conv", "adaptive_pool", "flatten"]


@pytest.mark.parametrize("model, op", [
    (um.interp, "interpolate"),
    (um.softmax_mid, "softmax"),
])
def test_unsupported_op_names_node_and_op(model, op: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnsupportedOpError) as info:
        capture(model(), (1, 3, 8, 8))
    e = info.value
    assert op in e.op and op in str(e)
    assert e.node in str(e) and op in e.node
    assert "docs/concepts.md#supported-ops" in str(e)
    assert "\n" not in str(e)


class _Bad(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.c = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect" if kind == "reflect" else "zeros")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(x)
        if self.kind == "cat_h":
            return torch.cat([y, y], 2)
        if self.kind == "view_other":
            return y.view(1, 4, -1)
        if self.kind == "mean_c":
            return y.mean(1)
        if self.kind == "reflect_pad":
            return F.pad(y, (1, 1, 1, 1), mode="reflect")
        if self.kind == "crop":
            return F.pad(y, (-1, 0, 0, 0))
        if self.kind == "transpose":
            return y.transpose(2, 3)
        return y


@pytest.mark.parametrize("kind, words", [
    ("reflect", "padding_mode='reflect'"),
    ("cat_h", "cat along dim 2"),
    ("view_other", "reshape"),
    ("mean_c", "mean over dims"),
    ("reflect_pad", "pad mode 'reflect'"),
    ("crop", "negative padding"),
    ("transpose", ".transpose()"),
])
def test_more_unsupported_forms(kind: str, words: str) -> None:
    with pytest.raises(UnsupportedOpError, match="cannot partition") as info:
        capture(_Bad(kind), (1, 3, 6, 6))
    assert words in str(info.value)


def test_untraceable_model_is_a_graph_error() -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(GraphError, match="torch.fx could not trace.*fx-traceable"):
        capture(Branchy(), (1, 3, 4, 4))


def test_bad_input_shape() -> None:
    with pytest.raises(GraphError, match="input shape must be 1,C,H,W"):
        capture(um.user_net(), (1, 3, 37))


# --------------------------------------------------------------------------- FLOPs, params


@pytest.mark.parametrize("name", zoo.names())
def test_ir_flops_equal_torch_flop_counter(name: str, captured) -> None:  # type: ignore[no-untyped-def]
    c = captured(name)
    g = c.graph
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        c.cm.module(c.x)
    conv_linear = sum(n.flops for n in g.nodes if n.op in ("conv", "linear"))
    assert conv_linear == pytest.approx(fc.get_total_flops(), rel=1e-3)
    assert g.flops == conv_linear  # the IR prices conv / linear only (as torch's counter)
    e = zoo.entry(name)
    if e.ref_macs is not None:
        assert g.flops / 2 == pytest.approx(e.ref_macs, rel=0.02), f"{name}: {g.flops / 2e9:.3f} GMAC"
    if e.ref_params is not None:
        assert g.params == pytest.approx(e.ref_params, rel=0.02), f"{name}: {g.params} params"


def test_published_figures_quoted_in_the_issue(captured) -> None:  # type: ignore[no-untyped-def]
    for name, gmac, mparams in (("vgg16", 15.5, 138), ("resnet50", 4.1, 25.6), ("mobilenet_v2", 0.3, 3.5)):
        g = captured(name).graph
        assert g.flops / 2e9 == pytest.approx(gmac, rel=0.02)
        assert g.params / 1e6 == pytest.approx(mparams, rel=0.02)


def test_user_model_flops_equal_torch_flop_counter(captured) -> None:  # type: ignore[no-untyped-def]
    for name in ("user:user_net", "user:user_net_alt", "user:se_net"):
        c = captured(name)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            c.cm.module(c.x)
        assert c.graph.flops == fc.get_total_flops(), name


# --------------------------------------------------------------------------- cut points, IR


def _naive_cut_points(g: Graph) -> list[str]:
    """Nodes after which exactly one value (their own output) is still needed."""
    names = [n.name for n in g.nodes]
    out = []
    for i, n in enumerate(g.nodes[:-1]):
        if i == 0:
            continue
        later_inputs = {x for m in g.nodes[i + 1:] for x in m.inputs}
        live = {x for x in names[: i + 1] if x in later_inputs}
        if live == {n.name}:
            out.append(n.name)
    return out + [g.nodes[-1].name]


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "mobilenet_v2", "user:user_net", "user:se_net"])
def test_cut_points(name: str, captured) -> None:  # type: ignore[no-untyped-def]
    g = captured(name).graph
    cuts = g.cut_points()
    assert cuts == _naive_cut_points(g)
    assert cuts[-1] == g.output.name and g.input.name not in cuts
    split = g.splittable_cuts()
    assert list(split) == cuts
    flags = list(split.values())
    # splittable is a prefix: once a global op happened, only whole stages follow
    assert flags == sorted(flags, reverse=True)
    assert not split[g.output.name] or g.output.is_feature_map


def test_resnet_cut_points_skip_residual_interiors(captured) -> None:  # type: ignore[no-untyped-def]
    g = captured("resnet18").graph
    cuts = set(g.cut_points())
    assert "layer1_0_conv1" not in cuts and "layer1_0_bn2" not in cuts  # the identity is live
    assert {"maxpool", "add", "layer1_0_relu2", "layer4_1_relu2"} <= cuts
    split = g.splittable_cuts()
    assert split["layer4_1_relu2"] and not split[g.output.name]


def test_graph_json_round_trip_and_fingerprint(captured) -> None:  # type: ignore[no-untyped-def]
    g = captured("resnet18").graph
    d = json.loads(json.dumps(g.to_dict()))
    g2 = Graph.from_dict(d)
    assert g2.fingerprint() == g.fingerprint() and g2.to_dict() == g.to_dict()
    assert g2.cut_points() == g.cut_points() and g2.flops == g.flops
    assert g.fingerprint().startswith("sha256:")
    other = captured("resnet18_digits").graph  # same layers, other input size
    assert other.fingerprint() != g.fingerprint()
    with pytest.raises(GraphError, match="not a coinfer.graph/1"):
        Graph.from_dict({"format": "x"})


def test_exits_attach_at_cut_points(captured) -> None:  # type: ignore[no-untyped-def]
    c = captured("resnet18_digits")
    g = c.graph
    assert set(g.exits) == set(zoo.entry("resnet18_digits").exits)
    for name, br in g.exits.items():
        assert g.is_cut_point(br.attach)
        ge = g.for_exit(name)
        assert ge.output.name == br.nodes[-1].name and ge.exit_of == name
        assert ge.output.shape == (1, zoo.entry("resnet18_digits").num_classes)
    with pytest.raises(GraphError, match="has no exit 'nope'"):
        g.for_exit("nope")


def test_summary_contract(captured) -> None:  # type: ignore[no-untyped-def]
    g = captured("user:user_net").graph
    s = json.loads(json.dumps(g.summary()))
    assert {"model", "input_shape", "fingerprint", "flops", "params", "nodes", "cut_points"} <= set(s)
    assert s["input_shape"] == list(um.USER_SHAPE)
    assert all(set(n) >= {"name", "op", "out_shape", "flops"} for n in s["nodes"])
    assert all(set(c) >= {"name", "out_shape", "splittable"} for c in s["cut_points"])
    assert sum(n["flops"] for n in s["nodes"]) == s["flops"]
