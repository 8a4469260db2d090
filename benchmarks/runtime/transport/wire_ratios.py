"""Wire bytes per raw fp32 byte for every (codec, quant), measured with the runtime's codecs.

The tensors are the ones plans move: the input and every splittable cut-point activation of
efficientnet_lite0 (real weights when installed), resnet18, vgg16 and mobilenet_v2 on the ``chelsea``
image, whole (``--bands 1``) or cut into row bands as a rows plan moves them (``--bands 4``). Prints the
byte-weighted ratio over all tensors and its per-model range — the figures of ``coinfer.cost.wire``'s
``WIRE_RATIO`` table (docs/cost-model.md).

    .venv/bin/python benchmarks/runtime/transport/wire_ratios.py [--models ...] [--bands 1,4]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.fx

from coinfer.compress.codecs import CODECS, QUANTS, encode
from coinfer.modelspec import capture_model
from coinfer.zoo import preprocess_image, sample_image


def activations(model: str) -> list[np.ndarray]:
    cm = capture_model(model)
    g = cm.graph
    keep = {n for n, ok in g.splittable_cuts().items() if ok}
    gm = torch.fx.symbolic_trace(cm.module)
    seen: list[np.ndarray] = []

    class Rec(torch.fx.Interpreter):
        def run_node(self, nd):  # type: ignore[no-untyped-def]
            r = super().run_node(nd)
            if nd.name in keep and isinstance(r, torch.Tensor):
                seen.append(r.detach().numpy().copy())
            return r

    x = preprocess_image(sample_image("chelsea"), g.input_shape[-1])
    with torch.no_grad():
        Rec(gm).run(x)
    return [x.numpy(), *seen]


def bands(a: np.ndarray, k: int) -> list[np.ndarray]:
    h = a.shape[2]
    cuts = [round(i * h / k) for i in range(k + 1)]
    return [np.ascontiguousarray(a[:, :, cuts[i]:cuts[i + 1]]) for i in range(k) if cuts[i + 1] > cuts[i]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet18", "vgg16", "mobilenet_v2"])
    ap.add_argument("--bands", default="1,4", help="row bands per tensor (comma-separated)")
    args = ap.parse_args()
    acts = {m: activations(m) for m in args.models}
    for k in (int(v) for v in args.bands.split(",")):
        print(f"\n-- tensors cut into {k} row band(s): wire bytes / raw fp32 bytes, byte-weighted (per-model range)")
        print(f"{'quant':8s}" + "".join(f"{c:>24s}" for c in CODECS))
        for q in QUANTS:
            row = f"{q or 'none':8s}"
            for c in CODECS:
                per = []
                tot_raw = tot_wire = 0
                for ts in acts.values():
                    raw = wire = 0
                    for t in ts:
                        for b in bands(t, k):
                            raw += b.nbytes
                            wire += encode(b, c, q)[0]["nbytes"]
                    per.append(wire / raw)
                    tot_raw += raw
                    tot_wire += wire
                row += f"{tot_wire / tot_raw:>10.3f} ({min(per):.3f}–{max(per):.3f})"
            print(row, flush=True)


if __name__ == "__main__":
    main()
