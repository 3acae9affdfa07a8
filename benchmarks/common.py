"""Helpers shared by the benchmarks: timing commands, alternating runs."""

import os
import statistics
import subprocess
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = "/usr/bin/python3"


def timed(argv, cwd=None, env=None, check=True):
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    elapsed = time.perf_counter() - start
    if check and result.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{result.stdout[-3000:]}")
    return elapsed, result.stdout


def median(values):
    return statistics.median(values)


def report(name, ours, reference, reference_name, target):
    print(f"{name}: {ours:.3f} s; {reference_name}: {reference:.3f} s; "
          f"ratio {ours / reference:.2f} ({target})")
