"""A bootstrap stage equals mmdebstrap's tree path by path.

Builds the minbase stage of a recipe and, from the same lockfile entries and
the same pool, an mmdebstrap chroot in root mode; then compares type, mode,
owner, group, link target and content of every path.  The only differences
allowed are the documented ones (docs/recipes.md, "What a bootstrap leaves
out"): mmdebstrap's own setup files, logs, locks and backups, the contents
of /run, and the state apt leaves after mmdebstrap runs it in the chroot.
"""

import os
import subprocess

import pytest

from debostree import fetch, lockfile
from test_build import ARCHIVES, configure, run
from treecompare import differences, tree_from_commit, tree_from_dir

pytestmark = [pytest.mark.network, pytest.mark.sandbox, pytest.mark.slow]

RECIPE = f"""\
ref: test/base
architecture: amd64
{ARCHIVES}stages:
  - {{name: base, bootstrap: {{variant: minbase}}}}
"""

# Keep in step with docs/recipes.md.
ALLOWED = [
    # written by mmdebstrap for its own use
    "/etc/apt/apt.conf.d/99mmdebstrap", "/etc/apt/sources.list", "/etc/fstab",
    "/etc/hostname", "/etc/resolv.conf",
    # backups, locks and logs (never committed)
    "/etc/*-", "/var/lib/dpkg/*-old", "/var/cache/debconf/*-old",
    "/var/lib/dpkg/lock*", "/var/lib/dpkg/triggers/Lock",
    "/var/cache/apt/archives/lock", "/var/lib/apt/lists/lock", "/var/log/*",
    # mount points' contents
    "/dev/*", "/proc/*", "/sys/*", "/run/*", "/tmp/*",
    # apt's runtime state after mmdebstrap ran "apt-get update" in the chroot
    "/var/cache/apt/archives/partial", "/var/lib/apt/lists/partial",
]


@pytest.mark.skipif(os.geteuid() != 0, reason="mmdebstrap's root mode needs root")
def test_bootstrap_equals_mmdebstrap(tmp_path, pool):
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "recipes" / "base.yaml").write_text(RECIPE)
    configure(project, pool)
    run(["ninja", "update-lockfiles"], project)
    run(["ninja", "base"], project)
    lock = str(project / "lockfiles" / "base.amd64.lock")
    entries = lockfile.read(lock)
    # The set includes setuid files and users and groups made by scripts.
    names = {e.name for e in entries}
    assert {"passwd", "login", "base-passwd", "util-linux"} <= names

    source = fetch.make_apt_source(entries, lock, pool, str(tmp_path / "source"))
    reference = tmp_path / "mmdebstrap"
    result = subprocess.run(
        ["mmdebstrap", "--mode=root", "--variant=custom",
         "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
         "--include=" + ",".join(sorted(names)),
         "--aptopt=Acquire::Languages \"none\"", "bookworm", str(reference),
         f"deb [trusted=yes] copy://{source} ./"],
        capture_output=True, text=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": "1704067200"})
    assert result.returncode == 0, result.stderr[-3000:]

    ours = tree_from_commit(str(project / "build" / "repo"), "test/base")
    theirs = tree_from_dir(str(reference))
    problems = differences(ours, theirs, ignore=ALLOWED)
    assert problems == [], "\n".join(problems[:50])
    # And the comparison is not vacuous.
    assert len(ours) > 5000
    assert ours["/usr/bin/passwd"][1] == 0o4755
    assert ours["/etc/shadow"][3] == 42
