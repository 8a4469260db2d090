"""Tiny YOLOv2 (VOC), the Darknet ``yolov2-tiny-voc.cfg`` network.

Redmon & Farhadi, "YOLO9000: Better, Faster, Stronger", CVPR 2017
(arXiv:1612.08242); layer list from ``cfg/yolov2-tiny-voc.cfg`` in
github.com/pjreddie/darknet. The ``[region]`` layer (box decoding) is not part
of the network here: the output is the raw ``1x125x13x13`` map, 5 anchors x
(4 box + 1 objectness + 20 class) values per cell.
"""

from __future__ import annotations

import torch
from torch import nn

from coinfer.zoo._common import randomize_batchnorm

#: Filters of the 8 conv + BN + leaky layers; a max pool follows each of the first 6.
FILTERS: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 1024)


class ConvBNLeaky(nn.Sequential):
    """Darknet ``[convolutional] batch_normalize=1 size=3 pad=1 activation=leaky``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.LeakyReLU(0.1),
        )


class DarknetSamePool(nn.Sequential):
    """Darknet ``[maxpool] size=2 stride=1``: pads one row/column at the bottom/right.

    Darknet's max pool ignores out-of-range positions, which equals padding
    with ``-inf`` (not zero) before a 2x2 / stride-1 pool; the size is kept.
    """

    def __init__(self) -> None:
        super().__init__(
            nn.ConstantPad2d((0, 1, 0, 1), float("-inf")),
            nn.MaxPool2d(kernel_size=2, stride=1),
        )


class TinyYoloV2(nn.Module):
    """9 convs, 6 max pools (5 of stride 2, the last of stride 1), 1x1 conv to ``num_outputs``.

    Layers are in ``self.layers`` with names ``conv1``..``conv8``,
    ``pool1``..``pool6`` and ``conv9`` (the linear 1x1 conv, with bias).
    """

    def __init__(self, num_outputs: int = 125) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {}
        in_ch = 3
        for i, out_ch in enumerate(FILTERS, start=1):
            layers[f"conv{i}"] = ConvBNLeaky(in_ch, out_ch)
            if i <= 5:
                layers[f"pool{i}"] = nn.MaxPool2d(kernel_size=2, stride=2)
            elif i == 6:
                layers[f"pool{i}"] = DarknetSamePool()
            in_ch = out_ch
        layers["conv9"] = nn.Conv2d(in_ch, num_outputs, 1, bias=True)
        self.layers = nn.Sequential()
        for name, mod in layers.items():
            self.layers.add_module(name, mod)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        randomize_batchnorm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw detection map ``[N, num_outputs, H/32, W/32]`` (13x13 at 416x416)."""
        return self.layers(x)


def yolov2_tiny(num_classes: int = 20, num_anchors: int = 5) -> TinyYoloV2:
    """Tiny YOLOv2 VOC: ``num_anchors x (4 + 1 + num_classes)`` = 125 output channels."""
    return TinyYoloV2(num_outputs=num_anchors * (5 + num_classes))
