"""Execution-backend benchmark (issue 10; see README.md).

(single)    one thread, whole model on one device: coinfer's 1-device plan
            (``local`` strategy) with ``backend: auto`` against onnxruntime
            running the whole model exported directly by ``torch.onnx.export``
            and against torch eager (the plain ``nn.Module``); interleaved
            rounds, medians of wall and thread-CPU time. Goal: ≤ 1.05× ORT.
(p1)        real LocalCluster runs of ``eq4`` (4 × cpu_share 0.35, cgroup quota,
            one thread each) against ONE 0.35-share process (same quota
            mechanism) running whole-model onnxruntime directly: speedup and
            parallel efficiency (speedup / 4; goal ≥ 0.85), for the plans in
            ``--plans``. Also each worker's resident memory after building its
            parts, next to the weights its parts need and its idle RSS.
(workermem) real ``eq4`` workers (LocalCluster) deploy each plan of ``--plans`` and serve two
            requests; each worker's RSS is split by ``/proc/PID/smaps`` into anonymous memory
            (heap: weights, sessions, activations) and file-backed pages (shared libraries'
            code), against the same split of an interpreter baseline. No timing: no lock.
(precision) EfficientNet-Lite0 on the skimage sample images: bf16 / fp16 per
            backend against fp32 — top-1 agreement, max abs diff, latency.

    .venv/bin/python benchmarks/backends/bench.py                  # every part, markdown
    .venv/bin/python benchmarks/backends/bench.py --only single --models resnet50 --repeat 10
    .venv/bin/python benchmarks/backends/bench.py --only p1 --models vgg16 resnet50 --json

Exit code 1 when the single-device ratio misses its goal (> 1.05× ORT in both wall and CPU medians);
p1 (efficiency goal 0.85) and the memory goals are reported, not gated.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SINGLE_MODELS = ("vgg16", "resnet50", "mobilenet_v2", "efficientnet_lite0")
P1_MODELS = ("vgg16", "resnet50")
GOAL_SINGLE = 1.05
GOAL_EFF = 0.85
SHARE = 0.35
WARM_MODEL = "mobilenet_v2"  # workermem's warm baseline: deployed, run and dropped before measuring
IMAGES = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left", "hubble_deep_field",
          "immunohistochemistry", "retina", "colorwheel", "coins", "camera", "moon")


def load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def _ort_session(data: bytes, threads: int = 1) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def export_whole(model: str) -> bytes:
    """The whole model exported by torch.onnx.export (TorchScript exporter, opset 17): the user's baseline."""
    import warnings

    import torch

    from coinfer.modelspec import load_module

    src = load_module(model)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(src.module, (torch.randn(src.input_shape),), f, dynamo=False, opset_version=17)
    return f.getvalue()


def _local_plan(model: str, cluster: Any) -> Any:
    from coinfer.api import plan_result

    return plan_result(model, cluster, "local").plan


def _timed(fns: dict[str, Any], x: Any, repeat: int, warmup: int) -> dict[str, dict[str, float]]:
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(warmup):
        for f in fns.values():
            f(x)
    keys = list(fns)
    for i in range(repeat):
        for k in (keys if i % 2 == 0 else keys[::-1]):
            c0, t0 = time.process_time(), time.perf_counter()
            fns[k](x)
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: {"wall_ms": 1e3 * statistics.median(wall[k]), "cpu_ms": 1e3 * statistics.median(cpu[k]),
                "min_wall_ms": 1e3 * min(wall[k])} for k in fns}


def single(models: list[str], repeat: int, warmup: int) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from coinfer.cluster import parse_cluster
    from coinfer.execute.local import InProcessExecutor, compare
    from coinfer.inputs import random_input
    from coinfer.modelspec import capture_model

    torch.set_num_threads(1)
    cl = parse_cluster({"source": "d0", "devices": [{"name": "d0", "threads": 1, "backend": "auto"}]}, "one")
    rows = []
    for name in models:
        cm = capture_model(name)
        assert cm.module is not None
        x = random_input(tuple(cm.graph.input_shape), 0)
        sess = _ort_session(export_whole(name))
        iname = sess.get_inputs()[0].name
        t0 = time.perf_counter()
        ex = InProcessExecutor(cm, _local_plan(name, cl), cluster=cl, threads=1)
        build_s = time.perf_counter() - t0

        def ort_direct(t: torch.Tensor, sess: Any = sess, iname: str = iname) -> Any:
            return sess.run(None, {iname: t.numpy()})[0]

        ext = InProcessExecutor(cm, _local_plan(name, cl), backend="torch", threads=1)  # the torch backend alone
        fns = {"ort": ort_direct, "eager": cm.module, "coinfer": ex, "coinfer_torch": ext}
        with torch.no_grad():
            res = _timed(fns, x, repeat, warmup)
            ref = cm.module(x)
            d_coinfer = compare(ex(x), ref)[0]
            d_ort = float(np.abs(ort_direct(x) - ref.numpy()).max())
        chosen = ex.backends["d0"]
        part = ex.parts[0][0][1].part
        r = {"model": name, "backend": "+".join(chosen), "auto_ms": part.notes.get("auto", {}).get("ms"),
             "build_s": round(build_s, 2)}
        for k, v in res.items():
            r[f"{k}_ms"] = round(v["wall_ms"], 2)
            r[f"{k}_cpu_ms"] = round(v["cpu_ms"], 2)
            r[f"{k}_min_ms"] = round(v["min_wall_ms"], 2)
        r["vs_ort"] = round(res["coinfer"]["wall_ms"] / res["ort"]["wall_ms"], 3)
        r["vs_ort_cpu"] = round(res["coinfer"]["cpu_ms"] / res["ort"]["cpu_ms"], 3)
        r["vs_ort_min"] = round(res["coinfer"]["min_wall_ms"] / res["ort"]["min_wall_ms"], 3)
        r["vs_eager"] = round(res["coinfer"]["wall_ms"] / res["eager"]["wall_ms"], 3)
        r["vs_eager_cpu"] = round(res["coinfer"]["cpu_ms"] / res["eager"]["cpu_ms"], 3)
        r["torch_backend_vs_eager_cpu"] = round(res["coinfer_torch"]["cpu_ms"] / res["eager"]["cpu_ms"], 3)
        r["max_abs_diff"] = d_coinfer
        r["ort_max_abs_diff"] = d_ort
        r["ok"] = r["vs_ort"] <= GOAL_SINGLE or r["vs_ort_cpu"] <= GOAL_SINGLE
        rows.append(r)
        print(f"  single {name}: {r}", file=sys.stderr, flush=True)
        del ex, ext, sess
    return rows


# -- P1 ----------------------------------------------------------------------------------
def _child_ort(path: str, share: float, repeat: int, warmup: int) -> None:
    """Child process: limit itself to ``share`` of a core (cgroup), run the ONNX file, print JSON."""
    import numpy as np

    from coinfer.runtime.emulation import limit_cpu

    sess = _ort_session(Path(path).read_bytes())
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    iname = sess.get_inputs()[0].name
    lim = limit_cpu(os.getpid(), share, "bench-ort-base")
    for _ in range(warmup):
        sess.run(None, {iname: x})
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(None, {iname: x})
        ts.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"mode": lim.mode, "ms": ts}))
    lim.close()


def _child_baseline(split: bool = False, warm: str | None = None) -> None:
    """Child process: RSS of an interpreter that can serve parts but holds no model.

    A worker's imports (torch, the runtime, onnxruntime) plus the one-time
    machinery of capturing a model (torch.fx shape propagation pulls in sympy:
    ~55 MB, the same for every model), measured after capturing and dropping a
    3-layer model.
    """
    import ctypes
    import gc

    import onnxruntime  # noqa: F401
    import psutil
    import torch

    import coinfer.execute.backends.ort_backend
    import coinfer.runtime.worker  # noqa: F401
    from coinfer.graph.capture import capture

    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3)).eval()
    cm = capture(m, (1, 3, 16, 16), "tiny")
    del cm, m
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    if warm:
        from coinfer import modelspec
        from coinfer.api import plan_result
        from coinfer.cluster import builtin_cluster
        from coinfer.runtime.deployment import build

        torch.set_num_threads(1)
        plan = plan_result(warm, builtin_cluster("eq4"), "local").plan
        modelspec._CACHE.clear()
        for be in ("onnxruntime", "torch"):
            d = build("warm", plan.to_json(), "d0", "coord", backend=be, threads=1)
            for r in d.runners.values():
                r(torch.randn(r.in_shape))
            del d
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    mi = psutil.Process().memory_info()
    if split:
        sp = smaps_split()
        print(json.dumps({"rss": sp["anon"] + sp["file"], "anon": sp["anon"], "file": sp["file"],
                          "libs": sp["libs"]}))
        return
    print(json.dumps({"rss": mi.rss, "shared": mi.shared}))


def _keep_ort_model_bytes() -> None:
    """Make coinfer's release of ``InferenceSession._model_bytes`` a no-op (to measure what it saves)."""
    import onnxruntime as ort

    class Keep(ort.InferenceSession):  # type: ignore[misc]
        @property
        def _model_bytes(self) -> Any:
            return self.__dict__.get("_mb")

        @_model_bytes.setter
        def _model_bytes(self, v: Any) -> None:
            if v is not None or "_mb" not in self.__dict__:
                self.__dict__["_mb"] = v

    ort.InferenceSession = Keep  # type: ignore[misc]


def _child_mem(model: str, backend: str, device: str) -> None:
    """Child process: one worker's deployment of ``model`` (eq4, ``even``) built in-process.

    RSS at the interpreter baseline (as :func:`_child_baseline`), after ``deployment.build`` and
    after running every part 3 times; the weights its parts need.
    """
    import ctypes
    import gc

    import onnxruntime  # noqa: F401
    import psutil
    import torch

    import coinfer.runtime.worker  # noqa: F401
    from coinfer import modelspec
    from coinfer.api import plan_result
    from coinfer.cluster import builtin_cluster
    from coinfer.graph.capture import capture
    from coinfer.runtime.deployment import build

    if os.environ.get("BENCH_ORT_KEEP_BYTES") == "1":  # counterfactual: keep onnxruntime's copy of the model
        _keep_ort_model_bytes()
    torch.set_num_threads(1)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3)).eval()
    cm = capture(m, (1, 3, 16, 16), "tiny")
    del cm, m
    plan = plan_result(model, builtin_cluster("eq4"), "even", max_redundancy=0.1).plan
    modelspec._CACHE.clear()  # the planner's memoised model: a worker does not have it

    def rss() -> int:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return int(psutil.Process().memory_info().rss)

    def shared() -> int:
        return int(psutil.Process().memory_info().shared)

    base, base_sh = rss(), shared()
    d = build("bench", plan.to_json(), device, "coord", backend=backend, threads=1)
    built = rss()
    for r in d.runners.values():
        x = torch.randn(r.in_shape)
        for _ in range(3):
            r(x)
    ran = rss()
    print(json.dumps({"base": base, "built": built, "ran": ran, "weights": d.memory["weights_bytes"],
                      "file_delta": shared() - base_sh, "parts": len(d.runners), "backends": d.backends_used()}))


def memory(models: list[str], backends: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in models:
        for be in backends:
            out = subprocess.run([sys.executable, __file__, "--_child-mem", name, be, "d1"], capture_output=True,
                                 text=True, check=True)
            d = json.loads(out.stdout.strip().splitlines()[-1])
            w = d["weights"]
            r = {"model": name, "device": "d1", "backend": be, "chosen": d["backends"], "parts": d["parts"],
                 "weights_mb": round(w / 2**20, 1), "baseline_mb": round(d["base"] / 2**20, 1),
                 "built_over_mb": round((d["built"] - d["base"]) / 2**20, 1),
                 "ran_over_mb": round((d["ran"] - d["base"]) / 2**20, 1),
                 "ratio": round((d["ran"] - d["base"]) / w, 2), "ok": d["ran"] - d["base"] <= 1.5 * w,
                 "file_over_mb": round(d["file_delta"] / 2**20, 1),
                 "anon_ratio": round((d["ran"] - d["base"] - d["file_delta"]) / w, 2)}
            rows.append(r)
            print(f"  memory {r}", file=sys.stderr, flush=True)
    return rows


def interpreter_baseline() -> tuple[int, int]:
    """(RSS, file-backed part of it) of an interpreter that can serve parts but holds no model."""
    out = subprocess.run([sys.executable, __file__, "--_child-baseline"], capture_output=True, text=True,
                         check=True)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    return int(d["rss"]), int(d["shared"])


def ort_baseline(model: str, share: float, repeat: int, warmup: int, tmp: Path) -> dict[str, Any]:
    path = tmp / f"{model}.onnx"
    if not path.exists():
        path.write_bytes(export_whole(model))
    out = subprocess.run([sys.executable, __file__, "--_child-ort", str(path), str(share), str(repeat), str(warmup)],
                         capture_output=True, text=True, check=True)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    return {"median_ms": statistics.median(d["ms"]), "min_ms": min(d["ms"]), "cpu_mode": d["mode"]}


def _rss(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def _shared(pid: int) -> int:
    """File-backed resident pages (shared libraries' code: onnxruntime's kernels once they ran)."""
    import psutil

    return int(psutil.Process(pid).memory_info().shared)


def smaps_split(pid: int | str = "self") -> dict[str, Any]:
    """Resident memory of ``pid`` by mapping kind, from ``/proc/PID/smaps``.

    ``anon``: anonymous mappings and the heap (private data: tensors, sessions, Python objects);
    ``file``: file-backed mappings (the code and read-only data of shared libraries, shared between
    processes); ``libs``: the three largest file-backed contributors (MB).
    """
    anon = file = 0
    libs: dict[str, int] = {}
    name = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if head and "-" in head[0] and ":" not in head[0]:  # a mapping's header line
                name = head[5].strip() if len(head) > 5 else ""
            elif line.startswith("Rss:"):
                kb = int(line.split()[1]) * 1024
                if name.startswith("/") and not name.startswith("/dev/shm") and " (deleted)" not in name:
                    file += kb
                    libs[name] = libs.get(name, 0) + kb
                else:
                    anon += kb
    top = sorted(libs.items(), key=lambda kv: -kv[1])[:3]
    return {"anon": anon, "file": file, "libs": {Path(k).name: round(v / 2**20, 1) for k, v in top}}


def _child_baseline_split(warm: str | None = None) -> None:
    """Child process: :func:`_child_baseline`'s interpreter, split by :func:`smaps_split`.

    ``warm``: a model this interpreter first deploys and runs on both backends (``local`` plan),
    then drops — the libraries' code its kernels page in stays resident (file-backed pages).
    """
    _child_baseline(split=True, warm=warm)


def _plan_of(model: str, cl: Any, spec: str) -> Any:
    """The plan of ``strategy[:k=v,...]`` (numbers as floats) for ``model`` on ``cl``."""
    from coinfer.api import plan_result

    strategy, _, params_s = spec.partition(":")
    params = dict(kv.split("=") for kv in params_s.split(",") if kv) if params_s else {}
    return plan_result(model, cl, strategy,
                       **{k: float(v) if v.replace(".", "", 1).isdigit() else v for k, v in params.items()}).plan


def workermem(models: list[str], plans: list[str]) -> list[dict[str, Any]]:
    """Real eq4 workers: RSS after the build and after 2 requests, split anonymous / file-backed."""
    from coinfer.cluster import builtin_cluster
    from coinfer.inputs import random_input
    from coinfer.modelspec import capture_model
    from coinfer.runtime.coordinator import Session
    from coinfer.runtime.launcher import LocalCluster

    def child(*extra: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, __file__, "--_child-baseline-split", *extra], capture_output=True,
                             text=True, check=True)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    base = child()
    warm = child("--warm", WARM_MODEL)  # the libraries' code pages, after serving a small model
    warm_rss = base["anon"] + warm["file"]
    cl = builtin_cluster("eq4")
    rows = []
    for name in models:
        x = random_input(tuple(capture_model(name).graph.input_shape), 0)
        for spec in plans:
            plan = _plan_of(name, cl, spec)
            with LocalCluster(cl) as lc:
                idle = {d: smaps_split(w.proc.pid) for d, w in lc.workers.items()}
                with Session(plan, cl, lc.addresses, cpu_modes=lc.cpu_modes(), dead_after_s=60.0,
                             replan=False) as s:
                    built = {d: smaps_split(w.proc.pid) for d, w in lc.workers.items()}
                    s(x)
                    s(x)
                    time.sleep(0.5)  # idle: a worker trims its heap 100 ms after its last request
                    ran = {d: smaps_split(w.proc.pid) for d, w in lc.workers.items()}
                    mem, backends = dict(s.memory), dict(s.backends)
            for d in cl.names:
                w = mem.get(d, {}).get("weights_bytes", 0)
                if not w:
                    continue
                rss = ran[d]["anon"] + ran[d]["file"]
                goal_rss = 1.5 * w + base["rss"]
                goal_anon = 1.5 * w + base["anon"]
                r = {"model": name, "plan": spec, "device": d, "backend": backends.get(d),
                     "weights_mb": round(w / 2**20, 1),
                     "base_rss_mb": round(base["rss"] / 2**20, 1), "base_anon_mb": round(base["anon"] / 2**20, 1),
                     "base_file_mb": round(base["file"] / 2**20, 1),
                     "idle_anon_mb": round(idle[d]["anon"] / 2**20, 1),
                     "built_anon_mb": round(built[d]["anon"] / 2**20, 1),
                     "anon_mb": round(ran[d]["anon"] / 2**20, 1), "file_mb": round(ran[d]["file"] / 2**20, 1),
                     "rss_mb": round(rss / 2**20, 1), "goal_rss_mb": round(goal_rss / 2**20, 1),
                     "ok_rss": rss <= goal_rss, "goal_anon_mb": round(goal_anon / 2**20, 1),
                     "ok_anon": ran[d]["anon"] <= goal_anon,
                     "warm_file_mb": round(warm["file"] / 2**20, 1),
                     "goal_rss_warm_mb": round((1.5 * w + warm_rss) / 2**20, 1),
                     "ok_rss_warm": rss <= 1.5 * w + warm_rss,
                     "anon_ratio": round((ran[d]["anon"] - base["anon"]) / w, 3),
                     "file_libs": ran[d]["libs"]}
                rows.append(r)
                print(f"  workermem {r}", file=sys.stderr, flush=True)
    return rows


def _session_run(sess: Any, x: Any, repeat: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        sess(x)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess(x)
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts


def p1(models: list[str], plans: list[str], repeat: int, warmup: int) -> list[dict[str, Any]]:
    import tempfile

    from coinfer.cluster import builtin_cluster
    from coinfer.execute.local import compare, reference_output
    from coinfer.inputs import random_input
    from coinfer.modelspec import capture_model
    from coinfer.runtime.coordinator import Session
    from coinfer.runtime.launcher import LocalCluster

    cl = builtin_cluster("eq4")
    interp, interp_shared = interpreter_baseline()
    rows = []
    with tempfile.TemporaryDirectory(prefix="coinfer-bench-") as td:
        for name in models:
            cm = capture_model(name)
            x = random_input(tuple(cm.graph.input_shape), 0)
            ref = reference_output(cm, x)
            base = ort_baseline(name, SHARE, repeat, warmup, Path(td))
            print(f"  p1 {name}: baseline {base}", file=sys.stderr, flush=True)
            for spec in plans:
                plan = _plan_of(name, cl, spec)
                with LocalCluster(cl) as lc:
                    idle = {d: _rss(w.proc.pid) for d, w in lc.workers.items()}
                    # tolerant heartbeats: a loaded machine must not trigger re-planning mid-measurement
                    with Session(plan, cl, lc.addresses, cpu_modes=lc.cpu_modes(), dead_after_s=60.0,
                                 replan=False) as s:
                        built = {d: _rss(w.proc.pid) for d, w in lc.workers.items()}
                        built_sh = {d: _shared(w.proc.pid) for d, w in lc.workers.items()}
                        ts = _session_run(s, x, repeat, warmup)
                        y = s(x)
                        mem = dict(s.memory)
                        backends = dict(s.backends)
                        tr = s.last_trace
                    modes = lc.cpu_modes()
                assert tr is not None
                med = statistics.median(ts)
                busy = {d: round(tr.busy_ms(d), 1) for d in cl.names}
                speedup = base["median_ms"] / med
                r = {"model": name, "plan": spec, "stages": len(plan.stages),
                     "devices": len(plan.devices_used_names()), "latency_ms": round(med, 1),
                     "min_ms": round(min(ts), 1), "baseline_ms": round(base["median_ms"], 1),
                     "speedup": round(speedup, 3), "efficiency": round(speedup / 4, 3),
                     "busy_ms": busy, "backends": backends, "cpu_modes": sorted(set(modes.values())),
                     "rel_diff": compare(y, ref)[1],
                     "memory": {d: {"weights_mb": round(mem.get(d, {}).get("weights_bytes", 0) / 2**20, 1),
                                    "idle_rss_mb": round(idle[d] / 2**20, 1),
                                    "interp_mb": round(interp / 2**20, 1),
                                    "rss_mb": round(built[d] / 2**20, 1),
                                    "file_mb": round(built_sh[d] / 2**20, 1),
                                    "interp_file_mb": round(interp_shared / 2**20, 1),
                                    "anon_over_ratio": round(((built[d] - built_sh[d]) - (interp - interp_shared))
                                                             / max(1, mem.get(d, {}).get("weights_bytes", 0)), 3),
                                    "goal_mb": round((1.5 * mem.get(d, {}).get("weights_bytes", 0) + interp)
                                                     / 2**20, 1),
                                    "ok": built[d] <= 1.5 * mem.get(d, {}).get("weights_bytes", 0) + interp}
                                for d in mem},
                     "load": load()}
                rows.append(r)
                print(f"  p1 {name} {spec}: {r}", file=sys.stderr, flush=True)
    return rows


# -- precision ------------------------------------------------------------------------------
def precision(repeat: int) -> list[dict[str, Any]]:
    import skimage.data
    import torch

    from coinfer.cluster import parse_cluster
    from coinfer.execute.backends import BACKENDS, available_backends
    from coinfer.execute.local import InProcessExecutor
    from coinfer.inputs import make_input
    from coinfer.modelspec import capture_model

    torch.set_num_threads(1)
    name = "efficientnet_lite0"
    cm = capture_model(name)
    cl = parse_cluster({"source": "d0", "devices": [{"name": "d0"}]}, "one")
    plan = _local_plan(name, cl)
    imgs = []
    size = int(cm.graph.input_shape[2])
    for im in IMAGES:
        if not hasattr(skimage.data, im):
            continue
        try:
            x = make_input(im, tuple(cm.graph.input_shape))
        except Exception:  # noqa: BLE001, S112 - an image skimage cannot provide offline
            continue
        # each sample image and 6 variants: mirrored, and 5 crops (corners + centre) scaled back up
        imgs.append((im, x))
        imgs.append((f"{im}/flip", x.flip(3)))
        c = size * 3 // 4
        for tag, (r, q) in {"tl": (0, 0), "tr": (0, size - c), "bl": (size - c, 0), "br": (size - c, size - c),
                            "c": ((size - c) // 2, (size - c) // 2)}.items():
            crop = x[:, :, r:r + c, q:q + c]
            imgs.append((f"{im}/{tag}", torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear",
                                                                         align_corners=False)))
    fp32 = InProcessExecutor(cm, plan, backend="torch")
    ref = {im: fp32(x) for im, x in imgs}
    from coinfer import zoo

    labels = zoo.imagenet_labels()
    print("  fp32 top-1: " + ", ".join(f"{im} {labels[int(y.argmax())]}" for im, y in ref.items() if "/" not in im),
          file=sys.stderr, flush=True)
    rows = []
    for be in available_backends():
        for prec in BACKENDS[be].precisions():
            ex = InProcessExecutor(cm, plan, backend=be, precision=prec, threads=1)
            agree, diff = 0, 0.0
            for im, x in imgs:
                y = ex(x)
                agree += int(y.argmax() == ref[im].argmax())
                diff = max(diff, float((y - ref[im]).abs().max()))
            x0 = imgs[0][1]
            ts = _timed({"p": ex}, x0, repeat, 2)["p"]
            rows.append({"backend": be, "precision": prec, "images": len(imgs), "top1_agree": agree,
                         "max_abs_diff": diff, "ms": round(ts["wall_ms"], 2), "cpu_ms": round(ts["cpu_ms"], 2)})
            print(f"  precision {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["single", "p1", "memory", "workermem", "precision"], action="append")
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--plans", nargs="*", default=["even:max_redundancy=0.1", "auto"],
                    help="P1 plans as strategy[:k=v,...]")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--_child-ort", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--_child-baseline", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_child-mem", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_child-baseline-split", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warm", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child_mem:
        _child_mem(*a._child_mem)
        return 0
    if a._child_baseline_split:
        _child_baseline_split(a.warm)
        return 0
    if a._child_baseline:
        _child_baseline()
        return 0
    if a._child_ort:
        p, share, rep, wu = a._child_ort
        _child_ort(p, float(share), int(rep), int(wu))
        return 0
    import onnxruntime
    import torch

    only = a.only or ["single", "p1", "memory", "precision"]
    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "onnxruntime": onnxruntime.__version__, "cpus": os.cpu_count(), "load_before": load()}
    ok = True
    if "single" in only:
        out["single"] = single(list(a.models or SINGLE_MODELS), a.repeat, a.warmup)
        ok &= all(r["ok"] for r in out["single"])
    if "p1" in only:
        out["p1"] = p1(list(a.models or P1_MODELS), a.plans, max(5, a.repeat // 2), 2)
    if "memory" in only:
        out["memory"] = memory(list(a.models or P1_MODELS), ["onnxruntime", "torch", "auto"])
    if "workermem" in only:
        out["workermem"] = workermem(list(a.models or P1_MODELS), a.plans)
    if "precision" in only:
        out["precision"] = precision(max(5, a.repeat // 2))
    out["load_after"] = load()
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"python {out['python']}, torch {out['torch']}, onnxruntime {out['onnxruntime']}, "
              f"{out['cpus']} cpus, load {out['load_before']} → {out['load_after']}\n")
        if "single" in out:
            print("| model | auto chose | ORT direct ms (cpu) | torch eager ms (cpu) | coinfer auto ms (cpu) "
                  "| vs ORT wall / cpu / min wall | vs eager wall / cpu | coinfer torch backend ms (cpu) |\n"
                  "|---|---|---:|---:|---:|---:|---:|---:|")
            for r in out["single"]:
                print(f"| {r['model']} | {r['backend']} | {r['ort_ms']} ({r['ort_cpu_ms']}) | {r['eager_ms']} "
                      f"({r['eager_cpu_ms']}) | {r['coinfer_ms']} ({r['coinfer_cpu_ms']}) | {r['vs_ort']}× / "
                      f"{r['vs_ort_cpu']}× / {r['vs_ort_min']}× | {r['vs_eager']}× / {r['vs_eager_cpu']}× | {r['coinfer_torch_ms']} "
                      f"({r['coinfer_torch_cpu_ms']}) |")
        if "p1" in out:
            print("\n| model | plan | stages | eq4 ms | 1×0.35 ORT ms | speedup | efficiency | busy ms |\n"
                  "|---|---|---:|---:|---:|---:|---:|---|")
            for r in out["p1"]:
                print(f"| {r['model']} | {r['plan']} | {r['stages']} | {r['latency_ms']} | {r['baseline_ms']} | "
                      f"{r['speedup']}× | {r['efficiency']} | {r['busy_ms']} |")
            print("\n| model | plan | device | weights MB | idle worker RSS MB | interpreter baseline MB "
                  "| RSS after build MB | goal 1.5×w + baseline MB | file-backed MB (baseline) "
                  "| anonymous over baseline ÷ w |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
            for r in out["p1"]:
                for d, m in r["memory"].items():
                    print(f"| {r['model']} | {r['plan']} | {d} | {m['weights_mb']} | {m['idle_rss_mb']} | "
                          f"{m['interp_mb']} | {m['rss_mb']} | {m['goal_mb']}{'' if m['ok'] else ' ✗'} | "
                          f"{m['file_mb']} ({m['interp_file_mb']}) | {m['anon_over_ratio']} |")
        if "memory" in out:
            print("\n| model | device | backend (chosen) | parts | weights MB | interpreter baseline MB "
                  "| over baseline after build MB | after 3 runs of each part MB | ÷ weights | of which file-backed MB "
                  "| anonymous ÷ weights |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in out["memory"]:
                print(f"| {r['model']} | {r['device']} | {r['backend']} ({'+'.join(r['chosen'])}) | {r['parts']} | "
                      f"{r['weights_mb']} | {r['baseline_mb']} | {r['built_over_mb']} | {r['ran_over_mb']} | "
                      f"{r['ratio']}{'' if r['ok'] else ' ✗'} | {r['file_over_mb']} | {r['anon_ratio']} |")
        if "workermem" in out:
            print("\n| model | plan | device | backend | weights MB | RSS MB (goal 1.5×w + baseline RSS) "
                  "| RSS goal with the warm baseline's file pages | anonymous MB (goal 1.5×w + baseline anonymous) "
                  "| anonymous over baseline ÷ w | file-backed MB (baseline; warm) | largest file-backed |\n"
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|")
            for r in out["workermem"]:
                print(f"| {r['model']} | {r['plan']} | {r['device']} | {r['backend']} | {r['weights_mb']} | "
                      f"{r['rss_mb']} ({r['goal_rss_mb']}){'' if r['ok_rss'] else ' ✗'} | "
                      f"{r['goal_rss_warm_mb']}{'' if r['ok_rss_warm'] else ' ✗'} | "
                      f"{r['anon_mb']} ({r['goal_anon_mb']}){'' if r['ok_anon'] else ' ✗'} | {r['anon_ratio']} | "
                      f"{r['file_mb']} ({r['base_file_mb']}; {r['warm_file_mb']}) | "
                      + ", ".join(f"{k} {v}" for k, v in r["file_libs"].items()) + " |")
        if "precision" in out:
            print("\n| backend | precision | top-1 agree | max abs diff | ms (cpu) |\n|---|---|---:|---:|---:|")
            for r in out["precision"]:
                print(f"| {r['backend']} | {r['precision']} | {r['top1_agree']}/{r['images']} | "
                      f"{r['max_abs_diff']:.3g} | {r['ms']} ({r['cpu_ms']}) |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
