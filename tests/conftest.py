"""Shared test fixtures and the hypothesis profile.

* Hypothesis runs derandomized (a fixed seed) with no example database and no
  deadline, so CI is deterministic; ``HYPOTHESIS_PROFILE=dev`` draws fresh
  random examples locally (``HYPOTHESIS_PROFILE=dev pytest tests/property``).
* ``captured``: a session-wide cache of captured models (zoo names via
  :func:`coinfer.modelspec.capture_model`, or ``core_helpers.user_models``
  callables) with a seeded input and the plain model's output.
* ``run_cli``: run the ``coinfer`` console script in a subprocess with
  ``tests/`` on ``PYTHONPATH`` (so ``core_helpers.user_models:...`` imports).

This directory is on ``sys.path`` (pytest's rootdir conftest insertion), so
test modules import helpers as ``from core_helpers import ...``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
settings.register_profile("dev", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@dataclass
class Captured:
    """A captured model with a seeded input ``x`` and the plain model's output ``ref``."""

    name: str
    cm: Any  # coinfer.graph.capture.CapturedModel
    x: Any  # torch.Tensor
    ref: Any  # torch.Tensor

    @property
    def graph(self) -> Any:
        return self.cm.graph

    def ref_exit(self, exit_name: str | None) -> Any:
        from coinfer.execute.local import reference_output

        return self.ref if exit_name in (None, "final") else reference_output(self.cm, self.x, exit_name)


class CaptureCache:
    def __init__(self) -> None:
        self._items: dict[str, Captured] = {}

    def __call__(self, name: str) -> Captured:
        """``name``: a zoo model, or ``user:<callable>`` from ``core_helpers.user_models``."""
        if name not in self._items:
            import torch

            from coinfer.execute.local import reference_output

            if name.startswith("user:"):
                from core_helpers import user_models

                from coinfer.graph.capture import capture

                fn = name.split(":", 1)[1]
                cm = capture(getattr(user_models, fn)(), user_models.USER_SHAPE, fn)
            else:
                from coinfer import zoo
                from coinfer.modelspec import ModelError, capture_model

                try:
                    cm = capture_model(name)
                except (ModelError, zoo.MissingExtraError) as e:
                    pytest.skip(f"{name}: {e}")
            x = torch.randn(cm.graph.input_shape, generator=torch.Generator().manual_seed(1234))
            self._items[name] = Captured(name, cm, x, reference_output(cm, x))
        return self._items[name]


@pytest.fixture(scope="session")
def captured() -> CaptureCache:
    return CaptureCache()


def coinfer_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "coinfer"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("coinfer")
    return [found] if found else [sys.executable, "-m", "coinfer.cli.main"]


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "2")
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"

    def run(*args: str, cwd: str | Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*coinfer_cmd(), *map(str, args)], capture_output=True, text=True, check=False,
                              env=env, cwd=cwd, timeout=timeout)

    return run


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    """The one line a CLI user mistake must give: exit 2, ``error: …`` on stderr, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def machine_oversubscribed() -> bool:
    """More runnable work than cores (1-minute load average): absolute timings mean nothing then.

    Timing tests keep the bound that holds whatever the load (a shaper or a
    CPU quota never makes things *faster*) and check the other bound only on a
    machine that is not oversubscribed (CI runs alone).
    """
    try:
        return os.getloadavg()[0] > 1.25 * (os.cpu_count() or 1)
    except OSError:  # pragma: no cover
        return False
