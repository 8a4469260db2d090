"""Profiles (round trip, loading errors), regressions, host calibration files (torch-free)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coinfer.cluster import parse_cluster
from coinfer.cost import (
    CostModel,
    DeviceProfile,
    HostCalibration,
    LinkProbe,
    ProfileError,
    ProfileSet,
)
from coinfer.cost.calibration import BUILTIN, CalibrationError, load_calibration, save_calibration
from coinfer.cost.regression import LayerRegression, LayerSample, features, fit
from coinfer.graph.ir import Graph, Node


def graph(name: str = "toy", width: int = 8) -> Graph:
    conv = Node("a", "conv", ("x",), (1, 4, 8, width),
                {"kernel": [3, 3], "stride": [1, 1], "dilation": [1, 1], "pad": [1, 1, 1, 1], "groups": 1,
                 "cin": 1, "cout": 4}, flops=2 * 9 * 4 * 8 * width, param_bytes=144)
    return Graph(name, [Node("x", "input", (), (1, 1, 8, width)), conv,
                        Node("r", "act", ("a",), (1, 4, 8, width), {"fn": "relu"})])


def full_profile(g: Graph, device: str = "d0") -> DeviceProfile:
    return DeviceProfile(
        device, g.name, g.fingerprint(), date="2025-01-01T00:00:00+00:00",
        machine={"cpu": "test", "cpus": 2}, backend="torch",
        stages={("x", "a"): [(8, 2.0), (1, 0.5), (4, 1.2)]},
        whole={("a", "r"): 0.3},
        regressions={"conv": LayerRegression("conv", ("in_melems", "ks2_filters_k", "gmacs", "one"),
                                             (1.0, 2.0, 3.0, 0.1), 12, 0.01)},
        links={"d1": LinkProbe(95.5, 1.2)},
        calibration=HostCalibration(source="measured", machine={"cpu": "test"}),
    )


def cluster() -> object:
    return parse_cluster({"source": "d0", "devices": [{"name": "d0"}, {"name": "d1"}]})


def test_profile_round_trip(tmp_path: Path) -> None:
    g = graph()
    p = full_profile(g)
    assert p.stages[("x", "a")] == [(1, 0.5), (4, 1.2), (8, 2.0)]  # sorted by rows
    again = DeviceProfile.from_dict(json.loads(p.to_json()))
    assert again == p
    assert again.to_dict()["format"] == "coinfer.profile/1"
    ps = ProfileSet({"d0": p, "d1": full_profile(g, "d1")})
    ps.save_dir(tmp_path / "prof")
    back = ProfileSet.load_dir(tmp_path / "prof")
    assert sorted(back) == ["d0", "d1"] and back.get("d0") == p
    CostModel(g, cluster(), back)  # accepted for this model and cluster


def test_profile_of_another_model_is_refused(tmp_path: Path) -> None:
    ProfileSet({"d0": full_profile(graph("vgg16", width=16))}).save_dir(tmp_path)
    with pytest.raises(ProfileError, match=r"measured for model 'vgg16', not toy.*coinfer profile"):
        CostModel(graph(), cluster(), ProfileSet.load_dir(tmp_path))


def test_profile_of_another_version_is_refused() -> None:
    old = full_profile(graph(width=16))
    with pytest.raises(ProfileError, match="another version of 'toy'"):
        CostModel(graph(), cluster(), {"d0": old})


def test_profile_of_another_device_is_refused(tmp_path: Path) -> None:
    g = graph()
    ProfileSet({"pi9": full_profile(g, "pi9")}).save_dir(tmp_path)
    with pytest.raises(ProfileError, match="device 'pi9', which the cluster does not have"):
        CostModel(g, cluster(), ProfileSet.load_dir(tmp_path))


def test_profile_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist.*coinfer profile"):
        ProfileSet.load_dir(tmp_path / "nope")
    with pytest.raises(ProfileError, match="no profiles"):
        ProfileSet.load_dir(tmp_path)
    g = graph()
    full_profile(g).save(tmp_path / "other.json")
    with pytest.raises(ProfileError, match="name it d0.json"):
        ProfileSet.load_dir(tmp_path)
    (tmp_path / "other.json").write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        ProfileSet.load_dir(tmp_path)


@pytest.mark.parametrize("edit, msg", [
    (lambda d: d.update(format="coinfer.profile/0"), "re-run coinfer profile"),
    (lambda d: d.update(colour="red"), "unknown field"),
    (lambda d: d["stages"][0].update(rows=[[0, 1.0]]), "rows >= 1"),
    (lambda d: d["links"]["d1"].update(bandwidth_mbps=-3), "bandwidth must be > 0"),
    (lambda d: d.pop("device"), "missing field"),
    # QA: edited values were accepted (a 100x chain scale priced the model 6x slower)
    (lambda d: d.update(chain_scale=100), "chain_scale must be in"),
    (lambda d: d.update(whole_model_ms=-3), "whole_model_ms must be > 0"),
    (lambda d: d.update(backend="tensorrt"), "backend 'tensorrt' is not one of"),
    (lambda d: d["stages"][0].update(rows=[[5, 1.0], [1, 2.0], [5, 3.0]]), "rows must rise strictly"),
])
def test_malformed_profiles(edit: object, msg: str) -> None:
    d = full_profile(graph()).to_dict()
    edit(d)  # type: ignore[operator]
    with pytest.raises(ProfileError, match=msg):
        DeviceProfile.from_dict(d)


def test_regression_recovers_a_linear_law() -> None:
    rng = np.random.default_rng(0)
    true = np.array([3.0, 0.5, 40.0, 0.2])
    samples = []
    for _ in range(20):
        i, o, f = (int(x) for x in rng.integers(1_000, 2_000_000, 3))
        k, filters = int(rng.integers(1, 4)) * 2 - 1, int(rng.integers(8, 512))
        node = Node("c", "conv", ("x",), (1, filters, 8, 8),
                    {"kernel": [k, k], "stride": [1, 1], "dilation": [1, 1], "pad": [0, 0, 0, 0], "groups": 1})
        fam, x = features(node, i, o, f)
        samples.append(LayerSample(fam, tuple(x), float(np.dot(true, x))))
    samples.append(LayerSample("act", (0.1, 1.0), 1.0))  # too few to fit
    regs = fit(samples)
    assert set(regs) == {"conv"}
    assert np.allclose(regs["conv"].coef, true) and regs["conv"].rmse_ms < 1e-9 and regs["conv"].n == 20
    assert regs["conv"].predict((0.0, 0.0, 0.0, -1.0)) == 0.0  # clamped


def test_regression_features_follow_edgent() -> None:
    g = graph()
    fam, x = features(g["a"], 64, 256, 2 * 9 * 4 * 64)
    # input size (M elements), (k/s)^2 x filters (thousands), MACs (G), bias
    assert fam == "conv" and x == pytest.approx([64e-6, 36e-3, 9 * 4 * 64 / 1e9, 1.0])
    assert features(g["r"], 256, 256, 0) == ("act", [256e-6, 1.0])
    lin = Node("fc", "linear", ("f",), (1, 10), {"in": 512, "out": 10}, flops=2 * 5120)
    assert features(lin, 512, 10, 2 * 5120) == ("linear", pytest.approx([0.512, 0.01, 5120e-9, 1.0]))


def test_calibration_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path))
    assert load_calibration() == BUILTIN
    cal = HostCalibration(80, 20, 0.05, 30, 10, 12, "measured", {"cpu": "x"})
    save_calibration(cal)
    assert (tmp_path / "calibration.json").is_file()
    assert load_calibration() == cal
    assert cal.scaled(2.0).gemm_gflops == 40 and cal.scaled(2.0).node_overhead_us == 24
    with pytest.raises(CalibrationError, match="must be > 0"):
        HostCalibration(gemm_gflops=0)
    (tmp_path / "calibration.json").write_text(json.dumps({**cal.to_dict(), "extra": 1}))
    with pytest.raises(CalibrationError, match="unknown field"):
        load_calibration()
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration(tmp_path / "nope.json")


def test_link_probe_fit() -> None:
    # 100 Mbit/s = 12,500 bytes per ms, plus 2 ms of latency and overhead
    transfers = [(b, 2.0 + b / 12_500) for b in (65_536, 1_000_000, 4_000_000, 4_000_000)]
    p = LinkProbe.fit([1.9, 2.1, 2.0], transfers)
    assert p.bandwidth_mbps == pytest.approx(100.0) and p.rtt_ms == 2.0
    with pytest.raises(ProfileError, match="two sizes"):
        LinkProbe.fit([1.0], [(10, 1.0), (10, 2.0)])


def test_link_probe_fit_ignores_stalled_repeats() -> None:
    """A repeat that met a stall (a throttled quota period: +8 ms) says nothing about the link: the fit
    takes each size's fastest transfer. On an unshaped loopback link stalls are larger than the
    differences between sizes, and the least squares over every repeat turned the slope negative."""
    # 5 Gbit/s = 625,000 bytes per ms, 0.3 ms of overhead; the largest size stalled once of three
    sizes = (1024, 1_048_576, 4_194_304)
    transfers = [(b, 0.3 + b / 625_000) for b in sizes for _ in range(3)]
    transfers += [(1024, 0.3 + 8.0), (1024, 0.3 + 8.0)]
    p = LinkProbe.fit([0.2], transfers)
    assert p.bandwidth_mbps == pytest.approx(5000.0, rel=1e-6)


def test_profile_constants_match_their_sources_and_unknown_segments_are_refused() -> None:
    from coinfer.cost import profile as P
    from coinfer.cost.measure import CHAIN_SCALE_MAX, CHAIN_SCALE_MIN
    from coinfer.execute.backends.base import BACKENDS

    assert P.CHAIN_SCALE == (CHAIN_SCALE_MIN, CHAIN_SCALE_MAX) and set(P.KNOWN_BACKENDS) == set(BACKENDS)
    g = graph()
    prof = full_profile(g)
    prof.stages[("nonexistent_node", next(iter(prof.stages))[1])] = [(1, 1.0)]
    with pytest.raises(ProfileError, match="segment nonexistent_node→.* does not have"):
        P.ProfileSet({prof.device: prof}).check(g, [prof.device])
