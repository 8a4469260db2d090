"""``coinfer train distredge --model M --cluster C``: train DistrEdge's layer-volume splitter."""

from __future__ import annotations

NAME = "distredge"

from pathlib import Path
from typing import Any

import typer

from .common import check_outputs, console, emit_json, user_errors


@user_errors
def cmd(
    model: str = typer.Option(..., "--model", "-m", help="zoo name, package.module:callable, or file.onnx"),
    cluster: str = typer.Option(..., "--cluster", "-c", help="cluster YAML file or built-in name"),
    episodes: int = typer.Option(4000, "--episodes", "-n", help="training episodes (the paper: 4000)"),
    algo: str = typer.Option("ddpg", "--algo", help="ddpg (the paper's), td3 or sac"),
    profiles: str = typer.Option(None, "--profiles", help="directory of coinfer profile results "
                                                           "(default: emulate local devices, cached)"),
    analytic: bool = typer.Option(False, "--analytic", help="plan on the analytic cost model (not the paper's)"),
    cost_tables: str = typer.Option("auto", "--costs", help="auto (emulated sustained wall-time tables), cpu "
                                                        "(emulated CPU-time tables; robust to load) or analytic"),
    alpha: float = typer.Option(0.75, "--alpha", help="LC-PSS weight of transmitted data vs operations"),
    n_random: int = typer.Option(100, "--n-random", help="LC-PSS random splits per score"),
    max_volumes: int = typer.Option(None, "--max-volumes", help="cap on the layer volumes"),
    seed: int = typer.Option(0, "--seed"),
    shaping: str = typer.Option("none", "--shaping", help="reward shaping: none (the paper's 1/T) or progress"),
    input_shape: str = typer.Option(None, "--input-shape", help="N,C,H,W (for import paths)"),
    out: Path = typer.Option(None, "-o", "--out", help="also write the plan here"),
    plot: Path = typer.Option(None, "--plot", help="learning-curve PNG (default: next to the cached policy)"),
    json_out: bool = typer.Option(False, "--json", help="one JSON summary on stdout"),
) -> None:
    """Partition MODEL into layer volumes (LC-PSS) and train the DDPG splitter on the simulator.

    The policy is cached per (cluster, model, latency tables, settings):
    coinfer plan --strategy distredge then loads it instead of training.
    """
    from ..api import _cluster
    from ..cost.model import load_cost_model
    from ..modelspec import capture_model
    from ..plan.plan import Wire
    from ..strategies import PlanRequest
    from ..strategies.distredge import ALGOS, check_settings
    from ..strategies.registry import StrategyError
    from ..train.distredge import plan_with_policy, plot_curve

    if algo not in ALGOS:
        raise StrategyError(f"--algo {algo!r} is unknown; use one of {', '.join(ALGOS)}")
    if cost_tables not in ("auto", "cpu", "analytic"):
        raise StrategyError(f"--costs {cost_tables!r} is unknown; use auto, cpu or analytic")
    if shaping not in ("none", "progress"):
        raise StrategyError(f"--shaping {shaping!r} is unknown; use none or progress")
    # the limits of coinfer plan -s distredge (one definition: strategies.distredge.LIMITS)
    check_settings({"train_episodes": "--episodes", "alpha": "--alpha", "n_random": "--n-random",
                    "max_volumes": "--max-volumes", "seed": "--seed"},
                   train_episodes=episodes, alpha=alpha, n_random=n_random, max_volumes=max_volumes, seed=seed)
    check_outputs(plot=plot)
    cl = _cluster(cluster)
    cm = capture_model(model, input_shape)
    costs = load_cost_model(cm.graph, cl, profiles)
    req = PlanRequest(cm.graph, cl, model, costs)
    c = console(stderr=json_out)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[m]}"), TimeElapsedColumn(), console=c, transient=json_out) as bar:
        task = bar.add_task(f"{algo} episodes", total=episodes, m="")

        def progress(done: int, total: int, m: dict[str, float]) -> None:
            bar.update(task, completed=done, m=f"last {m['latency_ms']:.1f} ms, best {m['best_ms']:.1f} ms")

        res = plan_with_policy(req, algo=algo, episodes=episodes, alpha=alpha, n_random=n_random, seed=seed,
                               max_volumes=max_volumes, wire=Wire(), policy=None, retrain=True,
                               profiles="analytic" if analytic else cost_tables, progress=progress,
                               note=lambda s: bar.console.print(s), shaping=shaping)
        bar.update(task, completed=episodes)
    info: dict[str, Any] = dict(res.info)
    import json

    meta = json.loads(Path(info["policy"]).with_suffix(".json").read_text())
    png = plot or Path(info["policy"]).with_suffix(".png")
    plot_curve({algo: meta["curve_ms"]}, png, f"DistrEdge splitter: {model} on {cluster} ({algo})")
    info["plot"] = str(png)
    if out is not None:
        res.plan.save(out)
        info["plan_path"] = str(out)
    if json_out:
        emit_json(info)
        return
    c.print(f"{model} on {cluster}: {len(info['volumes'])} layer volumes ending at {', '.join(info['volumes'])}; "
            f"tail on {info['tail']}")
    load = info.get("train_load") or ["?"]
    c.print(f"trained {info['episodes']} {algo} episodes in {info['train_s']:.0f} s wall, "
            f"{info.get('train_cpu_s') or 0:.0f} s CPU (load {load[0]}; {info['costs']}); policy {info['policy']}")
    c.print(f"predicted latency {info['predicted_latency_ms']:.2f} ms (policy {info['policy_latency_ms']:.2f} ms, "
            f"splits from {info['splits_from']}); policy inference {info['policy_inference_ms']:.2f} ms")
    c.print(f"learning curve: {png}")
