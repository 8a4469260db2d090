"""AlexNet with Edgent / BranchyNet-style early exits.

Architecture: Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep
Convolutional Neural Networks", NeurIPS 2012, in the single-tower layout of
Krizhevsky, "One weird trick for parallelizing convolutional neural networks"
(arXiv:1404.5997) that torchvision uses (64/192/384/256/256 filters, no LRN).

Early exits: Edgent (Li, Zhou, Chen, "Edge Intelligence: On-Demand Deep
Learning Model Co-Inference with Device-Edge Synergy", arXiv:1806.07840) uses
an AlexNet with 5 exits built with BranchyNet (Teerapittayanon et al., ICPR
2016). Here: 4 side exits after pool1, pool2, conv3 and conv4 plus the main
output.
"""

from __future__ import annotations

import torch
from torch import nn

from coinfer.zoo._common import EarlyExitNet, exit_head

#: exit name -> index (in ``features``) of the module whose output the head reads.
_EXIT_LAYERS = {"exit1": 2, "exit2": 5, "exit3": 7, "exit4": 9}


class AlexNet(EarlyExitNet):
    """AlexNet (torchvision layout) with 4 side exits.

    ``features`` indices: 0 conv1, 1 relu, 2 pool1, 3 conv2, 4 relu, 5 pool2,
    6 conv3, 7 relu, 8 conv4, 9 relu, 10 conv5, 11 relu, 12 pool5. The exits
    read the outputs of ``features.2`` (64 ch), ``features.5`` (192 ch),
    ``features.7`` (384 ch) and ``features.9`` (256 ch). Every layer keeps a
    positive size down to 63x63 inputs (at 64x64: 15, 7, 3, 3, 1; the
    ``AdaptiveAvgPool2d((6, 6))`` then replicates the 1x1 map).
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, num_classes),
        )
        channels = {2: 64, 5: 192, 7: 384, 9: 256}
        self.exit_points = {name: f"features.{idx}" for name, idx in _EXIT_LAYERS.items()}
        self.exit_heads = nn.ModuleDict(
            {
                name: exit_head(channels[idx], num_classes, conv_channels=32, pool=4)
                for name, idx in _EXIT_LAYERS.items()
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Main path only: logits ``[N, num_classes]``."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def alexnet(num_classes: int = 1000) -> AlexNet:
    """AlexNet with exits; PyTorch default initialisation (as torchvision)."""
    return AlexNet(num_classes=num_classes)
