"""What splitting one convolution 4 ways costs: by rows (exact halo) vs by output channels.

One convolution + ReLU of VGG-16 / ResNet-50 shapes, onnxruntime, one thread:
the whole layer vs the sum of its 4 parts run one after the other (each part its
own static-shape session, as a worker runs it). Prints both ratios.

    .venv/bin/python benchmarks/runtime/scaling/channels.py
"""

from __future__ import annotations

import io
import statistics
import time
import warnings
from collections.abc import Callable

import onnxruntime as ort
import torch

# (label, in channels, out channels, map size, kernel)
CASES = [("VGG-16 conv3 256->256 @56", 256, 256, 56, 3), ("VGG-16 conv4_1 256->512 @28", 256, 512, 28, 3),
         ("VGG-16 conv4 512->512 @28", 512, 512, 28, 3), ("VGG-16 conv5 512->512 @14", 512, 512, 14, 3),
         ("R50 layer3 1x1 1024->256 @14", 1024, 256, 14, 1), ("R50 layer3 3x3 256->256 @14", 256, 256, 14, 3),
         ("R50 layer3 1x1 256->1024 @14", 256, 1024, 14, 1), ("R50 layer4 1x1 2048->512 @7", 2048, 512, 7, 1),
         ("R50 layer4 3x3 512->512 @7", 512, 512, 7, 3), ("R50 layer4 1x1 512->2048 @7", 512, 2048, 7, 1)]


def session(m: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    b = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), b, dynamo=False, opset_version=17)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(b.getvalue(), so, providers=["CPUExecutionProvider"])
    xn, name = x.numpy(), s.get_inputs()[0].name
    return lambda: s.run(None, {name: xn})


def timed(fs: list[Callable[[], object]], reps: int = 15) -> float:
    for f in fs:
        f()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for f in fs:
            f()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0],
                            epilog="Takes no options; timed: run it under flock /tmp/coinfer-timing.lock.").parse_args(argv)
    torch.manual_seed(0)
    print(f"{'layer':30} {'whole ms':>9} {'4 rows':>8} {'ratio':>6} {'4 chans':>8} {'ratio':>6}")
    for name, ci, co, hw, k in CASES:
        conv = torch.nn.Sequential(torch.nn.Conv2d(ci, co, k, padding=k // 2), torch.nn.ReLU()).eval()
        x = torch.randn(1, ci, hw, hw)
        whole = timed([session(conv, x)])
        rows, chans, h, p = [], [], hw // 4, k // 2
        for i in range(4):
            r0, r1 = i * h, (i + 1) * h if i < 3 else hw
            cv = torch.nn.Conv2d(ci, co, k)
            cv.load_state_dict(conv[0].state_dict())
            pad = (p, p, p if r0 == 0 else 0, p if r1 == hw else 0)  # true border only; halo rows are input
            m = torch.nn.Sequential(torch.nn.ZeroPad2d(pad), cv, torch.nn.ReLU()).eval()
            rows.append(session(m, x[:, :, max(0, r0 - p):min(hw, r1 + p)].contiguous()))
            c0, c1 = i * co // 4, (i + 1) * co // 4
            cc = torch.nn.Conv2d(ci, c1 - c0, k, padding=p)
            cc.weight.data, cc.bias.data = conv[0].weight.data[c0:c1].clone(), conv[0].bias.data[c0:c1].clone()
            chans.append(session(torch.nn.Sequential(cc, torch.nn.ReLU()).eval(), x))
        r, c = timed(rows), timed(chans)
        print(f"{name:30} {whole:9.2f} {r:8.2f} {r / whole:6.2f} {c:8.2f} {c / whole:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
