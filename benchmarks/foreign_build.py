#!/usr/bin/python3
"""Benchmark: the default recipe for arm64 (under qemu-user) beside amd64.

Builds `minimal/arm64` and `minimal/amd64` (every stage and the branch) in
fresh build directories with the packages already fetched, alternating
A B A B, and prints both times and the ratio (target <= 2).  Importing and
composing never run emulated code; the maintainer scripts and `run` stages
do, with the host's programs of the same versions standing in for some of
the target's (debostree/native.py; the stage log says which, and so does
this script).  Run from the top of a checkout whose default recipe was
built.
"""

import os
import shutil
import sys
import tempfile

from common import PYTHON, TOP, median, report, timed


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    pool = os.path.join(TOP, "build", "pool")
    work = tempfile.mkdtemp(prefix="bench-foreign-")
    times = {"amd64": [], "arm64": []}
    stand_ins = "native stand-ins: not reported"
    stage_times = {"amd64": [], "arm64": []}
    try:
        for i in range(rounds):
            for arch in ("arm64", "amd64"):
                builddir = os.path.join(work, f"{arch}{i}")
                timed([PYTHON, os.path.join(TOP, "configure.py"), "--builddir",
                       builddir, "--pool", pool], cwd=work)
                t, _ = timed(["ninja", f"minimal/{arch}"], cwd=work)
                times[arch].append(t)
                with open(os.path.join(builddir, "logs", "minimal", arch,
                                       "base.log")) as f:
                    lines = f.readlines()
                command = [line for line in lines if line.startswith("[command:")]
                stage_times[arch].append(float(command[0].split()[1]))
                helpers = [line for line in lines
                           if line.startswith("native stand-ins:")]
                if helpers:
                    stand_ins = helpers[0].strip()
                shutil.rmtree(builddir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report("minimal recipe, arm64 under qemu-user", median(times["arm64"]),
           median(times["amd64"]), "amd64", "target <= 2.0")
    print(f"of which the bootstrap's maintainer scripts: arm64 "
          f"{median(stage_times['arm64']):.1f} s, amd64 "
          f"{median(stage_times['amd64']):.1f} s")
    print(f"arm64 bootstrap's {stand_ins}")


if __name__ == "__main__":
    main()
