"""`even` / `proportional` stage boundaries: a zero-FLOP segment is never a stage of its own."""

from __future__ import annotations

from itertools import pairwise

import pytest

from coinfer.graph.geometry import part_geometry
from coinfer.modelspec import capture_model
from coinfer.strategies.common import fused_boundaries

W4 = {f"d{i}": 1.0 for i in range(4)}


def _stages(g, bounds):  # type: ignore[no-untyped-def]
    start = g.input.name
    for c in bounds:
        yield start, c
        start = c


@pytest.mark.parametrize("model", ["resnet50", "resnet18"])
def test_residual_closing_add_relu_joins_the_stage_before(model: str) -> None:
    g = capture_model(model).graph
    bounds = fused_boundaries(g, W4, 0.10)
    flops = [part_geometry(g, a, b, None).flops for a, b in _stages(g, bounds)]
    assert all(f > 0 for f in flops), flops  # every stage computes something
    # a residual block's add + ReLU is its own segment between two splittable cut points
    split = [c for c, ok in g.splittable_cuts().items() if ok]
    zero = [b for a, b in pairwise(split) if part_geometry(g, a, b, None).flops == 0]
    assert zero, "expected zero-FLOP segments in a ResNet"
