"""Helpers for the core tests (graph, plan, lower, execute): plan generators, lowering checks, user models."""
