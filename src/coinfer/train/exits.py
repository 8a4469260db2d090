"""Early-exit training (BranchyNet joint loss) on offline data; trained checkpoints and accuracies.

BranchyNet (Teerapittayanon, McDanel, Kung, ICPR 2016, §III-B) trains a
network with side exits by minimising the *weighted sum of the exits'
cross-entropy losses* in one backward pass; Edgent (Li, Zhou, Chen, 2018,
§III-A) trains its 5-exit AlexNet this way and reads each exit's accuracy off
a held-out set. This module does the same for the zoo's ``*_digits`` models
(``alexnet_digits``: AlexNet with 4 side exits + the final output;
``resnet18_digits``: exits after layer1-3) on scikit-learn's digits
(:mod:`coinfer.train.data`: fixed stratified 75/25 split, upscaled to 64x64).

Recipe: He initialisation, loss weights k/K growing with depth
(:func:`exit_weights`), a random translation (up to ``SHIFT`` pixels) and
scaling (``1 ± SCALE/2``) of every training image (:func:`augment`), Adam
(fused) with cosine decay from the peak learning rate to 1/20 of it;
``alexnet_digits``: 10 epochs at 5e-4, batch 64.

Checkpoints live in ``coinfer.paths.cache_dir("exits")`` as
``<model>-<data>-seed<seed>-v<version>.pt`` (``torch.save`` of the
``state_dict``; loaded with ``torch.load(weights_only=True)``, local files
only) next to a ``.json`` with the per-exit accuracies measured on the
held-out split after training. :func:`cached_accuracies` reads that JSON
(torch-free: planners call it); :func:`load_trained` is the hook
:func:`coinfer.zoo.get` calls to load the trained weights when they exist.
Accuracies always come from evaluating the trained model — never constants.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..paths import cache_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: bump when the recipe (model heads, loss, optimiser, data) changes: old checkpoints are then ignored
VERSION = 3
FORMAT = "coinfer.exits/1"
DATA_NAME = "digits64"  # = coinfer.train.data.DATA_NAME (kept here so reading stays torch-free)

#: zoo models this recipe trains, with their defaults (epochs, peak learning rate, batch size)
RECIPES: dict[str, dict[str, Any]] = {
    "alexnet_digits": {"epochs": 10, "lr": 5e-4, "batch_size": 64},
    "resnet18_digits": {"epochs": 4, "lr": 1e-3, "batch_size": 64},
}
#: training augmentation, per image: a random translation of up to SHIFT pixels of the 64x64 input
#: (a digit pixel is 8) and a random scaling by 1 +- SCALE/2
SHIFT = 6
SCALE = 0.3
#: the ImageNet-sized models have no offline dataset here: ``--model alexnet`` trains its digits variant
ALIASES = {"alexnet": "alexnet_digits", "resnet18": "resnet18_digits"}


class ExitsError(UserError):
    """Bad input to the early-exit recipe (exit 2)."""


def resolve(name: str) -> str:
    """The zoo model the recipe trains for ``name`` (``alexnet`` -> ``alexnet_digits``)."""
    n = ALIASES.get(name, name)
    if n not in RECIPES:
        from .. import zoo

        with_exits = [m for m in zoo.names() if zoo.entry(m).exits]
        if name in with_exits:
            raise ExitsError(f"{name} has exits but no offline dataset recipe; train one of "
                             f"{', '.join(RECIPES)} (aliases: {', '.join(ALIASES)})")
        raise ExitsError(f"model {name!r} cannot be exit-trained; use one of {', '.join(RECIPES)} "
                         f"(or alexnet / resnet18, which train their digits variants)")
    return n


def checkpoint_path(name: str, seed: int = 0) -> Path:
    """Where the trained ``state_dict`` of zoo model ``name`` (trained from seed ``seed``) lives."""
    return cache_dir("exits") / f"{name}-{DATA_NAME}-seed{seed}-v{VERSION}.pt"


def metrics_path(name: str, seed: int = 0) -> Path:
    return checkpoint_path(name, seed).with_suffix(".json")


def read_metrics(name: str, seed: int = 0) -> dict[str, Any] | None:
    """The JSON written next to a checkpoint (None if absent, unreadable or of another version)."""
    p = metrics_path(name, seed)
    if not (p.is_file() and checkpoint_path(name, seed).is_file()):
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
        return None
    if not isinstance(d.get("accuracy"), dict):
        return None
    return d


def cached_accuracies(name: str, seed: int = 0) -> dict[str, float] | None:
    """Held-out accuracy per exit (``exit1``… and ``final``) of the cached trained ``name``, or None.

    Torch-free. Only the model that was trained has accuracies: ``alexnet``
    (ImageNet-sized, never trained here) returns None even when
    ``alexnet_digits`` is trained.
    """
    d = read_metrics(name, seed)
    if d is None:
        return None
    return {str(k): float(v) for k, v in d["accuracy"].items()}


def load_trained(name: str, model: torch.nn.Module, seed: int = 0) -> bool:
    """Load the cached trained weights of ``name`` into ``model`` (the :func:`coinfer.zoo.get` hook).

    Returns False (model untouched) when there is no checkpoint for this
    model, seed and recipe version. Local cache files only, read with
    ``torch.load(weights_only=True)``.
    """
    if name not in RECIPES:
        return False
    p = checkpoint_path(name, seed)
    if not p.is_file() or read_metrics(name, seed) is None:
        return False
    import torch

    state = torch.load(p, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return True


@dataclass
class TrainResult:
    model: str
    seed: int
    epochs: int
    accuracy: dict[str, float]  # held-out accuracy per exit (shallow -> deep, then final)
    train_s: float
    checkpoint: Path | None
    sizes: tuple[int, int]
    history: list[dict[str, float]] = field(default_factory=list)
    reduced: bool = False  # fewer epochs than the recipe's, or only part of the training / held-out images
    kept: Path | None = None  # not saved: the full-budget checkpoint kept in its place (see train_exits)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "seed": self.seed, "epochs": self.epochs, "accuracy": self.accuracy,
                "train_s": round(self.train_s, 2), "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "train_size": self.sizes[0], "test_size": self.sizes[1], "history": self.history,
                "reduced": self.reduced, "kept": None if self.kept is None else str(self.kept)}


def _is_reduced(meta: dict[str, Any], recipe_epochs: int, full: tuple[int, int]) -> bool:
    """Was the checkpoint described by ``meta`` trained on a reduced budget (older JSONs lack the key)?"""
    if "reduced" in meta:
        return bool(meta["reduced"])
    return (int(meta.get("epochs", 0)) < recipe_epochs or int(meta.get("train_size", 0)) < full[0]
            or int(meta.get("test_size", 0)) < full[1])


def exit_names(model: Any) -> list[str]:
    return [*model.exit_points, "final"]


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Accuracy of every exit of ``model`` (eval mode) on ``(x, y)``."""
    import torch

    model.eval()
    correct: dict[str, int] = {}
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            outs = model.forward_exits(x[i:i + batch_size])  # type: ignore[operator]
            for k, v in outs.items():
                correct[k] = correct.get(k, 0) + int((v.argmax(1) == y[i:i + batch_size]).sum())
    names = exit_names(model)
    return {k: correct[k] / len(y) for k in names}


def augment(x: torch.Tensor, gen: torch.Generator, background: float) -> torch.Tensor:
    """Each image randomly translated by up to ``SHIFT`` pixels and scaled by ``1 ± SCALE/2``.

    Shallow exits have little capacity to absorb such variation, deep ones
    do: with it the held-out accuracy grows with depth, as early-exit models
    assume (BranchyNet §III; Edgent §III-A), instead of saturating at the
    second exit on this easy data set. Uncovered borders get the blank pixel.
    """
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    scale = 1 + (torch.rand(n, generator=gen) - 0.5) * SCALE
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (SHIFT / (x.shape[-1] / 2))
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background


def exit_weights(names: list[str]) -> dict[str, float]:
    """BranchyNet's per-exit loss weights: growing with depth, k/K for the k-th of K exits.

    BranchyNet (§III-B) weighs each exit's loss; on digits the shallow heads
    saturate within a few epochs while the deep path still learns, so the
    deeper exits get the larger weights (the final output 1).
    """
    return {k: (i + 1) / len(names) for i, k in enumerate(names)}


def he_init(model: torch.nn.Module) -> None:
    """He (Kaiming) normal weights and zero biases for every conv and linear layer (from the seeded RNG).

    PyTorch's default init shrinks the signal layer after layer in a deep
    net without BatchNorm such as AlexNet, and its deep exits then learn far
    slower than the shallow ones; He init (He et al., ICCV 2015) keeps the
    ReLU activations' scale, so all exits train within the recipe's budget.
    """
    from torch import nn

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def train_exits(name: str, *, epochs: int | None = None, seed: int = 0, lr: float | None = None,
                batch_size: int | None = None, max_train: int | None = None, max_test: int | None = None,
                save: bool = True, force: bool = False,
                progress: Callable[[int, int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train every exit of zoo model ``name`` jointly (BranchyNet) and measure held-out accuracies.

    ``max_train`` / ``max_test`` keep only the first N training / held-out
    images (smoke tests; recorded in the JSON). The checkpoint and its
    accuracies are written to the cache when ``save`` — except that a run on a
    reduced budget (fewer epochs than the recipe's, or ``max_train`` /
    ``max_test`` below the full split) does not replace a full-budget
    checkpoint unless ``force``: the result then has ``checkpoint`` None and
    ``kept`` the checkpoint left in place (the zoo keeps loading it).
    """
    import torch
    from torch import nn

    from .. import zoo
    from .data import DATA_NAME as _DN
    from .data import digits_split

    assert _DN == DATA_NAME
    name = resolve(name)
    rec = RECIPES[name]
    epochs = int(rec["epochs"] if epochs is None else epochs)
    lr = float(rec["lr"] if lr is None else lr)
    batch_size = int(rec["batch_size"] if batch_size is None else batch_size)
    if epochs < 1:
        raise ExitsError(f"--epochs must be >= 1 (got {epochs})")
    if not lr > 0:
        raise ExitsError(f"--lr must be > 0 (got {lr}); e.g. --lr {rec['lr']:g} (the {name} recipe's)")
    if batch_size < 1:
        raise ExitsError(f"--batch-size must be >= 1 (got {batch_size})")
    split = digits_split(zoo.entry(name).input_shape[-1])
    xtr, ytr = split.x_train, split.y_train
    xte, yte = split.x_test, split.y_test
    if max_train is not None:
        xtr, ytr = xtr[:max_train], ytr[:max_train]
    if max_test is not None:
        xte, yte = xte[:max_test], yte[:max_test]
    t0 = time.perf_counter()
    history: list[dict[str, float]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = zoo.get(name, seed=seed, weights=False)
        he_init(model)
        names = exit_names(model)
        weights = exit_weights(names)
        # Adam (fused: one kernel over AlexNet's 57 M weights), cosine decay to lr/20 over the run
        opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
        steps = epochs * -(-len(ytr) // batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps), eta_min=lr / 20)
        loss_fn = nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(seed)
        background = float(split.x_train[:, :, 0, 0].mean())  # the standardised blank pixel
        for ep in range(epochs):
            model.train()
            perm = torch.randperm(len(ytr), generator=gen)
            total, n = 0.0, 0
            for i in range(0, len(ytr), batch_size):
                idx = perm[i:i + batch_size]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                xb = augment(xtr[idx], gen, background)
                outs = model.forward_exits(xb)  # type: ignore[operator]
                # BranchyNet's joint loss: the weighted sum of every exit's cross-entropy
                loss = sum(weights[k] * loss_fn(outs[k], ytr[idx]) for k in names)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                n += len(idx)
            row = {"epoch": ep + 1, "loss": total / max(n, 1)}
            history.append(row)
            if progress is not None:
                progress(ep + 1, epochs, row)
        train_s = time.perf_counter() - t0
        acc = evaluate(model, xte, yte)
    full = (len(split.y_train), len(split.y_test))
    reduced = epochs < int(rec["epochs"]) or len(ytr) < full[0] or len(yte) < full[1]
    old = read_metrics(name, seed)
    path = kept = None
    if save and reduced and not force and old is not None and not _is_reduced(old, int(rec["epochs"]), full):
        save, kept = False, checkpoint_path(name, seed)
    if save:
        path = checkpoint_path(name, seed)
        tmp = path.with_suffix(".pt.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
        meta = {"format": FORMAT, "model": name, "data": DATA_NAME, "seed": seed, "version": VERSION,
                "epochs": epochs, "loss_weights": weights, "augment": {"shift_px": SHIFT, "scale": SCALE}, "lr": lr, "batch_size": batch_size, "max_train": max_train,
                "max_test": max_test, "train_size": len(ytr), "test_size": len(yte), "reduced": reduced,
                "accuracy": {k: round(v, 4) for k, v in acc.items()}, "train_s": round(train_s, 2),
                "torch": torch.__version__, "checkpoint": path.name,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        metrics_path(name, seed).write_text(json.dumps(meta, indent=1) + "\n")
    return TrainResult(name, seed, epochs, acc, train_s, path, (len(ytr), len(yte)), history, reduced, kept)
