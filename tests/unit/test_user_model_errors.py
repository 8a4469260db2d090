"""Import-path user models: an input shape the model cannot run at, or a factory that raises, is one
clear error (exit 2 in the CLI), not a torch.fx traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from coinfer.graph.capture import capture
from coinfer.graph.ir import GraphError
from coinfer.modelspec import ModelError, capture_model, load_module


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.p = nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.p(torch.relu(self.c2(torch.relu(self.c1(x)))))
        return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))


@pytest.mark.parametrize(("shape", "why"), [
    ((1, 1, 16, 16), r"expected input\[1, 1, 16, 16\] to have 3 channels, but got 1"),
    ((1, 3, 1, 1), r"Output size is too small"),
])
def test_wrong_input_shape_is_one_line_naming_the_shape(shape, why, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GraphError) as e:
        capture(Net().eval(), shape, "mynet:build")
    msg = str(e.value)
    dims = ",".join(map(str, shape))
    assert msg.startswith(f"model mynet:build does not run at input shape {dims}: ")
    assert msg.endswith(" — check --input-shape") and "\n" not in msg
    assert re.search(why, msg)
    assert "Traceback" not in capsys.readouterr().err  # torch's ShapeProp printed the op's traceback


def test_right_input_shape_still_captures() -> None:
    g = capture(Net().eval(), (1, 3, 16, 16), "mynet:build").graph
    assert g.nodes[-1].shape == (1, 4)


def test_factory_that_raises_is_named_with_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "badnets_qa.py").write_text('def boom():\n    raise RuntimeError("kaboom\\nmore")\n\n'
                                            'def quiet():\n    raise KeyError()\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match=r"^model factory badnets_qa:boom raised RuntimeError: kaboom$"):
        load_module("badnets_qa:boom", "1,3,8,8")
    with pytest.raises(ModelError, match=r"^model factory badnets_qa:quiet raised KeyError$"):
        capture_model("badnets_qa:quiet", "1,3,8,8")


@pytest.mark.parametrize(("name", "source", "want"), [
    ("badmod_qa_rt", 'raise RuntimeError("bad module\\nmore")\n', r"RuntimeError: bad module$"),
    ("badmod_qa_syn", "def build(:\n    pass\n", r"SyntaxError: .+ \(.*badmod_qa_syn\.py:1\)$"),
    ("badmod_qa_zero", "1 / 0\n", r"ZeroDivisionError: division by zero$"),
])
def test_module_that_raises_on_import_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  name: str, source: str, want: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError) as e:
        load_module(f"{name}:build", "1,3,32,32")
    msg = str(e.value)
    assert msg.startswith(f"importing {name} (for model {name}:build) raised ") and "\n" not in msg
    assert re.search(want, msg), msg


def test_a_module_made_in_forward_is_told_to_move_to_init() -> None:
    """fx cannot trace a module built inside ``forward``; the hint said 'no data-dependent control
    flow', which does not apply — it names the fix now."""

    class PadInForward(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.ConstantPad2d((1, 2, 0, 1), 2.0)(x)

    with pytest.raises(GraphError) as e:
        capture(PadInForward(), (1, 3, 8, 8), "mm3:padval")
    msg = str(e.value)
    assert "not installed as a submodule" in msg and "create the module in __init__" in msg, msg
    assert "control flow" not in msg and "\n" not in msg
