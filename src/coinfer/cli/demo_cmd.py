"""``coinfer demo``: classify a real image with a model split over an emulated heterogeneous cluster."""

from __future__ import annotations

COMMAND = "demo"

import statistics
import time
from pathlib import Path
from typing import Any

import typer

from .common import CPU_EMULATION_HELP, console, emit_json, stop_on_signals, user_errors


def default_model() -> str:
    from ..modelspec import ModelError, load_module

    try:
        load_module("efficientnet_lite0")
        return "efficientnet_lite0"
    except ModelError:
        return "resnet18"


def demo_cluster(n: int) -> Any:
    """``n`` local devices with CPU shares spread like demo4 (0.15 … 0.7) on 100 Mbit/s."""
    from ..cluster import builtin_cluster, parse_cluster

    if n == 4:
        return builtin_cluster("demo4")
    if n < 1 or n > 16:
        from ..errors import UserError

        raise UserError(f"--devices must be 1..16, got {n}")
    shares = [round(0.15 + (0.7 - 0.15) * i / max(1, n - 1), 2) for i in range(n)]
    return parse_cluster({"source": "d0", "devices": [
        {"name": f"d{i}", "cpu_share": s, "power": {"busy_w": round(2 + 8 * s, 2), "idle_w": 1.5, "tx_w": 1.0}}
        for i, s in enumerate(shares)], "network": {"bandwidth_mbps": 100, "latency_ms": 0.5}}, f"demo{n}")


def _measure(session: Any, x: Any, repeat: int) -> tuple[Any, list[float]]:
    y = session(x)  # warm-up
    lat = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        y = session(x)
        lat.append((time.perf_counter() - t0) * 1e3)
    return y, lat


@user_errors
def cmd(
    model: str = typer.Option(None, "--model", "-m", help="default: efficientnet_lite0 (real weights) else resnet18"),
    devices: int = typer.Option(4, "--devices", "-n", help="number of emulated devices (ignored with --cluster)"),
    cluster: str = typer.Option(None, "--cluster", "-c", help="cluster YAML or built-in name (default: demo4)"),
    strategy: str = typer.Option("auto", "--strategy", "-s",
                                 help="see coinfer strategies (default auto: the best of every planner, "
                                      "predicted by the cost model)"),
    image: str = typer.Option("chelsea", "--input", help="image file or skimage sample name"),
    repeat: int = typer.Option(5, "--repeat", min=1, help="timed runs of each configuration"),
    out: Path = typer.Option(Path("coinfer-demo"), "--out", help="directory for the Gantt PNG and trace JSON"),
    json_out: bool = typer.Option(False, "--json", help="one JSON summary on stdout"),
    cpu_emulation: str = typer.Option(None, "--cpu-emulation", help=CPU_EMULATION_HELP),
) -> None:
    """Split a model over local worker processes, classify an image, compare with one device."""
    import torch
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .. import zoo
    from ..api import plan_result
    from ..cluster import resolve_cluster, with_cpu_emulation
    from ..execute.local import compare
    from ..inputs import make_input
    from ..runtime.coordinator import Session
    from ..runtime.launcher import LocalCluster
    from ..runtime.report import summarize

    c = console(stderr=json_out)
    stop_on_signals()  # a kill stops the workers started here, as Ctrl-C does
    t_start = time.perf_counter()
    model = model or default_model()
    cl = with_cpu_emulation(resolve_cluster(cluster) if cluster else demo_cluster(devices), cpu_emulation)
    out.mkdir(parents=True, exist_ok=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=c,
                  transient=True) as prog:
        task = prog.add_task(f"starting {len(cl.devices)} worker processes…")
        local = LocalCluster(cl, log_dir=out / "logs").start()
        try:
            prog.update(task, description=f"planning {model} with {strategy}…")
            split = plan_result(model, cl, strategy).plan
            single = plan_result(model, cl, "local").plan
            x = make_input(image, tuple(split.model.input_shape))
            prog.update(task, description="running on the source device alone…")
            with Session(single, cl, local.addresses, cpu_modes=local.cpu_modes()) as s1:
                y1, lat1 = _measure(s1, x, repeat)
            prog.update(task, description=f"running split over {len(split.devices_used_names())} devices…")
            with Session(split, cl, local.addresses, cpu_modes=local.cpu_modes()) as s2:
                y2, lat2 = _measure(s2, x, repeat)
                tr = s2.last_trace
                backends = dict(s2.backends)
            modes = local.cpu_modes()
        finally:
            local.stop()
    assert tr is not None
    diff, rel = compare(y2, y1)
    labels = zoo.imagenet_labels() if y1.shape[-1] == 1000 else None
    random_weights = model in zoo.names() and zoo.entry(model).weights == "seed"

    def top5(y: torch.Tensor) -> list[tuple[str, float]]:
        p = torch.softmax(y.flatten(), 0)
        v, i = p.topk(5)
        return [(labels[j] if labels else str(j), float(pv)) for pv, j in zip(v.tolist(), i.tolist())]

    t1, t2 = top5(y1), top5(y2)
    m1, m2 = statistics.median(lat1), statistics.median(lat2)
    summ = summarize(tr, cl)
    tr.save(out / "trace.json")
    tr.gantt(out / "gantt.png", f"{model} · {strategy} over {len(cl.devices)} devices · {m2:.1f} ms")
    result = {
        "model": model, "strategy": strategy, "base": split.strategy.params.get("base"),
        "devices": {d.name: d.cpu_share for d in cl.devices}, "devices_used": split.devices_used_names(),
        "cpu_modes": modes, "top5_single": t1, "top5_distributed": t2,
        "identical_top5": [a for a, _ in t1] == [b for b, _ in t2], "max_abs_diff": diff, "rel": rel,
        "latency_single_ms": round(m1, 2), "latency_ms": round(m2, 2), "speedup": round(m1 / m2, 3),
        "busy_ms": summ["busy_ms"], "bytes_moved": summ["bytes_moved"], "energy_j": summ["energy_j"],
        "backends": backends, "weights": "random (seeded)" if random_weights else "trained",
        "gantt": str(out / "gantt.png"), "trace": str(out / "trace.json"),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if json_out:
        emit_json(result)
    else:
        base = split.strategy.params.get("base")
        used = split.devices_used_names()
        c.print(f"[bold]{model}[/] on [bold]{image}[/]: {strategy} plan"
                + (f" (from {base})" if strategy == "auto" and base else "")
                + f", {len(split.stages)} stage{'s' if len(split.stages) != 1 else ''} on {', '.join(used)} of "
                + ", ".join(f"{d.name} ({d.cpu_share} cpu)" for d in cl.devices)
                + f"; {cl.network.bandwidth_mbps:g} Mbit/s links; cpu limits: {sorted(set(modes.values()))}")
        if random_weights:
            c.print(f"  ({model} has seeded random weights in the zoo: the labels mean nothing, the comparison "
                    f"does; efficientnet_lite0 has real ImageNet weights)")
        c.print("  top-5 on the source device alone : " + "; ".join(f"{n} {p:.1%}" for n, p in t1))
        c.print("  top-5 distributed                 : " + "; ".join(f"{n} {p:.1%}" for n, p in t2))
        c.print(f"  identical: [bold]{'yes' if result['identical_top5'] else 'NO'}[/]; "
                f"max abs diff {diff:.3g} (rel {rel:.2g})")
        c.print(f"  latency (median of {repeat}): single {m1:.1f} ms → distributed {m2:.1f} ms "
                f"([bold]{m1 / m2:.2f}×[/])")
        c.print("  backends: " + ", ".join(f"{d} {'+'.join(b) or '-'}" for d, b in backends.items()))
        c.print("  busy ms per device: " + ", ".join(f"{d} {v:.1f}" for d, v in summ["busy_ms"].items())
                + f"; {summ['bytes_moved'] / 1e6:.2f} MB moved per inference")
        c.print(f"  wrote {out / 'gantt.png'} and {out / 'trace.json'} (open in ui.perfetto.dev) "
                f"in {result['seconds']:.0f} s")
    if not result["identical_top5"]:
        raise typer.Exit(1)
