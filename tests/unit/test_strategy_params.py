"""Strategy parameters are declared (``register(params=..., outputs=...)``) and checked.

A misspelt ``--param`` (or a ``PlanRequest.params`` key a strategy never reads) is a one-line
StrategyError naming the key, a close match, the strategy and what it takes — it used to be ignored,
and the plan made with the default. A plan's own ``strategy.params`` (outputs such as ``config``,
``shares``, ``config_map`` included) still re-plan it, as the runtime does when devices change.
"""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coinfer.cli.main import build_app
from coinfer.cluster import builtin_cluster
from coinfer.cost.model import CostModel
from coinfer.graph.ir import Graph
from coinfer.strategies import PlanRequest, StrategyError, info, names, run
from coinfer.strategies.registry import FC_SPLIT, PLAN_KEYS, check_params

MODEL = "resnet18_digits"  # small (64x64), has early exits; coedge splits it on het4 (a plan with shares)
CLUSTER = "het4"
PKG = "coinfer.strategies"
runner = CliRunner()


# -- (a) the declarations match the code ----------------------------------------------------------------
def _key(arg: ast.expr) -> str | None:
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.Name) and arg.id == "FC_SPLIT":
        return FC_SPLIT
    return None


def reads(module: str) -> set[str]:
    """Literal parameter names a module reads: ``req.param(k)``, ``req.number(k)``, ``req.params.get(k)``,
    ``req.params[k]``, ``int_param(req, k)``, ``bool_param(req, k)``, ``flag_param(v, k)``."""
    tree = ast.parse(Path(importlib.import_module(module).__file__ or "").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        arg: ast.expr | None = None
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and node.args and (
                    f.attr in ("param", "number")
                    or (f.attr == "get" and isinstance(f.value, ast.Attribute) and f.value.attr == "params")):
                arg = node.args[0]
            elif isinstance(f, ast.Name) and f.id in ("int_param", "bool_param", "flag_param") and len(node.args) > 1:
                arg = node.args[1]
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "params":
            arg = node.slice
        k = _key(arg) if arg is not None else None
        if k is not None:
            out.add(k)
    return out


def helper_modules(module: str) -> set[str]:
    """``module`` and every module of the strategies package it imports, transitively (registry included:
    :func:`coinfer.strategies.registry.run` reads ``fc_split`` for every strategy)."""
    seen: set[str] = set()
    todo = [module, f"{PKG}.registry"]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        tree = ast.parse(Path(importlib.import_module(m).__file__ or "").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                todo.append(f"{PKG}.{node.module}")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(PKG + "."):
                todo.append(str(node.module))
    return seen


@pytest.mark.parametrize("name", names())
def test_every_declared_parameter_is_read(name: str) -> None:
    s = info(name)
    assert s.params and s.params[-1] == FC_SPLIT and len(set(s.params)) == len(s.params)
    mods = helper_modules(s.fn.__module__)
    read = set().union(*(reads(m) for m in mods))
    assert set(s.params) <= read, f"{name} declares {sorted(set(s.params) - read)} but no read of it in {sorted(mods)}"
    assert not set(s.params) & set(s.outputs), "a key is a parameter or an output, not both"


def test_every_parameter_read_is_declared() -> None:
    """The other way: a key read in a strategy module is declared — by the module's strategy when it has
    one (the check would refuse it otherwise), else by some strategy."""
    by_module: dict[str, set[str]] = {}
    for n in names():
        by_module.setdefault(info(n).fn.__module__, set()).add(n)
    declared = {p for n in names() for p in info(n).params}
    pkg = Path(importlib.import_module(PKG).__file__ or "").parent
    for f in sorted(pkg.glob("*.py")):
        mod = f"{PKG}.{f.stem}"
        got = reads(mod)
        assert got <= declared, f"{mod} reads {sorted(got - declared)}, which no strategy declares"
        owners = by_module.get(mod, set())
        if len(owners) == 1:
            own = set(info(next(iter(owners))).params)
            assert got <= own, f"{mod} reads {sorted(got - own)}, which {owners} does not declare"


class Reads(dict):  # type: ignore[type-arg]
    """The request's params, recording every key looked up."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.seen: set[str] = set()

    def get(self, k: Any, default: Any = None) -> Any:
        self.seen.add(k)
        return super().get(k, default)

    def __getitem__(self, k: Any) -> Any:
        self.seen.add(k)
        return super().__getitem__(k)

    def __contains__(self, k: object) -> bool:
        self.seen.add(str(k))
        return super().__contains__(k)


def write_trace(path: Path) -> Path:
    """A bandwidth trace with three clear levels (edgent's dynamic mode finds the states in it)."""
    rows = ["t_s,mbps"] + [f"{i * 0.5:.1f},{(0.2, 5.0, 80.0)[(i // 10) % 3] * (1 + 0.01 * (i % 3)):.4f}"
                           for i in range(60)]
    path.write_text("\n".join(rows) + "\n")
    return path


#: (strategy, params, deadline_ms, a key its plan carries that is not a parameter, or None)
CASES: list[tuple[str, dict[str, Any], float | None, str | None]] = [
    ("local", {}, None, None),
    ("even", {}, None, "weights"),
    ("proportional", {}, None, "weights"),
    ("offload", {}, None, "choice"),
    ("neurosurgeon", {}, None, "config"),
    ("modnn", {}, None, None),
    ("aofl", {}, None, None),
    ("coedge", {}, None, "shares"),
    ("deepthings", {}, None, None),
    ("adcnn", {}, None, "scheduler_params"),
    ("auto", {"budget_s": 0.3}, None, "base"),
    ("edgent", {}, 1000.0, "choice"),
    ("edgent", {"mode": "dynamic", "accuracy": {"exit1": 0.6, "exit2": 0.7, "exit3": 0.8, "final": 0.9},
                "states": 2}, 1000.0, "config_map"),
]


@pytest.fixture(scope="module")
def graph(captured) -> Graph:  # type: ignore[no-untyped-def]
    return captured(MODEL).graph  # type: ignore[no-any-return]


@pytest.mark.parametrize(("name", "params", "deadline", "output"), CASES,
                         ids=[f"{c[0]}-{c[1].get('mode', 'default')}" for c in CASES])
def test_reads_are_declared_and_a_plan_re_plans_with_its_own_params(
        graph: Graph, tmp_path: Path, name: str, params: dict[str, Any], deadline: float | None,
        output: str | None) -> None:
    cl = builtin_cluster(CLUSTER)
    if params.get("mode") == "dynamic":
        params = {**params, "trace": str(write_trace(tmp_path / "trace.csv"))}
    given = Reads(params)
    res = run(name, PlanRequest(graph, cl, MODEL, CostModel(graph, cl), deadline_ms=deadline, params=given))
    # every key the planner looked up on this path is one it declares (else the check refuses it)
    assert given.seen <= set(info(name).params), sorted(given.seen - set(info(name).params))
    # the plan's own params, as coordinator.default_replan passes them back
    again = dict(res.plan.strategy.params)
    objective = again.pop("objective", "latency")
    dl = again.pop("deadline_ms", None)
    if output is not None:  # the plan carries keys that are not parameters: the check must allow them
        assert output in again, again
        with pytest.raises(StrategyError, match="unknown parameter"):
            check_params(name, again)
    # what the plan was made with comes back with it: auto's budget (the default 4 s), edgent's given
    # accuracies (this model has no trained exits to fall back on) and number of bandwidth states
    for k in ("budget_s", "accuracy", "states"):
        if k in params:
            assert again.get(k) == params[k], (k, again.get(k))
    res2 = run(name, PlanRequest(graph, cl, MODEL, None, objective, dl, again))
    assert res2.plan.strategy.name == name


@pytest.mark.parametrize("name", ["neurosurgeon", "coedge"])
def test_default_replan_keeps_the_strategy(graph: Graph, name: str) -> None:
    """coordinator.default_replan falls back to proportional when its strategy refuses the plan's params."""
    from coinfer.runtime.coordinator import default_replan

    cl = builtin_cluster(CLUSTER)
    plan = run(name, PlanRequest(graph, cl, MODEL, CostModel(graph, cl))).plan
    assert {"config", "shares"} & set(plan.strategy.params), plan.strategy.params
    assert default_replan(plan, cl.without("d1")).strategy.name == name


# -- (b) an unknown name is a StrategyError naming it, with a suggestion ----------------------------------
def _req(params: dict[str, Any]) -> PlanRequest:
    return PlanRequest(Graph.__new__(Graph), builtin_cluster("demo4"), "m", params=params)  # never planned


def test_a_misspelt_parameter_is_refused_with_a_suggestion() -> None:
    with pytest.raises(StrategyError) as ei:
        run("even", _req({"max_redundnacy": 0.2}))
    msg = str(ei.value)
    assert msg == ("--param max_redundnacy: unknown parameter (did you mean max_redundancy?); "
                   "strategy even takes: max_redundancy, devices, fc_split"), msg
    with pytest.raises(StrategyError, match=r"--param fc_splt: unknown parameter \(did you mean fc_split\?\); "
                                            r"strategy neurosurgeon takes: device, order, exit, verify, fc_split"):
        check_params("neurosurgeon", {"fc_splt": True})


def test_several_unknown_and_no_close_match() -> None:
    with pytest.raises(StrategyError) as ei:
        check_params("coedge", {"per_stage": True, "explor": 3, "zzz": 1})
    msg = str(ei.value)
    assert msg.startswith("--param explor, zzz: unknown parameters (explor: did you mean explore?); "
                          "strategy coedge takes: per_stage, explore, devices, order"), msg
    with pytest.raises(StrategyError) as ei:
        check_params("local", {"zzz": 1})
    assert "did you mean" not in str(ei.value) and "strategy local takes: exit, fc_split" in str(ei.value)


def test_outputs_are_plan_keys_not_parameters() -> None:
    """What a plan records is accepted back (re-planning), not from the user (it would be ignored)."""
    for name, key in [("neurosurgeon", "config"), ("coedge", "shares"), ("edgent", "config_map"),
                      ("adcnn", "scheduler"), ("auto", "base"), ("even", "objective")]:
        check_params(name, {key: 1}, plan_keys=True)
        with pytest.raises(StrategyError, match=f"--param {key}: unknown parameter"):
            check_params(name, {key: 1})
    assert "objective" in PLAN_KEYS and "deadline_ms" in PLAN_KEYS
    with pytest.raises(StrategyError, match="--param shares: unknown parameter"):
        check_params("neurosurgeon", {"shares": {}}, plan_keys=True)  # another strategy's output
    with pytest.raises(StrategyError, match="unknown strategy"):
        check_params("nope", {})


def test_register_requires_and_completes_the_declaration() -> None:
    from coinfer.strategies import registry

    with pytest.raises(TypeError):
        registry.register("x", summary="s")  # type: ignore[call-arg]
    try:
        registry.register("test_params_x", summary="s", params=("a",))(lambda req: None)  # type: ignore[arg-type,return-value]
        assert registry.info("test_params_x").params == ("a", FC_SPLIT)
    finally:
        registry._REGISTRY.pop("test_params_x", None)


# -- (c) the CLI: exit 2, one line, before any model is captured ---------------------------------------------
def _one_line(r) -> str:  # type: ignore[no-untyped-def]
    assert r.exit_code == 2, (r.exit_code, r.output)
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.output, r.output
    return err


def test_cli_plan_refuses_an_unknown_param(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    r = runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", CLUSTER, "-s", "even", "--param",
                                    "max_redundnacy=0.2", "-o", str(out)])
    assert _one_line(r) == ("error: --param max_redundnacy: unknown parameter (did you mean max_redundancy?); "
                            "strategy even takes: max_redundancy, devices, fc_split")
    assert not out.exists()
    # an output of the strategy is not a parameter the user can give
    r = runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", CLUSTER, "-s", "neurosurgeon", "-p", "config=x",
                                    "-o", str(out)])
    assert "--param config: unknown parameter; strategy neurosurgeon takes: " in _one_line(r)
    assert "unknown strategy" in _one_line(runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", CLUSTER, "-s",
                                                                       "evn", "-p", "a=1", "-o", str(out)]))


def test_cli_plan_takes_a_declared_param(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    r = runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", CLUSTER, "-s", "even", "-p", "max_redundancy=0.3",
                                    "-p", "fc_split=false", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["strategy"]["params"]["max_redundancy"] == 0.3


def test_cli_strategies_lists_the_parameters() -> None:
    r = runner.invoke(build_app(), ["strategies", "--json"])
    assert r.exit_code == 0, r.output
    rows = {s["name"]: s for s in json.loads(r.stdout)["strategies"]}
    assert rows["even"]["params"] == ["max_redundancy", "devices", "fc_split"]
    assert set(rows) == set(names())
    r = runner.invoke(build_app(), ["strategies"], env={"COLUMNS": "250"})
    assert r.exit_code == 0 and "max_redundancy, devices, fc_split" in r.stdout, r.stdout
