"""User-defined models for the core tests (also importable by ``coinfer`` subprocesses).

``UserNet`` packs the awkward geometry a partitioner must get exactly right;
``SENet`` has an SE-style scaling (only whole stages after it);
``Interp`` and ``SoftmaxMid`` use ops coinfer does not partition.
Import paths for the CLI: ``core_helpers.user_models:user_net`` etc. with
``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

USER_SHAPE = (1, 3, 37, 29)  # odd, non-square


def _seeded(m: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(m.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(1, p[0].numel()) ** 0.5))
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m.eval()


class UserNet(nn.Module):
    """Dilated conv, stride-2 convs on odd sizes, asymmetric padding (ZeroPad2d and F.pad),
    ceil-mode max and avg pooling (count_include_pad False and True), grouped and depthwise
    convs, a residual add, a channel concat of branches with different kernels, LeakyReLU,
    F.conv2d on get_attr weights and an ``x.view(x.size(0), -1)`` flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 37x29 -> 19x15
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.LeakyReLU(0.1)
        self.pad = nn.ZeroPad2d((0, 1, 2, 0))  # left, right, top, bottom -> 21x16
        self.dil = nn.Conv2d(8, 8, 3, padding=1, dilation=2)  # -> 19x14
        self.w = nn.Parameter(torch.zeros(16, 4, 3, 3))  # F.conv2d, groups=2
        self.b = nn.Parameter(torch.zeros(16))
        self.mp = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)  # (after F.pad) 21x15 -> 11x8
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # depthwise
        self.bn2 = nn.BatchNorm2d(16)
        self.br1 = nn.Conv2d(16, 8, 1)
        self.br3 = nn.Conv2d(16, 8, 3, padding=1)
        self.br5 = nn.Conv2d(16, 8, (5, 3), padding=(2, 1))
        self.down = nn.Conv2d(24, 24, 4, stride=2, padding=1)  # even kernel, stride 2 on 11x8 -> 5x4
        self.ap1 = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        self.up = nn.Conv2d(24, 24, 3, padding=1)
        self.ap2 = nn.AvgPool2d(2, 2, padding=1, ceil_mode=True, count_include_pad=True)
        self.fc = nn.Linear(24 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        x = self.dil(self.pad(x))
        x = F.leaky_relu(F.conv2d(x, self.w, self.b, 1, 1, 1, 2), 0.2)
        x = F.pad(x, (1, 0, 0, 2))  # left 1, bottom 2
        x = self.mp(x)
        x = x + torch.relu(self.bn2(self.dw(x)))  # residual
        x = torch.cat([self.br1(x), self.br3(x), self.br5(x)], 1)
        x = self.act(self.down(x))
        x = self.up(x) + x
        x = self.ap1(x)
        x = self.ap2(F.relu(x))
        x = x.view(x.size(0), -1)
        return self.fc(x)


class UserNetAlt(nn.Module):
    """More variants: ceil-mode avg pool with count_include_pad=True and padding on odd sizes,
    max pool with ceil_mode and no padding, a stride-2 dilated conv, ZeroPad2d with only
    right/bottom padding (EfficientNet's static same padding) before a functional strided conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2)  # 37x29 -> 18x14
        self.p1 = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=True)  # -> 10x8 (ceil)
        self.same = nn.ZeroPad2d((0, 1, 0, 1))
        self.w = nn.Parameter(torch.zeros(12, 8, 3, 3))
        self.c2 = nn.Conv2d(12, 12, 3, padding=1, groups=3)
        self.p2 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.p3 = nn.AvgPool2d(3, 1, padding=1, count_include_pad=False)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.c1(x))
        x = self.p1(x)
        x = F.conv2d(self.same(x), self.w, None, 2)  # 11x9 -> 5x4
        x = F.leaky_relu(self.c2(x)) + x
        x = self.p2(x)  # ceil: 5x4 -> 3x2
        x = self.p3(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


class SENet(nn.Module):
    """A conv stem, an SE block (scale by a globally pooled vector), then more convs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        x = x * s
        x = F.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


class Interp(nn.Module):
    """F.interpolate in the middle: not partitionable."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(x)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.c2(x)


class SoftmaxMid(nn.Module):
    """torch.softmax over channels in the middle: not partitionable."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.softmax(self.c1(x), 1))


def user_net() -> nn.Module:
    return _seeded(UserNet(), 1)


def user_net_alt() -> nn.Module:
    return _seeded(UserNetAlt(), 2)


def se_net() -> nn.Module:
    return _seeded(SENet(), 3)


def interp() -> nn.Module:
    return Interp().eval()


def softmax_mid() -> nn.Module:
    return SoftmaxMid().eval()
