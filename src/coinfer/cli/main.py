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
    """The console script: typer's usage errors (a missing argument, an option out of its range, an
    unknown option) are one line and exit 2 like every other user mistake (typer drew a box of
    several lines)."""
    import sys

    try:
        rv = build_app()(standalone_mode=False)
    except typer.TyperException as e:  # click's ClickException family (typer vendors click)
        fmt = getattr(e, "format_message", None)
        if type(e).__name__ == "NoArgsIsHelpError" or fmt is None:
            e.show()  # type: ignore[attr-defined]
        else:
            ctx = getattr(e, "ctx", None)
            where = ctx.command_path if ctx is not None else "coinfer"
            msg = " ".join(str(fmt()).split())
            typer.echo(f"error: {msg.rstrip('.')}; see {where} --help", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    # an Exit raised by a command comes back as its code; a command's own return value means success
    sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
