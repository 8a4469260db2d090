"""Time of ``coinfer train exits --model alexnet`` (the alexnet_digits recipe) on this machine's 2 cores.

    .venv/bin/python benchmarks/edgent/train_time.py [--epochs 1]

Runs the recipe's training loop for ``--epochs`` epochs (default 1; nothing is saved, the cached
checkpoint is untouched), measures the wall and CPU time (``time.process_time``, all threads) of the
epochs and of the set-up (data, model, held-out evaluation), and extrapolates to the recipe's epochs:
``setup + recipe_epochs x epoch``. The epochs of the recipe are identical in cost (same data, batch
size and model), so the extrapolation is exact up to noise. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from coinfer.train.exits import RECIPES, train_exits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="alexnet_digits")
    ap.add_argument("--epochs", type=int, default=1)
    a = ap.parse_args()
    load0 = os.getloadavg()
    marks: list[tuple[float, float]] = []

    def progress(ep: int, n: int, row: dict[str, float]) -> None:
        marks.append((time.perf_counter(), time.process_time()))

    w0, c0 = time.perf_counter(), time.process_time()
    res = train_exits(a.model, epochs=a.epochs, save=False, progress=progress)
    w1, c1 = time.perf_counter(), time.process_time()
    # the first epoch's start is unknown: use the recipe's own clock (train_s covers the epochs only)
    epoch_wall = res.train_s / a.epochs
    first_cpu = marks[0][1] - c0  # set-up + the first epoch
    epoch_cpu = (marks[-1][1] - marks[0][1]) / (a.epochs - 1) if a.epochs > 1 else None
    setup_wall = (w1 - w0) - res.train_s
    n = RECIPES[a.model]["epochs"]
    out = {"model": a.model, "epochs_run": a.epochs, "threads": torch.get_num_threads(),
           "epoch_wall_s": round(epoch_wall, 1), "setup_and_eval_wall_s": round(setup_wall, 1),
           "total_wall_s": round(w1 - w0, 1), "total_cpu_s": round(c1 - c0, 1),
           "first_epoch_with_setup_cpu_s": round(first_cpu, 1),
           "epoch_cpu_s": None if epoch_cpu is None else round(epoch_cpu, 1),
           "recipe_epochs": n, "extrapolated_recipe_wall_s": round(setup_wall + n * epoch_wall, 1),
           "held_out_accuracy_after_run": res.accuracy,
           "load_start": load0, "load_end": os.getloadavg()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
