#!/usr/bin/python3
"""Benchmark: the overhead of a `run` stage that touches one file on a
minbase tree (check out, sandbox, scan, commit).

Reruns the default recipe's `users`-like stage with a command that only
touches a file, A B A B against the reference: the plain OSTree workflow for
the same change (checkout -U -H of the parent commit, touch, commit with
--link-checkout-speedup), measured in the same run.  Target: <= 0.5 s.
Run from the top of a built checkout.
"""

import os
import shutil
import sys
import tempfile

from common import PYTHON, TOP, median, timed

sys.path.insert(0, TOP)

from debostree.project import load_config  # noqa: E402
from debostree.stagefiles import StageFiles  # noqa: E402


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    config = load_config(os.path.join(TOP, "build", "config.json"))
    users = StageFiles.of(config.builddir, "minimal", "amd64", "users")
    base = StageFiles.of(config.builddir, "minimal", "amd64", "base")
    options_path = users.options
    with open(options_path) as f:
        original = f.read()
    import json
    options = json.loads(original)
    parent = open(base.commit).read().strip()
    stage_argv = [PYTHON, os.path.join(TOP, "stages", "run"), "--config",
                  config.config_path, "--options", options_path, "--parent",
                  base.commit, "--out",
                  os.path.join(tempfile.mkdtemp(), "bench.commit")]
    work = tempfile.mkdtemp(prefix="bench-stage-", dir=config.builddir)
    ours, cold, reference = [], [], []
    try:
        for i in range(rounds):
            options["script"] = f"touch /etc/bench-{i}"
            options["ref"] = "bench/stage"
            with open(options_path, "w") as f:
                json.dump(options, f)
            ours.append(timed(stage_argv)[0])
            # The same with the parent's checkout not cached yet.
            shutil.rmtree(os.path.join(config.builddir, "checkouts", parent),
                          ignore_errors=True)
            options["script"] = f"touch /etc/bench-cold-{i}"
            with open(options_path, "w") as f:
                json.dump(options, f)
            cold.append(timed(stage_argv)[0])
            co = os.path.join(work, f"co{i}")
            t1, _ = timed(["ostree", "checkout", f"--repo={config.repo}", "-U",
                           "-H", parent, co])
            open(os.path.join(co, "etc", f"bench-{i}"), "w").close()
            t2, _ = timed(["ostree", "commit", f"--repo={config.repo}",
                           "--branch=bench/reference", "--link-checkout-speedup",
                           f"--tree=dir={co}"])
            reference.append(t1 + t2)
    finally:
        with open(options_path, "w") as f:
            f.write(original)
        shutil.rmtree(work, ignore_errors=True)
    print(f"run stage touching one file, minbase tree, median of {rounds}: "
          f"{median(ours):.2f} s with the parent's checkout cached, "
          f"{median(cold):.2f} s without (target <= 0.5 s)")
    print(f"reference, ostree checkout -U -H + touch + commit "
          f"--link-checkout-speedup: {median(reference):.2f} s; "
          f"ratio {median(ours) / median(reference):.2f} (cached), "
          f"{median(cold) / median(reference):.2f} (cold)")


if __name__ == "__main__":
    main()
