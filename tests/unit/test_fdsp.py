"""FDSP fine-tuning: the differentiable tiled forward equals the deployed plan, the fake quantiser equals
the wire codecs, a tiny real training run reports before/after figures, weights load by import path,
and bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from coinfer.cli.main import build_app
from coinfer.cluster import builtin_cluster
from coinfer.compress.codecs import decode, encode
from coinfer.cost import CostModel
from coinfer.execute.local import InProcessExecutor
from coinfer.graph.capture import capture
from coinfer.plan.plan import Wire
from coinfer.strategies import PlanRequest, run
from coinfer.train import fdsp

runner = CliRunner()


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("quant", ["int8", "int8c", "int4"])
@pytest.mark.parametrize("signed", [False, True])
def test_fake_quant_equals_codec_roundtrip(quant: str, signed: bool) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, 5, 7, generator=g) * torch.tensor([0.5, 2.0, 7.0]).view(3, 1, 1, 1)
    if not signed:
        x = torch.relu(x)
    x[2, 0] = 0.0
    got = fdsp.fake_quant(x, quant)
    for i in range(3):
        meta, buf = encode(x[i:i + 1].numpy(), "raw", quant)
        want = torch.from_numpy(np.array(decode(meta, bytes(memoryview(buf).cast("B")))))
        assert torch.allclose(got[i:i + 1], want, atol=1e-6, rtol=1e-6)
    # straight-through gradient
    xr = x.clone().requires_grad_(True)
    fdsp.fake_quant(xr, quant).sum().backward()
    assert torch.equal(xr.grad, torch.ones_like(x))


def _plan(model: torch.nn.Module, **params):  # type: ignore[no-untyped-def]
    cm = capture(model, fdsp.DIGITS_SHAPE, fdsp.DIGITS_SPEC)
    cl = builtin_cluster("het4")
    plan = run("adcnn", PlanRequest(cm.graph, cl, fdsp.DIGITS_SPEC, CostModel(cm.graph, cl),
                                    params={"grid": "2x2", **params})).plan
    return cm, plan


@pytest.mark.parametrize("grid", ["2x2", "3x2"])
def test_tiled_forward_equals_deployed_plan(grid: str) -> None:
    torch.manual_seed(1)
    m = fdsp.DigitsCNN().eval()
    x = torch.randn(3, *fdsp.DIGITS_SHAPE[1:])
    cm, plan = _plan(m, grid=grid, wire="raw")
    lay = fdsp.layout_of_plan(plan, cm.graph)
    assert lay.grid == tuple(int(v) for v in grid.split("x")) and lay.head is None
    fwd = fdsp.FdspForward(m, fdsp.DIGITS_SHAPE, lay, "digits")
    ex = InProcessExecutor(cm, plan)
    want = torch.cat([ex(x[i:i + 1]) for i in range(3)])
    got = fwd(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, m(x), atol=1e-3)  # the tiles really are independent images
    got.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    # with 4-bit transfers the training forward is what the codecs do on the wire
    cm4, plan4 = _plan(m, grid=grid)
    assert plan4.wire.quant == "int4"
    fwd4 = fdsp.FdspForward(m, fdsp.DIGITS_SHAPE, fdsp.layout_of_plan(plan4, cm4.graph), "digits")
    with torch.no_grad():
        assert torch.allclose(fwd4(x), fdsp.WireExecutor(cm4, plan4)(x), atol=1e-4)


def test_tiny_finetune_reports_and_loads_by_import_path(cache: Path) -> None:
    from coinfer.modelspec import load_module

    rep = fdsp.finetune_digits((2, 2), Wire("raw", "int4"), epochs=1, base_epochs=1, limit=96)
    d = rep.to_dict()
    for k in ("unpartitioned", "fdsp_before", "fdsp_after", "plain_after"):
        assert 0.0 <= d[k] <= 1.0
    assert rep.metric == "accuracy" and rep.eval_images == 96 and rep.train_steps == 2
    assert rep.head is None and rep.model_spec == "coinfer.train.fdsp:fdsp_digits_cnn_2x2_int4"
    assert Path(rep.weights).is_file() and json.loads(Path(rep.weights).with_suffix(".json").read_text())
    src = load_module(rep.model_spec, fdsp.DIGITS_SHAPE)
    base = load_module(fdsp.DIGITS_SPEC, fdsp.DIGITS_SHAPE)
    x = fdsp.load_digits()[2][:4]
    with torch.no_grad():
        assert not torch.allclose(src.module(x), base.module(x))  # fine-tuned weights, not the base


def test_tiny_distillation_reports_agreement(cache: Path) -> None:
    rep = fdsp.distill("resnet18_digits", (2, 2), Wire("raw", "int8"), steps=1, batch=2, eval_images=4,
                       save=False)
    assert rep.metric == "agreement" and rep.unpartitioned == 1.0 and rep.eval_images == 4 + 8
    assert 0.0 <= rep.fdsp_before <= 1.0 and 0.0 <= rep.fdsp_after <= 1.0 and rep.train_steps == 1
    x = fdsp.augmented_set(3, 64, seed=5)
    assert x.shape == (3, 3, 64, 64) and torch.equal(x, fdsp.augmented_set(3, 64, seed=5))


def test_missing_weights_and_bad_input_exit_2(cache: Path) -> None:
    with pytest.raises(fdsp.FdspError, match="coinfer train fdsp"):
        fdsp.digits_cnn()
    for args, msg in ((["--grid", "64x64"], "finer than"), (["--grid", "auto"], "RxC"),
                      (["--grid", "2x2", "--wire", "int3"], "unknown"),
                      (["--grid", "2x2", "-m", "nonsense_model"], "nonsense_model")):
        r = runner.invoke(build_app(), ["train", "fdsp", *args])
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.output and "Traceback" not in r.output


def test_reduced_finetune_keeps_full_weights(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A smoke fine-tuning (fewer epochs / steps than the defaults) does not replace full-budget weights
    unless forced; the CLI says so in one line."""
    import inspect

    real = fdsp.load_digits
    monkeypatch.setattr(fdsp, "load_digits", lambda seed=0: tuple(t[:64] for t in real(seed)))  # fast

    from coinfer.cli import train_fdsp

    params = inspect.signature(train_fdsp.cmd).parameters
    assert params["epochs"].default.default == fdsp.DIGITS_EPOCHS  # the CLI's defaults are the full budgets
    assert params["steps"].default.default == fdsp.DISTILL_STEPS
    kw: dict = {"epochs": 1, "base_epochs": 1, "limit": 64}
    first = fdsp.finetune_digits((2, 2), Wire("raw", "int4"), **kw)
    p = Path(first.weights)
    assert first.reduced and first.kept is None and p.is_file()  # nothing to protect: saved
    meta = json.loads(p.with_suffix(".json").read_text())
    assert meta["reduced"] is True
    del meta["reduced"]  # as written before the key existed: counts as full-budget weights
    p.with_suffix(".json").write_text(json.dumps(meta))
    before = p.read_bytes()
    rep = fdsp.finetune_digits((2, 2), Wire("raw", "int4"), lr=1e-2, **kw)
    assert rep.kept == str(p) and p.read_bytes() == before
    r = runner.invoke(build_app(), ["train", "fdsp", "--grid", "2x2", "--epochs", "1", "--base-epochs", "1"])
    out = " ".join(r.output.split())
    assert r.exit_code == 0 and p.read_bytes() == before, r.output
    assert "weights not saved" in out and "--force replaces it" in out
    rep = fdsp.finetune_digits((2, 2), Wire("raw", "int4"), lr=1e-2, force=True, **kw)
    assert rep.kept is None and p.read_bytes() != before


def test_missing_fine_tuned_model_names_the_full_train_command() -> None:
    """QA: a missing variant said only "run coinfer train fdsp (see --help)"; adcnn.md promises the command
    that trains it: model, grid and wire (variant_name inverted)."""
    fd = fdsp
    for wire, opt in [(Wire("raw", "int4"), "int4"), (Wire("zstd", "int4"), "int4+zstd"), (Wire("raw", None), "raw"),
                      (Wire("lz4", None), "lz4"), (Wire("raw", "int8c"), "int8c")]:
        name = fd.variant_name("efficientnet_lite0", (2, 3), wire)
        assert fd.train_command(name) == f"coinfer train fdsp --model efficientnet_lite0 --grid 2x3 --wire {opt}"
    with pytest.raises(fd.FdspError, match=r"coinfer train fdsp --model digits_cnn --grid 7x5 --wire int8c\+zstd$"):
        fd.fdsp_digits_cnn_7x5_int8c_zstd()


def test_base_cnn_cache_follows_base_epochs_and_seed(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--base-epochs`` did nothing once a base was cached, and a 1-epoch base, once cached, served every
    later run and plan. The cache now records how it was trained: a run asking for other epochs or another
    seed trains its own base; a reduced one (fewer than 25 epochs) does not replace a full one."""
    real = fdsp.load_digits
    monkeypatch.setattr(fdsp, "load_digits", lambda seed=0: tuple(t[:64] for t in real(seed)))  # fast
    p = fdsp._weights_path("digits_cnn")
    fdsp.train_digits_base(epochs=2)
    assert json.loads(p.with_suffix(".json").read_text()) == {"epochs": 2, "seed": 0}
    two = p.read_bytes()
    fdsp.train_digits_base(epochs=2)  # the same request: loaded, not retrained
    assert p.read_bytes() == two
    calls = []
    monkeypatch.setattr(fdsp, "save_weights", lambda m, path: calls.append(path) or None)
    fdsp.train_digits_base(epochs=3)  # another budget: trained (and, over a reduced cache, saved)
    assert calls == [p]
    p.with_suffix(".json").write_text(json.dumps({"epochs": 25, "seed": 0}))  # as if full
    calls.clear()
    fdsp.train_digits_base(epochs=1)  # reduced over full: trained, not saved
    fdsp.train_digits_base(epochs=25, seed=0)  # the cached one: loaded
    assert calls == []
    fdsp.train_digits_base(epochs=1, force=True)
    assert calls == [p]
    p.with_suffix(".json").unlink()  # a checkpoint from before the record: the default run
    assert fdsp._cached_base(p) == {"epochs": fdsp.BASE_EPOCHS, "seed": 0}
