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

RECIPE = """\
ref: test/base
architecture: {arch}
{archives}stages:
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
@pytest.mark.parametrize("arch", ["amd64", pytest.param("arm64", marks=pytest.mark.qemu)])
def test_bootstrap_equals_mmdebstrap(tmp_path, pool, arch):
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "recipes" / "base.yaml").write_text(
        RECIPE.format(arch=arch, archives=ARCHIVES))
    configure(project, pool)
    run(["ninja", "update-lockfiles"], project)
    run(["ninja", "base"], project)
    lock = str(project / "lockfiles" / f"base.{arch}.lock")
    entries = [e for e in lockfile.read(lock) if e.stage == "base"]
    # The set includes setuid files and users and groups made by scripts.
    names = {e.name for e in entries}
    assert {"passwd", "login", "base-passwd", "util-linux"} <= names

    base_lock = tmp_path / "base.lock"
    base_lock.write_text("\n".join(lockfile.stanza_text(e.fields) for e in entries))
    source = fetch.make_apt_source(entries, str(base_lock), pool,
                                   str(tmp_path / "source"))
    reference = tmp_path / "mmdebstrap"
    result = subprocess.run(
        ["mmdebstrap", "--mode=root", "--variant=custom", f"--architectures={arch}",
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
    if arch != "amd64":
        # The foreign bootstrap says which host programs stood in (native.py);
        # the comparison above holds with them.
        log = (project / "build" / "logs" / "base" / arch / "base.log").read_text()
        assert "native stand-ins: " in log
