"""coinfer profile: profile format additions, the CPU-quota model, the remote driver's helpers, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coinfer.cli.main import build_app
from coinfer.cluster import parse_cluster
from coinfer.cost import CostModel, DeviceProfile, LinkProbe, ProfileError, ProfileSet
from coinfer.cost.regression import LayerSample
from coinfer.cost.remote import (
    DeviceRun,
    assemble,
    existing_profiles,
    pairings,
    probe_sizes,
    runtime_costs_from_probes,
)
from coinfer.cost.runtime import (
    BUILTIN_RUNTIME,
    CpuBucket,
    CpuQuota,
    RuntimeCosts,
    RuntimeCostsError,
)
from coinfer.graph.geometry import part_geometry
from coinfer.graph.ir import Graph, Node

runner = CliRunner()
USER, SHAPE = "core_helpers.user_models:user_net", ("--input-shape", "1,3,37,29")  # tiny; tests/ is on sys.path

H, W = 32, 16


def conv(name: str, src: str) -> Node:
    return Node(name, "conv", (src,), (1, 2, H, W),
                {"kernel": [3, 3], "stride": [1, 1], "dilation": [1, 1], "pad": [1, 1, 1, 1], "groups": 1,
                 "cin": 2, "cout": 2}, flops=2 * 18 * 2 * H * W, params=36, param_bytes=144)


def toy() -> Graph:
    return Graph("toy", [Node("x", "input", (), (1, 2, H, W)), conv("a", "x"), conv("b", "a")])


def cluster(share: float = 0.25) -> object:
    return parse_cluster({"source": "d0", "devices": [{"name": "d0", "cpu_share": share}, {"name": "d1"}],
                          "network": {"bandwidth_mbps": 80, "latency_ms": 1.0}})


def cpu_profile(g: Graph, device: str = "d0") -> DeviceProfile:
    return DeviceProfile(device, g.name, g.fingerprint(), timing="cpu",
                         emulation={"mode": "cgroup-v1", "cpu_share": 0.25},
                         stages={("x", "a"): [(1, 0.1), (32, 2.0)], ("a", "b"): [(1, 0.1), (32, 2.0)]},
                         runtime=RuntimeCosts(send_us=100, send_io_us=200, recv_us=300, per_kb_us=1.0,
                                              source="probed"),
                         links={"d1": LinkProbe(79.0, 2.5)}, chained={("a", "b"): 0.5})


# -- the format -------------------------------------------------------------------------------
def test_profile_new_fields_round_trip_and_partial_profiles(tmp_path: Path) -> None:
    g = toy()
    p = cpu_profile(g)
    again = DeviceProfile.from_dict(json.loads(p.to_json()))
    assert again == p and again.timing == "cpu" and again.runtime == p.runtime and again.chained == p.chained
    bad = json.loads(p.to_json())
    bad["stages"][1]["chained"] = "much"
    with pytest.raises(ProfileError, match="chained"):
        DeviceProfile.from_dict(bad)
    part = cpu_profile(g)
    part.complete = False
    part.samples = [LayerSample("conv", (1.0, 2.0, 3.0, 1.0), 0.5)]
    d = json.loads(part.to_json())
    assert d["complete"] is False and len(d["samples"]) == 1
    assert DeviceProfile.from_dict(d) == part
    part.save(tmp_path / "d0.json")
    with pytest.raises(ProfileError, match="unfinished profile.*resumes"):
        ProfileSet.load_dir(tmp_path)
    # <device>@<backend>.json too (QA: a half onnxruntime table priced the plan 106 ms for 50.5 ms)
    p.save(tmp_path / "d0.json")
    part.backend = "onnxruntime"
    part.save(tmp_path / "d0@onnxruntime.json")
    with pytest.raises(ProfileError, match=r"d0@onnxruntime\.json is an unfinished profile.*resumes"):
        ProfileSet.load_dir(tmp_path)
    (tmp_path / "d0@onnxruntime.json").unlink()
    # a backend profiled with --no-links borrows the device's links and message costs from its sibling
    bare = cpu_profile(g)
    bare.backend, bare.runtime, bare.links = "onnxruntime", None, {}
    bare.save(tmp_path / "d0@onnxruntime.json")
    from coinfer.cluster import parse_cluster

    sel = ProfileSet.load_dir(tmp_path).select(parse_cluster(
        {"source": "d0", "devices": [{"name": "d0", "backend": "onnxruntime"}, {"name": "d1"}]}, "x"))
    got = sel.get("d0")
    assert got is not None and got.backend == "onnxruntime" and got.runtime == p.runtime and got.links == p.links
    (tmp_path / "d0@onnxruntime.json").unlink()
    bad = json.loads(p.to_json())
    bad["timing"] = "gpu"
    with pytest.raises(ProfileError, match="timing"):
        DeviceProfile.from_dict(bad)
    bad = json.loads(p.to_json())
    bad["runtime"]["recv_us"] = -1
    with pytest.raises(ProfileError, match="recv_us"):
        DeviceProfile.from_dict(bad)
    with pytest.raises(RuntimeCostsError, match="unknown"):
        RuntimeCosts.from_dict({"nope": 1})


def test_cpu_timed_profiles_scale_by_the_emulated_share() -> None:
    g = toy()
    costs = CostModel(g, cluster(0.25), {"d0": cpu_profile(g)})
    geom = part_geometry(g, "x", "b", (0, 16, 0, W))
    cpu = costs.cpu_ms("d0", geom)
    alone = costs.cpu_ms("d0", part_geometry(g, "x", "a", (0, 17, 0, W)))
    second = costs.cpu_ms("d0", part_geometry(g, "a", "b", (0, 16, 0, W)))
    # "b" after "a" in one part adds its chained cost (0.5 ms at full height, 2.0 alone), scaled to the region
    assert cpu == pytest.approx(alone + 0.5 * second / 2.0)
    assert costs.part_ms("d0", geom) == pytest.approx(cpu / 0.25)  # steady state at the share
    assert costs.quota("d0") == CpuQuota(0.25, 10.0) and costs.quota("d1") is None
    assert costs.runtime_costs("d0").source == "probed" and costs.runtime_costs("d1") is BUILTIN_RUNTIME
    # the same CPU-time profile on a faster device: faster, same CPU work
    fast = CostModel(g, cluster(0.5), {"d0": cpu_profile(g)})
    assert fast.cpu_ms("d0", geom) == pytest.approx(cpu)
    assert fast.part_ms("d0", geom) == pytest.approx(cpu / 0.5)
    # a wall-clock profile measured at another share is another device
    wall = cpu_profile(g)
    wall.timing = "wall"
    with pytest.raises(ProfileError, match="cpu_share 0.25.*re-profile"):
        CostModel(g, cluster(0.5), {"d0": wall})


def test_cpu_quota_hand_computed() -> None:
    b = CpuBucket(CpuQuota(0.25, 10.0))  # 2.5 ms of CPU per 10 ms period; periods start at 5, 15, 25...
    assert b.run(0.0, 2.0) == pytest.approx(2.0)  # after idling: full speed within the quota
    # 3 ms more: 0.5 left in this period, then wait for the boundary at 5, then 2.5 -> 7.5
    assert b.run(2.0, 3.0) == pytest.approx(7.5)
    # another thread (the transport) shares the quota: the period [5, 15) is used up -> from 15
    assert b.side(8.0, 0.5) == pytest.approx(15.5)
    # ... and the program's next job finds 2.0 left there, then waits for [25, 35) for the last 0.25
    assert b.run(7.5, 2.25) == pytest.approx(25.25)
    # a long idle: a fresh quota; the side job does not wait for the program
    assert b.run(1000.0, 1.0) == pytest.approx(1001.0)
    assert b.side(1000.0, 1.0) == pytest.approx(1001.0)
    # long jobs converge to the share: 20 ms of CPU = 8 quotas: the first now, 7 periods later the last
    b2 = CpuBucket(CpuQuota(0.25, 10.0))
    assert b2.run(0.0, 20.0) == pytest.approx(57.5 + 10.0)
    free = CpuBucket(None)
    assert free.run(5.0, 2.0) == 7.0 and not free.limited
    assert free.side(5.0, 1.0) == 6.0  # no quota: another thread runs alongside
    assert CpuQuota.for_share(0.05).period_ms == pytest.approx(20.0)  # 1 ms minimum quota


def test_runtime_costs_arithmetic() -> None:
    rt = RuntimeCosts(send_us=100, send_io_us=200, recv_us=300, per_kb_us=2.0, compute_us=40, loopback_gbps=1.0)
    assert rt.send_ms(1024) == pytest.approx(0.1001)  # the program thread: fixed + assembling (0.1 us/KB)
    assert rt.recv_ms(2048) == pytest.approx(0.304)
    assert rt.send_io_ms(1024 * 1000) == pytest.approx(0.2 + 2.0)  # the transport: fixed + per KB
    assert rt.loopback_ms(10**6) == pytest.approx(1.0)


# -- the driver's helpers ------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_pairings_cover_every_ordered_pair_once_in_disjoint_rounds(n: int) -> None:
    devs = [f"d{i}" for i in range(n)]
    rounds = pairings(devs)
    seen = [p for r in rounds for p in r]
    assert sorted(seen) == sorted((a, b) for a in devs for b in devs if a != b)
    for r in rounds:
        ends = [x for p in r for x in p]
        assert len(ends) == len(set(ends))  # a device in at most one pair per round
    assert pairings(["d0"]) == []


def test_probe_sizes_follow_the_link_rate() -> None:
    assert probe_sizes(100.0) == [1024, 125_000, 500_000]
    assert probe_sizes(1.0)[-1] == 64 * 1024  # at least 64 KB
    assert probe_sizes(1e5)[-1] == 4 * 2**20  # at most 4 MB


def test_runtime_costs_from_bursts() -> None:
    sent = [{"1024": {"send_call_us": 100.0, "send_total_us": 350.0, "recv_us": 0, "n": 25},
             "65536": {"send_call_us": 150.0, "send_total_us": 414.0, "recv_us": 0, "n": 25}}]
    recv = [{"1024": {"send_call_us": 0, "send_total_us": 0, "recv_us": 300.0, "n": 25},
             "65536": {"send_call_us": 0, "send_total_us": 0, "recv_us": 426.0, "n": 25}}]
    rt = runtime_costs_from_probes(sent, recv)
    assert (rt.send_us, rt.send_io_us, rt.recv_us) == (100.0, 250.0, 300.0)
    assert rt.per_kb_us == pytest.approx((14 / 63 + 126 / 63) / 2, rel=1e-3)  # transport side and receiver
    assert rt.send_per_kb_us == pytest.approx(50 / 63, rel=1e-3)  # the program thread
    assert rt.source == "probed"
    assert runtime_costs_from_probes([], []) is BUILTIN_RUNTIME


def test_assemble_merges_a_resumed_run_and_fits_regressions() -> None:
    g = toy()
    base = DeviceProfile("d0", "toy", g.fingerprint(), timing="cpu", complete=False,
                         stages={("x", "a"): [(1, 0.1), (32, 2.0)]},
                         samples=[LayerSample("conv", (0.1 * i, 0.036, 0.001 * i, 1.0), 0.05 * i) for i in range(1, 5)])
    run = DeviceRun("d0", stages={("a", "b"): [(1, 0.1), (32, 2.1)]},
                    samples=[LayerSample("conv", (0.2, 0.036, 0.003, 1.0), 0.11)],
                    result={"timing": "cpu", "machine": {"cpu": "x"}})
    prof = assemble(run, "toy", g.fingerprint(), base=base, links={"d1": LinkProbe(10.0, 1.0)},
                    runtime=BUILTIN_RUNTIME)
    assert set(prof.stages) == {("x", "a"), ("a", "b")} and prof.complete and prof.date
    assert prof.regressions["conv"].n == 5 and prof.samples == [] and prof.machine == {"cpu": "x"}
    partial = assemble(run, "toy", g.fingerprint(), base=base, complete=False)
    assert len(partial.samples) == 5 and not partial.complete
    # the whole model measured as one part calibrates the chained segments (here: "b" after "a")
    run.chained = {("a", "b"): 0.5}
    run.result = {**run.result, "whole_model_ms": 2.0 + 0.5 * 0.8}
    scaled = assemble(run, "toy", g.fingerprint(), base=base, graph=g)
    assert scaled.whole_model_ms == pytest.approx(2.4) and scaled.chain_scale == pytest.approx(0.8)


def test_existing_profiles_refuse_another_model(tmp_path: Path) -> None:
    g = toy()
    p = cpu_profile(g)
    p.save(tmp_path / "d0.json")
    assert set(existing_profiles(str(tmp_path), ["d0", "d1"], "toy", g.fingerprint())) == {"d0"}
    with pytest.raises(ProfileError, match="profile of model 'toy'.*another -o directory"):
        existing_profiles(str(tmp_path), ["d0"], "resnet18", "sha256:other")
    p.save(tmp_path / "d1.json")  # d0's profile under d1's name
    with pytest.raises(ProfileError, match="holds the profile of device 'd0', not 'd1'"):
        existing_profiles(str(tmp_path), ["d1"], "toy", g.fingerprint())


# -- bad input through the CLI (exit 2, one line naming the fix; no worker is started) ----------------
def _yaml(tmp_path: Path, text: str) -> str:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    return str(f)


def test_profile_cli_bad_input(tmp_path: Path) -> None:
    neg = _yaml(tmp_path, "source: a\ndevices: [{name: a}, {name: b}]\nnetwork: {bandwidth_mbps: -5}\n")
    r = runner.invoke(build_app(), ["profile", neg, "-m", USER, *SHAPE, "-o", str(tmp_path / "p")])
    assert r.exit_code == 2 and "bandwidth_mbps" in r.output and "greater than 0" in r.output
    nolink = _yaml(tmp_path, "source: a\ndevices: [{name: a}, {name: b}]\n"
                             "network: {links: [{between: [a, z], bandwidth_mbps: 10}]}\n")
    r = runner.invoke(build_app(), ["profile", nolink, "-m", USER, *SHAPE])
    assert r.exit_code == 2 and "unknown device 'z'" in r.output
    # another model's profiles in -o: refused before any worker starts
    out = tmp_path / "prof"
    out.mkdir()
    g = toy()
    cpu_profile(g).save(out / "d0.json")
    r = runner.invoke(build_app(), ["profile", "het4", "-m", USER, *SHAPE, "-o", str(out)])
    assert r.exit_code == 2 and "profile of model 'toy'" in r.output and "another -o directory" in r.output
    r = runner.invoke(build_app(), ["profile", "het4", "-m", USER, *SHAPE, "--points", "1", "-o", str(tmp_path / "q")])
    assert r.exit_code == 2 and "--points" in r.output
    r = runner.invoke(build_app(), ["profile", "het4", "-m", "no_such_model"])
    assert r.exit_code == 2 and "no_such_model" in r.output
    # a backend that does not exist, or a precision it lacks: exit 2 before any worker starts
    r = runner.invoke(build_app(), ["profile", "het4", "-m", USER, *SHAPE, "--backend", "tensorrt",
                                    "-o", str(tmp_path / "r")])
    assert r.exit_code == 2 and "tensorrt" in r.output
    r = runner.invoke(build_app(), ["profile", "het4", "-m", USER, *SHAPE, "--backend", "torch",
                                    "--precision", "fp64", "-o", str(tmp_path / "s")])
    assert r.exit_code == 2 and "--precision fp64: precision 'fp64' is not one of" in " ".join(r.output.split())
    # QA: --backend auto was accepted (undocumented) and wrote <dev>@auto.json, then read for backend: torch
    r = runner.invoke(build_app(), ["profile", "het4", "-m", USER, *SHAPE, "--backend", "auto",
                                    "-o", str(tmp_path / "t")])
    assert r.exit_code == 2 and "--backend 'auto' is not one of torch, onnxruntime, openvino, all" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "t").exists()


def test_model_sweep_lifts_and_restores_the_cgroup_quota(tmp_path: Path) -> None:
    """The local workers profile_cluster started sweep without their quota (CPU-time profiles), then get it back."""
    from types import SimpleNamespace

    from coinfer.cost.remote import _Unthrottled

    def lim(mode: str, name: str) -> SimpleNamespace:
        d = tmp_path / name
        d.mkdir()
        (d / ("cpu.max" if mode == "cgroup-v2" else "cpu.cfs_quota_us")).write_text("x")
        return SimpleNamespace(mode=mode, path=d, quota_us=1500, period_us=10000, name=name)

    v1, v2 = lim("cgroup-v1", "a"), lim("cgroup-v2", "b")
    duty = SimpleNamespace(mode="duty-cycle", path=None, quota_us=None, period_us=10000, name="c")
    local = SimpleNamespace(workers={n: SimpleNamespace(name=n, limiter=li)
                                     for n, li in (("a", v1), ("b", v2), ("c", duty), ("d", None))})
    free = _Unthrottled(local)
    assert (v1.path / "cpu.cfs_quota_us").read_text() == "-1"
    assert (v2.path / "cpu.max").read_text() == "max 10000"
    assert [li.name for li in free.lifted] == ["a", "b"]
    free.restore()
    assert (v1.path / "cpu.cfs_quota_us").read_text() == "1500"
    assert (v2.path / "cpu.max").read_text() == "1500 10000"
    assert _Unthrottled(None).lifted == []  # workers started elsewhere (coinfer up, a testbed): left alone


def test_a_file_where_a_profiles_directory_goes_is_named(tmp_path: Path) -> None:
    """QA: --profiles FILE said the directory does not exist and to create it with -o FILE (overwriting
    it); -o FILE was 'File exists'."""
    f = tmp_path / "c2.yaml"
    f.write_text("source: a\n")
    with pytest.raises(ProfileError, match=r"is a file, not a directory; give the directory coinfer profile wrote"):
        ProfileSet.load_dir(f)
    r = runner.invoke(build_app(), ["profile", "het4", "-m", USER, *SHAPE, "-o", str(f)])
    assert r.exit_code == 2 and "is a file; profiles go into a directory" in " ".join(r.output.split())
