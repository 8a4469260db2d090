"""Receptive-field geometry (coinfer.graph.geometry) and the per-part function (coinfer.execute.part).

Exhaustive small cases: for single-op models covering every geometry variant
(stride on odd sizes, dilation, asymmetric / 'same' padding, even kernels,
ceil-mode pooling, count_include_pad, divisor_override, constant padding),
EVERY row range (and a set of column ranges) is computed from just its input
region and compared with the same crop of the whole output.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coinfer.execute.local import InProcessExecutor, compare
from coinfer.execute.part import PartInputError, PartRunner, run_part
from coinfer.graph.capture import capture
from coinfer.graph.geometry import (
    area,
    contains,
    halo_rows,
    intersect,
    map_boundary,
    needed_input,
    part_geometry,
    region_bytes,
    union,
)
from coinfer.graph.ir import GraphError
from coinfer.plan.plan import Grid, ModelRef, Plan, Stage, Whole

torch.manual_seed(0)


class Fn(nn.Module):
    def __init__(self, fn, mod: nn.Module | None = None) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.fn = fn
        self.m = mod if mod is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


def _conv(*a, **k) -> nn.Module:  # type: ignore[no-untyped-def]
    m = nn.Conv2d(*a, **k)
    with torch.no_grad():
        m.weight.normal_()
    return m


SINGLE_OPS = {
    "conv3": _conv(2, 3, 3, padding=1),
    "conv3_s2_odd": _conv(2, 3, 3, stride=2, padding=1),
    "conv5_dil2": _conv(2, 3, 5, padding=3, dilation=2),
    "conv4_s2_even_kernel": _conv(2, 3, 4, stride=2, padding=1),
    "conv_3x1": _conv(2, 3, (3, 1), padding=(1, 0)),
    "conv_1x5_s_1x2": _conv(2, 3, (1, 5), stride=(1, 2), padding=(0, 2)),
    "conv_nopad_s3": _conv(2, 3, 3, stride=3),
    "conv_grouped": _conv(4, 6, 3, padding=1, groups=2),
    "conv_depthwise": _conv(4, 4, 3, padding=1, groups=4),
    "conv_same_even": _conv(2, 3, 4, padding="same"),
    "conv_same_dil": _conv(2, 3, 3, padding="same", dilation=2),
    "maxpool_ceil": nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
    "maxpool2_ceil": nn.MaxPool2d(2, 2, ceil_mode=True),
    "maxpool_dil": nn.MaxPool2d(3, 1, padding=1, dilation=2),
    "maxpool_s3_ceil": nn.MaxPool2d(2, 3, ceil_mode=True),
    "avgpool_ceil_excl": nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
    "avgpool_ceil_incl": nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=True),
    "avgpool2_ceil": nn.AvgPool2d(2, 2, ceil_mode=True),
    "avgpool_div": nn.AvgPool2d(3, 2, padding=1, divisor_override=2),
    "zeropad_asym": nn.ZeroPad2d((1, 2, 0, 3)),
    "constpad": nn.ConstantPad2d((2, 0, 1, 1), 0.5),
    "fpad_then_conv": nn.Sequential(),  # replaced below (functional)
}


class FPadConv(nn.Module):
    """EfficientNet-style static 'same' padding: F.pad + F.conv2d on get_attr weights."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 2, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (0, 1, 0, 1)), self.w, None, 2)


SINGLE_OPS["fpad_then_conv"] = FPadConv()


def _captured(mod: nn.Module, shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    return capture(nn.Sequential(mod).eval(), shape, "single")


def _col_ranges(w: int) -> list[tuple[int, int]]:
    return sorted({(0, w), (0, 1), (w - 1, w), (1, w), (0, max(1, w // 2)), (w // 3, max(w // 3 + 1, 2 * w // 3))})


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("shape", [(1, 4, 11, 9), (1, 4, 8, 10)], ids=["odd", "even"])
@pytest.mark.parametrize("op", list(SINGLE_OPS))
def test_every_region_of_a_single_op_is_exact(op: str, shape: tuple[int, ...]) -> None:
    mod = SINGLE_OPS[op]
    if isinstance(mod, (nn.Conv2d, FPadConv)):
        cin = mod.in_channels if isinstance(mod, nn.Conv2d) else 2
        shape = (1, cin, *shape[2:])
    cm = _captured(mod, shape)
    g = cm.graph
    x = torch.randn(shape)
    with torch.no_grad():
        ref = cm.module(x)
    end = g.output
    H, W = end.height, end.width
    checked = 0
    for r0 in range(H):
        for r1 in range(r0 + 1, H + 1):
            for c0, c1 in _col_ranges(W):
                pg = part_geometry(g, g.input.name, end.name, (r0, r1, c0, c1))
                ir = pg.in_region
                assert ir is not None and contains((0, shape[2], 0, shape[3]), ir)
                y = run_part(cm, pg, x[:, :, ir[0]:ir[1], ir[2]:ir[3]])
                where = f"{op} rows [{r0},{r1}) cols [{c0},{c1})"
                torch.testing.assert_close(y, ref[:, :, r0:r1, c0:c1], rtol=1e-5, atol=1e-5,
                                           msg=lambda m, where=where: f"{where}: {m}")
                checked += 1
    assert checked >= H


def test_needed_input_arithmetic() -> None:
    cm = _captured(SINGLE_OPS["conv3_s2_odd"], (1, 2, 11, 9))
    n = cm.graph.output  # k3 s2 p1: output row o reads input rows 2o-1 .. 2o+1
    assert needed_input(n, (0, 1, 0, 5)) == (-1, 2, -1, 10)
    assert needed_input(n, (2, 4, 1, 2)) == (3, 8, 1, 4)
    dil = _captured(SINGLE_OPS["conv5_dil2"], (1, 2, 11, 9)).graph.output  # k5 d2 p3: span 9
    assert needed_input(dil, (0, 1, 0, 1)) == (-3, 6, -3, 6)


def test_region_helpers() -> None:
    a, b = (0, 4, 0, 4), (2, 6, 3, 8)
    assert intersect(a, b) == (2, 4, 3, 4) and area(intersect(a, b)) == 2
    assert union(None, a) == a and union(a, b) == (0, 6, 0, 8)
    assert contains(union(a, b), b) and not contains(a, b)
    assert area((3, 1, 0, 5)) == 0
    # tile boundaries map proportionally between sizes (rounding half up), ends map to ends
    assert [map_boundary(b, 8, 4) for b in (0, 3, 4, 8)] == [0, 2, 2, 4]
    assert map_boundary(224, 224, 7) == 7 and map_boundary(0, 224, 7) == 0


def test_exact_part_reads_halo_and_pads_only_at_image_borders() -> None:
    cm = _captured(SINGLE_OPS["conv3"], (1, 2, 10, 10))
    g = cm.graph
    top = part_geometry(g, g.input.name, g.output.name, (0, 5, 0, 10))
    mid = part_geometry(g, g.input.name, g.output.name, (3, 6, 0, 10))
    assert top.in_region == (0, 6, 0, 10)  # one halo row below, none above the image
    assert top.nodes[0].edges[0].pad == (1, 0, 1, 1)  # zero padding only at the image borders
    assert mid.in_region == (2, 7, 0, 10)
    assert mid.nodes[0].edges[0].pad == (0, 0, 1, 1)
    assert halo_rows(g, g.input.name, g.output.name, (3, 6, 0, 10)) == 2
    assert region_bytes(g.input, mid.in_region) == 4 * 2 * 5 * 10
    assert mid.in_shape(g) == (1, 2, 5, 10) and mid.out_shape(g) == (1, 3, 3, 10)
    # the part function checks its input shape
    with pytest.raises(PartInputError, match=r"expected \[1, 2, 5, 10\]"):
        PartRunner(cm, mid)(torch.zeros(1, 2, 6, 10))


def test_part_flops_include_halo_redundancy(captured) -> None:  # type: ignore[no-untyped-def]
    c = captured("user:user_net")
    g = c.graph
    last = [k for k, ok in g.splittable_cuts().items() if ok][-1]
    start, H, W = g.input.name, g[last].height, g[last].width
    whole = part_geometry(g, start, last, None)
    assert whole.flops == sum(n.flops for n in g.segment(start, last))
    one = part_geometry(g, start, last, (0, H, 0, W))
    assert one.flops == whole.flops
    halves = [part_geometry(g, start, last, r) for r in ((0, 1, 0, W), (1, H, 0, W))]
    assert sum(p.flops for p in halves) > whole.flops  # the fused halo is computed twice
    # a single conv layer split by rows has no redundant compute (halo is data, not work)
    cut0 = g.cut_points()[0]
    h0 = g[cut0].height
    split = sum(part_geometry(g, start, cut0, (a, b, 0, g[cut0].width)).flops
                for a, b in ((0, 3), (3, 4), (4, h0)))
    assert split == g[cut0].flops


def test_region_errors(captured) -> None:  # type: ignore[no-untyped-def]
    g = captured("user:user_net").graph
    with pytest.raises(GraphError, match="empty or outside"):
        part_geometry(g, g.input.name, "stem", (0, 30, 0, 5))
    with pytest.raises(GraphError, match="empty or outside"):
        part_geometry(g, g.input.name, "stem", (3, 3, 0, 5))
    with pytest.raises(GraphError, match="not splittable.*whole partition"):
        part_geometry(g, g.input.name, "fc", (0, 1, 0, 1))
    with pytest.raises(GraphError, match="unknown halo mode 'approx'"):
        part_geometry(g, g.input.name, "stem", None, "approx")


def test_whole_region_of_a_non_spatial_stage_ending_at_a_feature_map(captured) -> None:  # type: ignore[no-untyped-def]
    """Regression: a ``whole`` stage that contains an SE-style scaling (global pooling) and ends at a
    feature map got its full output region from Plan.parts and was refused as 'not splittable'."""
    c = captured("user:se_net")
    g = c.graph
    assert not g.splittable_cuts()["mul"]
    pg = part_geometry(g, g.input.name, "mul", (0, g["mul"].height, 0, g["mul"].width))
    assert pg.out_region is None and pg.in_region is None
    plan = Plan(ModelRef("se_net", tuple(g.input_shape), g.fingerprint()), ["a", "b"], "a",
                [Stage("mul", Whole("b")), Stage("output", Whole("a"))])
    y = InProcessExecutor(c.cm, plan)(c.x)
    assert compare(y, c.ref)[1] <= 1e-5


# --------------------------------------------------------------------------- zero halo


def _grid_plan(g, until: str, rows, cols, halo: str) -> Plan:  # type: ignore[no-untyped-def]
    devs = tuple(tuple(f"d{(i * (len(cols) - 1) + j) % 4}" for j in range(len(cols) - 1))
                 for i in range(len(rows) - 1))
    return Plan(ModelRef(g.name, tuple(g.input_shape), g.fingerprint()), ["d0", "d1", "d2", "d3"], "d0",
                [Stage(until, Grid(tuple(rows), tuple(cols), devs), halo), Stage("output", Whole("d0"))])


def test_zero_halo_on_a_2x2_grid_runs_and_differs_from_exact(captured) -> None:  # type: ignore[no-untyped-def]
    c = captured("resnet18_digits")
    g = c.graph
    cut = "conv1"  # one conv stage (7x7, stride 2)
    h, w = g[cut].height, g[cut].width
    rows, cols = (0, h // 2, h), (0, w // 2, w)
    outs = {halo: InProcessExecutor(c.cm, _grid_plan(g, cut, rows, cols, halo)).run(c.x) for halo in ("exact", "zero")}
    assert outs["zero"].output.shape == outs["exact"].output.shape == c.ref.shape
    assert torch.isfinite(outs["zero"].output).all()
    assert compare(outs["exact"].output, c.ref)[1] <= 1e-4
    assert compare(outs["zero"].output, c.ref)[1] > 1e-3  # approximate
    # the stage output itself: zero-halo tiles equal the conv of each input tile, zero-padded alone
    ex = InProcessExecutor(c.cm, _grid_plan(g, cut, rows, cols, "zero"))
    conv = c.cm.tensors["conv1"]
    node = g["conv1"]
    for (_, runner) in ex.parts[0]:
        pg = runner.geom
        r, ir = pg.out_region, pg.in_region
        assert r is not None and ir is not None
        tile = c.x[:, :, ir[0]:ir[1], ir[2]:ir[3]]
        want = F.conv2d(tile, conv["weight"], conv.get("bias"), node.attrs["stride"], node.attrs["pad"][0])
        torch.testing.assert_close(runner(tile), want, rtol=1e-5, atol=1e-5)


def test_zero_halo_grid_finer_than_a_feature_map_is_a_clear_error(captured) -> None:  # type: ignore[no-untyped-def]
    c = captured("user:user_net")
    g = c.graph
    # the stage (x, pad] passes through 'act' (19 rows) and ends at 'pad' (21 rows): 1-row tiles of
    # 'pad' are finer than 'act'
    H, W = g["pad"].height, g["pad"].width
    plan = _grid_plan(g, "pad", range(H + 1), (0, W), "zero")
    plan.validate(g)  # structurally valid...
    with pytest.raises(GraphError, match=r"finer than that feature map; use fewer rows/cols"):
        InProcessExecutor(c.cm, plan)  # ...but has no zero-halo geometry
    exact = _grid_plan(g, "pad", range(H + 1), (0, W), "exact")
    assert compare(InProcessExecutor(c.cm, exact)(c.x), c.ref)[1] <= 1e-4
