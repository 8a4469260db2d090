"""The simulator's CPU quota (``CpuBucket``) for shares below 0.1, whose periods are stretched to odd
lengths (0.03 -> 33.334 ms): a job throttled at a period's end computed that end's period index as the
period just ended (floating point), waited at the boundary again, and never returned — `coinfer plan`
hung for such a device (QA stop 26). Random job streams for several such shares now finish, and the
bucket still gives each period no more than its quota."""

from __future__ import annotations

import random
import signal

import pytest

from coinfer.cost.runtime import CpuBucket, CpuQuota


@pytest.mark.parametrize("share", [0.03, 0.07, 0.011, 0.013, 0.029, 0.031, 0.15])
def test_random_jobs_finish_and_respect_the_quota(share: float) -> None:
    q = CpuQuota.for_share(share)
    rng = random.Random(7)
    old = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("CpuBucket hung")))
    signal.alarm(20)
    try:
        for _ in range(5):
            b = CpuBucket(q, record=True)
            t = 0.0
            work = 0.0
            for _ in range(150):
                c = rng.uniform(0.01, 5)
                work += c
                t = b.run(t + rng.uniform(0, 3), c)
            assert b.runs is not None
            assert abs(sum(e - s for s, e in b.runs) - work) < 1e-6 * work  # every CPU-ms was run
            assert all(u <= q.bucket_ms + 1e-9 for u in b.used.values())  # never more than a quota
            assert t >= work / share * 0.5  # throttled: far slower than at full speed
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
