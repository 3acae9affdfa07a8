#!/usr/bin/python3
"""Benchmark: the minimal recipe for arm64 (under qemu-user) beside amd64,
for Debian 13 and Debian 12 targets.

For each release, the default `minimal` recipe (bootstrap, a `run` stage,
an `install` stage, a `copy` stage) is written for that release into a
scratch recipes directory, its lockfiles are made (`ninja update-lockfiles`,
through the host's apt sources: the amd64 stand-in packages are locked with
the arm64 ones), and `bench/arm64` and `bench/amd64` are built in fresh
build directories sharing one package pool, alternating A B A B after a
first round that fetches.  Prints both times and the ratio for each release
(target <= 1.5), the bootstrap command's time on both sides and which
programs stood in (the lockfile's amd64 builds, debostree/native.py).

    benchmarks/foreign_build.py [ROUNDS]
"""

import os
import shutil
import sys
import tempfile

from common import PYTHON, TOP, median, report, timed

RELEASES = {
    "trixie": ("trixie", "trixie-updates", "trixie-security"),
    "bookworm": ("bookworm", "bookworm-updates", "bookworm-security"),
}
RECIPE = """\
ref: bench/{release}/{{arch}}/minimal
architectures: [amd64, arm64]
archives:
  - {{name: debian, suites: [{main}, {updates}], components: [main]}}
  - {{name: debian-security, suites: [{security}], components: [main]}}
stages:
  - {{name: base, bootstrap: {{variant: minbase}}}}
  - {{name: users, run: "useradd --create-home --shell /bin/bash demo"}}
  - {{name: tools, install: [iproute2]}}
  - name: config
    copy:
      - {{src: motd, dest: /etc/motd, mode: "0644"}}
"""


def bench_release(release, work, pool, rounds):
    main, updates, security = RELEASES[release]
    recipes = os.path.join(work, release, "recipes")
    lockfiles = os.path.join(work, release, "lockfiles")
    os.makedirs(recipes)
    os.makedirs(lockfiles)
    with open(os.path.join(recipes, "bench.yaml"), "w") as f:
        f.write(RECIPE.format(release=release, main=main, updates=updates,
                              security=security))
    with open(os.path.join(recipes, "motd"), "w") as f:
        f.write("benchmark\n")

    def configure(builddir):
        timed([PYTHON, os.path.join(TOP, "configure.py"), "--builddir", builddir,
               "--pool", pool, "--recipes", recipes, "--lockfiles", lockfiles],
              cwd=os.path.dirname(builddir))

    first = os.path.join(work, release, "lock", "build")
    os.makedirs(os.path.dirname(first))
    configure(first)
    timed(["ninja", "update-lockfiles"], cwd=os.path.dirname(first))
    configure(first)
    timed(["ninja", "fetch"], cwd=os.path.dirname(first))
    times = {"amd64": [], "arm64": []}
    command = {"amd64": [], "arm64": []}
    stand_ins = "native stand-ins: not reported"
    for i in range(rounds):
        for arch in ("arm64", "amd64"):
            builddir = os.path.join(work, release, f"{arch}{i}", "build")
            os.makedirs(os.path.dirname(builddir))
            configure(builddir)
            t, _ = timed(["ninja", f"bench/{arch}"], cwd=os.path.dirname(builddir))
            times[arch].append(t)
            with open(os.path.join(builddir, "logs", "bench", arch,
                                   "base.log")) as f:
                lines = f.readlines()
            command[arch].append(float(next(
                line for line in lines if line.startswith("[command:")).split()[1]))
            helpers = [line for line in lines if line.startswith("native stand-ins:")]
            if helpers:
                stand_ins = helpers[0].strip()
            shutil.rmtree(os.path.dirname(builddir), ignore_errors=True)
    report(f"minimal recipe ({release}), arm64 under qemu-user",
           median(times["arm64"]), median(times["amd64"]), "amd64",
           "target <= 1.5")
    print(f"  bootstrap command: arm64 {median(command['arm64']):.1f} s, "
          f"amd64 {median(command['amd64']):.1f} s")
    print(f"  arm64 bootstrap's {stand_ins}")


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    work = tempfile.mkdtemp(prefix="bench-foreign-")
    pool = os.path.join(TOP, "build", "pool")
    try:
        for release in RELEASES:
            bench_release(release, work, pool, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
