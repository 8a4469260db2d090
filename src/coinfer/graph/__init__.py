"""Graph IR (torch-free), receptive-field geometry (torch-free) and capture (torch)."""

from .ir import OUTPUT, ExitBranch, Graph, GraphError, Node

__all__ = ["OUTPUT", "ExitBranch", "Graph", "GraphError", "Node"]
