"""Simulator vs runtime: ``python benchmarks/validate/run.py [--out DIR] [--repeat N] [...]``.

Runs ``coinfer bench --validate`` (36 cases by default: resnet18, mobilenet_v2
and vgg16 x rows / grid / whole plans x eq4 / het4 x 100 / 1000 Mbit/s, each
profiled through the runtime first, measured on the local emulated cluster
and simulated with those profiles), then prints the ratios: predicted /
measured latency per case, the |error| median and p90 against the issue's
goals (<= 10%, <= 20%), the same for the ideal-machine simulator (no runtime
overheads) for comparison, and the load average during the run. Extra
arguments go to ``coinfer bench --validate``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-validate")
    ap.add_argument("--repeat", default="5")
    a, rest = ap.parse_known_args()
    exe = Path(sys.executable).parent / "coinfer"
    cmd = [str(exe) if exe.exists() else "coinfer", "bench", "--validate", "--out", a.out, "--repeat", a.repeat, *rest]
    load0 = os.getloadavg()[0]
    r = subprocess.run(cmd, check=False)
    if r.returncode != 0:
        return r.returncode
    from coinfer.sim.validation import CaseResult, error_stats, read_csv

    res = read_csv(Path(a.out) / "validation.csv")
    print(f"\n{'case':<36} {'pred/meas':>9} {'ideal/meas':>10} {'load':>5}")
    for x in res:
        print(f"{x.case:<36} {x.predicted_ms / x.measured_ms:9.3f} {x.ideal_ms / x.measured_ms:10.3f} {x.load:5.1f}")
    st = error_stats(res)
    ideal = error_stats([CaseResult(**{**x.__dict__, "error": (x.ideal_ms - x.measured_ms) / x.measured_ms})
                         for x in res])
    print(f"\n|error| median {st['median']:.1%} (goal <= 10%), p90 {st['p90']:.1%} (goal <= 20%), "
          f"max {st['max']:.1%}, mean signed {st['mean_signed']:+.1%} over {st['n']} cases")
    print(f"ideal machine (no runtime overheads): median {ideal['median']:.1%}, p90 {ideal['p90']:.1%}")
    print(f"load average: {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
          f"per case {min(x.load for x in res):.1f}-{max(x.load for x in res):.1f}")
    return 0 if st["median"] <= 0.10 and st["p90"] <= 0.20 else 1


if __name__ == "__main__":
    sys.exit(main())
