"""Start every ``address: local`` device of a cluster as its own worker process.

Each worker binds loopback, prints ``READY <name> <address> <pid>`` and is
then limited to its ``cpu_share``: a cgroup quota when the machine allows
(:func:`coinfer.runtime.emulation.limit_cpu`), otherwise — or when the
cluster says ``emulation: {cpu: dilate}`` — by time dilation inside the
worker (:mod:`coinfer.runtime.dilation`); ``cpu_modes()`` says which. Links
are shaped inside the transport by each sender, from the cluster's bandwidth
and latency. ``stop()`` (also on context exit, Ctrl-C
and interpreter exit) terminates every process it started.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..cluster import CPU_EMULATIONS, Cluster
from ..errors import SetupError
from .emulation import CpuLimiter, cpu_mode_available, limit_cpu, needs_limit

log = logging.getLogger("coinfer.launcher")


def _user_paths() -> list[str]:
    """The folders on this process's ``sys.path`` that a new interpreter would not have by itself
    (added by the caller: its script's folder, the working directory, ``sys.path.insert``)."""
    base = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out = []
    for entry in sys.path:
        d = os.path.realpath(entry or os.curdir)
        if not os.path.isdir(d) or any(d == b or d.startswith(b + os.sep) for b in base):
            continue
        out.append(d)
    return list(dict.fromkeys(out))


def child_pythonpath(current: str) -> str:
    """A local worker's PYTHONPATH: this process's own import paths (``sys.path.insert``, a script's
    folder — a model given as an import path that plans here must build on the local devices too; they
    got only ``os.environ``), in this process's order with PYTHONPATH's own entries among them (a
    package on PYTHONPATH keeps winning over the same package installed elsewhere, as it does here)."""
    mine = _user_paths()
    rest = [e for e in current.split(os.pathsep) if e and os.path.realpath(e) not in mine]
    return os.pathsep.join([*mine, *rest])


class LaunchError(RuntimeError, SetupError):
    """A local worker process did not start."""


@dataclass
class LocalWorker:
    name: str
    address: str
    proc: subprocess.Popen[bytes]
    limiter: CpuLimiter | None
    log_path: Path | None = None
    log: list[str] = field(default_factory=list)
    dilated: bool = False

    @property
    def cpu_mode(self) -> str:
        if self.dilated:
            return "dilate"
        return self.limiter.mode if self.limiter is not None else "none"

    def alive(self) -> bool:
        return self.proc.poll() is None


def _last_words(lines: list[str]) -> str:
    """What a worker that died said last: its exception's message (without the traceback) if it
    raised one, else its last lines."""
    text = [ln.strip() for ln in lines if ln.strip()]
    if not text:
        return "no output"
    m = re.match(r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception|Exit)): (.+)$", text[-1])
    if m:
        return f"{m.group(2)} ({m.group(1)})"
    return " | ".join(text[-3:])


def _worker_cmd(name: str, bind: str, threads: int, keys: str | None, dilate: float | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "coinfer.runtime.worker_main", "--bind", bind, "--name", name,
           "--threads", str(threads), "--parent-pid", str(os.getpid())]
    if dilate is not None:
        cmd += ["--dilate", repr(float(dilate))]
    cmd += ["--keys", keys] if keys else ["--insecure"]
    return cmd


def cluster_keys(cluster: Cluster, keys: str | None) -> str | None:
    """The CURVE key directory: ``keys`` if given, else the cluster's ``security.keys`` when its
    ``security.auth`` is ``curve`` (None: plain TCP on loopback)."""
    if keys is None and cluster.security.auth == "curve":
        return cluster.security.keys
    return keys


def check_local_keys(cluster: Cluster, keys: str | None) -> None:
    """Every worker started here needs its own key pair in ``keys``: say so before starting any."""
    if keys is None:
        return
    from .security import KeyStore

    ks = KeyStore(keys)
    for d in cluster.devices:
        if d.is_local:
            ks.secret(d.name)


class LocalCluster:
    """The local devices of a cluster as worker processes on 127.0.0.1."""

    def __init__(self, cluster: Cluster, *, keys: str | None = None, emulate_cpu: bool | str | None = None,
                 log_dir: str | Path | None = None, start_timeout_s: float = 90.0) -> None:
        """``emulate_cpu`` (default: the cluster's ``emulation.cpu``): True or ``"quota"`` limits each
        worker to its ``cpu_share`` with :func:`~coinfer.runtime.emulation.limit_cpu`; ``"dilate"``
        makes each worker emulate it by time dilation (:mod:`coinfer.runtime.dilation`); False or
        ``"off"`` runs them at full speed."""
        mode: str
        if emulate_cpu is None:
            mode = cluster.emulation.cpu
        elif isinstance(emulate_cpu, bool):
            mode = "quota" if emulate_cpu else "off"
        else:
            mode = emulate_cpu
        if mode not in CPU_EMULATIONS:
            raise ValueError(f"emulate_cpu must be True, False, 'quota', 'dilate' or 'off' (got {emulate_cpu!r})")
        self.cluster = cluster
        self.keys = keys
        if mode == "quota" and not cpu_mode_available().startswith("cgroup"):
            log.info("no writable cgroup: local devices emulate their cpu_share by time dilation")
            mode = "dilate"  # the in-process throttle: a SIGSTOP duty cycle freezes the network too
        self.cpu_emulation = mode  # "quota", "dilate" or "off"
        self.log_dir = Path(log_dir) if log_dir else None
        self.timeout = start_timeout_s
        self.workers: dict[str, LocalWorker] = {}
        self._atexit = False

    @property
    def addresses(self) -> dict[str, str]:
        """Every device's address: local workers started here, remote ones from the cluster file."""
        out = {d.name: d.address for d in self.cluster.devices if not d.is_local}
        out.update({n: w.address for n, w in self.workers.items()})
        return out

    def cpu_modes(self) -> dict[str, str]:
        return {n: w.cpu_mode for n, w in self.workers.items()}

    def start(self) -> LocalCluster:
        pending = [d for d in self.cluster.devices if d.is_local and d.name not in self.workers]
        procs = {d.name: self._spawn(d.name, "tcp://127.0.0.1:0", d.threads, d.cpu_share) for d in pending}
        try:
            for d in pending:
                self.workers[d.name] = self._ready(d.name, procs[d.name], d.cpu_share)
        except BaseException:
            for p in procs.values():
                p.kill()
            self.stop()
            raise
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        return self

    def _dilate(self, share: float) -> float | None:
        """The share a worker dilates to (None: not dilated; a device as fast as the machine never is)."""
        return share if self.cpu_emulation == "dilate" and needs_limit(share) else None

    def _spawn(self, name: str, bind: str, threads: int, share: float) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(threads))
        if threads > 1 and self.cpu_emulation != "off" and needs_limit(share):
            # OpenMP threads that spin while waiting for each other spend the device's quota on waiting
            # (and made its CPU-time profile 2-10x too slow); onnxruntime's do not spin either
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = child_pythonpath(env.get("PYTHONPATH", ""))
        return subprocess.Popen(_worker_cmd(name, bind, threads, self.keys, self._dilate(share)), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)

    def _ready(self, name: str, proc: subprocess.Popen[bytes], share: float) -> LocalWorker:
        assert proc.stdout is not None
        deadline = time.monotonic() + self.timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode(errors="replace").strip()
            if not line:
                if proc.poll() is not None:
                    break
                continue
            lines.append(line)
            if line.startswith("READY "):
                _, _wname, address, _pid = line.split()[:4]
                limiter = limit_cpu(proc.pid, share, name) if self.cpu_emulation == "quota" else None
                w = LocalWorker(name, address, proc, limiter, dilated=self._dilate(share) is not None)
                self._drain(w, proc.stdout)
                return w
        raise LaunchError(f"worker {name!r} did not start: {_last_words(lines)}")

    def _drain(self, w: LocalWorker, stream: IO[bytes]) -> None:
        path = None
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            path = self.log_dir / f"{w.name}.log"
            w.log_path = path

        def pump() -> None:
            f = open(path, "ab") if path else None  # noqa: SIM115 - closed in the finally below
            try:
                for raw in iter(stream.readline, b""):
                    if f:
                        f.write(raw)
                        f.flush()
                    w.log.append(raw.decode(errors="replace").rstrip())
                    del w.log[:-50]
            finally:
                if f:
                    f.close()
                with contextlib.suppress(Exception):  # at EOF: the worker ended (no unclosed pipe left)
                    stream.close()

        threading.Thread(target=pump, daemon=True, name=f"log-{w.name}").start()

    # -- fault injection and recovery ------------------------------------------------
    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        w = self.workers[name]
        if w.limiter is not None:
            w.limiter.close()
        try:
            w.proc.send_signal(sig)
        except ProcessLookupError:
            pass
        w.proc.wait(timeout=10)

    def restart(self, name: str) -> LocalWorker:
        """Start ``name`` again on the same address (a device that comes back)."""
        old = self.workers[name]
        if old.alive():
            self.kill(name)
        elif old.limiter is not None:  # it died by itself: release its CPU limit (cgroup) too
            old.limiter.close()
        d = self.cluster.device(name)
        deadline = time.monotonic() + 10
        while True:
            proc = self._spawn(name, old.address, d.threads, d.cpu_share)
            try:
                w = self._ready(name, proc, d.cpu_share)
                break
            except BaseException as e:  # also Ctrl-C in `coinfer up`: the new process must not outlive us
                proc.kill()
                proc.wait(timeout=10)
                if not isinstance(e, LaunchError) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # the port may still be held for a moment
        self.workers[name] = w
        return w

    def stop(self) -> None:
        for w in list(self.workers.values()):
            if w.alive():
                try:
                    w.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for w in list(self.workers.values()):
            try:
                w.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(timeout=5)
            if w.limiter is not None:
                w.limiter.close()
        self.workers.clear()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
