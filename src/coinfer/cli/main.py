"""The ``coinfer`` command: one module per subcommand."""

from __future__ import annotations

import typer

from . import demo_cmd, inspect_cmd, models, plan_cmd, strategies_cmd, verify_cmd

app = typer.Typer(
    name="coinfer",
    help="Cooperative CNN inference across heterogeneous edge devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("models")(models.cmd)
app.command("inspect")(inspect_cmd.cmd)
app.command("strategies")(strategies_cmd.cmd)
app.command("plan")(plan_cmd.cmd)
app.command("verify")(verify_cmd.cmd)
app.command("demo")(demo_cmd.cmd)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
