"""coinfer profile through the runtime: real workers with emulated CPU, probes over shaped links.

One pair of local workers (a fast and a slow emulated device, a 40 Mbit/s,
2 ms link) serves the whole module: a profile from scratch, a resume that
skips finished devices, a resume of an interrupted device, the measured
per-message costs and link probes; then ``coinfer bench``'s measuring path
on the same workers, and the CLI end to end on them (found the way
``coinfer up`` publishes its workers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coinfer.cluster import parse_cluster
from coinfer.cost import DeviceProfile, ProfileSet
from coinfer.cost.model import load_cost_model
from coinfer.cost.remote import profile_cluster
from coinfer.modelspec import capture_model
from coinfer.runtime.launcher import LocalCluster

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
USER, SHAPE = "core_helpers.user_models:user_net", (1, 3, 37, 29)
CLUSTER = {"source": "d0", "devices": [{"name": "d0", "cpu_share": 0.6}, {"name": "d1", "cpu_share": 0.3}],
           "network": {"bandwidth_mbps": 40, "latency_ms": 2.0}}


@pytest.fixture(scope="module")
def workers():  # type: ignore[no-untyped-def]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), old) if p)  # workers import core_helpers
    cl = parse_cluster(CLUSTER)
    lc = LocalCluster(cl).start()
    try:
        yield cl, lc
    finally:
        lc.stop()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _profile(cl, lc, out: Path, **kw):  # type: ignore[no-untyped-def]
    return profile_cluster(cl, USER, str(out), input_shape=SHAPE, addresses=lc.addresses, cpu_modes=lc.cpu_modes(),
                           reps=1, rows_points=4, **kw)


def test_profile_resume_and_probes(workers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cl, lc = workers
    job = _profile(cl, lc, tmp_path)
    assert job.measured == ["d0", "d1"] and job.probed and job.points > 0
    ps = ProfileSet.load_dir(tmp_path)
    g = capture_model(USER, SHAPE).graph
    ps.check(g, cl.names)
    emulated = lc.cpu_modes()["d1"] != "none"
    for d in cl.names:
        p = ps.get(d)
        assert p is not None and p.complete and p.stages and p.regressions
        assert p.timing == ("cpu" if emulated else "wall")
        # the probes went through the shaped link: 40 Mbit/s, RTT >= 2 x 2 ms
        probe = p.links["d1" if d == "d0" else "d0"]
        assert 28 <= probe.bandwidth_mbps <= 48, probe
        assert 4.0 <= probe.rtt_ms <= 60.0, probe
        assert p.runtime is not None and p.runtime.source == "probed" and p.runtime.recv_us > 0
    costs = load_cost_model(g, cl, str(tmp_path))
    assert costs.source_of("d1") == "profile"

    # everything there: nothing is measured again, nothing probed
    again = _profile(cl, lc, tmp_path)
    assert again.measured == [] and again.skipped == ["d0", "d1"] and not again.probed

    # an interrupted d1: the coordinator's checkpoint, minus its last segments
    p1 = DeviceProfile.load(tmp_path / "d1.json")
    keys = sorted(p1.stages)
    for k in keys[len(keys) // 2:]:
        del p1.stages[k]
    p1.complete = False
    p1.regressions = {}
    p1.save(tmp_path / "d1.json")
    before = DeviceProfile.load(tmp_path / "d0.json")
    resumed = _profile(cl, lc, tmp_path)
    assert resumed.measured == ["d1"] and resumed.resumed == ["d1"] and resumed.skipped == ["d0"]
    done = DeviceProfile.load(tmp_path / "d1.json")
    assert done.complete and set(done.stages) == set(keys) and done.regressions
    assert DeviceProfile.load(tmp_path / "d0.json").stages == before.stages


def test_bench_measures_plans_on_the_workers(workers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from coinfer.sim.validation import Case, Testbed, run_case

    cl, lc = workers
    _profile(cl, lc, tmp_path / "p", probe=False)
    bed = Testbed()
    bed.adopt(cl, lc)
    r = run_case(bed, Case(USER, "whole", "pair", 40.0, SHAPE), cl, str(tmp_path / "p"), repeat=2, warmup=1,
                 traces_dir=tmp_path / "t")
    bed.locals.clear()  # the module's workers stay up
    assert r.measured_ms > 0 and r.predicted_ms > 0 and len(r.runs_ms) == 2 and r.measured_bytes > 0
    assert (tmp_path / "t" / f"{r.case}.measured.json").is_file()


def test_profile_cli_uses_coinfer_up_workers(workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The CLI end to end, on the workers a `coinfer up` recorded (the module's, via its state file)."""
    import subprocess
    import sys

    from coinfer.runtime import upstate

    _, lc = workers
    cache = tmp_path / "cache"
    monkeypatch.setenv("COINFER_CACHE", str(cache))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(CLUSTER))
    upstate.write(str(cfg), lc.addresses, {n: w.proc.pid for n, w in lc.workers.items()}, lc.cpu_modes())
    out = tmp_path / "prof"
    exe = Path(sys.executable).parent / "coinfer"
    env = {**os.environ, "COINFER_CACHE": str(cache), "NO_COLOR": "1"}
    r = subprocess.run([str(exe), "profile", str(cfg), "-m", USER, "--input-shape", "1,3,37,29", "-o", str(out),
                        "--reps", "1", "--points", "3", "--json"], capture_output=True, text=True, env=env,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert s["measured"] == ["d0", "d1"] and s["links_probed"] and set(s["devices"]) == {"d0", "d1"}
    assert s["devices"]["d1"]["timing"] == ("cpu" if lc.cpu_modes()["d1"] != "none" else "wall")
    assert (out / "d0.json").is_file() and (out / "d1.json").is_file()
    assert all(w.alive() for w in lc.workers.values())  # the CLI did not start or stop workers


def test_each_backend_gets_its_own_profile_and_the_cluster_picks(workers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Issue 10: torch and onnxruntime profiles side by side; the cost model takes the cluster's backend."""
    pytest.importorskip("onnxruntime")
    cl, lc = workers
    _profile(cl, lc, tmp_path, probe=False)
    _profile(cl, lc, tmp_path, probe=False, backend="onnxruntime")
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["d0.json", "d0@onnxruntime.json",
                                                                "d1.json", "d1@onnxruntime.json"]
    ps = ProfileSet.load_dir(tmp_path)
    assert set(ps.alternatives["d0"]) == {"torch", "onnxruntime"}
    for be in ("torch", "onnxruntime"):
        spec = {**CLUSTER, "devices": [{**d, "backend": be} for d in CLUSTER["devices"]]}
        chosen = ps.select(parse_cluster(spec))
        assert {d: p.backend for d, p in chosen.items()} == {"d0": be, "d1": be}
    # resuming one backend leaves the other's files alone
    again = _profile(cl, lc, tmp_path, probe=False, backend="onnxruntime")
    assert again.skipped == ["d0", "d1"] and again.measured == []


def test_links_of_an_unshaped_cluster_are_probed_at_loopback_speed(workers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``network.shape: false`` (loopback speed, as the docs advise for local tests): the probe sized
    its messages for the nominal rate (a few hundred KB at 40 Mbit/s), which loopback moves in
    well under a millisecond — the fit's slope was noise and `coinfer profile` failed 'transfer
    time does not grow with size' 3 runs in 3. Now an unshaped link is probed with the largest size."""
    cl, lc = workers
    flat = cl.model_copy(update={"network": cl.network.model_copy(update={"shape": False})})
    for i in range(3):
        out = tmp_path / f"p{i}"
        job = _profile(flat, lc, out)
        assert job.probed
        links = ProfileSet.load_dir(out).profiles["d0"].links
        assert links["d1"].bandwidth_mbps > 400, links  # not the nominal 40: the loopback
