"""Run a traced model once at its example input to record every node's output shape.

``torch.fx``'s ``ShapeProp`` prints the full traceback of an op that fails and re-raises it wrapped
in a long ``RuntimeError``; here the op's own error reaches the caller instead, as one
:class:`GraphError` line (a user model given an input shape it cannot run at: wrong channel count,
too small for its pooling).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch.fx.passes.shape_prop import ShapeProp

from .ir import GraphError


class _OpFailed(BaseException):
    """An op's error, carried past ``ShapeProp.run_node``'s ``except Exception`` (which prints it)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class _QuietShapeProp(ShapeProp):
    def call_module(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().call_module(*args, **kwargs)
        except Exception as e:  # handed to propagate_shapes as the op's own error
            raise _OpFailed(e) from e

    def call_function(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().call_function(*args, **kwargs)
        except Exception as e:
            raise _OpFailed(e) from e

    def call_method(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().call_method(*args, **kwargs)
        except Exception as e:
            raise _OpFailed(e) from e


def propagate_shapes(gm: torch.fx.GraphModule, example: torch.Tensor, what: str) -> None:
    """Fill ``node.meta["tensor_meta"]`` of ``gm``'s nodes; ``what`` (e.g. ``model mynet:build``) names
    the model in the error when it does not run at ``example``'s shape."""
    try:
        with torch.no_grad():
            _QuietShapeProp(gm).propagate(example)
    except _OpFailed as f:
        e = f.error
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        shape = ",".join(str(d) for d in example.shape)
        raise GraphError(f"{what} does not run at input shape {shape}: {first} — check --input-shape") from None
