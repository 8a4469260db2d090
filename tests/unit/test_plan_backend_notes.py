"""``coinfer plan`` and ``simulate`` price any backend / precision a cluster file names, while ``coinfer
run`` refuses one the device does not have (exit 2): QA found a plan and a simulation for onnxruntime at
bf16 (which the CPU provider does not have) given without a word. Both now warn, naming the device and
the supported list; exit 0 — a remote device may have what this machine lacks."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from coinfer.cli.main import build_app

runner = CliRunner()


def _cluster(tmp_path: Path, d1: str) -> Path:
    c = tmp_path / "c.yaml"
    c.write_text("source: d0\ndevices:\n  - {name: d0, cpu_share: 0.5}\n"
                 f"  - {{name: d1, cpu_share: 0.5{d1}}}\n")
    return c


def test_plan_and_simulate_warn_about_a_precision_the_backend_lacks(tmp_path: Path) -> None:
    c = _cluster(tmp_path, ", backend: onnxruntime, precision: bf16")
    p = tmp_path / "p.json"
    r = runner.invoke(build_app(), ["plan", "-m", "resnet18_digits", "-c", str(c), "-s", "even", "-o", str(p)])
    assert r.exit_code == 0, r.output
    warned = [ln for ln in r.stderr.splitlines() if "device d1" in ln and "bf16" in ln]
    assert warned and "supported: fp32" in warned[0] and "coinfer run refuses" in warned[0], r.stderr
    r = runner.invoke(build_app(), ["simulate", str(p), "-c", str(c)])
    assert r.exit_code == 0, r.output
    assert any("device d1" in ln and "bf16" in ln for ln in r.stderr.splitlines()), r.stderr


def test_a_combination_this_machine_has_is_not_warned(tmp_path: Path) -> None:
    c = _cluster(tmp_path, ", backend: onnxruntime")
    r = runner.invoke(build_app(), ["plan", "-m", "resnet18_digits", "-c", str(c), "-s", "even",
                                    "-o", str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    assert "device d1" not in r.stderr, r.stderr
