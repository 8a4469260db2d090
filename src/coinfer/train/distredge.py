"""Training DistrEdge's layer-volume splitter, the policy cache, and emulated device profiles.

Hou, Guan, Han & Zhang, IPDPS 2022 (PAPERS.md §3): the splitter is trained
with DDPG (actor-critic, continuous actions) for 4,000 episodes on the
environment :class:`coinfer.train.distredge_env.DistrEdgeEnv` (one step per
layer volume, reward 1/T at the end). We use stable-baselines3's ``DDPG``
(``TD3`` and ``SAC`` are available for comparison: ``algo=td3|sac``), small
MLPs (64-64), Gaussian action noise σ = 0.3 decaying to 0.05, and keep the
best split seen while exploring next to the final deterministic policy's:
the plan uses whichever simulates faster, and says which.

**Policy cache.** A trained policy depends on the cluster (devices, shares,
links), the model (structural fingerprint), the latency tables, the layer
volumes and the training settings; it is stored under
``coinfer.paths.cache_dir("distredge")`` as ``<model>-<key>.zip`` (the
stable-baselines3 file) with ``<model>-<key>.json`` (what it was trained for,
the learning curve, the best splits). ``--param policy=FILE`` loads a given
policy and refuses one trained for another cluster or model (exit 2, with
the command that retrains).

**Emulated profiles.** DistrEdge plans from measured, nonlinear per-device
latency tables. For ``address: local`` devices without ``--profiles`` we
measure them here (:func:`emulated_profiles`): one subprocess per device
captures the model, limits itself to the device's ``cpu_share`` with
:func:`coinfer.runtime.emulation.limit_cpu` (the same cgroup quota the
runtime's workers run under) and measures, through the workers' own
:class:`~coinfer.execute.part.PartRunner`, a rows sweep of every splittable
cut-point segment and every whole segment (:func:`profile_sustained`), each
sample timed over back-to-back calls spanning several quota periods
(:func:`sustained_ms`: single short calls would run at full speed on
leftover quota and miss the share).
Devices are measured in parallel while their shares sum to at most
``budget`` cores (default 0.7: a cgroup quota caps a process but does not
guarantee it the share, so the measurement keeps most of a 2-core machine
free; the load average is recorded in each profile). Profiles are cached per (model fingerprint,
device, share, threads, timing) under ``cache_dir("profiles", "emulated")``.
``timing="cpu"`` (``--param costs=cpu``) records the thread's CPU time at full
speed instead, without a quota (the cost model divides by the share and the
simulator runs it through the quota): on a machine busy with other processes
wall-clock tables are inflated unevenly, CPU time much less; and since every
emulated device is the same host CPU, devices with the same thread count share
one measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..cluster import Cluster
from ..cost.model import CostModel
from ..cost.profile import DeviceProfile, ProfileSet
from ..graph.ir import Graph
from ..modelspec import is_onnx
from ..paths import cache_dir, save_figure
from ..plan.plan import Wire
from ..strategies.distredge import (
    choose_tail,
    cluster_description,
    cluster_differences,
    cluster_fingerprint,
    costs_fingerprint,
    partition_volumes,
    rows_from_fractions,
)
from ..strategies.registry import PlanRequest, PlanResult, StrategyError

Progress = Callable[[int, int, dict[str, float]], None]  # (episodes done, total, metrics)


# -- emulated profiles ------------------------------------------------------------------------------
def _profile_key(graph: Graph, device: str, share: float, threads: int, timing: str = "wall") -> str:
    suffix = "" if timing == "wall" else f"-{timing}"
    return (f"{graph.name.replace(':', '_').replace('/', '_')}-{graph.fingerprint()[7:19]}-{device}-s{share:g}"
            f"-t{threads}{suffix}")


def emulated_profiles(cluster: Cluster, model: str, graph: Graph, input_shape: tuple[int, ...] | None = None,
                      budget: float = 0.7, rows_points: int = 6, reps: int = 3,
                      note: Callable[[str], None] | None = None, timing: str = "wall") -> ProfileSet:
    """Profiles of ``model`` on every (local) device of ``cluster``, measured under its cpu share; cached.

    ``timing="cpu"`` instead records the thread's CPU time at full speed (no quota; the cost model
    and the simulator derive the device's wall time from its quota): robust to other processes'
    load, for machines too busy to time wall clocks (the profiles say ``timing: cpu``).
    """
    if timing not in ("wall", "cpu"):
        raise StrategyError(f"profile timing {timing!r} is unknown; use wall or cpu")
    base = cache_dir("profiles", "emulated")
    out: dict[str, DeviceProfile] = {}
    todo: list[tuple[str, float, int, Path]] = []
    aliases: list[tuple[str, float, Path, Path]] = []  # (device, share, the twin's profile, its own path)
    cached: dict[int, Path] = {}  # threads -> a cached CPU-time profile (timing="cpu")
    for d in cluster.devices:
        path = base / f"{_profile_key(graph, d.name, d.cpu_share, d.threads, timing)}.json"
        if path.is_file():
            prof = DeviceProfile.load(path)
            if prof.fingerprint == graph.fingerprint():
                out[d.name] = prof
                cached.setdefault(d.threads, path)
                continue
        if not d.is_local:
            raise StrategyError(
                f"device {d.name} ({d.address}) is not local, so it cannot be emulated here; measure it with "
                f"coinfer profile CLUSTER --model {model} -o DIR and pass --profiles DIR"
            )
        if timing == "cpu":  # CPU time at full speed depends on the host and the threads, not the share
            twin = cached.get(d.threads) or next((t[3] for t in todo if t[2] == d.threads), None)
            if twin is not None:
                aliases.append((d.name, d.cpu_share, twin, path))
                continue
        todo.append((d.name, d.cpu_share, d.threads, path))
    running: list[tuple[subprocess.Popen[bytes], str, Path, float]] = []
    t0 = time.monotonic()
    while todo or running:
        used = sum(s for _, _, _, s in running)
        while todo and (not running or used + (todo[0][1] if timing == "wall" else 1.0) <= budget):
            name, share, threads, path = todo.pop(0)
            cmd = [sys.executable, "-m", "coinfer.train.distredge", "profile-device", "--model", model,
                   "--device", name, "--share", str(share), "--threads", str(threads), "--out", str(path),
                   "--rows-points", str(rows_points), "--reps", str(reps), "--timing", timing]
            if input_shape is not None:
                cmd += ["--input-shape", ",".join(map(str, input_shape))]
            if note:
                how = "in a limited subprocess" if timing == "wall" else "in CPU time (full speed, no quota)"
                note(f"profiling {model} on {name} (cpu_share {share}) {how}")
            running.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
                            name, path, share))
            used += share if timing == "wall" else 1.0
        time.sleep(0.2)
        for item in list(running):
            proc, name, path, _ = item
            if proc.poll() is None:
                continue
            running.remove(item)
            err = (proc.stderr.read().decode(errors="replace") if proc.stderr else "").strip()
            if proc.returncode != 0 or not path.is_file():
                for p, *_ in running:
                    p.kill()
                raise RuntimeError(f"profiling {name} failed (exit {proc.returncode}): {err.splitlines()[-1:]}")
            out[name] = DeviceProfile.load(path)
    for name, share, twin_path, path in aliases:
        prof = DeviceProfile.load(twin_path)
        prof.device = name
        prof.machine["emulation"] = {**prof.machine.get("emulation", {}), "cpu_share": share,
                                     "copied_from": twin_path.name}
        prof.save(path)
        out[name] = DeviceProfile.load(path)
    if note and time.monotonic() - t0 > 1:
        note(f"profiled in {time.monotonic() - t0:.0f} s; cached under {base}")
    return ProfileSet(out, str(base))


def sustained_ms(fn: Callable[[], Any], reps: int = 3, min_ms: float = 40.0,
                 clock: Callable[[], float] = time.perf_counter) -> float:
    """Per-call latency (ms) of ``fn`` run back to back for at least ``min_ms`` of full-speed work (best of ``reps``).

    Under a cgroup quota (``cpu_share`` x 10 ms per 10 ms period) a call
    shorter than the quota runs at full speed when the process was idle, so
    timing single short calls would miss the share entirely; a device
    computing a request's parts back to back runs at its share. Timing a run
    of calls long enough to span several periods measures that sustained
    rate (and the step-like latency of long calls is measured as is). The
    best of ``reps`` such runs resists bursts of load from other processes
    (a quota caps a process, it does not guarantee it the share).
    """
    fn()
    t0 = clock()
    fn()
    one = max((clock() - t0) * 1e3, 1e-3)
    n = max(1, int(np.ceil(min_ms * 0.5 / one)))  # `one` may already be throttled: aim at half
    samples = []
    for _ in range(max(1, reps)):
        t0 = clock()
        for _ in range(n):
            fn()
        samples.append((clock() - t0) * 1e3 / n)
    return float(min(samples))


def profile_sustained(cm: Any, device: str, rows_points: int = 6, reps: int = 3,
                      timing: str = "wall") -> DeviceProfile:
    """A :class:`DeviceProfile` of stage tables and whole stages, timed with :func:`sustained_ms`.

    Like :func:`coinfer.cost.measure.profile_device` (same segments, same rows
    sweep, same :class:`~coinfer.execute.part.PartRunner`) without the
    per-layer regressions and host calibration, whose micro-benchmarks are
    too short to see a cgroup quota: nodes outside the tables fall back to
    the analytic model scaled by the device's ``cpu_share``.
    """
    import datetime as _dt

    import torch

    from ..cost.calibrate import machine_info
    from ..cost.measure import rows_sweep, segments
    from ..execute.part import PartRunner
    from ..graph.geometry import part_geometry

    g = cm.graph
    prof = DeviceProfile(device, g.name, g.fingerprint(), timing=timing)
    clock = time.thread_time if timing == "cpu" else time.perf_counter
    gen = torch.Generator().manual_seed(0)
    for s, e, split in segments(g):
        if split:
            pts = []
            for r in rows_sweep(g[e].height, rows_points):
                geom = part_geometry(g, s, e, (0, r, 0, g[e].width), "exact")
                run = PartRunner(cm, geom)
                x = torch.randn(geom.in_shape(g), generator=gen)

                def call(run: PartRunner = run, x: torch.Tensor = x) -> torch.Tensor:
                    return run(x)

                pts.append((r, sustained_ms(call, reps, clock=clock)))
            prof.stages[(s, e)] = pts
        else:
            geom = part_geometry(g, s, e, None)
            run = PartRunner(cm, geom)
            x = torch.randn(geom.in_shape(g), generator=gen)

            def call_whole(run: PartRunner = run, x: torch.Tensor = x) -> torch.Tensor:
                return run(x)

            prof.whole[(s, e)] = sustained_ms(call_whole, reps, clock=clock)
    prof.machine = machine_info()
    prof.date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return prof


def _profile_device_main(args: argparse.Namespace) -> None:
    """Child process: capture, limit this process to ``share``, profile, save."""
    import torch

    from ..modelspec import capture_model
    from ..runtime.emulation import limit_cpu

    torch.set_num_threads(max(1, args.threads))
    cm = capture_model(args.model, args.input_shape)
    if args.timing == "cpu":  # CPU time at full speed: no quota (the simulator applies the share)
        prof = profile_sustained(cm, args.device, args.rows_points, args.reps, "cpu")
        mode = "none (cpu timing)"
    else:
        lim = limit_cpu(os.getpid(), args.share, f"prof-{args.device}")
        try:
            prof = profile_sustained(cm, args.device, args.rows_points, args.reps)
        finally:
            lim.close()
        mode = lim.mode
    prof.machine["emulation"] = {"cpu_share": args.share, "threads": args.threads, "mode": mode,
                                 "timing": f"sustained ({args.timing} clock): best of reps runs of >= 20 ms of "
                                           f"back-to-back calls",
                                 "loadavg": [round(x, 2) for x in os.getloadavg()]}
    tmp = Path(args.out).with_suffix(".tmp")
    prof.save(tmp)
    tmp.replace(args.out)


def ensure_profiles(req: PlanRequest, costs: CostModel | None, mode: str,
                    note: Callable[[str], None] | None = None) -> tuple[CostModel, str]:
    """The cost model DistrEdge plans with: profiled tables (given, or emulated here), or analytic if asked."""
    g, cl = req.graph, req.cluster
    if costs is not None and all(costs.source_of(d) == "profile" for d in cl.names):
        return costs, "profiles"
    if mode == "analytic":
        return (costs if costs is not None else CostModel(g, cl)), "analytic"
    if mode not in ("auto", "cpu"):
        raise StrategyError(f"costs={mode!r} is unknown; use auto (--profiles DIR, else emulate local devices), "
                            f"cpu (emulated, CPU-time tables) or analytic")
    shape = tuple(g.input_shape) if ":" in req.model or is_onnx(req.model) else None
    pset = emulated_profiles(cl, req.model, g, shape, note=note, timing="cpu" if mode == "cpu" else "wall")
    if costs is not None:
        for d in cl.names:  # keep measured profiles the caller gave
            p = costs.profiles.get(d)
            if p is not None and not p.empty:
                pset.profiles[d] = p
    return CostModel(g, cl, pset), "emulated profiles" + (" (cpu time)" if mode == "cpu" else "")


# -- training -------------------------------------------------------------------------------------
def make_agent(algo: str, env: Any, seed: int, episodes: int, steps_per_episode: int) -> Any:
    """A stable-baselines3 agent with the settings documented in the module docstring."""
    import torch
    from stable_baselines3 import DDPG, SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise

    torch.set_num_threads(1)
    n = env.action_space.shape[0]
    kw: dict[str, Any] = {"policy": "MlpPolicy", "env": env, "seed": seed, "learning_rate": 1e-3,
                          "buffer_size": 50_000,
                          "learning_starts": min(200, max(10, episodes * steps_per_episode // 10)),
                          "batch_size": 64, "gamma": 0.99, "tau": 0.01, "verbose": 0, "device": "cpu",
                          "policy_kwargs": {"net_arch": [64, 64]}, "train_freq": (1, "episode"),
                          "gradient_steps": -1}
    if algo == "sac":
        return SAC(**kw)
    kw["action_noise"] = NormalActionNoise(np.zeros(n), 0.3 * np.ones(n))
    return (TD3 if algo == "td3" else DDPG)(**kw)


def train(env: Any, algo: str = "ddpg", episodes: int = 4000, seed: int = 0,
          progress: Progress | None = None) -> tuple[Any, float, float]:
    """Train ``episodes`` episodes; returns (agent, wall seconds, CPU seconds). ``env.history`` holds the curve."""
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger

    steps_per = len(env.volumes)
    agent = make_agent(algo, env, seed, episodes, steps_per)
    # without a logger of its own, every learn() makes an empty /tmp/SB3-<date> directory
    agent.set_logger(Logger(folder=None, output_formats=[]))
    total = episodes * steps_per

    class CB(BaseCallback):
        def _on_step(self) -> bool:
            done = len(env.history)
            noise = getattr(self.model, "action_noise", None)
            if noise is not None:  # σ decays linearly from 0.3 to 0.05 over training
                frac = min(1.0, self.num_timesteps / max(1, total))
                noise._sigma = np.full_like(noise._sigma, 0.3 - 0.25 * frac)
            if progress is not None and self.locals.get("dones") is not None and any(self.locals["dones"]):
                last = env.history[-1]["latency_ms"] if env.history else float("nan")
                best = env.best["latency_ms"] if env.best else float("nan")
                progress(done, episodes, {"latency_ms": last, "best_ms": best})
            return True

    t0, c0 = time.perf_counter(), time.process_time()
    agent.learn(total_timesteps=total, callback=CB())
    return agent, time.perf_counter() - t0, time.process_time() - c0


def load_agent(algo: str, path: Path) -> Any:
    from stable_baselines3 import DDPG, SAC, TD3
    from stable_baselines3.common.base_class import BaseAlgorithm

    algos: dict[str, type[BaseAlgorithm]] = {"ddpg": DDPG, "td3": TD3, "sac": SAC}
    return algos[algo].load(str(path), device="cpu")


def policy_rollout(agent: Any, env: Any) -> tuple[list[list[tuple[int, int]]], float, float, float]:
    """Deterministic rollout: (splits, simulated latency, policy inference wall ms and CPU ms, all volumes).

    One untimed ``predict`` first: the first call of a freshly loaded policy pays torch's one-off
    set-up, which is not the per-plan inference cost.
    """
    t_inf = c_inf = 0.0
    agent.predict(env.reset()[0], deterministic=True)

    def act(obs: np.ndarray) -> np.ndarray:
        nonlocal t_inf, c_inf
        t0, c0 = time.perf_counter(), time.thread_time()
        a, _ = agent.predict(obs, deterministic=True)
        t_inf += time.perf_counter() - t0
        c_inf += time.thread_time() - c0
        return a

    splits, T = env.rollout(act)
    return splits, T, t_inf * 1e3, c_inf * 1e3


def _key(req: PlanRequest, costs: CostModel, boundaries: list[str], tail: str, settings: dict[str, Any]) -> str:
    import hashlib

    blob = json.dumps({"cluster": cluster_fingerprint(req.cluster), "model": req.graph.fingerprint(),
                       "costs": costs_fingerprint(costs), "volumes": boundaries, "tail": tail,
                       "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def policy_paths(model: str, key: str) -> tuple[Path, Path]:
    """The cached policy (``.zip``) and its description (``.json``) for ``model`` and the cache ``key``
    (cluster, costs, volumes, settings): ``<model>-<key>.zip``. (``with_suffix`` on that stem dropped the
    key of every model name with a dot — ``m/big.onnx`` → ``m_big.zip``, ``pkg.mod:fn`` → ``pkg.zip`` —
    so one policy served every cluster and setting.)"""
    stem = f"{_safe(model)}-{key}"
    base = cache_dir("distredge")
    return base / f"{stem}.zip", base / f"{stem}.json"


def check_policy_meta(meta: dict[str, Any], req: PlanRequest, path: str) -> None:
    """Refuse a policy trained for another cluster or model (exit 2 with the fix)."""
    retrain = f"coinfer plan -m {req.model} -c CLUSTER -s distredge --param retrain=true (or drop --param policy)"
    if meta.get("cluster") != cluster_fingerprint(req.cluster):
        desc = meta.get("cluster_desc")
        if isinstance(desc, dict):
            diffs = cluster_differences(desc, cluster_description(req.cluster))
            what = "; ".join(diffs) if diffs else "the device or link settings"
        else:  # a policy saved before the metadata kept the cluster's settings
            what = (f"devices {meta.get('devices')}, source {meta.get('source')} there, {req.cluster.names} "
                    "here; the policy does not record its cpu shares and links")
        raise StrategyError(f"policy {path} was trained for another cluster ({what}): retrain with {retrain}")
    if meta.get("model") != req.graph.fingerprint():
        raise StrategyError(f"policy {path} was trained for model {meta.get('model_name')!r}, not {req.model}; "
                            f"retrain with {retrain}")


def _given_policy(policy: str, req: PlanRequest, algo: str) -> tuple[Path, Path, dict[str, Any], Any, str]:
    """The policy file named by ``-p policy=FILE``, checked and loaded before any profiling (QA: a bad
    file was told only after minutes of profiling the devices): its path, description path,
    description, agent and algorithm."""
    zpath = Path(policy)
    mpath = zpath.with_suffix(".json")
    if not zpath.is_file() or not mpath.is_file():
        raise StrategyError(f"policy {policy}: need the .zip and its .json next to it; train one with "
                            f"coinfer train distredge --model {req.model} --cluster CLUSTER")
    fix = f"give the .zip that coinfer train distredge --model {req.model} wrote (its .json beside it)"
    from ..paths import read_user_text

    text = read_user_text(mpath, what=f"policy {policy}: description", kind="JSON", fix=fix, error=StrategyError)
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise StrategyError(f"policy {policy}: {mpath} is not valid JSON ({e.msg}, line {e.lineno}); {fix}") from None
    if not isinstance(meta, dict):
        raise StrategyError(f"policy {policy}: {mpath} is not a policy's description; {fix}")
    check_policy_meta(meta, req, policy)
    algo = meta.get("algo", algo)
    try:
        agent = load_agent(algo, zpath)
    except Exception as e:  # noqa: BLE001 - a file the user named: stable-baselines3 raises many kinds
        first = (str(e).strip().splitlines() or [""])[0]
        raise StrategyError(f"policy {policy} cannot be loaded ({type(e).__name__}: {first}); {fix}") from None
    return zpath, mpath, meta, agent, algo


def plan_with_policy(req: PlanRequest, *, algo: str, episodes: int, alpha: float, n_random: int, seed: int,
                     max_volumes: int | None, wire: Wire, policy: str | None, retrain: bool, profiles: str,
                     progress: Progress | None = None, note: Callable[[str], None] | None = None,
                     shaping: str = "none", use_anchors: bool = True) -> PlanResult:
    """What ``coinfer plan --strategy distredge`` runs: volumes, then a cached or trained splitter.

    The splits are the policy's rollout, or the best episode seen in training, or (``use_anchors``,
    our addition) one of the anchor splits of :func:`anchor_splits` — whichever simulates fastest."""
    from .distredge_env import DistrEdgeEnv

    given = _given_policy(policy, req, algo) if policy else None
    costs, cost_src = ensure_profiles(req, req.costs, profiles, note)
    boundaries, pinfo = partition_volumes(req, costs, alpha, n_random, seed, max_volumes)
    tail = choose_tail(req.graph, costs, boundaries[-1], req.devices, req.source)
    settings = {"algo": algo, "episodes": episodes, "seed": seed, "alpha": alpha, "n_random": n_random,
                "max_volumes": max_volumes, "wire": wire.to_dict(), "shaping": shaping}
    params = {"algo": algo, "train_episodes": episodes, "alpha": alpha, "n_random": n_random, "seed": seed,
              "volumes": len(boundaries)}
    env = DistrEdgeEnv(req, costs, boundaries, tail, wire, params, shaping)
    key = _key(req, costs, boundaries, tail, settings)
    zpath, mpath = policy_paths(req.model, key)
    trained = False
    if given is not None:
        zpath, mpath, meta, agent, algo = given
    elif zpath.is_file() and mpath.is_file() and not retrain:
        meta = json.loads(mpath.read_text())
        agent = load_agent(algo, zpath)
    else:
        if note:
            note(f"training the {algo} splitter for {episodes} episodes (cached for this model and cluster)")
        agent, seconds, cpu_s = train(env, algo, episodes, seed, progress)
        trained = True
        agent.save(str(zpath))
        curve = [h["latency_ms"] for h in env.history]
        meta = {"format": "coinfer.distredge-policy/1", "algo": algo, "model": req.graph.fingerprint(),
                "model_name": req.model, "cluster": cluster_fingerprint(req.cluster), "devices": req.cluster.names,
                "cluster_desc": cluster_description(req.cluster),
                "source": req.source, "costs": costs_fingerprint(costs), "cost_source": cost_src,
                "volumes": boundaries, "tail": tail, "settings": settings, "train_s": round(seconds, 2), "train_cpu_s": round(cpu_s, 2),
                "episodes": len(curve), "curve_ms": [round(x, 3) for x in curve],
                "best": env.best, "partition": pinfo,
                "train_load": [round(x, 2) for x in os.getloadavg()], "train_nice": os.nice(0)}
        mpath.write_text(json.dumps(meta))
    if list(meta.get("volumes", boundaries)) != boundaries or meta.get("tail", tail) != tail:
        raise StrategyError(f"policy {zpath} was trained for other layer volumes {meta.get('volumes')}; "
                            f"retrain with --param retrain=true")
    splits, T_policy, inf_ms, inf_cpu_ms = policy_rollout(agent, env)
    chosen, T, source = splits, T_policy, "policy"
    best = meta.get("best")
    if best is not None:
        bs = [[tuple(r) for r in v] for v in best["splits"]]
        Tb = env.simulate(bs)
        if Tb < T:
            chosen, T, source = bs, Tb, "best explored during training"
    anchors_ms: dict[str, float] = {}
    if use_anchors:
        for name, sp in anchor_splits(env).items():
            Ta = anchors_ms[name] = env.simulate(sp)
            if Ta < T * (1 - 1e-6):
                chosen, T, source = sp, Ta, f"anchor: {name}"
    # the tail device: the one the policy was trained with, or another if it simulates faster
    tail_used = tail
    for d in req.devices:
        if d != tail:
            Td = env.simulate(chosen, d)
            if Td < T * (1 - 1e-6):
                T, tail_used = Td, d
    plan = env.plan(chosen, tail_used)
    info = {"volumes": boundaries, "partition": pinfo, "tail": tail_used, "costs": cost_src,
            "predicted_latency_ms": round(T, 3), "policy_latency_ms": round(T_policy, 3), "splits_from": source,
            "anchors_ms": {k: round(v, 3) for k, v in anchors_ms.items()},
            "policy_inference_ms": round(inf_ms, 3),
            "policy_inference_cpu_ms": round(inf_cpu_ms, 3), "trained": trained, "algo": algo,
            "train_s": meta.get("train_s"), "train_cpu_s": meta.get("train_cpu_s"),
            "train_load": meta.get("train_load"), "episodes": meta.get("episodes"), "policy": str(zpath)}
    info["summary"] = (f"{len(boundaries)} layer volume(s); splits from {source} ({T:.1f} ms simulated, "
                       f"the policy's own {T_policy:.1f} ms); policy {'trained now' if trained else 'from ' + str(zpath)}")
    return PlanResult(plan, info)


def anchor_splits(env: Any) -> dict[str, list[list[tuple[int, int]]]]:
    """Splits in the splitter's own action space that need no learning: every volume whole on one
    device (one per device), and every volume's rows in proportion to the devices' speeds over the
    whole model (the cost model's, which knows their quotas)."""
    g = env.g
    heights = [g[e].height for _, e in env.volumes]
    out: dict[str, list[list[tuple[int, int]]]] = {}
    for i, d in enumerate(env.devices):
        out[f"all on {d}"] = [[(0, h) if j == i else (h, h) for j in range(env.D)] for h in heights]
    speed = np.array([1.0 / max(1e-9, env.costs.stage_ms(d, g.input.name, g.output.name, None))
                      for d in env.devices])
    fr = speed / speed.sum()
    prop = []
    for h in heights:
        a, b = rows_from_fractions(h, fr)
        prop.append([(int(x), int(y)) if y > x else (h, h) for x, y in zip(a, b)])
    out["proportional to speed"] = prop
    return out


def plot_curve(curves: dict[str, list[float]], path: str | Path, title: str = "DistrEdge splitter") -> None:
    """Learning curve(s): simulated latency per episode (moving average of 50) per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ys in curves.items():
        y = np.asarray(ys, dtype=float)
        if not len(y):
            continue
        w = max(1, min(50, len(y) // 10))
        ma = np.convolve(y, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(len(y)), y, alpha=0.15)
        ax.plot(np.arange(w - 1, len(y)), ma, label=f"{name} (moving avg {w})")
        ax.plot(np.arange(len(y)), np.minimum.accumulate(y), ls="--", lw=1, label=f"{name} best so far")
    ax.set_xlabel("episode")
    ax.set_ylabel("simulated latency (ms)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m coinfer.train.distredge")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("profile-device", help="(internal) profile a model under a cpu share")
    p.add_argument("--model", required=True)
    p.add_argument("--input-shape", default=None)
    p.add_argument("--device", required=True)
    p.add_argument("--share", type=float, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--rows-points", type=int, default=6)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--timing", choices=["wall", "cpu"], default="wall")
    args = ap.parse_args(argv)
    if args.cmd == "profile-device":
        _profile_device_main(args)


if __name__ == "__main__":
    main()
