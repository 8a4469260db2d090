"""The ``onnxruntime`` backend: each part as a static-shape ONNX graph in an InferenceSession.

The part program (:mod:`.optimize`, BatchNorm already folded) is emitted as
ONNX (:mod:`.onnx_export`) and loaded from memory into one
``InferenceSession`` per distinct part, built once per deployment (the
session is the compiled part; requests only call ``run``). Session options:
the device's thread count as ``intra_op_num_threads``, one inter-op thread,
sequential execution, all graph optimisations (onnxruntime fuses
Conv+activation and lays convolutions out in NCHWc blocks itself), no
spinning of idle threads (a cgroup-limited device must not burn its quota
waiting). fp32 only: the CPU provider has no bf16/fp16 convolutions on x86.

Memory: no CPU arena by default (``COINFER_ORT_ARENA``: ``off``; ``shared`` =
one arena for all sessions of the process; ``own`` = onnxruntime's default,
an arena per session). A deployment has one session per part and each arena
would keep its part's peak activations resident; without one, activations
live for the request only. Measured: equal latency within ±2 % on ResNet-50,
MobileNetV2 and EfficientNet-Lite0 (one thread), and a VGG-16 worker's memory
over the interpreter baseline drops from 1.57× to 1.29× its weights.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ...graph.capture import CapturedModel
from ...graph.geometry import PartGeom
from .base import CompiledPart, ExportUnsupported
from .onnx_export import export_part
from .optimize import PartProgram, part_program

_SHARED_ARENA: list[bool] = []


def _shared_arena() -> bool:
    """One CPU arena for every session of the process (``COINFER_ORT_ARENA=shared``)."""
    if not _SHARED_ARENA:
        import onnxruntime as ort

        try:
            mem = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(mem, ort.OrtArenaCfg(0, 1, -1, -1))  # grow as requested
            ok = True
        except Exception:  # noqa: BLE001 - an onnxruntime without env allocators: per-session arenas
            ok = False
        _SHARED_ARENA.append(ok)
    return _SHARED_ARENA[0]


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    arena = os.environ.get("COINFER_ORT_ARENA", "off")
    if arena == "off":
        so.enable_cpu_mem_arena = False
    elif arena == "shared" and _shared_arena():
        so.add_session_config_entry("session.use_env_allocators", "1")
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


class OrtPart(CompiledPart):
    def __init__(self, cm: CapturedModel, geom: PartGeom, precision: str = "fp32", *, threads: int = 1,
                 program: PartProgram | None = None) -> None:
        import onnxruntime as ort

        prog = program or part_program(cm, geom)
        super().__init__("onnxruntime", precision, prog.in_shape, prog.out_shape)
        if precision != "fp32":
            raise ExportUnsupported(f"precision {precision}", why="onnxruntime's CPU provider runs fp32 only")
        nodes = {n.name: n for n in cm.graph.nodes}
        model = export_part(prog, nodes, f"{prog.start}->{prog.end}")
        data = model.SerializeToString()
        del model
        try:
            self.sess = ort.InferenceSession(data, session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - report as an export failure, caller falls back
            raise ExportUnsupported("onnxruntime session", why=str(e).splitlines()[0][:200]) from None
        del data
        # onnxruntime's Python wrapper keeps the serialized model (a full copy of the weights) only to
        # re-create the session on a provider fallback, which the CPU provider never needs: release it
        if getattr(self.sess, "_model_bytes", None) is not None:
            self.sess._model_bytes = None
        self.threads = threads
        self.notes.update(folded_bn=len(prog.folded_bn), fused_act=len(prog.fused_act), threads=threads)
        self._out = [self.sess.get_outputs()[0].name]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().numpy() if x.is_contiguous() else np.ascontiguousarray(x.detach().numpy())
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        y = self.sess.run(self._out, {"x": a})[0]
        return torch.from_numpy(y)

    def release(self) -> None:
        self.sess = None
