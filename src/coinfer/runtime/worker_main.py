"""Entry point of a worker process (``coinfer worker`` and the local launcher)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys


def run(bind: str, name: str, keys: str | None, insecure: bool, threads: int,
        cpu_share: float | None = None, timeout_s: float = 300.0, dilate: float | None = None) -> int:
    from .security import KeyStore, check_bind
    from .transport import zmq_endpoint
    from .worker import Worker

    ks = KeyStore(keys) if keys else None
    check_bind(bind, ks, insecure)
    mode = "none"
    if dilate is not None:
        from .dilation import install

        install(dilate, threads)
        mode = "dilate"
    elif cpu_share is not None:
        from .emulation import cpu_mode_available, limit_cpu

        if cpu_mode_available().startswith("cgroup"):
            mode = limit_cpu(os.getpid(), cpu_share, name).mode
        else:
            print(f"warning: cannot limit {name} to cpu_share {cpu_share} (no writable cgroup); "
                  f"use coinfer up, which throttles from outside", file=sys.stderr)
    ep = zmq_endpoint(name, bind, keys=ks, insecure=insecure)
    w = Worker(name, ep, threads=threads, cpu_mode=mode, request_timeout_s=timeout_s)
    signal.signal(signal.SIGTERM, lambda *_: w.stop.set())
    signal.signal(signal.SIGINT, lambda *_: w.stop.set())
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
    a = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("COINFER_LOG", "WARNING"), format="%(name)s: %(message)s")
    return run(a.bind, a.name, a.keys, a.insecure, a.threads, a.cpu_share, a.timeout_s, a.dilate)


if __name__ == "__main__":
    sys.exit(main())
