"""A binary file (an image, an .onnx) given where a plan or a cluster file is expected is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from coinfer.cluster import ClusterError, load_cluster, resolve_cluster
from coinfer.plan.plan import Plan, PlanError

PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"


@pytest.fixture
def binary_file(tmp_path: Path) -> Path:
    p = tmp_path / "cat.png"
    p.write_bytes(PNG_HEAD)
    return p


def test_binary_plan_file_is_named_not_a_text_file(binary_file: Path) -> None:
    with pytest.raises(PlanError, match=r"plan file '.*cat\.png' is not a text \(JSON\) file — give the plan "
                                        r"written by coinfer plan"):
        Plan.load(binary_file)


@pytest.mark.parametrize("load", [load_cluster, resolve_cluster])
def test_binary_cluster_file_is_named_not_a_text_file(binary_file: Path, load) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ClusterError, match=r"cluster file '.*cat\.png' is not a text \(YAML\) file — give a cluster "
                                           r"YAML file .* or a built-in \(demo4, "):
        load(str(binary_file))
