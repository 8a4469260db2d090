"""Shared pieces of the zoo families: early-exit plumbing and weight initialisation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class EarlyExitNet(nn.Module):
    """Base class of models with BranchyNet-style side exits.

    BranchyNet: Teerapittayanon, McDanel, Kung, "BranchyNet: Fast Inference via
    Early Exiting from Deep Neural Networks", ICPR 2016 (arXiv:1709.01686); used
    by Edgent (Li, Zhou, Chen, arXiv:1806.07840).

    Subclasses set ``exit_points`` (exit name -> dotted path of the submodule
    whose *output* the head consumes; that submodule is called exactly once
    per forward) and ``exit_heads`` (exit name -> head module). ``forward``
    returns only the main output, so ``torch.fx.symbolic_trace`` sees only
    the main path; :meth:`forward_exits` returns every exit in one pass.
    """

    exit_points: dict[str, str]
    exit_heads: nn.ModuleDict

    def forward_exits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All side exits (shallow -> deep) plus ``"final"``, from one forward pass.

        Differentiable, so it serves joint-loss training of the exits.
        """
        taps: dict[str, torch.Tensor] = {}
        handles: list[torch.utils.hooks.RemovableHandle] = []

        def make_hook(exit_name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
            def hook(_mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
                if exit_name in taps:
                    raise RuntimeError(
                        f"exit point {self.exit_points[exit_name]!r} of {exit_name!r} "
                        "ran more than once in one forward pass"
                    )
                taps[exit_name] = out

            return hook

        try:
            for exit_name, path in self.exit_points.items():
                handles.append(self.get_submodule(path).register_forward_hook(make_hook(exit_name)))
            final = self(x)
        finally:
            for handle in handles:
                handle.remove()
        outputs = {name: self.exit_heads[name](taps[name]) for name in self.exit_points}
        outputs["final"] = final
        return outputs


def exit_head(in_channels: int, num_classes: int, *, conv_channels: int | None = None,
              pool: int = 1) -> nn.Sequential:
    """A small exit head: [conv3x3 + ReLU] + AdaptiveAvgPool2d(pool) + Flatten + Linear."""
    layers: list[nn.Module] = []
    channels = in_channels
    if conv_channels is not None:
        layers += [nn.Conv2d(in_channels, conv_channels, 3, padding=1), nn.ReLU()]
        channels = conv_channels
    layers += [
        nn.AdaptiveAvgPool2d((pool, pool)),
        nn.Flatten(1),
        nn.Linear(channels * pool * pool, num_classes),
    ]
    return nn.Sequential(*layers)


@torch.no_grad()
def randomize_batchnorm(model: nn.Module) -> None:
    """Give every BatchNorm2d mild random affine parameters (weight ~ U(0.5, 1.5), bias ~ N(0, 0.1)).

    A freshly initialised BN (weight 1, bias 0) would hide bugs in BN folding
    and partitioning. Draws from the global torch RNG (seeded by
    :func:`coinfer.zoo.get`). Running statistics are set by
    :func:`calibrate_batchnorm`.
    """
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d) and mod.weight is not None:
            n = mod.num_features
            mod.weight.copy_(torch.empty(n).uniform_(0.5, 1.5))
            mod.bias.copy_(torch.empty(n).normal_(0.0, 0.1))


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, input_shape: tuple[int, ...], batch: int = 2) -> None:
    """Set BN running statistics to the batch statistics of one random-input pass.

    With default running statistics (mean 0, var 1) a randomly initialised
    deep net in eval mode lets the signal vanish or explode, so its output
    hardly depends on its input (MobileNetV2 / GoogLeNet: relative change
    ~1e-7), which would make partitioned-vs-whole comparisons meaningless.
    After calibration every BN normalises its input as in a trained net.
    ``N(0, 1)`` inputs of shape ``(batch, *input_shape[1:])`` come from the
    global torch RNG (seeded by :func:`coinfer.zoo.get`). No-op without BN.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    was_training = model.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass -> exactly the batch statistics
        model.eval()  # dropout / drop-connect off: only the BN layers see training mode
        for m in bns:
            m.train()
        model(torch.randn(batch, *input_shape[1:]))
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
