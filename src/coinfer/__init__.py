"""coinfer: one CNN inference, cooperatively, across heterogeneous edge devices.

The light parts (graph IR, plans, strategies, cost model, simulator) import
without torch. The Python API::

    import coinfer
    model = coinfer.zoo.get("resnet18")
    cm = coinfer.capture(model, (1, 3, 224, 224))
    plan = coinfer.plan("resnet18", "demo4", strategy="proportional")
    err = coinfer.verify(plan, model, x)            # max abs diff vs the plain model
    with coinfer.deploy(plan, "demo4") as session:  # real worker processes
        y = session(x)

Every error coinfer raises on purpose derives from ``coinfer.CoinferError``;
``coinfer.RuntimeFailure`` (a request failed after its re-plans) and
``coinfer.DeviceUnreachable`` (a device does not answer) come from sessions.
Warnings (a device declared dead, a re-plan) go to the ``coinfer`` logger:
``logging.getLogger("coinfer").setLevel(logging.ERROR)`` silences them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from . import zoo
from .errors import CoinferError
from .plan.plan import Plan

if TYPE_CHECKING:  # pragma: no cover
    from .graph.capture import CapturedModel

__all__ = ["CoinferError", "DeviceUnreachable", "Plan", "RuntimeFailure", "Session", "__version__", "capture",
           "deploy", "plan", "simulate", "verify", "zoo"]


def capture(model: Any, input_shape: Any, name: str | None = None) -> CapturedModel:
    """Trace an ``nn.Module`` into coinfer's graph IR (see :mod:`coinfer.graph.capture`)."""
    from .graph.capture import capture as _capture

    return _capture(model, input_shape, name)


def __getattr__(name: str) -> Any:
    # importlib, not "from . import api": that statement looks the attribute up first, which calls this
    # function again (RecursionError in a fresh interpreter — found by QA in this stop's first version)
    import importlib

    if name in ("plan", "verify", "simulate", "deploy"):
        return getattr(importlib.import_module(f"{__name__}.api"), name)
    if name == "api":
        return importlib.import_module(f"{__name__}.api")
    if name in ("RuntimeFailure", "DeviceUnreachable", "Session"):  # imports torch: on first use
        return getattr(importlib.import_module(f"{__name__}.runtime.coordinator"), name)
    raise AttributeError(f"module 'coinfer' has no attribute {name!r}")
