"""``coinfer train …``: training recipes (early exits, FDSP fine-tuning, DistrEdge policies).

Each recipe is its own module ``coinfer/cli/train_<name>.py`` defining ``NAME``
and ``cmd`` (a typer command); they are registered here as subcommands.
"""

from __future__ import annotations

COMMAND = "train"

import importlib
import pkgutil

import typer

cmd = typer.Typer(help="Train early exits, FDSP fine-tuning or a DistrEdge policy.", no_args_is_help=True)


def _register() -> None:
    from .. import cli

    for info in sorted(pkgutil.iter_modules(cli.__path__), key=lambda i: i.name):
        if info.name.startswith("train_") and info.name != "train_cmd":
            m = importlib.import_module(f"{cli.__name__}.{info.name}")
            cmd.command(m.NAME)(m.cmd)


_register()
