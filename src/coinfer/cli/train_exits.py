"""``coinfer train exits``: train a model's early exits jointly (BranchyNet) on sklearn digits."""

from __future__ import annotations

NAME = "exits"

import typer

from .common import console, emit_json, user_errors


@user_errors
def cmd(
    model: str = typer.Option("alexnet_digits", "--model", "-m",
                              help="alexnet_digits or resnet18_digits (alexnet / resnet18 train their digits variant)"),
    epochs: int = typer.Option(None, "--epochs", min=1, help="training epochs (default: the recipe's)"),
    seed: int = typer.Option(0, "--seed", min=0, help="initialisation and shuffling seed (recorded in the checkpoint name)"),
    lr: float = typer.Option(None, "--lr", help="learning rate (default: the recipe's)"),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="mini-batch size (default: the recipe's)"),
    max_train: int = typer.Option(None, "--max-train", min=2, help="use only the first N training images (smoke tests)"),
    force: bool = typer.Option(False, "--force", help="save even a reduced-budget run (fewer epochs than the "
                               "recipe's, --max-train) over a full-budget checkpoint"),
    json_out: bool = typer.Option(False, "--json", help="one JSON summary on stdout"),
) -> None:
    """Train every exit jointly on scikit-learn's digits and report each exit's held-out accuracy.

    Digits upscaled to 64x64, a fixed 75/25 split; the checkpoint is cached and used by the zoo. A run on
    a reduced budget (fewer epochs than the recipe's, --max-train) does not replace a full-budget
    checkpoint unless --force."""
    from ..train.exits import ALIASES, resolve, train_exits

    name = resolve(model)
    c = console(stderr=json_out)
    if name != model:
        c.print(f"{model}: no offline dataset at its ImageNet size; training its digits variant {name} "
                f"({ALIASES[model]}, 3x64x64, 10 classes)")

    def progress(ep: int, n: int, row: dict[str, float]) -> None:
        c.print(f"epoch {ep}/{n}: joint loss {row['loss']:.3f}")

    res = train_exits(name, epochs=epochs, seed=seed, lr=lr, batch_size=batch_size, max_train=max_train,
                      progress=progress, force=force)
    if json_out:
        emit_json(res.to_dict())
        return
    c.print(f"trained {name} (seed {seed}, {res.epochs} epochs, {res.sizes[0]} train / {res.sizes[1]} "
            f"held-out images) in {res.train_s:.0f} s")
    c.print("held-out accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in res.accuracy.items()))
    if res.kept is not None:
        c.print(f"checkpoint not saved: a reduced-budget run does not replace the full-budget {res.kept} "
                f"(the zoo keeps loading it); --force replaces it")
    else:
        c.print(f"checkpoint: {res.checkpoint} (coinfer models --exits lists it; zoo.get({name!r}) loads it)")
