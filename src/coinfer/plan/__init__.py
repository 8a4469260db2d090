"""Plans (``coinfer.plan/1``) and their lowering to per-device programs. Torch-free.

The package is also callable, so the documented API ``coinfer.plan(model,
cluster, strategy=...)`` works even though ``coinfer.plan`` is this package.
"""

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


sys.modules[__name__].__class__ = _CallablePlanModule
