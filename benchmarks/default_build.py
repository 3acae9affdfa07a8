#!/usr/bin/python3
"""Benchmark: the whole default build (`./configure && ninja`) in a fresh
build directory with the packages already in the pool (a fresh clone on a
machine that has built before), and the critical path ninja followed.

Prints the total, the time of each kind of edge summed (fetch, import,
stage kinds, branch, publish, image), and the chain of edges that decided
the total: from .ninja_log's start and end times and each edge's inputs
(``ninja -t query``), the longest chain by end time.

    benchmarks/default_build.py [TARGET...]     (default: ninja's defaults)
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

from common import PYTHON, TOP, kind_of, ninja_log, timed


def inputs_of(cwd, output):
    result = subprocess.run(["ninja", "-t", "query", output], cwd=cwd,
                            capture_output=True, text=True)
    found, section = [], None
    for line in result.stdout.splitlines():
        if line.strip().startswith("input:"):
            section = "input"
        elif line.strip().startswith("outputs:"):
            section = None
        elif section == "input" and line.startswith("    "):
            found.append(line.strip().lstrip("|").strip())
    return found


def critical_path(cwd, edges):
    """The chain of logged edges ending last: each step the input that
    finished last before it started."""
    path = []
    current = max(edges, key=lambda o: edges[o][1])
    while current:
        path.append(current)
        start = edges[current][0]
        earlier = [i for i in inputs_of(cwd, current)
                   if i in edges and edges[i][1] <= start + 5]
        current = max(earlier, key=lambda i: edges[i][1]) if earlier else None
    return list(reversed(path))


def main():
    targets = sys.argv[1:]
    work = tempfile.mkdtemp(prefix="bench-default-")
    pool = os.path.join(TOP, "build", "pool")
    try:
        checkout = os.path.join(work, "checkout")
        subprocess.run(["git", "clone", "-q", TOP, checkout], check=True)
        timed([PYTHON, "configure.py", "--pool", pool], cwd=checkout)
        timed(["ninja", "fetch"], cwd=checkout)  # the pool is warm after this
        total, out = timed(["ninja"] + targets, cwd=checkout)
        edges = ninja_log(os.path.join(checkout, "build"))
        print(f"default build, fresh build directory, warm pool: {total:.1f} s "
              f"({len({v for v in edges.values()})} edges)")
        sums, counted = {}, set()
        for output, (start, end, command) in edges.items():
            if (start, end, command) in counted:
                continue  # another output of an edge already counted
            counted.add((start, end, command))
            sums[kind_of(output)] = sums.get(kind_of(output), 0) + (end - start)
        print("  edge time summed by kind: " + ", ".join(
            f"{k} {v / 1000:.1f} s" for k, v in sorted(sums.items(),
                                                       key=lambda kv: -kv[1])))
        print("  critical path:")
        for output in critical_path(checkout, edges):
            start, end, _ = edges[output]
            print(f"    {start / 1000:7.1f} .. {end / 1000:7.1f} s  "
                  f"({(end - start) / 1000:6.1f} s)  {output}")
        stages = re.findall(r"STAGE (\S+ ?\S*) \((\w+)\)", out)
        print(f"  stages run: {len(stages)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
