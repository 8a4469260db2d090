"""Power readers on fake sysfs trees (RAPL powercap, Jetson INA3221)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coinfer.cost.power import find_ina3221, find_rapl, integrate


def write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


def test_rapl_packages_and_wraparound(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    for pkg, e in ((0, 1_000_000), (1, 5_000_000)):
        write(root / f"intel-rapl:{pkg}" / "energy_uj", str(e))
        write(root / f"intel-rapl:{pkg}" / "max_energy_range_uj", "10000000")
        write(root / f"intel-rapl:{pkg}" / "name", f"package-{pkg}")
    write(root / "intel-rapl:0:0" / "energy_uj", "777")  # a sub-domain: not added again
    r = find_rapl(root)
    assert r is not None and [d.name for d in r.domains] == ["package-0", "package-1"]
    before = r.read_uj()
    assert before == (1_000_000, 5_000_000)
    write(root / "intel-rapl:0" / "energy_uj", "3500000")  # +2.5 J
    write(root / "intel-rapl:1" / "energy_uj", "500000")  # wrapped: +5.5 J
    after = r.read_uj()
    assert after is not None
    assert r.delta_j(before, after) == pytest.approx(8.0)


def test_rapl_absent_or_unreadable(tmp_path: Path) -> None:
    assert find_rapl(tmp_path / "nothing") is None
    write(tmp_path / "intel-rapl:0" / "energy_uj", "permission denied")
    assert find_rapl(tmp_path) is None


def test_ina3221_jetpack4_iio(tmp_path: Path) -> None:
    dev = tmp_path / "ina3221x" / "0-0040" / "iio:device0"
    for ch, (name, mw) in enumerate((("VDD_IN", 5000), ("VDD_GPU", 1200), ("VDD_CPU", 800))):
        write(dev / f"in_power{ch}_input", str(mw))
        write(dev / f"rail_name_{ch}", name)
    r = find_ina3221(tmp_path)
    assert r is not None
    assert r.power_w() == pytest.approx(7.0)
    assert r.rails() == {"VDD_IN": 5.0, "VDD_GPU": 1.2, "VDD_CPU": 0.8}


def test_ina3221_jetpack5_hwmon(tmp_path: Path) -> None:
    hw = tmp_path / "ina3221" / "1-0040" / "hwmon" / "hwmon3"
    write(hw / "in1_input", "5000")  # mV
    write(hw / "curr1_input", "1000")  # mA -> 5 W
    write(hw / "in1_label", "VDD_IN")
    write(hw / "in2_input", "5000")
    write(hw / "curr2_input", "200")  # 1 W
    write(hw / "in7_input", "4")  # no current file: not a power rail
    r = find_ina3221(tmp_path)
    assert r is not None and r.power_w() == pytest.approx(6.0)
    assert set(r.rails()) == {"VDD_IN", "ch2"}


def test_ina3221_absent(tmp_path: Path) -> None:
    assert find_ina3221(tmp_path) is None


def test_integrate_trapezoid() -> None:
    assert integrate([(0.0, 2.0), (1.0, 4.0), (3.0, 4.0)]) == pytest.approx(3.0 + 8.0)
    assert integrate([(0.0, 5.0)]) == 0.0
