"""The example cluster files in configs/: all valid, the built-ins' copies equal to the built-ins,
relative paths read from the file's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from coinfer.cluster import BUILTIN, ClusterError, builtin_cluster, load_cluster
from coinfer.runtime.shaping import load_trace_csv

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FILES = sorted(CONFIGS.glob("*.yaml"))


def test_every_builtin_has_its_file_and_there_are_others() -> None:
    names = {f.stem for f in FILES}
    assert set(BUILTIN) <= names
    assert names - set(BUILTIN), "configs/ has examples beyond the built-ins"
    readme = (CONFIGS / "README.md").read_text()
    for f in FILES:
        assert f"`{f.name}`" in readme, f"configs/README.md does not describe {f.name}"


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_file_equals_the_builtin(name: str) -> None:
    assert load_cluster(CONFIGS / f"{name}.yaml") == builtin_cluster(name)


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_every_example_loads_and_its_trace_is_readable(path: Path) -> None:
    c = load_cluster(path)
    assert c.source in c.names
    if c.network.trace:
        assert Path(c.network.trace).is_absolute() or Path(c.network.trace).exists()
        assert len(load_trace_csv(c.network.trace)) >= 2


def test_relative_paths_are_read_from_the_cluster_files_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub" / "t").mkdir(parents=True)
    (tmp_path / "sub" / "t" / "bw.csv").write_text("0,10\n1,20\n")
    (tmp_path / "sub" / "c.yaml").write_text(
        "source: a\ndevices: [{name: a}, {name: b}]\n"
        "network: {trace: t/bw.csv}\nsecurity: {auth: none, keys: k}\n")
    monkeypatch.chdir(tmp_path)
    c = load_cluster("sub/c.yaml")
    assert Path(c.network.trace or "") == Path("sub/t/bw.csv")
    assert load_trace_csv(c.network.trace or "") == [(0.0, 10.0), (1.0, 20.0)]
    assert Path(c.security.keys) == Path("sub/k")
    # absolute and home-relative paths are kept as written
    (tmp_path / "abs.yaml").write_text(
        f"source: a\ndevices: [{{name: a}}]\nnetwork: {{trace: {tmp_path / 'sub/t/bw.csv'}}}\n"
        "security: {keys: ~/.coinfer/keys}\n")
    c = load_cluster(tmp_path / "abs.yaml")
    assert c.network.trace == str(tmp_path / "sub/t/bw.csv") and c.security.keys == "~/.coinfer/keys"


def test_a_missing_file_names_the_builtins() -> None:
    with pytest.raises(ClusterError) as ei:
        load_cluster("nosuch.yaml")
    msg = str(ei.value)
    assert "'nosuch.yaml' does not exist" in msg and "demo4" in msg and "docs/concepts.md#cluster-file" in msg
    assert "\n" not in msg
