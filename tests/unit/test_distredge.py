"""DistrEdge: the LC-PSS partitioner's row arithmetic, the splitter environment, training with a tiny
budget, exact plans, the policy cache, and bad input (exit 2)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coinfer.cli.main import build_app
from coinfer.cluster import builtin_cluster, parse_cluster
from coinfer.cost import CostModel
from coinfer.graph.geometry import part_geometry
from coinfer.strategies import PlanRequest, StrategyError, run
from coinfer.strategies.distredge import (
    Partitioner,
    actions_to_rows,
    cluster_description,
    cluster_differences,
    cluster_fingerprint,
    partition_volumes,
    rows_from_fractions,
    volume_rows,
)
from coinfer.train.distredge import check_policy_meta

MODEL = "alexnet_digits"  # 64x64: fast to plan and to verify
runner = CliRunner()


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("model", ["resnet18_digits", "user:UserNet"])
def test_volume_rows_match_exact_geometry(captured, model: str) -> None:  # type: ignore[no-untyped-def]
    """The vectorised receptive-field rows and FLOPs equal part_geometry's for random row ranges."""
    g = captured(model).graph
    split = [c for c, ok in g.splittable_cuts().items() if ok]
    rng = np.random.default_rng(0)
    for s, e in [(g.input.name, split[len(split) // 2]), (split[1], split[-1]), (g.input.name, split[-1])]:
        h = g[e].height
        a = rng.integers(0, h, 12)
        b = np.minimum(h, a + rng.integers(1, h + 1, 12))
        il, ih, fl = volume_rows(g, s, e, a, b)
        for k in range(12):
            geom = part_geometry(g, s, e, (int(a[k]), int(b[k]), 0, g[e].width), "exact")
            assert geom.in_region is not None
            assert (il[k], ih[k]) == (geom.in_region[0], geom.in_region[1]), (s, e, a[k], b[k])
            assert fl[k] == pytest.approx(geom.flops, rel=1e-6, abs=2)


def test_rows_and_actions() -> None:
    a, b = rows_from_fractions(10, np.array([[0.25, 0.25, 0.5], [1.0, 0.0, 0.0]]))
    assert a.tolist() == [[0, 2, 5], [0, 10, 10]] and b.tolist() == [[2, 5, 10], [10, 10, 10]]
    assert actions_to_rows([0.5, -1.0, 0.0], 8, 4) == [(0, 0), (0, 4), (4, 6), (6, 8)]  # sorted cuts
    assert actions_to_rows([2.0], 8, 2) == [(0, 8), (8, 8)]  # clipped to [-1, 1]


def test_partitioner_greedy_lowers_cp(captured) -> None:  # type: ignore[no-untyped-def]
    g = captured("vgg16").graph
    cl = builtin_cluster("het4")
    costs = CostModel(g, cl)
    part = Partitioner(g, cl.names, cl.source, {d: costs.speed(d) for d in cl.names}, 100.0, n_random=30)
    best, hist = part.greedy()
    split = [c for c, ok in g.splittable_cuts().items() if ok]
    assert best.boundaries[-1] == split[-1] and best.boundaries == sorted(best.boundaries, key=g.index)
    assert [h.cp for h in hist] == sorted((h.cp for h in hist), reverse=True)
    assert len(best.boundaries) > 1  # VGG-16's 224x224 maps: one fused volume is far too redundant
    # alpha = 0 (operations only): every boundary lowers O, so the greedy keeps adding them
    ops = Partitioner(g, cl.names, cl.source, part.speeds, 100.0, alpha=0.0, n_random=30).greedy()[0]
    assert len(ops.boundaries) >= len(best.boundaries)
    b, info = partition_volumes(PlanRequest(g, cl, "vgg16", costs), costs, n_random=30)
    assert b == best.boundaries and info["volumes"] == len(b)


def _req(captured, cluster: str = "het4", **params):  # type: ignore[no-untyped-def]
    g = captured(MODEL).graph
    cl = builtin_cluster(cluster)
    return PlanRequest(g, cl, MODEL, CostModel(g, cl), params={"costs": "analytic", **params})


def test_env_step_reward_is_inverse_simulated_latency(captured) -> None:  # type: ignore[no-untyped-def]
    from coinfer.strategies.distredge import choose_tail
    from coinfer.train.distredge_env import DistrEdgeEnv

    req = _req(captured)
    g = req.graph
    split = [c for c, ok in g.splittable_cuts().items() if ok]
    bounds = [split[2], split[-1]]
    env = DistrEdgeEnv(req, req.costs, bounds, choose_tail(g, req.costs, bounds[-1], req.devices, req.source))
    obs, _ = env.reset()
    assert obs.shape == env.observation_space.shape and env.action_space.shape == (3,)
    assert np.all(obs[:4] == 0)
    obs, r, done, _, _ = env.step(np.array([-0.5, 0.0, 0.5]))
    assert r == 0.0 and not done and obs[:4].max() > 0  # latencies accumulated
    obs, r, done, _, info = env.step(np.array([-1.0, -1.0, 1.0]))  # d0, d1 get nothing; d2 all but d3... rows
    assert done and r == pytest.approx(env.t_ref / info["latency_ms"])
    assert info["latency_ms"] == pytest.approx(env.simulate(env.splits))
    assert env.history[-1]["latency_ms"] == info["latency_ms"] and env.best is not None


def test_plan_tiny_budget_verifies_exactly_and_caches(captured, cache: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import tempfile

    from coinfer.execute.local import TOLERANCE, InProcessExecutor, compare

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where stable-baselines3's default logger writes
    t0 = time.perf_counter()
    res = run("distredge", _req(captured, train_episodes=40))
    first_s = time.perf_counter() - t0
    assert not list(tmp_path.glob("SB3-*")), "training left a stable-baselines3 log directory behind"
    plan = res.plan
    assert res.info["trained"] and res.info["episodes"] == 40 and plan.strategy.name == "distredge"
    assert all(s.halo == "exact" for s in plan.stages) and plan.wire.lossless
    c = captured(MODEL)
    assert compare(InProcessExecutor(c.cm, plan)(c.x), c.ref)[1] <= TOLERANCE  # exact
    assert res.info["policy_inference_ms"] < 50.0
    assert Path(res.info["policy"]).is_file() and Path(res.info["policy"]).with_suffix(".json").is_file()
    # the second call loads the cached policy: the same plan, no training
    t0 = time.perf_counter()
    again = run("distredge", _req(captured, train_episodes=40))
    assert not again.info["trained"] and again.plan.to_dict() == plan.to_dict()
    assert time.perf_counter() - t0 < first_s
    # lossless codecs are fine, and the plan says so
    z = run("distredge", _req(captured, train_episodes=40, wire="zstd"))
    assert z.plan.wire.codec == "zstd" and z.plan.wire.quant is None


def test_policy_for_another_cluster_is_refused(captured, cache: Path) -> None:  # type: ignore[no-untyped-def]
    res = run("distredge", _req(captured, train_episodes=20))
    pol = res.info["policy"]
    meta = json.loads(Path(pol).with_suffix(".json").read_text())
    assert meta["cluster"] == cluster_fingerprint(builtin_cluster("het4"))
    other = _req(captured, "eq4", train_episodes=20, policy=pol)
    with pytest.raises(StrategyError, match="trained for another cluster.*retrain"):
        run("distredge", other)
    # the same policy on its own cluster loads
    assert not run("distredge", _req(captured, train_episodes=20, policy=pol)).info["trained"]


def test_policy_for_another_cluster_names_what_differs(captured) -> None:  # type: ignore[no-untyped-def]
    """QA: a demo4 policy on eq4 said "devices ['d0'…'d3']; this cluster has ['d0'…'d3']" — the same
    names. The message names the cpu shares (and links) that differ; no training needed."""
    demo4 = builtin_cluster("demo4")
    meta = {"cluster": cluster_fingerprint(demo4), "cluster_desc": cluster_description(demo4),
            "devices": demo4.names, "source": demo4.source}
    req = _req(captured, "eq4")
    with pytest.raises(StrategyError) as e:
        check_policy_meta(meta, req, "p.zip")
    msg = str(e.value)
    assert "d1 cpu_share 0.25 → " in msg and "retrain" in msg and "\n" not in msg
    slow = parse_cluster({"source": "d0", "devices": [{"name": "d0"}, {"name": "d1"}],
                          "network": {"bandwidth_mbps": 100, "latency_ms": 0.5}})
    fast = parse_cluster({"source": "d0", "devices": [{"name": "d0"}, {"name": "d1"}],
                          "network": {"bandwidth_mbps": 10, "latency_ms": 0.5}})
    diffs = cluster_differences(cluster_description(slow), cluster_description(fast))
    assert len(diffs) == 1 and diffs[0].startswith("link d0-d1") and "100" in diffs[0] and "10" in diffs[0]


def test_policy_files_that_are_not_a_policy_are_refused(captured, cache: Path,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    """--param policy=FILE naming an image (as the .zip or as its .json) or broken JSON is one line, exit 2."""
    res = run("distredge", _req(captured, train_episodes=20))
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"
    zpath, mpath = tmp_path / "pol.zip", tmp_path / "pol.json"
    zpath.write_bytes(png)
    mpath.write_text(Path(res.info["policy"]).with_suffix(".json").read_text())
    with pytest.raises(StrategyError, match=r"^policy .*pol\.zip cannot be loaded \(\w+: .*\); give the \.zip that "
                                            r"coinfer train distredge"):
        run("distredge", _req(captured, train_episodes=20, policy=str(zpath)))
    mpath.write_bytes(png)
    with pytest.raises(StrategyError, match=r"^policy .*pol\.zip: description '.*pol\.json' is not a text \(JSON\) file — give the \.zip"):
        run("distredge", _req(captured, train_episodes=20, policy=str(zpath)))
    mpath.write_text("{")
    with pytest.raises(StrategyError, match=r"pol\.json is not valid JSON \(.*line 1\); give the \.zip"):
        run("distredge", _req(captured, train_episodes=20, policy=str(zpath)))


@pytest.mark.parametrize("params, match", [
    ({"wire": "int4"}, "lossless-only"),
    ({"wire": "int8"}, "lossless-only"),
    ({"algo": "ppo"}, "algo"),
    ({"train_episodes": 0}, "train_episodes must be >= 1"),
    ({"alpha": 2}, "alpha must be between 0 and 1"),
    ({"n_random": 0}, "n_random must be >= 1"),
    ({"max_volumes": 0}, "max_volumes must be >= 1"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"nonsense": 1}, "unknown parameter"),
    ({"shaping": "bonus"}, "shaping"),
])
def test_bad_parameters(captured, params: dict, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StrategyError, match=match):
        run("distredge", _req(captured, **params))


def test_cli_bad_input_exits_2(tmp_path: Path, cache: Path, captured) -> None:  # type: ignore[no-untyped-def]
    r = runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", "het4", "-s", "distredge", "-p", "wire=int4",
                                    "-o", str(tmp_path / "p.json")])
    assert r.exit_code == 2 and "lossless" in r.output and "Traceback" not in r.output
    res = run("distredge", _req(captured, train_episodes=20))
    r = runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", "eq4", "-s", "distredge", "-p", "costs=analytic",
                                    "-p", f"policy={res.info['policy']}", "-o", str(tmp_path / "p.json")])
    assert r.exit_code == 2 and "another cluster" in r.output


def test_cli_plan_train_episodes(tmp_path: Path, cache: Path) -> None:
    """``coinfer plan --strategy distredge --train-episodes N`` trains N episodes, then loads the cache."""
    args = ["plan", "-m", MODEL, "-c", "het4", "-s", "distredge", "-p", "costs=analytic", "--train-episodes", "20",
            "-o", str(tmp_path / "p.json"), "--json"]
    r = runner.invoke(build_app(), args)
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout.strip().splitlines()[-1])["info"]
    assert info["trained"] and info["episodes"] == 20 and info["policy_inference_ms"] < 50.0
    r = runner.invoke(build_app(), args)
    assert r.exit_code == 0 and not json.loads(r.stdout.strip().splitlines()[-1])["info"]["trained"]
    # without --json the plan says where its splits came from
    r = runner.invoke(build_app(), args[:-1])
    out = " ".join(r.output.split())
    assert r.exit_code == 0 and "distredge: " in out and "layer volume(s); splits from " in out, r.output
    r = runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", "het4", "-s", "aofl", "--train-episodes", "20",
                                    "-o", str(tmp_path / "q.json")])
    assert r.exit_code == 2 and "distredge" in r.output


def test_env_memo_matches_uncached(captured) -> None:  # type: ignore[no-untyped-def]
    """Repeated splits hit the memos and give exactly what a fresh computation gives."""
    from coinfer.strategies.distredge import choose_tail
    from coinfer.train.distredge_env import DistrEdgeEnv

    req = _req(captured)
    g = req.graph
    split = [c for c, ok in g.splittable_cuts().items() if ok]
    bounds = [split[1], split[-1]]
    tail = choose_tail(g, req.costs, bounds[-1], req.devices, req.source)
    env = DistrEdgeEnv(req, req.costs, bounds, tail)
    acts = [np.array([-0.6, 0.1, 0.4]), np.array([-0.2, 0.0, 0.7])]
    rewards = []
    for _ in range(2):
        env.reset()
        out = [env.step(a) for a in acts]
        rewards.append((out[-1][1], env.acc.copy()))
    fresh = DistrEdgeEnv(req, req.costs, bounds, tail)
    fresh.reset()
    out = [fresh.step(a) for a in acts]
    assert rewards[0][0] == rewards[1][0] == out[-1][1]
    assert np.array_equal(rewards[1][1], fresh.acc) and len(env._sim_memo) == 1
    assert env._simulate_uncached(env.splits, None) == env.simulate(env.splits)


def test_cli_train_writes_policy_and_curve(tmp_path: Path, cache: Path) -> None:
    png = tmp_path / "curve.png"
    r = runner.invoke(build_app(), ["train", "distredge", "-m", MODEL, "-c", "het4", "--analytic", "-n", "30",
                                    "--plot", str(png), "-o", str(tmp_path / "plan.json"), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["episodes"] == 30 and png.is_file() and png.stat().st_size > 1000
    assert (tmp_path / "plan.json").is_file()
    assert s["train_cpu_s"] > 0 and s["policy_inference_cpu_ms"] >= 0
    r = runner.invoke(build_app(), ["train", "distredge", "-m", MODEL, "-c", "het4", "--costs", "gpu", "-n", "5"])
    assert r.exit_code == 2 and "--costs" in r.output
    r = runner.invoke(build_app(), ["train", "distredge", "-m", MODEL, "-c", "het4", "--costs", "analytic", "-n", "5",
                                    "--plot", str(tmp_path / "c2.png"), "--json"])
    assert r.exit_code == 0, r.output


def test_sustained_timing_and_profile_tables(captured) -> None:  # type: ignore[no-untyped-def]
    """The emulated profiler's timer and tables (measured here without a quota: fast)."""
    from coinfer.train.distredge import profile_sustained, sustained_ms

    calls = []
    ms = sustained_ms(lambda: calls.append(time.sleep(0.002)), reps=2, min_ms=10)
    assert ms >= 1.5 and len(calls) >= 2 + 2  # 2 warm-up calls + reps x n (n >= 1; n = 1 if a sleep ran > 5 ms)
    cm = captured("user:UserNet").cm
    prof = profile_sustained(cm, "d0", rows_points=3, reps=1)
    assert prof.stages and all(len(v) >= 1 for v in prof.stages.values()) and prof.whole
    cl = parse_cluster({"source": "d0", "devices": [{"name": "d0"}, {"name": "d1"}]})
    costs = CostModel(cm.graph, cl, {"d0": prof})
    assert costs.source_of("d0") == "profile" and costs.source_of("d1") == "analytic"


def test_cpu_time_profiles_and_twins(captured, cache: Path) -> None:  # type: ignore[no-untyped-def]
    """``timing="cpu"`` tables are CPU time at full speed (the cost model divides by the share); devices with
    the same threads share one measurement (copied, renamed), so no subprocess runs here."""
    from coinfer.train.distredge import _profile_key, emulated_profiles, profile_sustained

    c = captured(MODEL)
    g = c.graph
    prof = profile_sustained(c.cm, "d0", rows_points=2, reps=1, timing="cpu")
    assert prof.timing == "cpu" and prof.stages
    cl = parse_cluster({"source": "d0", "devices": [{"name": "d0", "cpu_share": 0.2},
                                                    {"name": "d1", "cpu_share": 0.5}]})
    base = cache / "profiles" / "emulated"
    base.mkdir(parents=True)
    prof.save(base / f"{_profile_key(g, 'd0', 0.2, 1, 'cpu')}.json")
    pset = emulated_profiles(cl, MODEL, g, timing="cpu")
    assert pset.profiles["d1"].device == "d1" and pset.profiles["d1"].stages == prof.stages
    assert pset.profiles["d1"].machine["emulation"]["cpu_share"] == 0.5
    costs = CostModel(g, cl, pset)
    whole = (g.input.name, g.output.name)
    # the same CPU work, wall time scaled by each device's quota
    assert costs.stage_ms("d0", *whole, None) == pytest.approx(costs.stage_ms("d1", *whole, None) * 2.5, rel=1e-6)
    with pytest.raises(StrategyError, match="timing"):
        emulated_profiles(cl, MODEL, g, timing="gpu")


def test_anchor_splits_are_kept_when_they_beat_the_policy(captured, cache: Path) -> None:  # type: ignore[no-untyped-def]
    """With a 5-episode policy, a split that needs no learning (everything on the fastest device, or
    rows by speed) simulates faster; the plan takes it, and it still verifies exactly."""
    from coinfer.execute.local import TOLERANCE, InProcessExecutor, compare

    g = captured(MODEL).graph
    cl = parse_cluster({"source": "d0", "network": {"bandwidth_mbps": 1000},
                        "devices": [{"name": "d0", "cpu_share": 0.1}, {"name": "d1", "cpu_share": 0.1},
                                    {"name": "d2", "cpu_share": 0.1}, {"name": "d3", "cpu_share": 1.0}]})

    def req(**params):  # type: ignore[no-untyped-def]
        return PlanRequest(g, cl, MODEL, CostModel(g, cl), params={"costs": "analytic", "train_episodes": 5,
                                                                    **params})

    res = run("distredge", req())
    info = res.info
    assert set(info["anchors_ms"]) == {"all on d0", "all on d1", "all on d2", "all on d3", "proportional to speed"}
    assert info["predicted_latency_ms"] <= min(info["anchors_ms"].values()) + 1e-3
    assert info["predicted_latency_ms"] <= info["policy_latency_ms"] + 1e-3
    assert info["splits_from"] == "anchor: all on d3" and info["tail"] == "d3"
    # every volume whole on d3 and the tail there too: one stage, no hand-over from d3 to itself
    assert [s.to_dict() for s in res.plan.stages] == [{"until": "output", "partition": {"type": "whole",
                                                                                         "device": "d3"}}]
    c = captured(MODEL)
    assert compare(InProcessExecutor(c.cm, res.plan)(c.x), c.ref)[1] <= TOLERANCE
    # anchors=false: the paper's splitter alone (the policy or its best explored episode)
    bare = run("distredge", req(anchors="false"))
    assert bare.info["anchors_ms"] == {} and not bare.info["splits_from"].startswith("anchor")
    assert bare.info["predicted_latency_ms"] > info["predicted_latency_ms"]


def test_cli_plan_reports_each_device_profiled(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``coinfer plan -s distredge`` on a model/cluster not profiled yet printed nothing for minutes: the
    strategy now passes PlanRequest.note down to the profiling, and plan prints one stderr line per device.
    The profiling itself is mocked (it would run for minutes)."""
    import coinfer.train.distredge as T

    def fake(cluster, model, graph, input_shape=None, *, note=None, timing="wall", **_):  # type: ignore[no-untyped-def]
        assert note is not None, "the CLI's progress callback did not reach the profiling"
        for d in cluster.devices:
            note(f"profiling {model} on {d.name} (cpu_share {d.cpu_share}) in a limited subprocess")
        raise StrategyError("stop after the notes (test)")

    monkeypatch.setattr(T, "emulated_profiles", fake)
    r = runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", "het4", "-s", "distredge", "-o", str(tmp_path / "p.json")])
    assert r.exit_code == 2 and "stop after the notes" in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("distredge: profiling")]
    assert [ln.split(" on ")[1].split()[0] for ln in lines] == ["d0", "d1", "d2", "d3"], r.output


def test_emulated_profiles_notes_each_device_it_starts(captured, cache: Path,  # type: ignore[no-untyped-def]
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The profiling loop calls ``note`` once per device subprocess it starts (Popen mocked: it fails at once)."""
    import coinfer.train.distredge as T

    class Proc:
        returncode, stderr = 1, None

        def __init__(self, cmd, **_):  # type: ignore[no-untyped-def]
            self.device = cmd[cmd.index("--device") + 1]

        def poll(self) -> int:
            return 1

        def kill(self) -> None:
            pass

    monkeypatch.setattr(T.subprocess, "Popen", Proc)
    notes: list[str] = []
    cl = builtin_cluster("het4")
    with pytest.raises(RuntimeError, match="profiling d"):
        T.emulated_profiles(cl, MODEL, captured(MODEL).graph, note=notes.append)
    assert notes and all(n.startswith(f"profiling {MODEL} on d") for n in notes), notes


def test_policy_cache_keeps_its_key_for_model_names_with_dots(cache: Path) -> None:
    """QA: the cache file was ``stem.with_suffix('.zip')``, which for ``m/big.onnx`` (stem
    ``m_big.onnx-KEY``) or ``pkg.mod:fn`` replaced the key: one policy then served every cluster, cost
    table and ``--train-episodes`` of that model."""
    from coinfer.train.distredge import policy_paths

    for model in ("m/big.onnx", "pkg.mod:fn", "resnet18"):
        z, j = policy_paths(model, "abc123")
        assert z.name.endswith("-abc123.zip") and j.name.endswith("-abc123.json"), (model, z)
        assert z.parent == j.parent == cache / "distredge"
    assert policy_paths("m/big.onnx", "k1")[0] != policy_paths("m/big.onnx", "k2")[0]


def test_a_policy_file_is_checked_before_the_devices_are_profiled(captured, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                  monkeypatch) -> None:
    """QA (stop 26): `-p policy=cat.zip` was refused only after minutes of profiling every device."""
    import coinfer.train.distredge as T

    def profiled(*_a, **_k):  # type: ignore[no-untyped-def]
        raise AssertionError("the devices were profiled before the policy file was looked at")

    monkeypatch.setattr(T, "ensure_profiles", profiled)
    (tmp_path / "cat.zip").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(StrategyError, match=r"need the \.zip and its \.json next to it"):
        run("distredge", _req(captured, train_episodes=20, policy=str(tmp_path / "cat.zip")))
