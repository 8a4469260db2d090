"""``coinfer keys``: CURVE key pairs for the devices of a cluster (and the coordinator)."""

from __future__ import annotations

COMMAND = "keys"

import typer

from .common import emit_json, fail, user_errors


@user_errors
def cmd(
    devices: str = typer.Option(..., "--devices", help="device names, comma-separated (e.g. pi1,pi2,jetson)"),
    dir: str = typer.Option("~/.coinfer/keys", "--dir", help="where to write the keys"),
    force: bool = typer.Option(False, "--force", help="replace existing key pairs (devices must get the new ones)"),
    json_out: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Generate ZeroMQ CURVE keys: one pair per device plus 'coordinator'.

    Sockets bound beyond loopback require them (`coinfer worker --keys DIR`,
    cluster `security: {auth: curve, keys: DIR}`); clients whose key is not in
    DIR/public are refused.
    """
    from pathlib import Path

    from ..runtime.security import COORDINATOR, generate_keys

    names = [n.strip() for n in devices.split(",") if n.strip()]
    if not names:
        fail("--devices needs at least one name, e.g. --devices pi1,pi2")
    if COORDINATOR in names:
        fail(f"--devices: {COORDINATOR!r} is the coordinator's key pair (always made); name the devices only")
    names = list(dict.fromkeys(names))
    d = Path(dir).expanduser()
    existed = {n for n in [*names, COORDINATOR] if (d / f"{n}.key_secret").exists()}
    generate_keys(d, names, overwrite=force)
    all_names = list(dict.fromkeys([*names, COORDINATOR]))
    made = [n for n in all_names if force or n not in existed]
    kept = [n for n in all_names if n not in made]
    if json_out:
        emit_json({"dir": str(d), "public_dir": str(d / "public"), "created": made, "kept": kept,
                   "secret_keys": {n: str(d / f"{n}.key_secret") for n in all_names}})
        return
    typer.echo(f"CURVE keys in {d}: created {', '.join(made) or 'none'}"
               + (f"; kept existing {', '.join(kept)} (--force replaces them)" if kept else ""))
    typer.echo("Copy to each machine, keeping the layout (same DIR on every machine):")
    for n in names:
        typer.echo(f"  {n:<12} {d / (n + '.key_secret')}  +  {d / 'public'}/")
    typer.echo(f"  {'coordinator':<12} {d / (COORDINATOR + '.key_secret')}  +  {d / 'public'}/   "
               f"(the machine that runs `coinfer run`)")
    typer.echo(f"Then: coinfer worker --bind tcp://0.0.0.0:7070 --name NAME --keys {dir}; "
               f"cluster file: security: {{auth: curve, keys: {dir}}}. Secret keys never leave their machine.")
