"""``coinfer worker``: the long-running daemon on each device."""

from __future__ import annotations

COMMAND = "worker"

import typer

from .common import user_errors


@user_errors
def cmd(
    bind: str = typer.Option(..., "--bind", help="tcp://HOST:PORT to listen on (port 0: any free port)"),
    name: str = typer.Option(..., "--name", help="this device's name in the cluster file"),
    keys: str = typer.Option(None, "--keys", help="CURVE key directory (coinfer keys); required beyond loopback"),
    insecure: bool = typer.Option(False, "--insecure", help="no CURVE (allowed only on loopback)"),
    threads: int = typer.Option(1, "--threads", min=1, help="compute threads"),
    cpu_share: float = typer.Option(None, "--cpu-share", help="limit to a fraction of a core (needs a writable cgroup)"),
    timeout_s: float = typer.Option(300.0, "--timeout-s", help="give up on a request after this long"),
) -> None:
    """Serve deployments and requests from coordinators and peers until stopped."""
    from ..runtime.worker_main import run

    if not keys and not insecure:
        from ..errors import UserError

        raise UserError("give --keys DIR (CURVE, see coinfer keys) or --insecure (loopback binds only)")
    raise typer.Exit(run(bind, name, keys, insecure, threads, cpu_share, timeout_s))
