"""A bootstrap stage equals mmdebstrap's tree path by path (bookworm, and
trixie, whose base-files ships the merged-/usr links).

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
from helpers import check_stand_ins
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


TRIXIE_ARCHIVES = """\
archives:
  - {name: debian, suites: [trixie, trixie-updates], components: [main]}
  - {name: debian-security, suites: [trixie-security], components: [main]}
"""
# Up to Debian 12 the packages do not ship the merged-/usr links: mmdebstrap
# makes them with its merged-usr hook (which also installs usr-is-merged).
# From Debian 13 on base-files ships them and mmdebstrap needs no hook (the
# hook would add /lib32 and /libx32 links and usr-is-merged).
MERGED_USR_HOOK = {"bookworm": "/usr/share/mmdebstrap/hooks/merged-usr",
                   "trixie": None}


@pytest.mark.skipif(os.geteuid() != 0, reason="mmdebstrap's root mode needs root")
def test_bootstrap_equals_mmdebstrap(tmp_path, pool):
    # arm64: the corpus test below, whose bootstrap is minbase and more.
    check_against_mmdebstrap(tmp_path, pool, "amd64", "bookworm", ARCHIVES)


@pytest.mark.skipif(os.geteuid() != 0, reason="mmdebstrap's root mode needs root")
def test_trixie_bootstrap_equals_mmdebstrap(tmp_path, pool):
    ours = check_against_mmdebstrap(tmp_path, pool, "amd64", "trixie",
                                    TRIXIE_ARCHIVES)
    # base-files' own links, as dpkg leaves them: no /lib32, /libx32.
    assert {path: entry[4] for path, entry in ours.items()
            if path.count("/") == 1 and entry[4]} == {
        "/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib",
        "/lib64": "usr/lib64"}


def check_against_mmdebstrap(tmp_path, pool, arch, suite, archives):
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "recipes" / "base.yaml").write_text(
        RECIPE.format(arch=arch, archives=archives))
    configure(project, pool)
    run(["ninja", "update-lockfiles"], project)
    run(["ninja", "base"], project)
    lock = str(project / "lockfiles" / f"base.{arch}.lock")
    entries = [e for e in lockfile.read(lock) if e.stage == "base"]
    # The set includes setuid files and users and groups made by scripts.
    names = {e.name for e in entries}
    assert {"passwd", "login", "base-passwd", "util-linux"} <= names
    hook = MERGED_USR_HOOK[suite]
    assert ("usr-is-merged" in names) == (hook is not None)

    base_lock = tmp_path / "base.lock"
    base_lock.write_text("\n".join(lockfile.stanza_text(e.fields) for e in entries))
    source = fetch.make_apt_source(entries, str(base_lock), pool,
                                   str(tmp_path / "source"))
    reference = tmp_path / "mmdebstrap"
    result = subprocess.run(
        ["mmdebstrap", "--mode=root", "--variant=custom", f"--architectures={arch}",
         *([f"--hook-dir={hook}"] if hook else []),
         "--include=" + ",".join(sorted(names)),
         "--aptopt=Acquire::Languages \"none\"", suite, str(reference),
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
    return ours


# Packages chosen for what their maintainer scripts do: system users and
# groups (adduser, systemd-sysusers), dpkg-statoverride (dbus, exim4, sudo
# through its conffile), setcap (iputils-ping), setgid groups (cron,
# openssh-client's ssh-agent), alternatives, diversions, conffiles with
# modes, triggers (libc-bin, systemd), debconf questions.
CORPUS = ["systemd", "dbus", "cron", "iputils-ping", "libcap2-bin", "sudo",
          "openssh-server", "exim4-daemon-light", "rsyslog", "logrotate"]
CORPUS_RECIPES = {
    # The packages in the bootstrap, and the same on top of a plain one.
    "corpus": """\
ref: test/corpus
architecture: {arch}
{archives}stages:
  - {{name: base, bootstrap: {{variant: minbase, packages: [{packages}]}}}}
""",
    "layered": """\
ref: test/layered
architecture: {arch}
{archives}stages:
  - {{name: base, bootstrap: {{variant: minbase}}}}
  - {{name: more, install: [{packages}]}}
""",
}
# Keep in step with docs/recipes.md: what scripts make differently on every
# machine or day, beside the differences every bootstrap has.
CORPUS_ALLOWED = ALLOWED + [
    # random keys made by openssh-server's postinst
    "/etc/ssh/ssh_host_*",
    # apt's auto-installed marks, which only an apt run writes
    "/var/lib/apt/extended_states",
]
# Files that name the machine they were made on: compared with the build
# host's name in mmdebstrap's copy read as the sandbox's.
HOSTNAME_FILES = ["/etc/mailname", "/etc/exim4/update-exim4.conf.conf",
                  "/var/lib/exim4/config.autogenerated",
                  "/var/cache/debconf/config.dat"]


def _shadow_without_dates(text):
    """/etc/shadow with the day of the last change left out (mmdebstrap's
    is the day it ran; ours is SOURCE_DATE_EPOCH's)."""
    return [":".join(f[:2] + f[3:]) for f in
            (line.split(":") for line in text.splitlines())]


@pytest.mark.skipif(os.geteuid() != 0, reason="mmdebstrap's root mode needs root")
@pytest.mark.parametrize("suite,arch", [
    ("bookworm", "amd64"), ("trixie", "amd64"),
    pytest.param("bookworm", "arm64", marks=pytest.mark.qemu),
    pytest.param("trixie", "arm64", marks=pytest.mark.qemu)])
def test_maintainer_scripts_equal_mmdebstrap(tmp_path, pool, suite, arch):
    """Owners, groups, modes, capabilities, user and group IDs, alternatives,
    diversions and every file, for a bootstrap that installs the corpus and
    for a recipe that installs it in a later stage, against one mmdebstrap
    run (root mode, minbase, the corpus included) from the same versions."""
    import socket
    archives = ARCHIVES if suite == "bookworm" else TRIXIE_ARCHIVES
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    for name, text in CORPUS_RECIPES.items():
        (project / "recipes" / f"{name}.yaml").write_text(text.format(
            arch=arch, archives=archives, packages=", ".join(CORPUS)))
    configure(project, pool)
    run(["ninja", "update-lockfiles"], project)
    run(["ninja", "corpus", "layered"], project)

    entries = [e for e in lockfile.read(
        str(project / "lockfiles" / f"corpus.{arch}.lock")) if e.stage == "base"]
    base_lock = tmp_path / "corpus.lock"
    base_lock.write_text("\n".join(lockfile.stanza_text(e.fields) for e in entries))
    source = fetch.make_apt_source(entries, str(base_lock), pool,
                                   str(tmp_path / "source"))
    reference = tmp_path / "mmdebstrap"
    hook = MERGED_USR_HOOK[suite]
    # An empty suite: the flat source has no Release naming one, and
    # mmdebstrap would narrow the Essential set to that suite.
    result = subprocess.run(
        ["mmdebstrap", "--mode=root", "--variant=minbase", f"--architectures={arch}",
         *([f"--hook-dir={hook}"] if hook else []),
         "--include=" + ",".join(CORPUS),
         "--aptopt=Acquire::Languages \"none\"", "", str(reference),
         f"deb [trusted=yes] copy://{source} ./"],
        capture_output=True, text=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": "1704067200"})
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = tree_from_dir(str(reference))
    repo = str(project / "build" / "repo")
    host = socket.gethostname()

    theirs = _same_units(theirs)
    for ref in ("test/corpus", "test/layered"):
        ours = _same_units(tree_from_commit(repo, ref))
        later_order = ["/etc/gshadow"] if ref == "test/layered" else []
        problems = differences(ours, theirs, ignore=CORPUS_ALLOWED + HOSTNAME_FILES
                               + ["/etc/shadow"] + later_order)
        assert problems == [], f"{ref}:\n" + "\n".join(problems[:60])
        for path in HOSTNAME_FILES:
            mine = ostree_text(project, ref, path)
            other = (reference / path.lstrip("/")).read_text().replace(
                host, "debostree")
            assert mine == other, f"{ref}: {path}"
            assert ours[path][1:4] == theirs[path][1:4], path
        # A later stage is a later run of apt: users and groups that
        # systemd-sysusers adds then may be listed elsewhere in /etc/shadow
        # and /etc/gshadow (the same entries).
        order = sorted if ref == "test/layered" else list
        assert order(_shadow_without_dates(ostree_text(project, ref, "/etc/shadow"))) \
            == order(_shadow_without_dates((reference / "etc" / "shadow").read_text()))
        if ref == "test/layered" and "/etc/gshadow" in later_order:
            assert sorted(ostree_text(project, ref, "/etc/gshadow").splitlines()) \
                == sorted((reference / "etc" / "gshadow").read_text().splitlines())
        # Not vacuous: what the scripts set is there.
        if suite == "bookworm":  # trixie's ping needs no capability
            assert ours["/usr/bin/ping"][6] and \
                ours["/usr/bin/ping"][6][0][0] == "security.capability"
        assert ours["/usr/bin/crontab"][1] == 0o2755
        assert ours["/usr/lib/dbus-1.0/dbus-daemon-launch-helper"][1] == 0o4754
        assert ours["/usr/lib/dbus-1.0/dbus-daemon-launch-helper"][3] != 0
        assert ours["/etc/sudoers"][1] == 0o440
    if arch != "amd64":
        # The foreign bootstraps say which host programs stood in (the
        # lockfile's amd64 builds, native.py); the comparison above holds
        # with them.
        log = (project / "build" / "logs" / "corpus" / arch / "base.log").read_text()
        check_stand_ins(log, project / "lockfiles" / f"corpus.{arch}.lock")


def _same_units(tree):
    """Enablement links name a unit as /lib/systemd/... or /usr/lib/systemd/...
    (one file under merged /usr): deb-systemd-helper writes the first when
    it makes the link itself, systemctl the second.  In a bootstrap the
    files of every package are in place before dpkg configures the first,
    so systemctl is there earlier than under mmdebstrap."""
    result = {}
    for path, entry in tree.items():
        target = entry[4]
        if path.startswith("/etc/systemd/") and target and \
                target.startswith("/lib/systemd/"):
            entry = entry[:4] + ("/usr" + target,) + entry[5:]
        result[path] = entry
    return result


def ostree_text(project, ref, path):
    return run(["ostree", f"--repo={project}/build/repo", "cat", ref, path],
               project).stdout
