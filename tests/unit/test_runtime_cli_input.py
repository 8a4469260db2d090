"""Bad input to the runtime commands (run, simulate, up, worker, keys) is one line and exit 2 —
found by exploratory use: several were tracebacks, accepted, or reported only after a whole run."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import typer
from conftest import one_line_error

from coinfer.cli.common import user_errors
from coinfer.cluster import builtin_cluster
from coinfer.runtime.coordinator import DeviceUnreachable, DeviceWentAway, RecoveryEvent, Session


@pytest.mark.parametrize("cmd", ["run", "simulate"])
def test_an_unwritable_gantt_or_trace_is_refused_before_any_work(run_cli, tmp_path: Path, cmd: str) -> None:
    """Checked first: `run --gantt g.txt` failed with matplotlib's traceback after the whole run. The
    plan does not even exist here, so the refusal cannot come from a later step."""
    missing_plan = tmp_path / "no-such-plan.json"
    line = one_line_error(run_cli(cmd, missing_plan, "-c", "demo4", "--gantt", tmp_path / "g.txt"))
    assert "--gantt" in line and ".txt" in line and ".png" in line, line
    line = one_line_error(run_cli(cmd, missing_plan, "-c", "demo4", "--trace", tmp_path / "nodir" / "t.json"))
    assert "--trace" in line and "does not exist" in line, line
    line = one_line_error(run_cli(cmd, missing_plan, "-c", "demo4", "--trace", tmp_path))
    assert "is a folder" in line, line
    # a good path gets past the check: the next complaint is the missing plan
    line = one_line_error(run_cli(cmd, missing_plan, "-c", "demo4", "--gantt", tmp_path / "g.svg"))
    assert "no-such-plan" in line and "--gantt" not in line, line


def test_up_without_local_devices_says_there_is_nothing_to_start(run_cli, tmp_path: Path) -> None:
    spec = tmp_path / "remote.yaml"
    spec.write_text("source: a\ndevices:\n  - {name: a, address: 'tcp://127.0.0.1:7070'}\n"
                    "  - {name: b, address: 'tcp://127.0.0.1:7071'}\n")
    line = one_line_error(run_cli("up", spec, timeout=60))
    assert "address: local" in line and "coinfer worker" in line, line


@pytest.mark.parametrize("value", ["0", "-5", "inf"])
def test_worker_refuses_a_request_timeout_that_is_not_positive(run_cli, value: str) -> None:
    """--timeout-s -5 started a worker whose every request then failed 'timed out after -5 s'."""
    line = one_line_error(run_cli("worker", "--bind", "tcp://127.0.0.1:0", "--name", "a", "--insecure",
                                   "--timeout-s", value, timeout=60))
    assert "--timeout-s" in line, line


@pytest.mark.parametrize(("devices", "words"), [("a,coordinator", "coordinator"), ("a,../x", "device name")])
def test_keys_refuses_names_that_are_not_devices(run_cli, tmp_path: Path, devices: str, words: str) -> None:
    line = one_line_error(run_cli("keys", "--dir", tmp_path / "k", "--devices", devices, timeout=60))
    assert words in line, line
    assert not (tmp_path / "x.key_secret").exists()


def test_a_device_lost_while_working_is_a_failed_run_not_bad_input() -> None:
    """Exit 2 is for bad input; a device that answered and then went away during a deployment is a
    failed run (exit 1). A device that never answers stays a set-up problem (exit 2)."""

    @user_errors
    def went_away() -> None:
        raise DeviceWentAway("device d0 went away while deploying")

    @user_errors
    def unreachable() -> None:
        raise DeviceUnreachable("no answer from d0")

    with pytest.raises(typer.Exit) as e:
        went_away()
    assert e.value.exit_code == 1
    with pytest.raises(typer.Exit) as e:
        unreachable()
    assert e.value.exit_code == 2


def test_a_restarted_device_is_named_in_the_re_plan_line() -> None:
    line = RecoveryEvent(0.0, [], 931.0, 0.0, ["d0", "d1", "d3"], "prepared", ["d2"]).describe()
    assert "d2 restarted -> over d0, d1, d3" in line, line


def _silent_listener() -> tuple[socket.socket, str]:
    """Accepts TCP connections and never says a word (no ZMTP greeting): a hello is never answered."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    conns: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            conns.append(c)

    threading.Thread(target=accept, daemon=True).start()
    return s, f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_the_connect_timeout_is_for_all_devices_together() -> None:
    """--connect-timeout-s S waited S for each silent device in turn (4 silent devices: 4 S)."""
    from coinfer.api import plan as make_plan

    cl = builtin_cluster("eq4")
    p = make_plan("resnet18_digits", cl, "even")
    socks, addresses = [], {}
    for d in cl.names:
        s, addr = _silent_listener()
        socks.append(s)
        addresses[d] = addr
    timeout = 1.5
    t0 = time.monotonic()
    try:
        with pytest.raises(DeviceUnreachable) as e:
            Session(p, cl, addresses, hello_timeout_s=timeout)
        took = time.monotonic() - t0
    finally:
        for s in socks:
            s.close()
    assert all(d in str(e.value) for d in cl.names), e.value
    # each device waited for in turn: ≥ 4 × 1.5 s; together: 1.5 s plus start-up
    assert timeout <= took < 2 * timeout, took


def test_a_worker_bound_beyond_loopback_without_keys_names_the_keys(run_cli) -> None:
    """The troubleshooting table's message (it said 'give --keys DIR … or --insecure', and --insecure
    is refused there anyway)."""
    line = one_line_error(run_cli("worker", "--bind", "tcp://0.0.0.0:7070", "--name", "pi2", timeout=60))
    assert line.startswith("error: binding tcp://0.0.0.0:7070 beyond loopback needs CURVE keys: coinfer keys"), line
    line = one_line_error(run_cli("worker", "--bind", "tcp://127.0.0.1:7070", "--name", "pi2", timeout=60))
    assert "--keys DIR" in line and "--insecure" in line, line


@pytest.mark.parametrize(("args", "words"), [
    (["run", "p.json", "-c", "demo4", "--repeat", "0"], "'--repeat'"),
    (["run"], "Missing argument 'PLAN'"),
    (["plan", "--bogus"], "No such option: --bogus"),
    (["train", "exits", "--epochs", "0"], "'--epochs'"),
])
def test_typer_s_usage_errors_are_one_line(run_cli, args: list[str], words: str) -> None:
    """A missing argument, an option out of its range, an unknown option: typer drew a box of
    several lines; now the same one line as every other mistake, naming the command's --help."""
    line = one_line_error(run_cli(*args, timeout=60))
    assert words in line and line.endswith("--help"), line


def test_help_and_a_good_command_still_exit_0(run_cli) -> None:
    r = run_cli("--help", timeout=60)
    assert r.returncode == 0 and "Usage" in r.stdout
    r = run_cli("strategies", "--json", timeout=60)
    assert r.returncode == 0 and r.stdout.startswith(("[", "{"))


def test_run_takes_dead_after_s() -> None:
    """QA: the troubleshooting table's fix for false deaths (dead_after_s) was not reachable from coinfer run."""
    import inspect

    from coinfer.cli import run_cmd

    p = inspect.signature(run_cmd.cmd).parameters["dead_after_s"]
    assert p.default.default == 1.2 and "--dead-after-s" in p.default.param_decls
    assert "dead_after_s=dead_after_s" in inspect.getsource(run_cmd.cmd)
    # QA: a blocked link between two workers held a run 300 s with no way to bound it
    p = inspect.signature(run_cmd.cmd).parameters["request_timeout_s"]
    assert p.default.default == 300.0 and "--request-timeout-s" in p.default.param_decls
    assert "timeout_s=request_timeout_s" in inspect.getsource(run_cmd.cmd)
