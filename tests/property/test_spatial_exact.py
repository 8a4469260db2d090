"""Every plan of the four spatial planners equals the unpartitioned model, on every zoo model (issue 7).

``modnn``, ``deepthings``, ``coedge`` and ``aofl`` plan each zoo model over
``het4`` (100 Mbit/s; MoDNN over two of its devices, see ``DEFAULT_PARAMS``);
the plan is validated, lowered and run in-process and must match the plain
model within :data:`~coinfer.execute.local.TOLERANCE`. The small models also
get the variants (MoDNN over all four devices, 16 devices, 8 Mbit/s,
per-stage CoEdge shares, static DeepThings tiles, AOFL via the source). To keep the
module fast the three heaviest models (VGG-16, ResNet-50, YOLOv2-tiny) are
captured at a reduced input resolution (the same architecture: every layer,
padding and stride is there, only the image is smaller); their full-size plans
are exercised by the planners' unit tests and the benchmark.
"""

from __future__ import annotations

import pytest
import torch

from coinfer import zoo
from coinfer.cluster import builtin_cluster
from coinfer.execute.local import TOLERANCE, InProcessExecutor, compare, reference_output
from coinfer.graph.capture import capture
from coinfer.modelspec import capture_model
from coinfer.plan.lower import lower
from coinfer.strategies import PlanRequest, run

PLANNERS = ("modnn", "deepthings", "coedge", "aofl")
REDUCED = {"vgg16": (1, 3, 64, 64), "resnet50": (1, 3, 96, 96), "yolov2_tiny": (1, 3, 128, 128)}
SMALL = ("alexnet_digits", "resnet18_digits")
VARIANTS = [
    ("het4", 100, "modnn", {}), ("eq16", 100, "coedge", {}), ("eq16", 100, "deepthings", {"grid": "3x3"}),
    ("het4", 8, "aofl", {"exchange": "via_source"}), ("het4", 1000, "coedge", {"per_stage": True}),
    ("het4", 1000, "deepthings", {"schedule": "static", "grid": "2x3", "layers": 3}),
    ("eq4", 1000, "aofl", {"max_block": 2}), ("het4", 1000, "coedge", {"objective": "energy"}),
]

_CACHE: dict[str, tuple] = {}


def _model(name: str):
    if name not in _CACHE:
        try:
            if name in REDUCED:  # the zoo module itself, captured at a smaller image
                cm = capture(zoo.get(name), REDUCED[name], name)
            else:
                cm = capture_model(name)
        except Exception as e:  # noqa: BLE001 - a zoo extra that is not installed
            pytest.skip(f"{name}: {e}")
        x = torch.randn(cm.graph.input_shape, generator=torch.Generator().manual_seed(7))
        _CACHE[name] = (cm, x, reference_output(cm, x))
    return _CACHE[name]


def _check(name: str, cluster: str, mbps: float, strategy: str, params: dict) -> None:
    cm, x, ref = _model(name)
    g = cm.graph
    cl = builtin_cluster(cluster).with_bandwidth(mbps)
    p = dict(params)
    objective = p.pop("objective", "latency")
    res = run(strategy, PlanRequest(g, cl, name, None, objective, None, p))
    plan = res.plan
    lower(plan, g)
    y = InProcessExecutor(cm, plan)(x)
    diff, rel = compare(y, ref)
    assert rel <= TOLERANCE, f"{strategy} on {name}: max_abs_diff={diff:.3g} rel={rel:.3g}\n{plan.to_json()}"


# MoDNN splits every layer over every device: its plans have by far the most parts, and building and
# running them dominates this module; over all models it runs on two devices (d0, d3), with all four
# devices on the small models (VARIANTS below)
DEFAULT_PARAMS = {"modnn": {"devices": ["d0", "d3"]}}


@pytest.mark.parametrize("name", zoo.names())
@pytest.mark.parametrize("strategy", PLANNERS)
def test_spatial_plans_are_exact(name: str, strategy: str) -> None:
    _check(name, "het4", 100, strategy, DEFAULT_PARAMS.get(strategy, {}))


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("cluster,mbps,strategy,params", VARIANTS)
def test_spatial_variants_are_exact(name: str, cluster: str, mbps: float, strategy: str, params: dict) -> None:
    _check(name, cluster, mbps, strategy, params)
