"""Execution backends (issue 10): exact optimisations, fallbacks, precision, caching, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coinfer.execute.backends import (
    _WARNED,
    BackendError,
    ExportUnsupported,
    PartCache,
    available_backends,
    build_part,
    check_backend,
    decide,
)
from coinfer.execute.backends.optimize import part_program
from coinfer.execute.local import TOLERANCE, InProcessExecutor, compare
from coinfer.graph.capture import capture
from coinfer.graph.geometry import part_geometry

HAVE_ORT = "onnxruntime" in available_backends()
HAVE_OV = "openvino" in available_backends()
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed (pip install 'coinfer[onnx]')")
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="openvino not installed (pip install 'coinfer[openvino]')")


class Branchy(nn.Module):
    """conv1→bn1→relu (foldable, fusable); conv2 feeds bn2 AND the residual add (not foldable)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        y = self.conv2(x)
        z = F.relu6(self.bn2(y) + y)
        return self.conv3(z)


class Pooly(nn.Module):
    """An adaptive pool to a size that does not divide the input: no exact ONNX form."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 3), 1))


@pytest.fixture(scope="module")
def branchy():  # type: ignore[no-untyped-def]
    m = Branchy()
    cm = capture(m, (1, 3, 16, 12), "branchy")
    x = torch.randn(1, 3, 16, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = m(x)
    return cm, x, ref


def _whole(cm):  # type: ignore[no-untyped-def]
    g = cm.graph
    return part_geometry(g, g.input.name, g.output.name, None)


def _node(cm, op: str, i: int = 0) -> str:  # type: ignore[no-untyped-def]
    return [n.name for n in cm.graph.nodes if n.op == op][i]


def test_bn_folded_only_into_a_conv_read_by_nothing_else(branchy) -> None:  # type: ignore[no-untyped-def]
    cm, x, ref = branchy
    prog = part_program(cm, _whole(cm))
    bn1, bn2 = _node(cm, "bn", 0), _node(cm, "bn", 1)
    assert prog.folded_bn == [bn1]  # bn2's conv also feeds the residual add
    assert any(s.op == "bn" and s.node.name == bn2 for s in prog.steps)
    p = build_part(cm, _whole(cm), "torch")
    assert p.notes["folded_bn"] == 1
    assert compare(p(x), ref)[1] <= TOLERANCE


def test_bn_not_folded_across_a_part_boundary(branchy) -> None:  # type: ignore[no-untyped-def]
    cm = branchy[0]
    g = cm.graph
    conv1, bn1 = _node(cm, "conv", 0), _node(cm, "bn", 0)
    head = part_program(cm, part_geometry(g, g.input.name, conv1, None))  # ends at conv1: its bn is elsewhere
    assert head.folded_bn == [] and [s.op for s in head.steps] == ["conv"]
    tail = part_program(cm, part_geometry(g, conv1, bn1, None))  # starts at conv1's output
    assert tail.folded_bn == [] and [s.op for s in tail.steps] == ["bn"]


def test_activation_fused_only_on_a_sole_fresh_producer(branchy) -> None:  # type: ignore[no-untyped-def]
    cm, x, ref = branchy
    prog = part_program(cm, _whole(cm))
    acts = [n.name for n in cm.graph.nodes if n.op == "act"]
    assert set(prog.fused_act) == set(acts)  # relu after folded conv1, relu6 after the add
    heads = {s.act.name: s.op for s in prog.steps if s.act is not None}
    assert sorted(heads.values()) == ["add", "conv"]
    # fusion off gives the same numbers
    for fold, fuse in ((False, False), (True, False), (False, True)):
        from coinfer.execute.backends.torch_backend import TorchPart

        p = TorchPart(cm, _whole(cm), program=part_program(cm, _whole(cm), fold=fold, fuse=fuse))
        assert compare(p(x), ref)[1] <= TOLERANCE


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "auto"])
def test_torch_layouts_are_exact(branchy, layout: str) -> None:  # type: ignore[no-untyped-def]
    from coinfer.execute.backends.torch_backend import TorchPart

    cm, x, ref = branchy
    p = TorchPart(cm, _whole(cm), layout=layout)
    y = p(x)
    assert y.is_contiguous()
    assert compare(y, ref)[1] <= TOLERANCE


@pytest.mark.parametrize("shape", [(1, 64, 56, 224), (2, 64, 33, 70), (1, 3, 224, 224), (1, 512, 7, 7),
                                   (1, 1, 600, 600), (1, 4096, 1, 1)])
def test_blocked_nchw_conversion_is_an_exact_copy(shape) -> None:  # type: ignore[no-untyped-def]
    from coinfer.execute.backends.torch_backend import nchw_contiguous

    x = torch.randn(shape)
    for src in (x.contiguous(memory_format=torch.channels_last), x, x[:, :, 1:] if shape[2] > 1 else x):
        y = nchw_contiguous(src)
        assert y.is_contiguous() and y.shape == src.shape
        assert torch.equal(y, src)


@needs_ort
@pytest.mark.parametrize("region", [(0, 3, 0, 6), (3, 8, 2, 6), (5, 8, 0, 6), None])
def test_onnxruntime_part_equals_torch_part(branchy, region) -> None:  # type: ignore[no-untyped-def]
    cm, x, _ = branchy
    g = cm.graph
    geom = part_geometry(g, g.input.name, g.output.name, region)
    xin = x if geom.in_region is None else x[:, :, geom.in_region[0]:geom.in_region[1],
                                             geom.in_region[2]:geom.in_region[3]]
    a = build_part(cm, geom, "torch")(xin)
    b = build_part(cm, geom, "onnxruntime")(xin)
    assert a.shape == b.shape
    assert compare(b, a)[1] <= TOLERANCE


@needs_ort
def test_unexportable_part_falls_back_to_torch_with_one_line(capsys) -> None:  # type: ignore[no-untyped-def]
    m = Pooly()
    cm = capture(m, (1, 3, 10, 10), "pooly")
    x = torch.randn(1, 3, 10, 10)
    _WARNED.clear()
    p = build_part(cm, _whole(cm), "onnxruntime")
    err = capsys.readouterr().err.strip().splitlines()
    assert p.backend == "torch" and p.exact
    assert len(err) == 1 and "adaptive_pool" in err[0] and "torch" in err[0]
    with torch.no_grad():
        assert compare(p(x), m(x))[1] <= TOLERANCE
    from coinfer.execute.backends.ort_backend import OrtPart

    with pytest.raises(ExportUnsupported, match="adaptive_pool"):
        OrtPart(cm, _whole(cm))


def test_check_backend_errors_name_the_fix() -> None:
    with pytest.raises(BackendError, match=r"pip install 'coinfer\[openvino\]'"):
        check_backend("openvino", installed=["torch"])
    with pytest.raises(BackendError, match=r"pip install 'coinfer\[onnx\]'"):
        check_backend("onnxruntime", installed=["torch"], where="device d1")
    with pytest.raises(BackendError, match="supported: fp32"):
        check_backend("onnxruntime", "bf16", installed=["torch", "onnxruntime"])
    with pytest.raises(BackendError, match="precision 'int3'"):
        check_backend("torch", "int3")
    check_backend("auto", "bf16", installed=["torch"])  # torch has bf16
    with pytest.raises(BackendError, match="no installed backend supports precision"):
        check_backend("auto", "bf16", installed=["onnxruntime"])


def test_hidden_backends_are_not_available(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COINFER_HIDE_BACKENDS", "onnxruntime, openvino,torch")
    assert available_backends() == ["torch"]
    with pytest.raises(BackendError, match="not installed"):
        check_backend("onnxruntime")


def test_reduced_precision_is_explicit_and_approximate(branchy) -> None:  # type: ignore[no-untyped-def]
    cm, x, ref = branchy
    fp32 = build_part(cm, _whole(cm), "torch")
    bf16 = build_part(cm, _whole(cm), "torch", "bf16")
    assert fp32.exact and fp32.precision == "fp32"
    assert not bf16.exact and bf16.precision == "bf16"
    y = bf16(x)
    assert y.dtype == torch.float32
    rel = compare(y, ref)[1]
    assert TOLERANCE < rel < 0.05  # approximate, but close
    if HAVE_ORT:
        with pytest.raises(BackendError, match="supported: fp32"):
            build_part(cm, _whole(cm), "onnxruntime", "bf16")


@needs_ov
def test_openvino_fp32_exact_and_bf16_when_supported(branchy) -> None:  # type: ignore[no-untyped-def]
    from coinfer.execute.backends import BACKENDS

    cm, x, ref = branchy
    p = build_part(cm, _whole(cm), "openvino")
    assert p.backend == "openvino" and compare(p(x), ref)[1] <= TOLERANCE
    if "bf16" in BACKENDS["openvino"].precisions():
        q = build_part(cm, _whole(cm), "openvino", "bf16")
        assert not q.exact and compare(q(x), ref)[1] < 0.05


def test_auto_picks_a_measured_candidate_and_remembers_it(branchy, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from coinfer.execute.backends import candidates

    monkeypatch.setenv("COINFER_CACHE", str(tmp_path))
    cm, x, ref = branchy
    p = build_part(cm, _whole(cm), "auto")
    cands = candidates("fp32")
    assert p.backend in cands
    if len(cands) > 1:
        ms = p.notes["auto"]["ms"]
        assert set(ms) == set(cands)
        choice, clear = decide(ms)
        assert p.backend == choice
        again = build_part(cm, _whole(cm), "auto")
        if clear:  # a clear decision is remembered: only the winner is built
            assert again.backend == p.backend and again.notes["auto"] == {"remembered": True}
        else:  # a close call is measured again next time
            assert "ms" in again.notes["auto"]
        monkeypatch.setenv("COINFER_AUTO_CACHE", "0")
        assert "ms" in build_part(cm, _whole(cm), "auto").notes["auto"]
    assert compare(p(x), ref)[1] <= TOLERANCE


def test_auto_decision_has_hysteresis_so_noise_cannot_flip_it() -> None:
    """A rival must beat the preferred backend (onnxruntime, openvino, torch) by > 10 %."""
    # within the margin either way: the preferred backend keeps the part, whatever the noise
    for torch_ms in (91.0, 95.0, 100.0, 104.0, 130.0):
        assert decide({"torch": torch_ms, "onnxruntime": 100.0})[0] == "onnxruntime"
    assert decide({"torch": 80.0, "onnxruntime": 100.0}) == ("torch", True)  # clearly faster: displaces it
    assert decide({"torch": 100.0, "onnxruntime": 60.0}) == ("onnxruntime", True)
    # close to the threshold (100/1.1 = 90.9): not clear (more rounds are measured, nothing remembered)
    assert decide({"torch": 90.0, "onnxruntime": 100.0})[1] is False
    assert decide({"torch": 93.0, "onnxruntime": 100.0})[1] is False
    # bf16: no onnxruntime; openvino is preferred over torch, the fastest clear winner otherwise
    assert decide({"torch": 95.0, "openvino": 100.0})[0] == "openvino"
    assert decide({"torch": 50.0, "openvino": 100.0, "onnxruntime": 70.0})[0] == "torch"
    assert decide({"torch": 50.0, "openvino": 45.0, "onnxruntime": 100.0})[0] == "openvino"
    assert decide({"torch": 7.0}) == ("torch", True)
    # equal true speed, each measurement off by up to ±4.5 %: the answer never changes
    import random

    rng = random.Random(0)
    picks = {decide({"torch": 100.0 * rng.uniform(0.955, 1.045), "onnxruntime": 100.0 * rng.uniform(0.955, 1.045)})[0]
             for _ in range(500)}
    assert picks == {"onnxruntime"}


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_part_cache_shares_tiles_identical_up_to_translation(backend: str) -> None:
    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)).eval()
    cm = capture(m, (1, 3, 32, 8), "seq")
    g = cm.graph
    x = torch.randn(1, 3, 32, 8)
    with torch.no_grad():
        ref = m(x)
    cache = PartCache()
    out = torch.empty_like(ref)
    from coinfer.execute.part import PartRunner

    for r0 in range(0, 32, 4):  # 8 row tiles: the 6 interior ones are identical up to translation
        geom = part_geometry(g, g.input.name, g.output.name, (r0, r0 + 4, 0, 8))
        r = PartRunner(cm, geom, backend, cache=cache)
        ir = geom.in_region
        out[:, :, r0:r0 + 4] = r(x[:, :, ir[0]:ir[1], ir[2]:ir[3]])
    assert len(cache.parts) == 3 and cache.hits == 5
    assert compare(out, ref)[1] <= TOLERANCE


def test_in_process_executor_takes_backends_per_device_from_the_cluster() -> None:
    from coinfer.cluster import parse_cluster
    from coinfer.modelspec import capture_model
    from coinfer.plan.plan import ModelRef, Plan, RowPart, Rows, Stage, Whole

    cm = capture_model("resnet18_digits")
    g = cm.graph
    cut = [c for c, ok in g.splittable_cuts().items() if ok][2]
    h = g[cut].height
    plan = Plan(ModelRef("resnet18_digits", tuple(g.input_shape), g.fingerprint()), ["a", "b"], "a",
                [Stage(cut, Rows((RowPart("a", (0, h // 2)), RowPart("b", (h // 2, h))))),
                 Stage("output", Whole("b"))])
    second = "onnxruntime" if HAVE_ORT else "torch"
    cl = parse_cluster({"source": "a", "devices": [{"name": "a", "backend": "torch"},
                                                   {"name": "b", "backend": second}]}, "two")
    ex = InProcessExecutor(cm, plan, cluster=cl)
    assert ex.backends == {"a": ["torch"], "b": [second]}
    x = torch.randn(g.input_shape)
    with torch.no_grad():
        ref = cm.module(x)
    assert compare(ex(x), ref)[1] <= TOLERANCE


def test_wire_schema_carries_backend_and_build_report() -> None:
    from coinfer.runtime import wire

    h = wire.validate({"v": wire.PROTOCOL_VERSION, "kind": "deploy", "dep": "d", "plan": "{}", "device": "a", "peers": {},
                       "coord": "tcp://127.0.0.1:1", "seed": 0, "backend": "onnxruntime", "precision": "fp32"}, [])
    assert h["backend"] == "onnxruntime"
    h = wire.validate({"v": wire.PROTOCOL_VERSION, "kind": "deploy_ok", "dep": "d", "device": "a", "build_ms": 1.0,
                       "backends": ["onnxruntime", "torch/bf16"], "memory": {"weights_bytes": 10, "rss_bytes": 20}},
                      [])
    assert h["backends"] == ["onnxruntime", "torch/bf16"]


def test_deployment_build_compiles_with_the_backend_and_releases_the_model() -> None:
    from coinfer.api import plan_result
    from coinfer.cluster import builtin_cluster
    from coinfer.modelspec import capture_model
    from coinfer.runtime.deployment import DeployError, build

    cm = capture_model("resnet18_digits")
    plan = plan_result("resnet18_digits", builtin_cluster("eq4"), "even").plan
    be = "onnxruntime" if HAVE_ORT else "torch"
    d = build("dep1", plan.to_json(), "d1", "coord", cm=cm, backend=be, threads=1)
    assert d.backends_used() == [be]
    assert d.cm.tensors == {} and all(r.cm.tensors == {} for r in d.runners.values())
    assert d.memory["weights_bytes"] > 0 and d.memory["rss_bytes"] > 0
    assert cm.tensors  # the caller's model is untouched
    if HAVE_ORT:
        with pytest.raises(DeployError, match="supported: fp32"):
            build("dep2", plan.to_json(), "d1", "coord", cm=cm, backend="onnxruntime", precision="bf16")


def test_cost_model_uses_the_chosen_backends_profile(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from coinfer.cluster import parse_cluster
    from coinfer.cost.model import CostModel
    from coinfer.cost.profile import DeviceProfile, ProfileSet
    from coinfer.modelspec import capture_model

    g = capture_model("resnet18_digits").graph
    key = (g.input.name, g.output.name)
    for be, ms in (("torch", 100.0), ("onnxruntime", 60.0), ("openvino/bf16", 20.0)):
        DeviceProfile("d0", g.name, g.fingerprint(), backend=be, whole={key: ms}).save(
            tmp_path / f"d0@{be.replace('/', '-')}.json")
    pset = ProfileSet.load_dir(tmp_path)
    assert set(pset.alternatives["d0"]) == {"torch", "onnxruntime", "openvino/bf16"}

    def whole_ms(backend: str, precision: str = "fp32") -> float:
        cl = parse_cluster({"source": "d0", "devices": [{"name": "d0", "backend": backend,
                                                          "precision": precision}]}, "one")
        cost = CostModel(g, cl, pset)
        assert cost.profiles.get("d0") is not None
        return cost.profiles.get("d0").whole[key]  # type: ignore[union-attr]

    assert whole_ms("torch") == 100.0
    assert whole_ms("onnxruntime") == 60.0
    assert whole_ms("auto") == 60.0  # fastest at fp32; bf16 tables are never picked for fp32
    assert whole_ms("openvino", "bf16") == 20.0
    assert whole_ms("auto", "bf16") == 20.0
    # auto at fp32 never runs openvino while onnxruntime is installed: a faster openvino fp32 table is not
    # what prices it (QA: it was); a device priced with another backend's table than it runs is noted
    from coinfer.cost import profile as profile_mod
    from coinfer.execute.backends.base import AUTO_FP32

    assert profile_mod.AUTO_FP32 == AUTO_FP32
    DeviceProfile("d0", g.name, g.fingerprint(), backend="openvino", whole={key: 10.0}).save(tmp_path / "d0@openvino.json")
    pset = ProfileSet.load_dir(tmp_path)
    assert whole_ms("auto") == 60.0 and whole_ms("openvino") == 10.0
    cl = parse_cluster({"source": "d0", "devices": [{"name": "d0", "backend": "onnxruntime", "precision": "bf16"}]}, "x")
    notes = profile_mod.ProfileSet.mismatch_notes(pset.select(cl))
    assert notes == [(f"note: d0 runs onnxruntime/bf16 but is priced with its openvino/bf16 table in {tmp_path}: "
                     "coinfer profile --backend onnxruntime --precision bf16")]
    only_torch = ProfileSet({"d0": pset.alternatives["d0"]["torch"]}, "p").select(
        parse_cluster({"source": "d0", "devices": [{"name": "d0"}]}, "x"))
    assert only_torch.mismatch_notes() == ([
        ("note: d0 runs backend auto (onnxruntime where it is faster) but only its torch table is profiled in p: "
        "coinfer profile --backend all prices what runs")] if HAVE_ORT else [])
    (tmp_path / "d0@openvino.json").unlink()
    (tmp_path / "d0@torch.json").rename(tmp_path / "d0@onnxruntime-x.json")
    import pytest as _pt

    with _pt.raises(Exception, match="name it d0@torch.json"):
        ProfileSet.load_dir(tmp_path)
