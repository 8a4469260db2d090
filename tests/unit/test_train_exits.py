"""Early-exit training: the digits split, a 1-epoch smoke train, the cache, the zoo hook, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from coinfer import zoo
from coinfer.cli.main import build_app
from coinfer.train import exits as ex
from coinfer.train.data import digits_split


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path))
    return tmp_path


def test_digits_split_is_fixed_stratified_and_standardised() -> None:
    a, b = digits_split(), digits_split()
    assert a.sizes == (1347, 450)
    assert a.x_train.shape == (1347, 3, 64, 64) and a.x_test.shape == (450, 3, 64, 64)
    assert torch.equal(a.y_test, b.y_test) and torch.equal(a.x_train, b.x_train)
    counts = torch.bincount(a.y_test, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46  # stratified 25% of 174..183 per class
    assert abs(float(a.x_train.mean())) < 1e-4 and float(a.x_train.std()) == pytest.approx(1.0, abs=1e-3)


def test_smoke_train_caches_checkpoint_and_accuracies(cache: Path) -> None:
    res = ex.train_exits("alexnet", epochs=1, max_train=32, max_test=48, batch_size=16)
    assert res.model == "alexnet_digits" and res.epochs == 1
    path = res.checkpoint
    assert path is not None and path.parent == cache / "exits"
    assert path.name == f"alexnet_digits-digits64-seed0-v{ex.VERSION}.pt"  # data, seed, version
    assert list(res.accuracy) == ["exit1", "exit2", "exit3", "exit4", "final"]
    assert all(0.0 <= v <= 1.0 for v in res.accuracy.values())
    acc = ex.cached_accuracies("alexnet_digits")
    assert acc == {k: round(v, 4) for k, v in res.accuracy.items()}
    assert ex.cached_accuracies("alexnet") is None  # the ImageNet model was not trained
    # the zoo loads the trained weights; the accuracies are those of that model on the held-out images
    trained = zoo.get("alexnet_digits")
    state = torch.load(path, weights_only=True)
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in state.items())
    fresh = zoo.get("alexnet_digits", weights=False)
    assert not torch.equal(fresh.features[0].weight, state["features.0.weight"])
    split = digits_split()
    again = ex.evaluate(trained, split.x_test[:48], split.y_test[:48])
    assert again == pytest.approx(res.accuracy)
    # coinfer models --exits: the trained model's accuracies and weights, the ImageNet one's hint
    from coinfer.zoo_summary import summaries

    rows = {r["name"]: r for r in summaries(with_exits=True)}
    assert rows["alexnet_digits"]["exit_accuracy"] == acc and rows["alexnet_digits"]["weights"] == "trained"
    assert not rows["alexnet"].get("exit_accuracy") and rows["alexnet"]["weights"] != "trained"
    # another seed, another recipe version: not found
    assert ex.cached_accuracies("alexnet_digits", seed=1) is None
    meta = ex.metrics_path("alexnet_digits")
    meta.write_text(meta.read_text().replace(f'"version": {ex.VERSION}', '"version": 999'))
    assert ex.cached_accuracies("alexnet_digits") is None
    assert not ex.load_trained("alexnet_digits", fresh)


def test_bad_input(cache: Path) -> None:
    assert ex.resolve("resnet18") == "resnet18_digits"
    with pytest.raises(ex.ExitsError, match="cannot be exit-trained"):
        ex.resolve("vgg16")
    with pytest.raises(ex.ExitsError, match="epochs"):
        ex.train_exits("alexnet_digits", epochs=0)
    with pytest.raises(ex.ExitsError, match="lr"):
        ex.train_exits("alexnet_digits", lr=-1.0)


def test_cli_bad_model_exits_2(run_cli, cache: Path) -> None:  # type: ignore[no-untyped-def]
    r = run_cli("train", "exits", "--model", "vgg16")
    assert r.returncode == 2, r.stderr
    assert "cannot be exit-trained" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_reduced_run_keeps_full_checkpoint(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A smoke run (fewer epochs, --max-train) does not replace a full-budget checkpoint unless forced."""
    monkeypatch.setattr(ex, "evaluate", lambda m, x, y: {k: 0.1 for k in ex.exit_names(m)})  # fast
    kw: dict = {"epochs": 1, "max_train": 16, "max_test": 16, "batch_size": 8}
    first = ex.train_exits("resnet18_digits", **kw)
    assert first.reduced and first.checkpoint is not None and first.kept is None  # nothing to protect: saved
    path = first.checkpoint
    meta = json.loads(ex.metrics_path("resnet18_digits").read_text())
    assert meta["reduced"] is True
    # make it look like the full recipe's checkpoint (an older JSON without the "reduced" key)
    del meta["reduced"]
    meta.update(epochs=ex.RECIPES["resnet18_digits"]["epochs"], train_size=1347, test_size=450,
                accuracy={k: 0.99 for k in meta["accuracy"]})
    ex.metrics_path("resnet18_digits").write_text(json.dumps(meta))
    before = path.read_bytes()
    res = ex.train_exits("resnet18_digits", seed=0, lr=5e-2, **kw)
    assert res.checkpoint is None and res.kept == path and path.read_bytes() == before
    assert ex.cached_accuracies("resnet18_digits") == {k: 0.99 for k in meta["accuracy"]}
    r = CliRunner().invoke(build_app(), ["train", "exits", "-m", "resnet18_digits", "--epochs", "1",
                                         "--max-train", "16", "--batch-size", "8"])
    assert r.exit_code == 0 and path.read_bytes() == before, r.output
    assert "checkpoint not saved" in " ".join(r.output.split()) and "--force" in r.output
    res = ex.train_exits("resnet18_digits", force=True, **kw)
    assert res.checkpoint == path and res.kept is None and ex.read_metrics("resnet18_digits")["reduced"] is True
