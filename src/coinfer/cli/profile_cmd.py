"""``coinfer profile CLUSTER --model M``: measure every device and link through the runtime."""

from __future__ import annotations

COMMAND = "profile"

from pathlib import Path
from typing import Any

import typer

from .common import CheckFailed, console, emit_json, stop_on_signals, user_errors


@user_errors
def cmd(
    cluster: str = typer.Argument(..., metavar="CLUSTER", help="cluster YAML file or built-in name"),
    model: str = typer.Option(..., "--model", "-m", help="zoo name, package.module:callable, or file.onnx"),
    out: str = typer.Option(None, "-o", "--out", help="profiles directory (default profiles/<model>)"),
    reps: int = typer.Option(3, "--reps", "-k", help="timed runs per point (median), after --warmup runs"),
    warmup: int = typer.Option(1, "--warmup", help="untimed runs before each point"),
    points: int = typer.Option(6, "--points", help="rows-sweep points per splittable stage (geometric, then refined)"),
    backend: str = typer.Option("torch", "--backend", help="per-part backend to measure (torch, onnxruntime, "
                                "openvino), or 'all': each one installed here, one file per backend"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16"),
    input_shape: str = typer.Option(None, "--input-shape", help="N,C,H,W (for import paths)"),
    no_links: bool = typer.Option(False, "--no-links", help="skip the link and message-cost probes"),
    throttled: bool = typer.Option(False, "--throttled", help="measure the model under the emulated CPU quota "
                                   "(slower; by default the local workers started here sweep without it: "
                                   "CPU-time profiles do not depend on it)"),
    evict_mb: int = typer.Option(None, "--evict-mb", min=0, help="MiB written before every timed run so that it "
                                 "starts on cold caches, as a part does inside a request (default: the devices x "
                                 "the model's weights, at most 256; 0: time back to back)"),
    keys: str = typer.Option(None, "--keys", help="CURVE key directory (default: the cluster's security.keys)"),
    json_out: bool = typer.Option(False, "--json", help="one JSON summary on stdout"),
) -> None:
    """Profile a model on every device of a cluster (real workers) and probe every link.

    Per device: each splittable stage's latency against the rows it computes
    (a geometric sweep from 1 row to the full height, refined where the
    table rises most), whole stages and the tail, per-layer-type
    regressions, and the runtime's CPU cost per message; per link: round
    trip and bandwidth over the shaped transport. Saves DIR/<device>.json
    (coinfer.profile/1; DIR/<device>@<backend>.json for another backend than
    torch, `--backend all` profiles each installed one); re-running resumes.
    """
    from ..cluster import resolve_cluster
    from ..cost.remote import (
        ProfileFailed,
        ProgressSink,
        profile_backend,
        profile_cluster,
        profile_file,
    )
    from ..modelspec import parse_shape
    from ..runtime import upstate

    cl = resolve_cluster(cluster)
    shape = parse_shape(input_shape) if input_shape else None
    out_dir = out or f"profiles/{model.replace('/', '_').replace(':', '_')}"
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        from ..errors import UserError

        raise UserError(f"-o {out_dir!r} is a file; profiles go into a directory (default profiles/<model>)")
    up = upstate.read(cluster)
    addresses = cpu_modes = None
    if up:
        addresses = {**{d.name: d.address for d in cl.devices if not d.is_local}, **up["addresses"]}
        cpu_modes = up.get("cpu_modes")
    c = console(stderr=json_out)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[what]}"), TimeElapsedColumn(), console=c, transient=json_out) as bar:
        tasks: dict[str, Any] = {}

        class Sink(ProgressSink):
            def links(self, done: int, total: int) -> None:
                if "links" not in tasks:
                    tasks["links"] = bar.add_task("links", total=total, what="probing")
                bar.update(tasks["links"], completed=done, what="probed" if done == total else "probing")

            def device(self, dev: str, done: int, total: int, what: str) -> None:
                if dev not in tasks:
                    tasks[dev] = bar.add_task(dev, total=max(total, 1), what="")
                bar.update(tasks[dev], completed=done, total=max(total, 1), what=what[:40])

            def note(self, msg: str) -> None:
                bar.console.print(msg)

        from ..execute.backends import BACKENDS, BackendError, available_backends, check_backend

        if backend not in (*BACKENDS, "all"):  # 'auto' would write <device>@auto.json, which any backend then read
            raise BackendError(f"--backend {backend!r} is not one of {', '.join((*BACKENDS, 'all'))}; profile the "
                               "backend each device's cluster entry names (all: every installed one)")
        backends = available_backends() if backend == "all" else [backend]
        for be in backends:  # a wrong name or precision: exit 2 naming the extra / the supported list
            check_backend(be, precision, where=f"--backend {be} --precision {precision}")
        stop_on_signals()  # a kill stops the workers started here and restores their quotas, as Ctrl-C does
        jobs = []
        for be in backends:
            if len(backends) > 1:
                bar.console.print(f"backend [bold]{be}[/]")
                tasks.clear()
            try:
                jobs.append(profile_cluster(cl, model, out_dir, input_shape=shape, addresses=addresses,
                                            cpu_modes=cpu_modes, keys=keys, rows_points=points, reps=reps,
                                            warmup=warmup, backend=be, precision=precision, probe=not no_links,
                                            sink=Sink(), throttled=throttled, evict_mb=evict_mb))
            except ProfileFailed as e:  # a device failed or stopped answering: what was measured is saved
                raise CheckFailed(f"{e}; what was measured is in {out_dir} (re-run to resume)") from None
    if len(jobs) > 1:
        written = {be: [profile_file(d, profile_backend(be, precision)) for d in cl.names] for be in backends}
        if json_out:
            emit_json({"profiles": out_dir, "model": model, "backends": written,
                       "seconds": round(sum(j.seconds for j in jobs), 1)})
            return
        for be, files in written.items():
            c.print(f"{be}: wrote {out_dir}/{{{', '.join(files)}}}")
        c.print(f"use them: coinfer plan ... --profiles {out_dir} (each device's cluster-file backend picks its "
                f"table; auto: the fastest)")
        return
    job = jobs[0]
    summary = {"profiles": job.out_dir, "model": model, "seconds": round(job.seconds, 1),
               "measured": job.measured, "resumed": job.resumed, "skipped": job.skipped,
               "links_probed": job.probed, "sweep_points": job.points,
               "devices": {d: {"timing": p.timing, "stages": len(p.stages), "whole": len(p.whole),
                               "regressions": sorted(p.regressions), "links": {k: v.to_dict() for k, v in p.links.items()},
                               "runtime": None if p.runtime is None else p.runtime.to_dict()}
                           for d, p in job.profiles.items()}}
    if json_out:
        emit_json(summary)
        return
    fname = profile_file("<device>", profile_backend(backend, precision))
    c.print(f"wrote [bold]{job.out_dir}[/]/{fname} for {len(job.profiles)} devices in {job.seconds:.1f} s "
            f"({job.points} sweep points measured"
            + (f"; kept {', '.join(job.skipped)}" if job.skipped else "")
            + (f"; resumed {', '.join(job.resumed)}" if job.resumed else "") + ")")
    for d, p in job.profiles.items():
        lk = ", ".join(f"{k} {v.bandwidth_mbps:.0f} Mbit/s rtt {v.rtt_ms:.1f} ms" for k, v in sorted(p.links.items()))
        rt = p.runtime
        msg = "" if rt is None else f"; per message {rt.send_us + rt.send_io_us:.0f}/{rt.recv_us:.0f} µs send/recv"
        c.print(f"  {d}: {len(p.stages)} swept + {len(p.whole)} whole stages ({p.timing} time){msg}"
                + (f"; links {lk}" if lk else ""))
    c.print(f"use them: coinfer plan ... --profiles {job.out_dir}; coinfer simulate PLAN --cluster {cluster} "
            f"--profiles {job.out_dir}")
