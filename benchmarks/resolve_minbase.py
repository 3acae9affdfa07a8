#!/usr/bin/python3
"""Benchmark: resolving bookworm minbase with cached indices, beside apt-get.

Resolves the minbase bootstrap request (the Essential set, then
Priority: required + apt on top, as mmdebstrap does) with the project's
resolver, and runs the same two requests through ``apt-get --simulate`` on the
same private apt root, alternating A B A B.  Prints the median times and the
ratio (target: ratio <= 1.0, no slower than apt).

Needs the network once, to fill the index cache (--cache, default
build/cache), through the host's apt sources.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)

from debostree import archive, kinds, lockfile, mirrors, recipe, resolve  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=os.path.join(TOP, "build", "cache"))
    parser.add_argument("--arch", default="amd64")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    archives = [recipe.Archive("debian", ("bookworm", "bookworm-updates"), ("main",)),
                recipe.Archive("debian-security", ("bookworm-security",), ("main",))]
    cache = archive.ArchiveCache(os.path.join(args.cache, "archives"),
                                 mirrors.Mirrors())
    indices = [i for a in archives for i in cache.indices(a, args.arch)]
    stage = recipe.Stage("base", "bootstrap",
                         kinds.bootstrap.BootstrapSpec("required", ()))
    workdir = tempfile.mkdtemp(prefix="bench-resolve-")
    root = resolve.AptRoot(os.path.join(workdir, "root"), args.arch, indices)

    def ours():
        _, installed = kinds.resolve_stage(root, stage, resolve.StageState(),
                                           "benchmark")
        return installed

    installed = ours()
    # The Essential set as dpkg status, for apt-get's second step.
    step = resolve.Resolution(root, [], "benchmark")
    step.install(step.essential_set())
    essential = step.to_install()
    status_text = "\n".join(
        lockfile.stanza_text([("Package", p.name), ("Status", "install ok installed")]
                             + [(k, v) for k, v in p.stanza.items()
                                if k not in ("Package", "Filename", "Size", "SHA256")])
        for p in essential)
    env = root.env()
    arch = args.arch

    def apt():
        with open(root.status, "w") as f:
            f.write("")
        subprocess.run(["apt-get", "--simulate", "install",
                        f"?narrow(?architecture({arch}),?essential)"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        with open(root.status, "w") as f:
            f.write(status_text)
        out = subprocess.run(["apt-get", "--simulate", "install", "apt",
                              f"?narrow(?architecture({arch}),?and("
                              "?priority(required),?not(?essential)))"],
                             env=env, check=True, capture_output=True, text=True)
        return out.stdout.count("\nInst ")

    apt_count = apt()
    times = {"resolver": [], "apt-get": []}
    for _ in range(args.rounds):
        t = time.perf_counter()
        ours()
        times["resolver"].append(time.perf_counter() - t)
        t = time.perf_counter()
        apt()
        times["apt-get"].append(time.perf_counter() - t)
    ours_s = statistics.median(times["resolver"])
    apt_s = statistics.median(times["apt-get"])
    print(f"bookworm minbase ({arch}): {len(installed)} packages locked; "
          f"apt-get step 2 installs {apt_count} on top of "
          f"{len(essential)} Essential")
    print(f"resolver (median of {args.rounds}): {ours_s:.3f} s")
    print(f"apt-get --simulate, same two requests: {apt_s:.3f} s")
    print(f"ratio resolver/apt-get: {ours_s / apt_s:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
