#!/usr/bin/python3
"""Benchmark: a warm build of the minbase set beside mmdebstrap.

"Warm": the .debs are already in the pool, and so are their imports (the
pool's import store, importstore.py), as after any earlier build with that
pool.  Ours: ./configure in a fresh build directory and `ninja
minimal/amd64/base` (take the packages' commits from the store, plan apt's
order beside it, compose, run the maintainer scripts, commit).  Reference,
in the same run and alternating A B A B: mmdebstrap --variant=custom with
the same package versions from a local copy of the same pool (root mode
when run as root, unshare mode otherwise), with its merged-/usr hook for
releases up to Debian 12.  Target: <= 0.5 of mmdebstrap's time.  Prints
where our seconds go (ninja's edges, and each step of the stage from its
log), and, once, the same build from a pool whose import store is empty
(every package imported into OSTree first).
Run from the top of a checkout whose default recipe was built.
"""

import os
import shutil
import sys
import tempfile

from common import (PYTHON, TOP, kind_of, median, ninja_log, report,
                    stage_breakdown, timed)

sys.path.insert(0, TOP)

from debostree import fetch, lockfile  # noqa: E402

IMPORT_STEP = "import and apt's order"


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    pool = os.path.join(TOP, "build", "pool")
    lock = os.path.join(TOP, "lockfiles", "minimal.amd64.lock")
    entries = [e for e in lockfile.read(lock) if e.stage == "base"]
    work = tempfile.mkdtemp(prefix="bench-warm-")
    base_lock = os.path.join(work, "base.lock")
    with open(base_lock, "w") as f:
        f.write("\n".join(lockfile.stanza_text(e.fields) for e in entries))
    source = fetch.make_apt_source(entries, base_lock, pool,
                                   os.path.join(work, "source"))
    mode = "root" if os.geteuid() == 0 else "unshare"
    # The release the lockfile's base set comes from; up to Debian 12 the
    # merged /usr is made by mmdebstrap's hook (later, by the packages).
    suite = entries[0].suite.split("-")[0]
    hooks = (["--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"]
             if suite in ("bullseye", "bookworm") else [])
    ours, theirs, breakdowns = [], [], []
    try:
        # Once: the .debs in a pool of their own (links), no import store.
        cold_pool = os.path.join(work, "cold-pool")
        for e in entries:
            dest = fetch.pool_path(cold_pool, e.sha256)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.link(fetch.pool_path(pool, e.sha256), dest)
        builddir = os.path.join(work, "build-cold")
        timed([PYTHON, os.path.join(TOP, "configure.py"), "--builddir",
               builddir, "--pool", cold_pool], cwd=work)
        cold, _ = timed(["ninja", "minimal/amd64/base"], cwd=work)
        cold_steps = breakdown(builddir, cold)[1]
        shutil.rmtree(builddir, ignore_errors=True)
        # A first build with the real pool fills its store, if need be.
        builddir = os.path.join(work, "build-fill")
        timed([PYTHON, os.path.join(TOP, "configure.py"), "--builddir",
               builddir, "--pool", pool], cwd=work)
        timed(["ninja", "minimal/amd64/base"], cwd=work)
        shutil.rmtree(builddir, ignore_errors=True)
        for i in range(rounds):
            builddir = os.path.join(work, f"build{i}")
            timed([PYTHON, os.path.join(TOP, "configure.py"), "--builddir",
                   builddir, "--pool", pool], cwd=work)
            t, _ = timed(["ninja", "minimal/amd64/base"], cwd=work)
            ours.append(t)
            breakdowns.append(breakdown(builddir, t))
            shutil.rmtree(builddir, ignore_errors=True)
            target = os.path.join(work, f"mm{i}")
            t, _ = timed(["mmdebstrap", f"--mode={mode}", "--variant=custom",
                          *hooks,
                          "--include=" + ",".join(e.name for e in entries),
                          "--aptopt=Acquire::Languages \"none\"", suite,
                          target, f"deb [trusted=yes] copy://{source} ./"])
            theirs.append(t)
            shutil.rmtree(target, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"minbase set: {len(entries)} packages, {rounds} rounds each, alternating")
    report("warm build, ninja minimal/amd64/base in a fresh build directory",
           median(ours), median(theirs), f"mmdebstrap --mode={mode}",
           "target <= 0.5")
    # Where our seconds went, in the round closest to the median.
    _, steps = min(breakdowns, key=lambda b: abs(b[0] - median(ours)))
    print("  where the seconds go: " + ", ".join(
        f"{name} {seconds:.2f} s" for name, seconds in steps.items()))
    cold_import = cold_steps[IMPORT_STEP]
    print(f"the same with an empty import store (each package imported into "
          f"OSTree first), once: {cold:.3f} s, ratio "
          f"{cold / median(theirs):.2f}; {IMPORT_STEP} {cold_import:.2f} s")


def wall_time(spans):
    """Milliseconds during which at least one of the (start, end, _) spans
    ran."""
    total, reached = 0, None
    for start, end, _ in sorted(spans):
        if reached is None or start > reached:
            total += end - start
            reached = end
        elif end > reached:
            total += end - reached
            reached = end
    return total


def breakdown(builddir, total):
    """(total, {step: seconds}): ninja's edges by kind (the import of every
    package, the stage) and the stage's own steps from its log (compose and
    maintainer scripts are its commands; scan, ids and commit record the
    tree), the rest being configure-time checks and ninja itself."""
    sums, spans = {}, {}
    for output, (start, end, command) in ninja_log(builddir).items():
        kind = kind_of(output)
        if (start, end, command) not in spans.setdefault(kind, set()):
            spans[kind].add((start, end, command))
            sums[kind] = sums.get(kind, 0) + (end - start)
    # The import edges run side by side, and beside them the edge that
    # plans the bootstrap's order: their wall time, not their sum.
    sums["import"] = wall_time(spans.get("import", set()) |
                               spans.get("plan", set()))
    steps = {IMPORT_STEP: sums["import"] / 1000}
    stage = sums.get("stage", 0) / 1000
    inside = stage_breakdown(os.path.join(builddir, "logs", "minimal", "amd64",
                                          "base.log"))
    steps.update({f"stage {name}": seconds for name, seconds in inside.items()})
    steps["stage, the rest"] = stage - sum(inside.values())
    steps["other edges and ninja"] = total - steps[IMPORT_STEP] - stage
    return total, steps


if __name__ == "__main__":
    main()
