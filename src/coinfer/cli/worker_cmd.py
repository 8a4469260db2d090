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
    cpu_share: float = typer.Option(None, "--cpu-share", help="emulate a fraction of a core"),
    timeout_s: float = typer.Option(300.0, "--timeout-s", help="give up on a request after this long"),
    cpu_emulation: str = typer.Option("quota", "--cpu-emulation",
                                      help="how --cpu-share is emulated: quota (a cgroup CPU quota; time "
                                           "dilation when no cgroup is writable) or dilate (time dilation)"),
) -> None:
    """Serve deployments and requests from coordinators and peers until stopped."""
    from ..cluster import NAME_RE, tcp_address_problem
    from ..errors import UserError
    from ..runtime.worker_main import run

    problem = tcp_address_problem(bind, bind=True)
    if problem:
        raise UserError(f"--bind {bind!r}: {problem}; e.g. tcp://0.0.0.0:7070 (port 0: any free port)")
    if not NAME_RE.match(name):
        raise UserError(f"--name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter "
                        f"or digit (the device's name in the cluster file)")
    if not keys and not insecure:
        from ..runtime.security import check_bind

        check_bind(bind, None, False)  # beyond loopback: "binding … needs CURVE keys: coinfer keys …"
        raise UserError("give --keys DIR (CURVE, see coinfer keys) or --insecure (loopback binds only)")
    if cpu_emulation not in ("quota", "dilate"):
        raise UserError(f"--cpu-emulation {cpu_emulation!r} is unknown; use quota or dilate")
    if cpu_emulation == "dilate" and cpu_share is None:
        raise UserError("--cpu-emulation dilate needs --cpu-share F (the fraction of a core to emulate)")
    if cpu_share is not None and not cpu_share > 0:
        raise UserError(f"--cpu-share must be > 0 (got {cpu_share}); 0.25 = a quarter of one core")
    if not timeout_s > 0 or timeout_s == float("inf"):
        raise UserError(f"--timeout-s must be a positive number of seconds (got {timeout_s}); default 300")
    dilate = cpu_emulation == "dilate"
    raise typer.Exit(run(bind, name, keys, insecure, threads, None if dilate else cpu_share, timeout_s,
                         cpu_share if dilate else None))
