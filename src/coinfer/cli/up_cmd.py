"""``coinfer up CLUSTER``: start every local device of a cluster as a worker process."""

from __future__ import annotations

COMMAND = "up"

import contextlib
import signal
import time

import typer

from .common import CPU_EMULATION_HELP, STOP_SIGNALS, console, stop_on_signals, user_errors

RESTARTS_PER_MINUTE = 3  # a worker that exits more often than this is not restarted again


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@user_errors
def cmd(
    cluster: str = typer.Argument(..., help="cluster YAML or built-in name"),
    keys: str = typer.Option(None, "--keys", help="CURVE key directory (default: the cluster's security.keys "
                                                  "when security.auth is curve)"),
    log_dir: str = typer.Option(None, "--log-dir", help="write each worker's log here"),
    cpu_emulation: str = typer.Option(None, "--cpu-emulation", help=CPU_EMULATION_HELP),
    restart: bool = typer.Option(True, "--restart/--no-restart",
                                 help="start a worker that exits again on its address (a device that comes "
                                      "back; sessions re-plan onto it); --no-restart: stop them all"),
) -> None:
    """Run the cluster's local devices until Ctrl-C (coinfer run uses them)."""
    from ..cluster import resolve_cluster, with_cpu_emulation
    from ..errors import SetupError
    from ..runtime import upstate
    from ..runtime.launcher import LocalCluster, check_local_keys, cluster_keys

    cl = with_cpu_emulation(resolve_cluster(cluster), cpu_emulation)
    key_dir = cluster_keys(cl, keys)  # the cluster's security.keys, as coinfer run uses them
    check_local_keys(cl, key_dir)
    running = upstate.read(cluster)
    if running is not None:
        raise SetupError(f"coinfer up {cluster} is already running (pid {running['owner']}); coinfer run "
                         f"uses its workers — stop it first to start them again")
    if not any(d.is_local for d in cl.devices):
        raise SetupError(f"cluster {cluster} has no device with address: local; nothing to start (its "
                         f"workers are started on their devices with coinfer worker)")
    c = console()
    stop_on_signals()
    lc = LocalCluster(cl, keys=key_dir, log_dir=log_dir)
    with c.status(f"starting {sum(d.is_local for d in cl.devices)} local workers…"):
        lc.start()
    for n, w in lc.workers.items():
        d = cl.device(n)
        c.print(f"  {n:<10} {w.address:<24} pid {w.proc.pid:<7} cpu_share {d.cpu_share} ({w.cpu_mode})")
    given_up: set[str] = set()  # crash-looping workers not started again (the others keep serving)

    def publish() -> None:  # where `coinfer run` finds the workers (a restarted one has a new pid)
        upstate.write(cluster, lc.addresses, {n: w.proc.pid for n, w in lc.workers.items() if n not in given_up},
                      lc.cpu_modes())

    publish()
    links = (f"Links are shaped by each sender ({cl.network.bandwidth_mbps} Mbit/s, {cl.network.latency_ms} ms "
             f"by default)." if cl.network.shape else "Links are not shaped (network.shape: false): loopback speed.")
    c.print(f"[bold]up[/]: Ctrl-C stops them. {links}")
    exits: dict[str, list[float]] = {}  # device -> when its worker exited (a crash loop: not restarted)
    try:
        while True:
            time.sleep(0.5)
            dead = [n for n, w in lc.workers.items() if n not in given_up and not w.alive()]
            if not dead:
                continue
            now = time.monotonic()
            if not restart:
                c.print(f"worker(s) {dead} exited; stopping (logs: --log-dir)")
                break
            looping = [n for n in dead if len([t for t in exits.get(n, []) if now - t < 60]) >= RESTARTS_PER_MINUTE]
            for n in looping:
                # not the whole cluster (QA: one flapping device stopped all 8 and the sessions on them)
                given_up.add(n)
                with contextlib.suppress(Exception):  # releases its CPU limit (a cgroup)
                    lc.kill(n)
                c.print(f"{n} exited {RESTARTS_PER_MINUTE + 1} times in a minute; not starting it again — the "
                        f"other devices keep serving, sessions re-plan without it (logs: --log-dir)")
            if given_up == set(lc.workers):
                c.print("no worker left; stopping")
                break
            for n in (n for n in dead if n not in given_up):
                exits.setdefault(n, []).append(now)
                c.print(f"{n} exited ({_how(lc.workers[n].proc.returncode)}); starting it again on "
                        f"{lc.workers[n].address}")
                lc.restart(n)
            publish()
    except KeyboardInterrupt:
        c.print("stopping")
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the stopping short
        upstate.clear(cluster)
        lc.stop()
