#!/usr/bin/python3
"""Benchmark: a no-op `ninja` on the default recipes, after a full build.

Reference, in the same run: ninja on a build.ninja with a single phony
target (ninja's own floor).  Target: the no-op under 0.2 s.
Run from the top of a checkout that has been built (`./configure && ninja`).
"""

import os
import sys
import tempfile

from common import TOP, median, timed


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    _, out = timed(["ninja"], cwd=TOP)
    floor_dir = tempfile.mkdtemp(prefix="bench-noop-")
    with open(os.path.join(floor_dir, "build.ninja"), "w") as f:
        f.write("rule touch\n  command = touch $out\nbuild x: touch\n")
    timed(["ninja"], cwd=floor_dir)
    ours, floor = [], []
    for _ in range(rounds):
        t, out = timed(["ninja"], cwd=TOP)
        assert "no work to do" in out, out
        ours.append(t)
        floor.append(timed(["ninja"], cwd=floor_dir)[0])
    with open(os.path.join(TOP, "build.ninja")) as f:
        edges = sum(1 for line in f if line.startswith("build "))
    print(f"no-op ninja on the default recipes ({edges} edges), median of {rounds}: "
          f"{median(ours) * 1000:.1f} ms (target < 200 ms)")
    print(f"ninja with one edge: {median(floor) * 1000:.1f} ms; "
          f"ratio {median(ours) / median(floor):.1f}")


if __name__ == "__main__":
    main()
