"""``coinfer inspect MODEL``: the captured graph, its cut points and FLOPs."""

from __future__ import annotations

COMMAND = "inspect"

import typer

from .common import console, emit_json, user_errors


@user_errors
def cmd(
    model: str = typer.Argument(..., help="zoo name, package.module:callable, or file.onnx"),
    input_shape: str = typer.Option(None, "--input-shape", help="N,C,H,W (required for import paths)"),
    json_out: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
    nodes: bool = typer.Option(False, "--nodes", help="list every node, not only cut points"),
) -> None:
    """Show a model's graph: nodes, FLOPs, cut points and which can be split."""
    from ..modelspec import capture_model

    cm = capture_model(model, input_shape)
    s = cm.graph.summary()
    if json_out:
        emit_json(s)
        return
    from rich.table import Table

    c = console()
    c.print(f"[bold]{s['model']}[/]  input {s['input_shape']}  {s['flops'] / 1e9:.3f} GFLOPs  "
            f"{s['params'] / 1e6:.2f} M params  {len(s['nodes'])} nodes  {s['fingerprint'][:23]}…")
    t = Table()
    for col in ("#", "name", "op", "out shape", "MFLOPs", "splittable"):
        t.add_column(col)
    split = {cp["name"]: cp["splittable"] for cp in s["cut_points"]}
    for i, n in enumerate(s["nodes"]):
        if not nodes and n["name"] not in split:
            continue
        sp = "" if n["name"] not in split else ("yes" if split[n["name"]] else "whole only")
        t.add_row(str(i), n["name"], n["op"], "x".join(map(str, n["out_shape"])), f"{n['flops'] / 1e6:.1f}", sp)
    c.print(t)
    if s.get("exits"):
        c.print("exits: " + ", ".join(f"{k} (after {v['attach']})" for k, v in s["exits"].items()))
