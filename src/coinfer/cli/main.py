"""The ``coinfer`` command.

Every subcommand is its own module ``coinfer/cli/<name>_cmd.py`` defining
``COMMAND`` (its name) and ``cmd`` (a typer command function); they are
registered here in :data:`ORDER`, then any others alphabetically.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

ORDER = ("demo", "models", "inspect", "strategies", "plan", "verify", "simulate", "run", "up", "worker",
         "profile", "bench", "train", "keys")


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="coinfer",
        help="Cooperative CNN inference across heterogeneous edge devices.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    from .. import cli

    mods = []
    for info in pkgutil.iter_modules(cli.__path__):
        if info.name.endswith("_cmd"):
            m = importlib.import_module(f"{cli.__name__}.{info.name}")
            mods.append(m)
    rank = {n: i for i, n in enumerate(ORDER)}
    for m in sorted(mods, key=lambda m: (rank.get(m.COMMAND, len(ORDER)), m.COMMAND)):
        if isinstance(getattr(m, "cmd", None), typer.Typer):
            app.add_typer(m.cmd, name=m.COMMAND)
        else:
            app.command(m.COMMAND)(m.cmd)
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":  # pragma: no cover
    main()
