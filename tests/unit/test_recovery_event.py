"""What ``coinfer run`` prints for each plan change after devices died or came back."""

from __future__ import annotations

import time

from coinfer.runtime.coordinator import RecoveryEvent


def test_describe_a_failure_switched_to_a_prepared_plan() -> None:
    t = time.mktime((2026, 12, 6, 14, 2, 3, 0, 0, -1))
    line = RecoveryEvent(t, ["d2"], 28.4, 1490.2, ["d0", "d1", "d3"], "prepared").describe()
    assert line == ("14:02:03 d2 dead -> over d0, d1, d3 (switched to a prepared plan, 28 ms; "
                    "the failed request took 1490 ms)")


def test_describe_a_device_back_built_in_the_background() -> None:
    t = time.mktime((2026, 12, 6, 14, 2, 9, 0, 0, -1))
    line = RecoveryEvent(t, [], 2281.0, 0.0, ["d0", "d1", "d2", "d3"], "background").describe()
    assert line == "14:02:09 all devices alive -> over d0, d1, d2, d3 (planned and built in the background, 2281 ms)"


def test_a_failure_rebuilt_by_default() -> None:
    e = RecoveryEvent(0.0, ["b"], 5351.0, 6950.0, ["a"])
    assert e.how == "rebuilt" and "planned and built while a request waited, 5351 ms" in e.describe()
