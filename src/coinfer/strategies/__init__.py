"""Planning strategies, one registry by name (torch-free)."""

from .registry import Infeasible, PlanRequest, PlanResult, StrategyError, info, names, register, run

__all__ = ["Infeasible", "PlanRequest", "PlanResult", "StrategyError", "info", "names", "register", "run"]
