"""Entry point of a worker process (``coinfer worker`` and the local launcher)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any


def self_limit(name: str, cpu_share: float | None, dilate: float | None, threads: int = 1) -> str:
    """Emulate this process's ``cpu_share``; returns the mode (``cgroup-…``, ``dilate`` or ``none``).

    ``dilate`` asks for time dilation; otherwise a cgroup quota when one is
    writable, else time dilation — the in-process fallback (a SIGSTOP duty
    cycle needs an outside process), said on stderr.
    """
    if dilate is None and cpu_share is None:
        return "none"
    from .dilation import install

    if dilate is None:
        from .emulation import cpu_mode_available, limit_cpu, needs_limit

        assert cpu_share is not None
        if not needs_limit(cpu_share):
            return "none"
        if cpu_mode_available().startswith("cgroup"):
            return limit_cpu(os.getpid(), cpu_share, name).mode
        print(f"note: no writable cgroup here: {name} emulates cpu_share {cpu_share} by time dilation "
              f"(coinfer.runtime.dilation)", file=sys.stderr, flush=True)
        dilate = cpu_share
    install(dilate, threads)
    return "dilate"


def _watch_parent(parent: int, stop: Any) -> None:
    """Stop this worker when the process that launched it is gone (``coinfer up`` / a benchmark killed
    with SIGKILL, or by ``timeout``: its workers, in sessions of their own, ran on as orphans)."""
    import threading
    import time

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                stop.set()
                try:  # its pipe may have gone with it
                    print(f"note: the process that started this worker ({parent}) is gone; stopping",
                          file=sys.stderr, flush=True)
                except OSError:
                    pass
                time.sleep(10)
                os._exit(0)  # the serve loop did not end by itself

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _lease_s() -> float:
    """``COINFER_WORKER_LEASE_S``: how long a deployment outlives a silent coordinator (default
    ``worker.LEASE_S``, 60 s)."""
    from ..errors import UserError
    from .worker import LEASE_S

    raw = os.environ.get("COINFER_WORKER_LEASE_S")
    if raw is None:
        return LEASE_S
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not (0 < v < float("inf")):
        raise UserError(f"COINFER_WORKER_LEASE_S={raw!r}: give a positive number of seconds (default {LEASE_S:g})")
    return v


def run(bind: str, name: str, keys: str | None, insecure: bool, threads: int,
        cpu_share: float | None = None, timeout_s: float = 300.0, dilate: float | None = None,
        parent: int | None = None) -> int:
    from ..errors import UserError
    from .security import KeyStore, check_bind
    from .transport import zmq_endpoint
    from .worker import Worker

    ks = KeyStore(keys) if keys else None
    check_bind(bind, ks, insecure)
    mode = self_limit(name, cpu_share, dilate, threads)
    try:
        # a worker serves with its own key pair (its peers expect its public key): no fallback
        ep = zmq_endpoint(name, bind, keys=ks, insecure=insecure, key_name=name if ks else None)
    except UserError:  # keys (SecurityError): already one line with the fix
        raise
    except ValueError as e:  # the address is taken or not this machine's
        raise UserError(f"{e}; bind an address of this machine (0.0.0.0: all) and a free port (0: any)") from None
    w = Worker(name, ep, threads=threads, cpu_mode=mode, request_timeout_s=timeout_s, lease_s=_lease_s())
    signal.signal(signal.SIGTERM, lambda *_: w.stop.set())
    signal.signal(signal.SIGINT, lambda *_: w.stop.set())
    if parent is not None:
        _watch_parent(parent, w.stop)
    print(f"READY {name} {ep.address} {os.getpid()}", flush=True)
    w.serve_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coinfer-worker")
    p.add_argument("--bind", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--keys")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpu-share", type=float)
    p.add_argument("--timeout-s", type=float, default=300.0)
    p.add_argument("--dilate", type=float, metavar="SHARE",
                   help="emulate a device SHARE times as fast by time dilation (coinfer.runtime.dilation)")
    p.add_argument("--parent-pid", type=int, help="stop when this process (the launcher) is gone")
    a = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("COINFER_LOG", "WARNING"), format="%(name)s: %(message)s")
    return run(a.bind, a.name, a.keys, a.insecure, a.threads, a.cpu_share, a.timeout_s, a.dilate, a.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
