"""``coinfer train exits|fdsp|distredge``: every numeric option out of its range is refused at parse time
(exit 2, one line or typer's usage error, no traceback) before any model is built or trained; the
distredge limits are those of ``coinfer plan -s distredge`` (one definition)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coinfer.cli.main import build_app
from coinfer.strategies import StrategyError
from coinfer.strategies.distredge import LIMITS, check_settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def no_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any run that gets past the checks fails loudly (exit 1, not 2) instead of training."""
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "cache"))

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("reached training")

    import coinfer.train.distredge as td
    import coinfer.train.exits as te
    import coinfer.train.fdsp as tf

    monkeypatch.setattr(td, "plan_with_policy", boom)
    monkeypatch.setattr(te, "he_init", boom)  # train_exits checks its arguments, then builds the model
    monkeypatch.setattr(tf, "finetune", boom)
    import coinfer.modelspec as ms

    monkeypatch.setattr(ms, "capture_model", boom)


def _refused(args: list[str], *words: str) -> str:
    r = runner.invoke(build_app(), args)
    out = " ".join(r.output.split())
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and "reached training" not in out
    for w in words:
        assert w in out, r.output
    return out


DISTREDGE = ["train", "distredge", "-m", "resnet18_digits", "-c", "demo4", "--costs", "analytic"]


@pytest.mark.parametrize("opt, val, word", [
    ("--n-random", "0", "--n-random must be >= 1"),
    ("--n-random", "-3", "--n-random must be >= 1"),
    ("-n", "0", "--episodes must be >= 1"),
    ("-n", "-5", "--episodes must be >= 1"),
    ("--alpha", "2", "--alpha must be between 0 and 1"),
    ("--alpha", "-0.1", "--alpha must be between 0 and 1"),
    ("--alpha", "nan", "--alpha must be between 0 and 1"),
    ("--max-volumes", "0", "--max-volumes must be >= 1"),
    ("--seed", "-1", "--seed must be >= 0"),
])
def test_train_distredge_ranges(opt: str, val: str, word: str) -> None:
    args = [*DISTREDGE, "-n", "5", opt, val] if opt != "-n" else [*DISTREDGE, opt, val]
    out = _refused(args, word)
    assert out.count("error:") == 1


def test_distredge_limits_are_shared_with_plan() -> None:
    """The plan parameters and the train options go through the same check (LIMITS)."""
    assert LIMITS["alpha"] == (0.0, 1.0) and LIMITS["train_episodes"][0] == 1
    with pytest.raises(StrategyError, match=r"^alpha must be between 0 and 1 \(got 2\)"):
        check_settings(alpha=2)
    with pytest.raises(StrategyError, match=r"^--n-random must be >= 1"):
        check_settings({"n_random": "--n-random"}, n_random=0)
    check_settings(train_episodes=1, alpha=0.0, n_random=1, max_volumes=None, seed=0)


FDSP = ["train", "fdsp", "--grid", "2x2"]


@pytest.mark.parametrize("extra, word", [
    (["--lr", "-1", "--epochs", "1"], "--lr must be > 0"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--model", "efficientnet_lite0", "--batch", "0"], "--batch"),
    (["--epochs", "0"], "--epochs"),
    (["--base-epochs", "0"], "--base-epochs"),
    (["--steps", "0"], "--steps"),
    (["--eval-images", "0"], "--eval-images"),
    (["--threads", "-1"], "--threads"),
    (["--seed", "-1"], "--seed"),
])
def test_train_fdsp_ranges(extra: list[str], word: str) -> None:
    _refused([*FDSP, *extra], word)


@pytest.mark.parametrize("extra, word", [
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--batch-size", "0"], "--batch-size"),
    (["--max-train", "1"], "--max-train"),
    (["--max-train", "-64"], "--max-train"),
    (["--seed", "-2"], "--seed"),
])
def test_train_exits_ranges(extra: list[str], word: str) -> None:
    _refused(["train", "exits", "--model", "resnet18_digits", *extra], word)
