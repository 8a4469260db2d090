"""Discrete-event simulator of lowered plans (torch-free; ``run.simulate_plan`` captures models)."""

from .engine import NIC_MODES, SimulationError, simulate
from .result import SimResult

__all__ = ["NIC_MODES", "SimResult", "SimulationError", "simulate"]
