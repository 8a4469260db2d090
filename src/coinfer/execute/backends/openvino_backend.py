"""The ``openvino`` backend (optional extra ``coinfer[openvino]``).

The same static-shape ONNX graph as the onnxruntime backend
(:mod:`.onnx_export`) is read by OpenVINO's ONNX frontend and compiled for the
CPU once per deployment with the device's thread count, a latency hint and a
single stream. ``precision`` maps to OpenVINO's inference precision hint:
``fp32`` → ``f32`` (exact within the core tolerance), ``bf16`` → ``bf16`` and
``fp16`` → ``f16`` where the CPU reports the capability
(``OPTIMIZATION_CAPABILITIES``); reduced precision is approximate and only
used when the cluster file asks for it (OpenVINO's own default on a bf16 CPU
would be bf16: coinfer always sets the hint explicitly).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from ...graph.capture import CapturedModel
from ...graph.geometry import PartGeom
from .base import CompiledPart, ExportUnsupported
from .onnx_export import export_part
from .optimize import PartProgram, part_program

_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_CORE: list[Any] = []


def core() -> Any:
    if not _CORE:
        import openvino as ov

        _CORE.append(ov.Core())
    return _CORE[0]


class OpenVinoPart(CompiledPart):
    def __init__(self, cm: CapturedModel, geom: PartGeom, precision: str = "fp32", *, threads: int = 1,
                 program: PartProgram | None = None) -> None:
        import openvino as ov

        prog = program or part_program(cm, geom)
        super().__init__("openvino", precision, prog.in_shape, prog.out_shape)
        nodes = {n.name: n for n in cm.graph.nodes}
        model = export_part(prog, nodes, f"{prog.start}->{prog.end}")
        data = model.SerializeToString()
        del model
        c = core()
        try:
            m = c.read_model(data)  # the ONNX frontend reads the serialized model from memory
        except Exception:  # noqa: BLE001 - releases whose read_model wants a path: convert_model
            import io

            m = ov.convert_model(io.BytesIO(data))
        del data
        cfg = {"INFERENCE_NUM_THREADS": max(1, int(threads)), "PERFORMANCE_HINT": "LATENCY",
               "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": _HINT[precision], "ENABLE_CPU_PINNING": False}
        try:
            self.compiled = c.compile_model(m, "CPU", cfg)
        except Exception as e:  # noqa: BLE001
            raise ExportUnsupported("openvino compile", why=str(e).splitlines()[0][:200]) from None
        del m
        self.req = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns
        self.threads = threads
        self.notes.update(folded_bn=len(prog.folded_bn), fused_act=len(prog.fused_act), threads=threads,
                          precision_hint=_HINT[precision])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
        with self._lock:
            self.req.infer({0: a})
            return torch.from_numpy(np.array(self.req.get_output_tensor(0).data, copy=True))

    def release(self) -> None:
        self.req = None
        self.compiled = None
