"""``coinfer train fdsp --model M --grid RxC``: fine-tune a model with ADCNN's FDSP tiling in the loop."""

from __future__ import annotations

NAME = "fdsp"

from pathlib import Path
from typing import Any

import typer

from .common import check_outputs, console, emit_json, user_errors


@user_errors
def cmd(
    model: str = typer.Option("digits_cnn", "--model", "-m",
                              help="digits_cnn (labelled, sklearn digits) or an RGB zoo model (distillation, "
                                   "e.g. efficientnet_lite0)"),
    grid: str = typer.Option(..., "--grid", "-g", help="FDSP tiles, RxC (e.g. 2x2); the same grid as the plan"),
    wire: str = typer.Option("int4", "--wire", help="quantisation in the loop: int4 (ADCNN), int8, int8c, raw, ..."),
    epochs: int = typer.Option(12, "--epochs", min=1, help="digits: fine-tuning epochs"),
    base_epochs: int = typer.Option(25, "--base-epochs", min=1, help="digits: epochs of the unpartitioned model (cached per epochs and seed; below 25 is reduced)"),
    steps: int = typer.Option(150, "--steps", min=1, help="distillation: optimiser steps"),
    batch: int = typer.Option(8, "--batch", min=1, help="distillation: images per step"),
    lr: float = typer.Option(None, "--lr", help="learning rate (digits 5e-4, distillation 2e-5)"),
    eval_images: int = typer.Option(96, "--eval-images", min=1, help="distillation: augmented views to measure agreement"),
    head: str = typer.Option("auto", "--head", help="cut point the source computes before the tiles (as the plan)"),
    until: str = typer.Option(None, "--until", help="cut point ending the tiles (default: as the adcnn planner)"),
    seed: int = typer.Option(0, "--seed", min=0),
    plot: Path = typer.Option(None, "--plot", help="learning-curve PNG"),
    threads: int = typer.Option(0, "--threads", min=0, help="torch threads (0: torch's default)"),
    force: bool = typer.Option(False, "--force", help="save even a reduced-budget run (--epochs below 12, "
                               "--steps below 150) over full-budget weights"),
    json_out: bool = typer.Option(False, "--json", help="one JSON report on stdout"),
) -> None:
    """Fine-tune MODEL so that ADCNN's tiled plan (zero-padded tiles, quantised transfers) keeps its accuracy.

    Reports the unpartitioned model, the tiled model before and after
    fine-tuning (accuracy on the digits test split, or top-1 agreement with
    the unpartitioned model on augmented sample images) and saves the weights
    for plans: coinfer plan -m coinfer.train.fdsp:fdsp_<model>_<grid>_<wire> ... A run on a reduced budget
    (--epochs below 12, --steps below 150) does not replace full-budget weights unless --force.
    """
    import torch

    from ..strategies.adcnn import parse_grid, parse_wire
    from ..strategies.registry import StrategyError
    from ..train import fdsp

    if lr is not None and not lr > 0:  # also refuses nan
        raise fdsp.FdspError(f"--lr must be > 0 (got {lr}); e.g. --lr 5e-4 (digits) or 2e-5 (distillation)")
    try:
        g = parse_grid(grid)
        w = parse_wire(wire, False)
    except StrategyError as e:
        raise fdsp.FdspError(str(e)) from None
    if g is None:
        raise fdsp.FdspError("--grid must be RxC such as 2x2 (auto is for the planner)")
    check_outputs(plot=plot)
    if threads > 0:
        torch.set_num_threads(threads)
    c = console(stderr=json_out)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    kw: dict[str, Any] = {"seed": seed, "head": head, "until": until, "force": force}
    if model == "digits_cnn":
        kw.update(epochs=epochs, base_epochs=base_epochs)
    else:
        kw.update(steps=steps, batch=batch, eval_images=eval_images)
    if lr is not None:
        kw["lr"] = lr
    with Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[m]}"), TimeElapsedColumn(), console=c, transient=json_out) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int, metrics: dict[str, float]) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total, m="")
            bar.update(tasks[phase], completed=done,
                       m="  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

        rep = fdsp.finetune(model, g, w, progress=progress, **kw)
    d = rep.to_dict()
    if plot is not None:
        _plot(rep, plot)
        d["plot"] = str(plot)
    if json_out:
        emit_json(d)
        return
    pct = 100.0
    c.print(f"{model} FDSP {rep.grid} wire {w.quant or 'fp32'}+{w.codec}: tiles {rep.head or 'input'} → {rep.until}")
    if rep.metric == "accuracy":
        c.print(f"accuracy (digits test, {rep.eval_images} images): unpartitioned {rep.unpartitioned * pct:.2f}%, "
                f"FDSP before {rep.fdsp_before * pct:.2f}%, after {rep.fdsp_after * pct:.2f}% "
                f"({(rep.fdsp_after - rep.unpartitioned) * pct:+.2f} points)")
    else:
        c.print(f"top-1 agreement with the unpartitioned model ({rep.eval_images} augmented images): "
                f"FDSP before {rep.fdsp_before * pct:.2f}%, after {rep.fdsp_after * pct:.2f}%")
    if rep.kept is not None:
        c.print(f"{rep.train_steps} steps in {rep.train_s:.0f} s; weights not saved: a reduced-budget run does not "
                f"replace the full-budget {rep.kept} (plans keep using it); --force replaces it")
    else:
        c.print(f"{rep.train_steps} steps in {rep.train_s:.0f} s; weights {rep.weights}")
    c.print(f"plan with: coinfer plan -m {rep.model_spec} --input-shape "
            f"{','.join(map(str, _shape(model)))} -c CLUSTER -s adcnn -p grid={rep.grid} -p wire={wire}")


def _shape(model: str) -> tuple[int, ...]:
    from ..train import fdsp

    if model == "digits_cnn":
        return fdsp.DIGITS_SHAPE
    from .. import zoo

    return tuple(zoo.entry(model).input_shape)


def _plot(rep: Any, path: Path) -> None:
    import matplotlib

    from ..paths import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s for s, _ in rep.curve]
    ys = [v * 100 for _, v in rep.curve]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys, marker="o", label=f"FDSP {rep.grid} ({rep.wire['quant'] or 'fp32'})")
    ax.axhline(rep.unpartitioned * 100, color="grey", ls="--", label="unpartitioned")
    ax.set_xlabel("training steps")
    ax.set_ylabel(f"{rep.metric} (%)")
    ax.set_title(f"{rep.model}: FDSP fine-tuning")
    ax.legend()
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
