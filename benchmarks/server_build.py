#!/usr/bin/python3
"""Benchmark: the default server recipe for arm64 (under qemu-user) beside
amd64, each in a fresh build directory with the packages already in the
pool (the project's own pool, filled by `ninja fetch` first).

The server recipe has every kind of stage, a kernel and an initramfs: its
`boot` stage installs the kernel (with the initramfs deferred) and its
`deployable` stage runs dracut, both with native stand-ins for arm64.
Prints the two totals and their ratio (target <= 2), then each stage's
command time on both sides and what stood in for arm64.

    benchmarks/server_build.py
"""

import os
import re
import shutil
import tempfile

from common import PYTHON, TOP, report, timed

RECIPE = "server"


def stage_figures(builddir, arch):
    """{stage: (command seconds, stand-ins line)} from the stage logs."""
    logs = os.path.join(builddir, "logs", RECIPE, arch)
    figures = {}
    for name in sorted(os.listdir(logs)):
        if not name.endswith(".log"):
            continue
        with open(os.path.join(logs, name)) as f:
            text = f.read()
        seconds = sum(float(s) for s in re.findall(r"^\[command: ([0-9.]+) s\]",
                                                   text, re.M))
        helpers = re.findall(r"^native stand-ins: (.*)$", text, re.M)
        figures[name[:-4]] = (seconds, helpers[-1] if helpers else "")
    return figures


def main():
    work = tempfile.mkdtemp(prefix="bench-server-")
    pool = os.path.join(TOP, "build", "pool")

    def configure(builddir):
        timed([PYTHON, os.path.join(TOP, "configure.py"), "--builddir", builddir,
               "--pool", pool, "--recipes", os.path.join(TOP, "recipes"),
               "--lockfiles", os.path.join(TOP, "lockfiles")],
              cwd=os.path.dirname(builddir))

    try:
        first = os.path.join(work, "fetch", "build")
        os.makedirs(os.path.dirname(first))
        configure(first)
        timed(["ninja", "fetch"], cwd=os.path.dirname(first))
        times, figures = {}, {}
        for arch in ("arm64", "amd64"):
            builddir = os.path.join(work, arch, "build")
            os.makedirs(os.path.dirname(builddir))
            configure(builddir)
            times[arch], _ = timed(["ninja", f"{RECIPE}/{arch}"],
                                   cwd=os.path.dirname(builddir))
            figures[arch] = stage_figures(builddir, arch)
            shutil.rmtree(os.path.dirname(builddir), ignore_errors=True)
        report(f"{RECIPE} recipe, arm64 under qemu-user (every stage, from a "
               "warm pool)", times["arm64"], times["amd64"], "amd64",
               "target <= 2")
        for stage, (seconds, helpers) in figures["arm64"].items():
            amd64 = figures["amd64"].get(stage, (0.0, ""))[0]
            print(f"  {stage}: command arm64 {seconds:.1f} s, amd64 {amd64:.1f} s"
                  + (f"; {helpers}" if helpers else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
