"""Link shaping arithmetic (coinfer.runtime.shaping): serialisation, latency, trace replay, CSV."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from coinfer.errors import UserError
from coinfer.runtime.shaping import LinkShaper, TraceError, load_trace_csv


def test_fixed_rate_and_latency() -> None:
    s = LinkShaper(100, latency_ms=5)
    assert s.schedule(10_000_000, now=100.0) == pytest.approx(100.0 + 0.8 + 0.005)
    # the next message queues behind the first (bandwidth), but latency pipelines
    assert s.schedule(1_250_000, now=100.0) == pytest.approx(100.0 + 0.8 + 0.1 + 0.005)
    # an idle link starts at 'now'
    assert s.schedule(125_000, now=200.0) == pytest.approx(200.0 + 0.01 + 0.005)
    assert s.rate_mbps(0.0) == 100


def test_infinite_rate_is_latency_only_and_zero_bytes_cost_nothing() -> None:
    s = LinkShaper(math.inf, latency_ms=20)
    assert s.schedule(10**9, now=1.0) == pytest.approx(1.02)
    assert LinkShaper(10).schedule(0, now=3.0) == 3.0


@pytest.mark.parametrize("bad", [0, -1, math.nan])
def test_rate_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        LinkShaper(bad)
    with pytest.raises(ValueError, match="latency"):
        LinkShaper(10, latency_ms=-1)


def test_trace_integrates_across_rate_changes_and_loops() -> None:
    # 100 Mbit/s for 1 s, then 10 Mbit/s for 1 s (the last row lasts the mean step), looping
    s = LinkShaper(1, trace=[(0.0, 100.0), (1.0, 10.0)], t0=0.0)
    assert s.rate_mbps(0.5) == 100 and s.rate_mbps(1.5) == 10 and s.rate_mbps(2.5) == 100
    mb = 1e6 / 8  # bytes in one Mbit
    assert s.schedule(int(100 * mb), now=0.0) == pytest.approx(1.0)  # exactly the fast second
    s.reset()
    assert s.schedule(int(110 * mb), now=0.0) == pytest.approx(2.0)  # + the whole slow second
    s.reset()
    assert s.schedule(int(60 * mb), now=0.5) == pytest.approx(2.0)  # 50 fast + 10 slow
    s.reset()
    assert s.schedule(int(330 * mb), now=0.0) == pytest.approx(6.0)  # three whole periods
    s.reset()
    assert s.schedule(int(5 * mb), now=1.5) == pytest.approx(2.0)


def test_trace_times_are_relative_to_first_row_and_t0() -> None:
    s = LinkShaper(1, trace=[(10.0, 8.0), (12.0, 80.0), (14.0, 8.0)], t0=50.0)
    assert s.rate_mbps(50.0) == 8 and s.rate_mbps(52.5) == 80 and s.rate_mbps(55.0) == 8
    assert s.rate_mbps(56.1) == 8  # 56 = 50 + period 6: looped to the start


def test_single_row_trace_holds() -> None:
    s = LinkShaper(1, trace=[(0.0, 8.0)], t0=0.0)
    assert s.schedule(1_000_000, now=0.0) == pytest.approx(1.0)
    assert s.schedule(3_000_000, now=0.0) == pytest.approx(4.0)


def test_schedule_is_thread_safe() -> None:
    s = LinkShaper(8, latency_ms=0)  # 1 MB/s
    out: list[float] = []
    lock = threading.Lock()

    def go() -> None:
        for _ in range(100):
            d = s.schedule(1000, now=0.0)
            with lock:
                out.append(d)

    ts = [threading.Thread(target=go) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(out) == pytest.approx([0.001 * (i + 1) for i in range(800)])


def test_bad_trace_rows() -> None:
    with pytest.raises(ValueError, match="times must increase"):
        LinkShaper(1, trace=[(0, 1), (0, 2)])
    with pytest.raises(ValueError, match="rate must be > 0"):
        LinkShaper(1, trace=[(0, 1), (1, 0)])


def test_load_trace_csv(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("t_s,mbps\n0,100\n# comment\n\n1.5, 20  \n3,50\n")
    assert load_trace_csv(p) == [(0.0, 100.0), (1.5, 20.0), (3.0, 50.0)]
    p.write_text("0,100\n1,5\n")  # no header
    assert load_trace_csv(p) == [(0.0, 100.0), (1.0, 5.0)]


@pytest.mark.parametrize("text,msg", [
    ("t_s,mbps\n0,100\n1,-3\n", "t.csv:3: rate must be > 0 Mbit/s (got -3)"),
    ("0,100\n1,0\n", "t.csv:2: rate must be > 0"),
    ("0,100\n1,50\n1,40\n", "t.csv:3: t_s 1 is not after the previous row's 1; times must increase"),
    ("0,100\n2,50\n1,40\n", "times must increase"),
    ("0,100\nabc,4\n", "t.csv:2: 'abc,4' is not two numbers"),
    ("0,100,7\n", "t.csv:1: expected 2 columns"),
    ("t_s,mbps\n", "no rows"),
    ("-1,100\n", "t_s must be a finite number >= 0"),
])
def test_load_trace_csv_errors_are_one_line(tmp_path: Path, text: str, msg: str) -> None:
    p = tmp_path / "t.csv"
    p.write_text(text)
    with pytest.raises(TraceError) as ei:
        load_trace_csv(p)
    assert msg in str(ei.value)
    assert "\n" not in str(ei.value)
    assert isinstance(ei.value, UserError)


def test_missing_trace_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"bandwidth trace '.*nope\.csv' does not exist; give a CSV"):
        load_trace_csv(tmp_path / "nope.csv")
