"""``coinfer demo``: classify a real image with a model split over a heterogeneous cluster."""

from __future__ import annotations

COMMAND = "demo"

import typer

from .common import console, user_errors


def default_model() -> str:
    from ..modelspec import ModelError, load_module

    try:
        load_module("efficientnet_lite0")
        return "efficientnet_lite0"
    except ModelError:
        return "resnet18"


@user_errors
def cmd(
    model: str = typer.Option(None, "--model", "-m", help="default: efficientnet_lite0 (real weights) else resnet18"),
    cluster: str = typer.Option("demo4", "--cluster", "-c", help="cluster YAML or built-in name"),
    strategy: str = typer.Option("proportional", "--strategy", "-s"),
    image: str = typer.Option("chelsea", "--input", help="image file or skimage sample name"),
    in_process: bool = typer.Option(True, "--in-process/--distributed",
                                    help="in-process parts (the runtime issue adds real workers)"),
) -> None:
    """Split a model over a cluster, classify an image, show it equals the single-device result."""
    import torch

    from .. import zoo
    from ..api import plan_result
    from ..execute.local import InProcessExecutor, compare, reference_output
    from ..inputs import make_input
    from ..modelspec import capture_model

    c = console()
    model = model or default_model()
    res = plan_result(model, cluster, strategy)
    plan = res.plan
    cm = capture_model(model)
    x = make_input(image, tuple(plan.model.input_shape))
    single = reference_output(cm, x)
    run = InProcessExecutor(cm, plan).run(x, timed=True)
    diff, rel = compare(run.output, single)
    labels = zoo.imagenet_labels() if single.shape[-1] == 1000 else None

    def top5(y: torch.Tensor) -> list[str]:
        p = torch.softmax(y.flatten(), 0)
        v, i = p.topk(5)
        return [f"{(labels[j] if labels else j)} ({pv:.1%})" for pv, j in zip(v.tolist(), i.tolist())]

    c.print(f"[bold]{model}[/] on {image}, {strategy} plan over {', '.join(plan.devices)} "
            f"({len(plan.stages)} stages), in-process parts")
    for name, y in (("single device", single), ("split", run.output)):
        c.print(f"  {name:>13}: " + "; ".join(top5(y)))
    same = top5(single) == top5(run.output)
    c.print(f"  identical top-5: {'yes' if same else 'NO'}; max abs diff {diff:.3g} (rel {rel:.3g})")
    per: dict[str, int] = {}
    for t in run.timings:
        per[t.device] = per.get(t.device, 0) + t.flops
    c.print("  FLOPs per device: " + ", ".join(f"{d} {f / 1e6:.0f} M" for d, f in per.items()))
    if not same:
        raise typer.Exit(1)
