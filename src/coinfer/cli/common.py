"""Shared CLI plumbing: one-line user errors with exit code 2, JSON output, consoles."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class CheckFailed(Exception):
    """A check did not pass (exit 1): verify mismatch, infeasible deadline..."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    from ..cluster import ClusterError
    from ..graph.ir import GraphError
    from ..inputs import InputError
    from ..modelspec import ModelError
    from ..plan.plan import PlanError
    from ..strategies.registry import StrategyError

    extra: list[type[BaseException]] = []
    try:
        from ..errors import UserError

        extra.append(UserError)
    except ImportError:  # pragma: no cover
        pass
    return (ClusterError, GraphError, InputError, ModelError, PlanError, StrategyError, *extra)


def fail(msg: str, code: int = EXIT_BAD_INPUT) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """SIGTERM / SIGHUP (a script's ``kill``, a closed terminal) end the command like Ctrl-C — its
    ``finally`` blocks run: ``up``, ``run``, ``demo`` and ``profile`` stop the workers they started and
    sessions undeploy (a ``kill``ed ``coinfer run`` left its deployments on every worker); so does
    SIGINT where the shell started us with it ignored (``coinfer up &`` in a script)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (the CLI's tests call in threads)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)


def user_errors(fn: F) -> F:
    """Turn known user errors into one line on stderr and exit 2 (1 for failed checks and runs that
    failed while running; see :mod:`coinfer.errors`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except CheckFailed as e:
            typer.echo(f"check failed: {e}", err=True)
            raise typer.Exit(EXIT_CHECK_FAILED) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except OSError as e:
            if e.filename is None:
                raise
            # a path the user gave that cannot be read or written (--out, --trace, -o …)
            typer.echo(f"error: {e.filename}: {e.strerror or e}; check the path and its permissions", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except Exception as e:
            from ..strategies.registry import Infeasible

            if isinstance(e, Infeasible):
                typer.echo(f"infeasible: {e}", err=True)
                raise typer.Exit(EXIT_CHECK_FAILED) from None
            from ..errors import RunFailed, SetupError

            if isinstance(e, (*_user_error_types(), SetupError, RunFailed)):
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                typer.echo(f"error: {msg}", err=True)
                bad_input = getattr(e, "bad_input", not isinstance(e, RunFailed) or isinstance(e, SetupError))
                raise typer.Exit(EXIT_BAD_INPUT if bad_input else EXIT_CHECK_FAILED) from None
            raise

    return wrapper  # type: ignore[return-value]


def check_outputs(trace: str | os.PathLike[str] | None = None, gantt: str | os.PathLike[str] | None = None,
                  plot: str | os.PathLike[str] | None = None) -> None:
    """Refuse output paths that cannot be written before any work is done (not after a run or a
    training): a folder that does not exist or is not writable, a folder given as the file, a
    figure (``--gantt``, ``--plot``) format matplotlib cannot write."""
    from pathlib import Path

    from ..errors import UserError

    for what, path in (("--trace", trace), ("--gantt", gantt), ("--plot", plot)):
        if not path:
            continue
        p = Path(path)
        parent = p.parent if str(p.parent) else Path(".")
        # worded as the errors of writing (user_errors: "PATH: problem; check the path …")
        if p.is_dir():
            raise UserError(f"{path}: is a folder ({what} takes a file name); check the path")
        if not parent.is_dir():
            raise UserError(f"{path}: folder {parent} does not exist ({what}); check the path")
        if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
            raise UserError(f"{path}: not writable ({what}); check the path and its permissions")
    for option, fig in (("--gantt", gantt), ("--plot", plot)):
        if not fig:
            continue
        from matplotlib.backend_bases import FigureCanvasBase

        kinds = FigureCanvasBase.get_supported_filetypes()
        ext = Path(fig).suffix.lower().lstrip(".")
        if ext not in kinds:
            what = "has no file extension" if not ext else f"ends in .{ext}, which matplotlib cannot write"
            raise UserError(f"{option} {fig} {what}; name a .png (or .svg, .pdf) file")


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``--param key=value`` pairs; values parsed as JSON when possible."""
    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            fail(f"--param {it!r} must look like key=value")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def deadline_notes(strategy: str, deadline_ms: float | None, latency_ms: float) -> list[str]:
    """What ``coinfer plan`` / ``bench`` print to stderr about ``--deadline-ms``: a note when ``strategy``
    does not plan for a deadline (``register(deadline=False)``), a warning when the predicted latency
    misses it (whatever the strategy). The exit code is unchanged: a strategy that plans for a deadline
    refuses a plan it cannot meet itself (exit 1)."""
    if deadline_ms is None:
        return []
    from ..strategies.registry import info

    out = []
    if not info(strategy).deadline:
        out.append(f"note: {strategy} does not plan for a deadline: --deadline-ms {deadline_ms:g} is only "
                   "checked against the prediction (the deadline column of coinfer strategies)")
    if latency_ms > deadline_ms:
        out.append(f"warning: predicted latency {latency_ms:.1f} ms misses --deadline-ms {deadline_ms:g} "
                   f"({strategy}); relax the deadline or try another strategy / faster devices")
    return out


def mismatch_notes(costs: dict[str, Any]) -> list[str]:
    """``coinfer plan`` / ``simulate``: devices priced with another backend's profile table than the one
    they run (``costs["backend_mismatch"]``, from ``ProfileSet.select``), one line per kind."""
    from ..cost.profile import mismatch_notes as notes

    mm = {d: (v["runs"], v["priced_with"]) for d, v in (costs.get("backend_mismatch") or {}).items()}
    return notes(mm, str(costs.get("profiles") or "profiles"))


def backend_notes(cluster: Any, devices: list[str]) -> list[str]:
    """``coinfer plan`` / ``simulate``: a warning per device whose ``backend`` / ``precision`` (cluster
    file) this machine cannot run — they price any combination, while ``coinfer run`` refuses one the
    device does not have (exit 2). Judged by this machine: a remote device may have what it lacks."""
    from ..execute.backends import BackendError, check_backend

    out = []
    for dev in devices:
        spec = cluster.device(dev) if dev in cluster.names else None
        if spec is None:
            continue
        try:
            check_backend(spec.backend, spec.precision, where=f"device {dev}")
        except BackendError as e:
            out.append(f"warning: {e} — priced anyway; coinfer run refuses it unless that device has it")
    return out


def objective_notes(strategy: str, objective: str) -> list[str]:
    """What ``coinfer plan`` prints to stderr about ``--objective``: a note when it is not the default
    (latency) and ``strategy`` does not plan for an objective (``register(objective=False)``)."""
    from ..strategies.registry import info

    if objective == "latency" or info(strategy).objective:
        return []
    note = (f"note: {strategy} does not plan for an objective: --objective {objective} is not used "
            "(the objective column of coinfer strategies)")
    return [note]


CPU_EMULATION_HELP = ("how local devices get their cpu_share: quota | dilate | off "
                      "(default: the cluster's emulation.cpu, quota)")


def critical_path_line(span_ms: float, critical_ms: float, what: str) -> str | None:
    """``what`` (e.g. "median run"): its latency split into the compute on the critical path
    (:meth:`coinfer.trace.Trace.critical_compute_ms`) and the rest; None without either."""
    if span_ms <= 0 or critical_ms <= 0:
        return None
    rest = max(0.0, span_ms - critical_ms)
    return (f"{what}: {span_ms:.1f} ms, of which {critical_ms:.1f} ms the busiest device's compute per stage; "
            f"{rest:.1f} ms ({rest / span_ms:.0%}) messages and waiting")


# printed by `verify` and `run --verify` when no tolerance applies
APPROXIMATE_NOTE = "approximate plan (halo zero, quantised wire or reduced precision): no tolerance applied"
STAGES_HELP = "also show each stage: its busiest device and compute, and the time lost to messages and waiting"


def stage_rows(trace: Any, plan: Any) -> list[dict[str, Any]]:
    """:meth:`coinfer.trace.Trace.stage_times` as JSON rows, with each stage's ``until`` from ``plan``."""
    return [{"stage": st.stage, "until": plan.stages[st.stage].until if st.stage < len(plan.stages) else None,
             "device": st.device, "compute_ms": round(st.compute_ms, 3), "end_ms": round(st.end_ms, 3),
             "lost_ms": round(st.lost_ms, 3)} for st in trace.stage_times()]


def print_breakdown(c: Any, what: str, span_ms: float, critical_ms: float, rows: list[dict[str, Any]] | None,
                    indent: str = "") -> None:
    """``coinfer run`` / ``simulate``: the critical-path line, and the ``--stages`` table when ``rows``."""
    line = critical_path_line(span_ms, critical_ms, what)
    if line:
        c.print(indent + line)
    if rows is not None:
        print_stages(c, rows, span_ms)


def print_stages(c: Any, rows: list[dict[str, Any]], span_ms: float) -> None:
    """The ``--stages`` table of ``coinfer run`` / ``simulate``."""
    from rich.table import Table

    t = Table(title="stages: the busiest device's compute, and the rest of the time to the stage's end")
    for col in ("stage", "until", "busiest", "compute ms", "ends at ms", "lost ms"):
        t.add_column(col, justify="left" if col in ("until", "busiest") else "right")
    for r in rows:
        t.add_row(str(r["stage"]), str(r["until"]), r["device"], f"{r['compute_ms']:.1f}", f"{r['end_ms']:.1f}",
                  f"{r['lost_ms']:.1f}")
    if rows:
        t.add_row("", "(to the result)", "", "", f"{span_ms:.1f}", f"{max(0.0, span_ms - rows[-1]['end_ms']):.1f}")
    c.print(t)
