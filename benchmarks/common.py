"""Helpers shared by the benchmarks: timing commands, alternating runs."""

import os
import re
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


def ninja_log(builddir):
    """{output: (start ms, end ms, command hash)} of the last run of every
    edge (an edge with several outputs has a line for each)."""
    edges = {}
    with open(os.path.join(builddir, ".ninja_log")) as f:
        for line in f:
            if line.startswith("#"):
                continue
            start, end, _, output, command = line.rstrip("\n").split("\t")
            edges[output] = (int(start), int(end), command)
    return edges


def kind_of(output):
    if "/pool/" in output:
        return "fetch"
    if output.startswith("build/pkgs/") or "/pkgs/" in output:
        return "import"
    if output.endswith(".plan.json"):
        return "plan"  # a bootstrap's apt order, beside the imports
    if "/stages/" in output:
        return "stage"
    for kind in ("branches", "publish", "images", "sandbox", "checks"):
        if f"/{kind}/" in output or output.startswith(f"build/{kind}/"):
            return kind
    return "other"


def stage_breakdown(log_path):
    """{step: seconds} of a stage's log ("[checkout: 0.56 s]" lines, one
    step's lines summed), in the order the steps first ran."""
    steps = {}
    with open(log_path) as f:
        for line in f:
            match = re.match(r"^\[([a-z][a-z ]*): ([0-9.]+) s\]$", line.strip())
            if match:
                steps[match.group(1)] = steps.get(match.group(1), 0.0) + \
                    float(match.group(2))
    return steps
