"""Per-model summary for ``coinfer models`` (params, FLOPs from the captured graph), cached."""

from __future__ import annotations

import json
from typing import Any

from . import __version__, zoo
from .paths import cache_dir


def _summary(name: str) -> dict[str, Any]:
    from .modelspec import ModelError, capture_model

    e = zoo.entry(name)
    row: dict[str, Any] = {"name": name, "input_shape": list(e.input_shape), "weights": e.weights,
                           "exits": list(e.exits), "description": e.description}
    try:
        g = capture_model(name).graph
        row.update(params=g.params, flops=g.flops, cut_points=len(g.cut_points()))
    except ModelError as err:
        row.update(params=0, flops=0, cut_points=0, error=str(err))
    return row


def summaries(with_exits: bool = False) -> list[dict[str, Any]]:
    import torch

    path = cache_dir() / f"zoo-summary-{__version__}-torch{torch.__version__}.json"
    cached: dict[str, Any] = {}
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
        except json.JSONDecodeError:
            cached = {}
    rows = []
    for n in zoo.names():
        r = cached.get(n)
        if r is None or "error" in r:
            r = _summary(n)
            cached[n] = r
        rows.append(dict(r))
    path.write_text(json.dumps(cached))
    if with_exits:
        try:
            from .train.exits import cached_accuracies
        except ImportError:  # pragma: no cover - training not available
            cached_accuracies = None  # type: ignore[assignment]
        for r in rows:
            if r["exits"] and cached_accuracies is not None:
                r["exit_accuracy"] = cached_accuracies(r["name"])
                if r["exit_accuracy"]:  # the zoo loads the trained checkpoint for this model
                    r["weights"] = "trained"
    return rows
