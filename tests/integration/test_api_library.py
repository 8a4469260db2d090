"""coinfer used as a Python library (QA stop 26, `coinfer.deploy` / `Session` / `plan` / `verify`):
calls after close hung for the request timeout, concurrent callers read each other's traces, argument
mistakes were found only after the workers had started, a module object given to plan was an
AttributeError, a dict cluster was taken for a file name, verify with other weights said nothing, a
session never closed printed "declared dead" lines at exit, and a module importable only through the
caller's sys.path could not be built by the local workers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

import coinfer
from coinfer.execute.local import TOLERANCE, compare, reference_output
from coinfer.inputs import random_input
from coinfer.modelspec import ModelError, capture_model
from coinfer.plan.plan import PlanError
from coinfer.runtime.coordinator import RuntimeFailure

pytestmark = pytest.mark.integration

CL = {"source": "a", "devices": [{"name": "a"}, {"name": "b"}],
      "network": {"bandwidth_mbps": 1000, "latency_ms": 0.1}, "emulation": {"cpu": "off"}}
MODEL = "resnet18_digits"


@pytest.fixture(scope="module")
def plan():  # type: ignore[no-untyped-def]
    return coinfer.plan(MODEL, CL, "even")  # a dict cluster: was "cluster file {...} does not exist"


def _children() -> int:
    import psutil

    return len(psutil.Process().children(recursive=True))


def test_a_session_refuses_calls_after_close_at_once_and_gives_each_thread_its_trace(plan) -> None:  # type: ignore[no-untyped-def]
    cm = capture_model(MODEL)
    xs = [random_input(tuple(cm.graph.input_shape), i) for i in range(12)]
    s = coinfer.deploy(plan, CL)
    with s:
        seen: list[int] = []
        errors: list[BaseException] = []

        def job(i: int) -> None:
            try:
                y = s(xs[i])
                assert compare(y, reference_output(cm, xs[i]))[1] <= TOLERANCE
                assert s.last_trace is not None
                seen.append(int(s.last_trace.meta["req"]))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=job, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert len(set(seen)) == len(xs), f"threads read other calls' traces: {sorted(seen)}"
        # an array is an input too (was AttributeError: 'numpy.ndarray' object has no attribute 'detach')
        assert compare(s(xs[0].numpy()), reference_output(cm, xs[0]))[1] <= TOLERANCE
        with pytest.raises(ValueError, match="attempts"):
            s(xs[0], attempts=0)
    t0 = time.monotonic()
    with pytest.raises(RuntimeFailure, match="closed"):
        s(xs[0])  # waited the whole timeout_s (300 s), then blamed a blocked link
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(RuntimeFailure, match="closed"), s:
        pass


def test_deploy_checks_its_arguments_before_starting_workers(plan, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    before = _children()
    t0 = time.monotonic()
    with pytest.raises(PlanError, match="not in the cluster"):
        coinfer.deploy(plan, "demo4")  # was: 6.6 s, then "device 'a' has no address"
    with pytest.raises(TypeError, match="timeout"):
        coinfer.deploy(plan, CL, timeout=5)  # misspelt timeout_s: was a TypeError after 6.4 s
    assert time.monotonic() - t0 < 2.0 and _children() == before
    # a plan may be given as its file, as a cluster may
    plan.save(tmp_path / "p.json")
    assert coinfer.simulate(str(tmp_path / "p.json"), CL).latency_ms > 0
    import dataclasses

    main = coinfer.plan(MODEL, CL, "local")
    main.model = dataclasses.replace(main.model, name="__main__:Net")
    with pytest.raises(ModelError, match="move it to a module"):
        coinfer.deploy(main, CL)


def test_plan_refuses_a_module_object_with_the_fix() -> None:
    with pytest.raises(ModelError, match="import path"):
        coinfer.plan(torch.nn.Conv2d(3, 4, 3), CL)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cluster must be"):
        coinfer.plan(MODEL, 42)  # type: ignore[arg-type]
    assert issubclass(ModelError, coinfer.CoinferError) and issubclass(RuntimeFailure, coinfer.CoinferError)


def test_verify_warns_when_the_model_given_is_not_what_the_workers_build(plan) -> None:  # type: ignore[no-untyped-def]
    mine = coinfer.zoo.get(MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert coinfer.verify(plan, mine) <= 1e-3  # the same weights: no warning
    with torch.no_grad():
        mine.fc.weight.mul_(2.0)  # "fine-tuned"
    with pytest.warns(UserWarning, match="deploy will compute with"):
        coinfer.verify(plan, mine)


def test_a_script_that_never_closes_its_session_exits_quietly_and_its_sys_path_model_builds(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tinynet.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def make():
            torch.manual_seed(3)
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
    """))
    script = tmp_path / "use.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path / "mine")!r})  # importable here only
        import torch, coinfer, tinynet
        cl = {CL!r}
        p = coinfer.plan("tinynet:make", cl, "even", input_shape=(1, 3, 16, 16))
        assert p.devices_used_names() == ["a", "b"], p.devices_used_names()
        s = coinfer.deploy(p, cl)
        x = torch.randn(1, 3, 16, 16)
        with torch.no_grad():
            ok = torch.allclose(s(x), tinynet.make()(x), atol=1e-5)
        print("OK" if ok else "MISMATCH")
        # no s.close(): closed at exit
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       check=False)
    assert r.returncode == 0 and r.stdout.strip() == "OK", (r.stdout, r.stderr[-2000:])
    assert "declared dead" not in r.stderr, r.stderr[-2000:]
