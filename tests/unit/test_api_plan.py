"""The planning function of the Python API (QA stop 26): a plan made with ``coinfer.plan`` had no
prediction (only ``coinfer plan`` wrote one), and ``inspect.signature(coinfer.plan)`` was
``(*args, **kwargs)`` because ``coinfer.plan`` is also the plan package."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from typer.testing import CliRunner

import coinfer
from coinfer.cli.main import build_app


def test_an_api_plan_carries_the_same_prediction_as_the_cli(tmp_path: Path) -> None:
    p = coinfer.plan("resnet18_digits", "demo4", "even")
    assert p.predicted is not None and p.predicted["latency_ms"] > 0
    r = CliRunner().invoke(build_app(), ["plan", "-m", "resnet18_digits", "-c", "demo4", "-s", "even",
                                         "-o", str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    cli = json.loads((tmp_path / "p.json").read_text())["predicted"]
    assert abs(cli["latency_ms"] - p.predicted["latency_ms"]) < 1e-6


def test_the_plan_function_shows_its_own_signature() -> None:
    params = inspect.signature(coinfer.plan).parameters
    assert list(params)[:3] == ["model", "cluster", "strategy"]
    assert {"objective", "deadline_ms", "input_shape", "profiles"} <= set(params)


def test_the_lazy_names_resolve_in_a_fresh_interpreter() -> None:
    """QA (stop 26): `import coinfer; coinfer.deploy` was a RecursionError in a fresh interpreter (the
    module's __getattr__ ran `from . import api`, which looks the attribute up again)."""
    import subprocess
    import sys

    for name in ("deploy", "verify", "simulate", "api", "RuntimeFailure", "DeviceUnreachable", "CoinferError"):
        r = subprocess.run([sys.executable, "-c", f"import coinfer; print(coinfer.{name})"], capture_output=True,
                           text=True, timeout=120, check=False)
        assert r.returncode == 0, (name, r.stderr[-500:])
