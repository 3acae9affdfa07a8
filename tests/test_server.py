"""The default server recipe: built, made deployable, published, and
deployed into a sysroot directory with ``ostree admin``.

Needs the network once (its packages; the session's pool is shared) and the
sandbox; the kernel and a generic initramfs make it the longest build.
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import TOP, remove_tree

pytestmark = [pytest.mark.network, pytest.mark.sandbox, pytest.mark.slow]

BRANCH = "exampleos/trixie/amd64/server"


def run(argv, cwd=None, check=True, env=None):
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def as_root():
    """fakeroot for what records owners, when not root."""
    return [] if os.geteuid() == 0 else ["fakeroot"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, pool):
    """The server recipe built and published, from the committed lockfile."""
    work = tmp_path_factory.mktemp("server")
    run([sys.executable, os.path.join(TOP, "configure.py"), "--builddir",
         str(work / "build"), "--pool", pool], cwd=work,
        env={"DEBOSTREE_PUBLISH_CONFIG": str(work / "none.yaml")})
    run(["ninja", "server/amd64"], cwd=work)
    result = run(["ninja", "server/amd64/publish"], cwd=work)
    assert "unsigned" in result.stdout
    yield work
    remove_tree(work)


def ostree(work, *args, repo="repo"):
    return run(["ostree", f"--repo={work}/build/{repo}", *args]).stdout


def test_tree_is_deployable(server):
    files = ostree(server, "ls", "-R", BRANCH, "/")
    paths = {line.split()[-1] if " -> " not in line else
             line.split(" -> ")[0].split()[-1]: line for line in files.splitlines()}
    kernels = [p for p in paths if re.match(r"/usr/lib/modules/[^/]+/vmlinuz$", p)]
    assert len(kernels) == 1
    kdir = os.path.dirname(kernels[0])
    assert kdir + "/initramfs.img" in paths
    assert "/etc" not in paths and "/usr/etc/passwd" in paths
    assert not [p for p in paths if p.startswith("/var/")]
    assert not [p for p in paths if p.startswith("/boot/")]
    assert "/usr/lib/sysimage/dpkg/status" in paths
    for link, target in (("/home", "var/home"), ("/root", "var/roothome"),
                         ("/ostree", "sysroot/ostree"), ("/opt", "var/opt"),
                         ("/usr/local", "../var/usrlocal")):
        assert paths[link].startswith("l") and paths[link].endswith(
            f"-> {target}"), paths[link]
    assert paths["/sysroot"].startswith("d")
    assert ostree(server, "cat", BRANCH, "/usr/etc/machine-id") == "uninitialized\n"
    # No per-machine secret: the host keys are made at each device's first
    # boot (test_image.py checks that), by a unit the build adds.
    secrets = [p for p in paths if re.search(
        r"(ssh_host_[^/]*_key(\.pub)?|/var/lib/systemd/random-seed|"
        r"/urandom/random-seed|snakeoil[^/]*|/dbus/machine-id)$", p)]
    assert secrets == []
    unit = "/usr/lib/systemd/system/debostree-ssh-host-keys.service"
    assert "ExecStart=/usr/bin/ssh-keygen -A" in ostree(server, "cat", BRANCH, unit)
    assert paths["/usr/lib/systemd/system/multi-user.target.wants/"
                 "debostree-ssh-host-keys.service"].startswith("l")
    log = (server / "build" / "logs" / "server" / "amd64" / "deployable.log").read_text()
    assert "deployable: removed /etc/ssh/ssh_host_ed25519_key" in log
    tmpfiles = ostree(server, "cat", BRANCH, "/usr/lib/tmpfiles.d/debostree-var.conf")
    assert "L /var/lib/dpkg - - - - ../../usr/lib/sysimage/dpkg" in tmpfiles
    assert re.search(r"^d /var/home/admin 07[05]{2} 1000 1000 -$", tmpfiles, re.M)
    assert "C /var/home/admin/.bashrc" in tmpfiles
    # The branch commit: a version and the first changelog entry.
    log = ostree(server, "log", BRANCH)
    assert re.search(r"Version: \d{8}\.0", log) and "First commit:" in log


def test_initramfs_boots_ostree(server, tmp_path):
    files = ostree(server, "ls", "-R", BRANCH, "/usr/lib/modules")
    image = [line.split()[-1] for line in files.splitlines()
             if line.endswith("/initramfs.img")][0]
    data = subprocess.run(["ostree", f"--repo={server}/build/repo", "cat",
                           BRANCH, image], capture_output=True, check=True).stdout
    archive = subprocess.run(["zstd", "-dc"], input=data, capture_output=True,
                             check=True).stdout
    names = subprocess.run(["cpio", "-t", "--quiet"], input=archive,
                           capture_output=True, check=True).stdout.decode()
    assert "usr/lib/ostree/ostree-prepare-root" in names.split()
    assert "usr/lib/systemd/system/ostree-prepare-root.service" in names.split()
    # The libraries of its programs, not the build's fakeroot library
    # (preloaded into every program of the build, so ldd lists it).
    assert "usr/lib/x86_64-linux-gnu/libc.so.6" in names.split()
    assert "libfakeroot" not in names


def test_published_commit_deploys(server, tmp_path):
    sysroot = tmp_path / "sysroot"
    sysroot.mkdir()
    prefix = as_root()
    run(prefix + ["ostree", "admin", "init-fs", str(sysroot)])
    run(prefix + ["ostree", "admin", f"--sysroot={sysroot}", "os-init", "exampleos"])
    run(prefix + ["ostree", "pull-local", f"--repo={sysroot}/ostree/repo",
                  f"{server}/build/publish", BRANCH])
    run(prefix + ["ostree", "admin", f"--sysroot={sysroot}", "deploy",
                  "--os=exampleos", "--karg=root=LABEL=exampleos-root", BRANCH])
    commit = ostree(server, "rev-parse", BRANCH, repo="publish").strip()
    deployment = sysroot / "ostree" / "deploy" / "exampleos" / "deploy" / f"{commit}.0"
    assert (deployment / "etc" / "passwd").exists()       # merged from /usr/etc
    assert (deployment / "etc" / "hostname").read_text() == "exampleos\n"
    entries = list((sysroot / "boot" / "loader" / "entries").iterdir())
    assert len(entries) == 1
    entry = entries[0].read_text()
    assert "root=LABEL=exampleos-root" in entry and "ostree=/ostree/boot." in entry
    kernel = re.search(r"^linux (\S+)", entry, re.M).group(1)
    assert (sysroot / "boot" / kernel.lstrip("/")).stat().st_size > 1_000_000
    # What /var needs at boot, made from the tree's tmpfiles.d: the package
    # state is reachable again, the user's home is there with its owner.
    run(prefix + ["systemd-tmpfiles", "--create", f"--root={deployment}"],
        check=False)  # warnings about /proc etc. in a directory root
    assert os.path.islink(deployment / "var" / "lib" / "dpkg")
    listing = run(["dpkg", f"--root={deployment}", "-l", "openssh-server",
                   "linux-image-amd64"]).stdout
    assert re.search(r"^ii +openssh-server", listing, re.M)
    if os.geteuid() == 0:
        assert (deployment / "var" / "home" / "admin").stat().st_uid == 1000
    assert (deployment / "var" / "home" / "admin" / ".bashrc").exists()


def test_every_stage_passes_dpkg_audit_and_verify(server, tmp_path):
    """Each stage's tree, the deployable one as a booted system sees it."""
    from debostree import ostree as ostree_refs
    from debostree import recipe as recipes
    from helpers import dpkg_health
    rec = recipes.load_recipe(os.path.join(TOP, "recipes", "server.yaml"))
    for stage in rec.stages:
        ref = ostree_refs.stage_ref("server", "amd64", stage.name)
        audit, verify = dpkg_health(f"{server}/build/repo", ref, str(tmp_path))
        assert audit == "", (ref, audit)
        assert verify == [], (ref, verify)


def test_another_user_in_another_directory_builds_the_same_tree(server, pool,
                                                              tmp_path):
    """The same ContentChecksum for the server's branch from a fresh build
    directory, by another user when the suite runs as root (the shared pool
    read by both)."""
    from helpers import other_user_dir
    other = tmp_path / "other"
    user, user_env = other_user_dir(other, readable=[pool])
    env = {"DEBOSTREE_PUBLISH_CONFIG": str(other / "none.yaml"), **user_env}
    prefix = ["runuser", "-u", user, "--", "env",
              *[f"{k}={v}" for k, v in env.items()]] if user else []
    run(prefix + [sys.executable, os.path.join(TOP, "configure.py"),
                  "--builddir", str(other / "build"), "--pool", pool],
        cwd=other, env=env)
    run(prefix + ["ninja", "server/amd64"], cwd=other, env=env)

    def content(work):
        text = run(["ostree", f"--repo={work}/build/repo", "show", BRANCH]).stdout
        return re.search(r"^ContentChecksum:\s+(\S+)", text, re.M).group(1)
    assert content(other) == content(server)
    remove_tree(other)
