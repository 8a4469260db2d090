"""CPU emulation: run a process as if it had ``share`` of one core (``cpu_share`` in the cluster file).

Three mechanisms, best first (:func:`cpu_mode_available` says which one this
machine gets; :attr:`CpuLimiter.mode` which one a limiter uses):

``cgroup-v1``
    A cgroup ``<cpu mount>/coinfer/<name>-<pid>`` with ``cpu.cfs_period_us``
    = 10 ms and ``cpu.cfs_quota_us`` = share × period. The kernel's default
    100 ms period would let short work run unthrottled in 100 ms bursts
    (a 30 ms layer would not be slowed at all); 10 ms keeps every layer at
    the share. (The kernel's minimum quota is 1 ms: shares below 0.1 get a
    longer period, quota 1 ms.)
``cgroup-v2``
    The same with ``cpu.max`` = ``"quota period"`` under ``<cgroup2
    mount>/coinfer`` when the cpu controller can be enabled there.
``duty-cycle``
    No writable cgroup: a thread of the *calling* process alternates
    SIGCONT/SIGSTOP on the pid every 10 ms. The on-time is corrected every
    period from the process's measured CPU time (its CPU clock), so the
    long-run share is exact and idle time does not bank credit beyond one
    period. Coarser than a quota: a stopped process also stops answering the
    network for up to a period.
``none``
    ``share`` ≥ the machine's cores: nothing to limit.

``close()`` lifts the limit: it moves the process back to its original cgroup
and removes the cgroup, or stops the throttle thread and resumes the process.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import signal
import threading
import time
import weakref
from pathlib import Path

from ..errors import SetupError

log = logging.getLogger("coinfer.emulation")

MODES = ("cgroup-v1", "cgroup-v2", "duty-cycle", "none")
MIN_QUOTA_US = 1000
MAX_PERIOD_US = 1_000_000
_CG_DIR = "coinfer"


class EmulationError(RuntimeError, SetupError):
    """A CPU emulation mode asked for is not available on this machine."""


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover
        return os.cpu_count() or 1


def needs_limit(share: float) -> bool:
    """Whether a ``share``-core device must be emulated here: one at least as fast as this machine
    (``share`` ≥ its cores) runs unlimited, whatever the emulation."""
    return share < cpu_count()


def _mounts() -> list[tuple[str, str, set[str]]]:
    out = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                    out.append((parts[1], parts[2], set(parts[3].split(","))))
    except OSError:
        pass
    return out


def _v1_root() -> Path | None:
    for mnt, fs, opts in _mounts():
        if fs == "cgroup" and "cpu" in opts:
            return Path(mnt)
    return None


def _v2_root() -> Path | None:
    for mnt, fs, _ in _mounts():
        if fs == "cgroup2":
            p = Path(mnt)
            try:
                if "cpu" in (p / "cgroup.controllers").read_text().split():
                    return p
            except OSError:
                continue
    return None


def _writable_dir(root: Path) -> bool:
    base = root / _CG_DIR
    try:
        base.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(base, os.W_OK)


def _v2_prepare(root: Path) -> Path | None:
    """Enable the cpu controller down to ``root/coinfer``; None if this cgroup tree does not allow it."""
    base = root / _CG_DIR
    try:
        base.mkdir(exist_ok=True)
        for d in (root, base):
            ctl = d / "cgroup.subtree_control"
            if "cpu" not in ctl.read_text().split():
                ctl.write_text("+cpu")
        return base
    except OSError:
        return None


def cpu_mode_available() -> str:
    """``"cgroup-v1"``, ``"cgroup-v2"`` or ``"duty-cycle"``: what :func:`limit_cpu` uses here."""
    r1 = _v1_root()
    if r1 is not None and _writable_dir(r1):
        return "cgroup-v1"
    r2 = _v2_root()
    if r2 is not None and _v2_prepare(r2) is not None:
        return "cgroup-v2"
    return "duty-cycle"


def process_cpu_time(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (all threads; ns resolution when available)."""
    clk = ((~pid) << 3) | 2  # the kernel's process-wide CPUCLOCK_SCHED clock id for pid
    try:
        return time.clock_gettime(clk)
    except (OSError, OverflowError, ValueError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _own_cgroup(pid: int, v2: bool) -> str | None:
    """The pid's cgroup path in the v1 cpu hierarchy (or the v2 one)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                hid, ctrls, path = line.rstrip("\n").split(":", 2)
                if (v2 and hid == "0") or (not v2 and "cpu" in ctrls.split(",")):
                    return path
    except OSError:
        pass
    return None


_LIVE: weakref.WeakSet[CpuLimiter] = weakref.WeakSet()


class CpuLimiter:
    """A CPU limit on one process; :attr:`mode` says how it is enforced. ``close()`` lifts it."""

    def __init__(self, pid: int, share: float, name: str, mode: str, period_us: int,
                 path: Path | None = None, home: Path | None = None) -> None:
        self.pid = pid
        self.share = share
        self.name = name
        self.mode = mode
        self.period_us = period_us
        self.path = path  # the cgroup directory (cgroup modes)
        self._home = home  # where the process came from (to move it back)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.closed = False
        _LIVE.add(self)

    @property
    def quota_us(self) -> int | None:
        """The cgroup quota per period (None for duty-cycle / none)."""
        return max(MIN_QUOTA_US, round(self.share * self.period_us)) if self.mode.startswith("cgroup") else None

    # -- duty cycle ------------------------------------------------------------------------
    def _start_duty(self) -> None:
        self._thread = threading.Thread(target=self._duty_loop, name=f"duty-{self.name}", daemon=True)
        self._thread.start()

    def _duty_loop(self) -> None:
        period = self.period_us / 1e6
        base = min(self.share, 1.0) * period
        err = 0.0  # CPU seconds owed to (+) or taken beyond (−) the share, clamped to one period
        stopped = False
        try:
            last_cpu = process_cpu_time(self.pid)
            while not self._stop.is_set():
                t_start = time.monotonic()
                on = min(max(base + err, 0.0), period)
                if on > 0:
                    if stopped:
                        os.kill(self.pid, signal.SIGCONT)
                        stopped = False
                    _sleep_until(t_start + on)
                if on < period:
                    os.kill(self.pid, signal.SIGSTOP)
                    stopped = True
                    _sleep_until(t_start + period)
                cpu = process_cpu_time(self.pid)
                used, last_cpu = cpu - last_cpu, cpu
                wall = time.monotonic() - t_start
                err = min(max(err + self.share * wall - used, -period), period)
        except (ProcessLookupError, FileNotFoundError, OSError):
            pass  # the process is gone
        finally:
            if stopped:
                try:
                    os.kill(self.pid, signal.SIGCONT)
                except OSError:
                    pass

    # -- lifting the limit --------------------------------------------------------------------
    def close(self) -> None:
        """Lift the limit (idempotent): resume a throttled process, remove the cgroup."""
        if self.closed:
            return
        self.closed = True
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=2)
            try:
                os.kill(self.pid, signal.SIGCONT)
            except OSError:
                pass
        if self.path is not None:
            _remove_cgroup(self.path, self._home)

    def __enter__(self) -> CpuLimiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CpuLimiter(pid={self.pid}, share={self.share:g}, mode={self.mode!r})"


def _sleep_until(t: float) -> None:
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


def _remove_cgroup(path: Path, home: Path | None) -> None:
    procs = path / "cgroup.procs"
    for _ in range(50):
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except OSError:
            pids = []
        for p in pids:
            try:
                ((home or path.parent.parent) / "cgroup.procs").write_text(str(p))
            except OSError:
                pass
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
    log.warning("could not remove cgroup %s", path)


def _sweep(base: Path) -> None:
    """Remove empty cgroups left by processes that are gone (e.g. a worker that limited itself)."""
    try:
        for d in base.iterdir():
            pid = d.name.rsplit("-", 1)[-1]
            if d.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
                try:
                    d.rmdir()
                except OSError:
                    pass
    except OSError:
        pass


def _period(share: float, period_us: int) -> int:
    if share * period_us < MIN_QUOTA_US:
        period_us = min(MAX_PERIOD_US, math.ceil(MIN_QUOTA_US / share))
    return int(period_us)


def _cgroup(pid: int, share: float, name: str, period_us: int, v2: bool) -> CpuLimiter | None:
    root = _v2_root() if v2 else _v1_root()
    if root is None:
        return None
    base = _v2_prepare(root) if v2 else root / _CG_DIR
    if base is None:
        return None
    period = _period(share, period_us)
    quota = max(MIN_QUOTA_US, round(share * period))
    path = base / f"{name}-{pid}"
    own = _own_cgroup(pid, v2)
    home = root / own.lstrip("/") if own else root
    try:
        base.mkdir(exist_ok=True)
        _sweep(base)
        path.mkdir(exist_ok=True)
        if v2:
            (path / "cpu.max").write_text(f"{quota} {period}")
        else:
            (path / "cpu.cfs_period_us").write_text(str(period))
            (path / "cpu.cfs_quota_us").write_text(str(quota))
        (path / "cgroup.procs").write_text(str(pid))
    except OSError as e:
        log.info("cgroup %s not usable (%s); falling back", path, e)
        try:
            path.rmdir()
        except OSError:
            pass
        return None
    return CpuLimiter(pid, share, name, "cgroup-v2" if v2 else "cgroup-v1", period, path, home)


def limit_cpu(pid: int, share: float, name: str, period_us: int = 10000, *,
              mode: str | None = None) -> CpuLimiter:
    """Limit process ``pid`` to ``share`` cores (0.25 = a quarter of one core).

    ``name`` labels the cgroup (``<name>-<pid>``). ``mode`` forces a mechanism
    (``"cgroup-v1"``, ``"cgroup-v2"``, ``"duty-cycle"``, ``"none"``); by default
    the best available is used (see the module doc), ``"none"`` when ``share`` ≥
    the machine's cores. A forced cgroup mode that cannot be set up raises
    :class:`EmulationError`.
    """
    if not (share > 0 and math.isfinite(share)):
        raise ValueError(f"cpu share must be > 0 (got {share})")
    if not (1000 <= period_us <= MAX_PERIOD_US):
        raise ValueError(f"period_us must be in [1000, {MAX_PERIOD_US}] (got {period_us})")
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if not _pid_alive(pid):
        raise ValueError(f"no process {pid} to limit")
    safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name)[:64] or "proc"
    if mode == "none" or (mode is None and not needs_limit(share)):
        return CpuLimiter(pid, share, safe, "none", period_us)
    if mode in (None, "cgroup-v1", "cgroup-v2"):
        for v2 in ((False, True) if mode is None else (mode == "cgroup-v2",)):
            lim = _cgroup(pid, share, safe, period_us, v2)
            if lim is not None:
                return lim
        if mode is not None:
            raise EmulationError(f"{mode} is not available here (cpu_mode_available() = {cpu_mode_available()!r})")
    lim = CpuLimiter(pid, share, safe, "duty-cycle", period_us)
    lim._start_duty()
    return lim


@atexit.register
def _close_all() -> None:  # never leave a process stopped or a cgroup behind
    for lim in list(_LIVE):
        try:
            lim.close()
        except Exception:  # at exit, best effort
            log.debug("closing %r at exit failed", lim, exc_info=True)
