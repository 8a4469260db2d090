"""Plans (``coinfer.plan/1``) and their lowering to per-device programs. Torch-free."""

from .plan import (Grid, ModelRef, Part, Plan, PlanError, RowPart, Rows, Stage, StrategyRef, Whole,
                   Wire)

__all__ = ["Grid", "ModelRef", "Part", "Plan", "PlanError", "RowPart", "Rows", "Stage",
           "StrategyRef", "Whole", "Wire"]
