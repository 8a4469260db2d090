"""Measure the host calibration (torch side; torch is imported inside the functions).

:func:`measure_host` times a few representative kernels on one torch thread
(the unit ``cpu_share`` is a fraction of) and returns a
:class:`~coinfer.cost.calibration.HostCalibration`:

* ``gemm_gflops`` — 3×3 and 1×1 convolutions of mid-network sizes (median);
* ``dwconv_gflops`` — a 3×3 depthwise convolution;
* ``pool_gops`` — three max pools (3×3/2, 2×2/2, 3×3/1; outputs per second);
* ``mem_gbps`` — batch norm, ReLU and add on a 3 MB feature map
  (bytes read + written per second);
* ``weight_gbps`` — a batch-1 linear layer with 75 MB of weights;
* ``node_overhead_us`` — twice a tiny sliced ReLU (coinfer's per-node path
  adds look-ups and dispatch to the bare call);

then one efficiency factor, fitted on whole ``resnet18`` and
``mobilenet_v2`` runs through the per-part executor, scales the throughputs
(not the overhead, which is measured directly).

:func:`ensure_calibration` measures once and caches the result as JSON in
:func:`coinfer.paths.cache_dir` (``calibration.json``).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .calibration import HostCalibration, default_path, load_calibration, save_calibration


def _best_s(fn: Callable[[], Any], reps: int, warmup: int) -> float:
    """Best of ``reps`` timings (s): a calibration wants the machine's speed, not its neighbours' load."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def machine_info() -> dict[str, Any]:
    import os

    info: dict[str, Any] = {"hostname": platform.node(), "machine": platform.machine(),
                            "system": platform.system(), "python": platform.python_version(),
                            "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def measure_kernels(reps: int = 7, warmup: int = 2) -> HostCalibration:
    """Micro-benchmarks of the calibration kernels on the current torch threads."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        rates = []
        for cin, cout, hw, k in ((64, 64, 56, 3), (128, 128, 28, 3), (256, 128, 28, 1), (64, 256, 56, 1)):
            x = torch.randn(1, cin, hw, hw, generator=g)
            w = torch.randn(cout, cin, k, k, generator=g)

            def conv(x: torch.Tensor = x, w: torch.Tensor = w, k: int = k) -> torch.Tensor:
                return F.conv2d(x, w, padding=k // 2)

            s = _best_s(conv, reps, warmup)
            rates.append(2 * cin * cout * k * k * hw * hw / s / 1e9)
        gemm = statistics.median(rates)

        xd = torch.randn(1, 96, 56, 56, generator=g)
        wd = torch.randn(96, 1, 3, 3, generator=g)
        dw = 2 * 96 * 9 * 56 * 56 / _best_s(lambda: F.conv2d(xd, wd, padding=1, groups=96), reps, warmup) / 1e9

        y = torch.randn(1, 64, 112, 112, generator=g)
        yp = torch.randn(1, 192, 28, 28, generator=g)
        pool = statistics.median([
            64 * 56 * 56 / _best_s(lambda: F.max_pool2d(y, 3, 2, 1), reps, warmup) / 1e9,
            64 * 56 * 56 / _best_s(lambda: F.max_pool2d(y, 2, 2), reps, warmup) / 1e9,
            192 * 28 * 28 / _best_s(lambda: F.max_pool2d(yp, 3, 1, 1), reps, warmup) / 1e9,
        ])
        mean, var = torch.zeros(64), torch.ones(64)
        nb = y.numel() * 4
        mem = statistics.median([
            2 * nb / _best_s(lambda: torch.relu(y), reps, warmup) / 1e9,
            2 * nb / _best_s(lambda: F.batch_norm(y, mean, var, None, None, False, 0.0, 1e-5), reps, warmup) / 1e9,
            3 * nb / _best_s(lambda: y + y, reps, warmup) / 1e9,
        ])
        wl = torch.randn(2048, 9216, generator=g)
        v = torch.randn(1, 9216, generator=g)
        weight = wl.numel() * 4 / _best_s(lambda: F.linear(v, wl), reps, warmup) / 1e9

        tiny = torch.randn(1, 1, 4, 4, generator=g)
        # coinfer's per-node path adds dict look-ups and dispatch to a sliced call (~2x, measured)
        over = _best_s(lambda: torch.relu(tiny[:, :, 0:2, 0:2]), max(reps, 50), warmup) * 1e6 * 2.0
    return HostCalibration(gemm, dw, pool, mem, weight, max(over, 1.0), "measured", {})


def efficiency(cal: HostCalibration, models: tuple[str, ...] = ("resnet18", "mobilenet_v2"),
               reps: int = 5) -> float:
    """How much slower whole zoo models run than the micro-benchmarks predict (geometric mean).

    Real graphs run kernels on cold caches and awkward shapes; one factor,
    fitted on whole-model runs through the per-part executor, brings the
    analytic totals to the measured ones (docs/cost-model.md reports the
    residuals). Each node's time is its best of ``reps``, so bursts of load
    from other processes do not inflate the factor.
    """
    from ..cluster import parse_cluster
    from ..graph.geometry import part_geometry
    from ..modelspec import capture_model
    from .measure import time_nodes
    from .model import CostModel

    one = parse_cluster({"source": "h", "devices": [{"name": "h", "cpu_share": 1.0}]})
    ratios = []
    for m in models:
        cm = capture_model(m)
        g = cm.graph
        geom = part_geometry(g, g.input.name, g.output.name, None)
        pred = CostModel(g, one, calibration=cal).part_ms("h", geom)
        meas = sum(ms for _, ms in time_nodes(cm, geom, reps, 1, stat="min"))
        ratios.append(meas / pred)
    return statistics.geometric_mean(ratios)


def measure_host(reps: int = 7, warmup: int = 2, threads: int = 1, fit_models: bool = True) -> HostCalibration:
    """The host calibration on ``threads`` torch threads (default: one core).

    Micro-benchmarks set the ratios between the terms; with ``fit_models``
    one efficiency factor (:func:`efficiency`) scales them to real graphs.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cal = measure_kernels(reps, warmup)
        f = efficiency(cal) if fit_models else 1.0
    finally:
        torch.set_num_threads(old)
    cal = replace(cal.scaled(f), node_overhead_us=cal.node_overhead_us)  # overhead is measured directly
    info = machine_info()
    info.update({"threads": threads, "efficiency": round(f, 4)})
    r = {k: round(getattr(cal, k), 3) for k in ("gemm_gflops", "dwconv_gflops", "pool_gops", "mem_gbps",
                                                 "weight_gbps", "node_overhead_us")}
    return HostCalibration(**r, source="measured", machine=info)


def ensure_calibration(path: str | Path | None = None, remeasure: bool = False) -> HostCalibration:
    """The cached calibration, measured and cached first if missing (or ``remeasure``)."""
    p = Path(path) if path is not None else default_path()
    if p.is_file() and not remeasure:
        return load_calibration(p)
    cal = measure_host()
    save_calibration(cal, p)
    return cal
