"""Every registered strategy's plan, with and without ``fc_split``, runs on real workers and equals
the plain model (exact strategies; ``adcnn`` is approximate and only has to run).

The in-process property tests check the plans; this checks what the workers do with them — the
message patterns differ by strategy (peer-to-peer halos, MoDNN's gathers at the source, features
all-gathers, dynamic tiles, early exits). It would have caught a source that held a map as row
pieces and could not send it whole (MoDNN on AlexNet / ResNet-50).
"""

from __future__ import annotations

from typing import Any

import pytest

from coinfer.api import plan_result
from coinfer.cluster import builtin_cluster
from coinfer.execute.local import TOLERANCE, compare, reference_output
from coinfer.inputs import random_input
from coinfer.modelspec import capture_model
from coinfer.runtime.coordinator import Session
from coinfer.runtime.launcher import LocalCluster
from coinfer.strategies import registry

pytestmark = pytest.mark.integration

MODELS = ("alexnet", "resnet18_digits")
#: what a strategy needs besides the model and cluster to plan here
EXTRA: dict[str, dict[str, Any]] = {"edgent": {"deadline_ms": 1000}, "coedge": {"deadline_ms": 1e6},
                                    "distredge": {"train_episodes": 30, "costs": "analytic"}}


@pytest.fixture(scope="module")
def workers():
    cl = builtin_cluster("het4")
    # torch parts: what is checked here is each strategy's plan on real workers; every backend's exactness
    # has its own tests (tests/property/test_backends_exact.py, test_backends_runtime.py), and `auto`
    # built and timed both backends of AlexNet's 244 MB of parts for each of the 26 plans (72 s)
    cl = cl.model_copy(update={"network": cl.network.model_copy(update={"shape": False}),
                               "devices": [d.model_copy(update={"backend": "torch"}) for d in cl.devices]})
    with LocalCluster(cl, emulate_cpu=False) as lc:
        yield cl, lc


@pytest.mark.parametrize("model", MODELS)
def test_every_strategy_runs_exactly_on_workers(workers, model: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path))  # distredge's policy cache
    cl, lc = workers
    cm = capture_model(model)
    x = random_input(tuple(cm.graph.input_shape), 3)
    ran = []
    for name in registry.names():
        seen: set[str] = set()
        for fc in ("false", "true"):
            kw: dict[str, Any] = {"fc_split": fc, **EXTRA.get(name, {})}
            plan = plan_result(model, cl, name, **kw).plan
            ran.append((name, fc, len(plan.stages)))
            stages = str([st.to_dict() for st in plan.stages])
            if stages in seen:  # fc_split changed nothing (no linear layer big enough)
                continue
            seen.add(stages)
            with Session(plan, cl, lc.addresses, dead_after_s=30) as s:
                y = s(x)
            ref = reference_output(cm, x, plan.exit)
            assert y.shape == ref.shape, (name, fc)
            if registry.info(name).exact:
                assert compare(y, ref)[1] <= TOLERANCE, (name, fc, stages)
    assert len(ran) == 2 * len(registry.names())
