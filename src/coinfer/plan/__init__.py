"""Plans (``coinfer.plan/1``) and their lowering to per-device programs. Torch-free.

The package is also callable, so the documented API ``coinfer.plan(model,
cluster, strategy=...)`` works even though ``coinfer.plan`` is this package:
``coinfer.plan(model, cluster, strategy="proportional", *, objective="latency",
deadline_ms=None, profiles=None, input_shape=None, note=None, **params) -> Plan``
(:func:`coinfer.api.plan_result`'s arguments; ``help(coinfer.api.plan_result)``).
"""

import inspect
import sys
import types
from typing import Any

from .plan import (
    FeaturePart,
    Features,
    Grid,
    ModelRef,
    Part,
    Plan,
    PlanError,
    RowPart,
    Rows,
    Stage,
    StrategyRef,
    Whole,
    Wire,
)

__all__ = ["FeaturePart", "Features", "Grid", "ModelRef", "Part", "Plan", "PlanError", "RowPart", "Rows",
           "Stage", "StrategyRef", "Whole", "Wire"]


class _CallablePlanModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Plan:
        """``coinfer.plan(model, cluster, strategy="proportional", **params) -> Plan``."""
        from ..api import plan as _plan

        return _plan(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        """``inspect.signature(coinfer.plan)``: the planning function's, not ``(*args, **kwargs)``."""
        from ..api import plan_result

        return inspect.signature(plan_result).replace(return_annotation="Plan")


sys.modules[__name__].__class__ = _CallablePlanModule
