"""The default recipes as committed (recipes/ and lockfiles/): minimal
(Debian 13, amd64 and arm64) and bookworm (Debian 12) build, and every
stage's tree is one dpkg is content with (``dpkg --audit`` and ``dpkg
--verify`` inside it).  The server recipe's stages are checked in
test_server.py, which builds it."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import TOP, remove_tree
from debostree import ostree as ostree_refs
from debostree import recipe as recipes
from helpers import dpkg_health, dpkg_health_of_tree, other_user_dir

pytestmark = [pytest.mark.network, pytest.mark.sandbox, pytest.mark.slow,
              pytest.mark.qemu]

DEFAULTS = ("minimal", "bookworm")


# Both builds of the reproducibility test use it, so their commits (dates
# included) must be equal, not only their trees.
EPOCH = {"SOURCE_DATE_EPOCH": "1767225600"}


def run(argv, cwd, env=None, user=None):
    if user:
        argv = ["runuser", "-u", user, "--", "env",
                *[f"{k}={v}" for k, v in (env or {}).items()]] + argv
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, (argv, result.stdout[-4000:],
                                    result.stderr[-4000:])
    return result


def build(work, pool, user=None, env=None):
    env = {**EPOCH, **(env or {})}
    run([sys.executable, os.path.join(TOP, "configure.py"), "--builddir",
         str(work / "build"), "--pool", pool], work, env, user)
    run(["ninja"] + list(DEFAULTS), work, env, user)


@pytest.fixture(scope="module")
def built(tmp_path_factory, pool):
    work = tmp_path_factory.mktemp("defaults")
    build(work, pool)
    yield work
    remove_tree(work)


def stages_of(name):
    rec = recipes.load_recipe(os.path.join(TOP, "recipes", f"{name}.yaml"))
    return [(arch, stage.name) for arch in rec.architectures
            for stage in rec.stages]


@pytest.mark.parametrize("name", DEFAULTS)
def test_every_stage_passes_dpkg_audit_and_verify(built, name, tmp_path):
    checked = []
    for arch, stage in stages_of(name):
        ref = ostree_refs.stage_ref(name, arch, stage)
        audit, verify = dpkg_health(str(built / "build" / "repo"), ref,
                                    str(tmp_path))
        assert audit == "", (ref, audit)
        assert verify == [], (ref, verify)
        checked.append(ref)
    assert len(checked) >= 4


def test_another_user_elsewhere_builds_the_same_commits(built, pool, tmp_path):
    """Every default recipe's final commits, rebuilt in a fresh directory (by
    another user when the suite runs as root), with the same
    SOURCE_DATE_EPOCH: the same commits, so the same trees."""
    other = tmp_path / "other"
    user, env = other_user_dir(other, readable=[pool])
    build(other, pool, user, env)
    refs = [recipes.load_recipe(os.path.join(TOP, "recipes", f"{n}.yaml"))
            .ref_for(a) for n in DEFAULTS for a in recipes.load_recipe(
                os.path.join(TOP, "recipes", f"{n}.yaml")).architectures]
    assert len(refs) == 3

    def commits(work):
        return [run(["ostree", f"--repo={work}/build/repo", "rev-parse", ref],
                    work).stdout.strip() for ref in refs]
    assert commits(other) == commits(built)
    # And the same container image, byte for byte.
    run(["ninja", "minimal.oci"], other, {**EPOCH, **env}, user)
    run(["ninja", "minimal.oci"], built, EPOCH)
    assert (other / "build/oci/minimal/index.json").read_bytes() == \
        (built / "build/oci/minimal/index.json").read_bytes()
    remove_tree(other)


def test_the_check_sees_a_changed_file(built, tmp_path):
    """The control: a copied tree with one packaged file changed fails."""
    tree = tmp_path / "tree"
    # A copy: a hardlinked checkout would change the repository's object.
    run(["ostree", f"--repo={built}/build/repo", "checkout", "--user-mode",
         "--force-copy", ostree_refs.stage_ref("minimal", "amd64", "base"),
         str(tree)], tmp_path)
    (tree / "usr" / "share" / "doc" / "dpkg" / "copyright").write_text("changed\n")
    os.unlink(tree / "var" / "lib" / "dpkg" / "info" / "sed.md5sums")
    audit, verify = dpkg_health_of_tree(str(tree))
    assert any(line.endswith(" /usr/share/doc/dpkg/copyright") and
               line.startswith("??5") for line in verify), verify
    assert "sed" in audit
    remove_tree(tree)


def test_default_recipes_are_trixie_with_bookworm_kept(built):
    for name in ("minimal", "server"):
        rec = recipes.load_recipe(os.path.join(TOP, "recipes", f"{name}.yaml"))
        assert rec.archives[0].suites[0] == "trixie"
    rec = recipes.load_recipe(os.path.join(TOP, "recipes", "bookworm.yaml"))
    assert rec.archives[0].suites[0] == "bookworm"
    os_release = run(["ostree", f"--repo={built}/build/repo", "cat",
                      "exampleos/trixie/arm64/minimal", "/usr/lib/os-release"],
                     built).stdout
    assert 'VERSION_CODENAME=trixie' in os_release


def subordinate_ids():
    import pwd
    name = pwd.getpwuid(os.getuid()).pw_name
    try:
        with open("/etc/subuid") as f:
            return any(line.split(":")[0] in (name, str(os.getuid()))
                       for line in f)
    except OSError:
        return False


def podman_argv(storage, runroot, user, env):
    """podman with its storage in ``storage`` and ``runroot`` (which podman
    wants short): rootless (as ``user`` when the suite runs as root).
    runc, when there is one, for hosts whose cgroups crun refuses (v1 and
    v2 together); limits no higher than the host's, for hosts where raising
    them is not allowed."""
    argv = ["podman", "--root", f"{storage}/root", "--runroot", runroot,
            "--storage-driver", "overlay"]
    if user:
        argv = ["runuser", "-u", user, "--", "env",
                *[f"{k}={v}" for k, v in env.items()]] + argv
    run_flags = ["--rm", "--network=none", "--ulimit", "nofile=1024:1024",
                 "--ulimit", "nproc=1024:1024"]
    if shutil.which("runc"):
        run_flags += ["--runtime", "runc"]
    return argv, run_flags


def test_minimal_as_an_oci_image(built, tmp_path):
    """``ninja minimal.oci``: one layout with both architectures, skopeo
    reads and copies it, podman runs it (rootless) and sees the recipe's
    file and user, its layers re-imported give the commit's tree, and the
    same commit gives the same layout."""
    result = run(["ninja", "minimal.oci", "minimal.oci-archive"], built, EPOCH)
    assert "OCI minimal" in result.stdout
    layout = built / "build" / "oci" / "minimal"
    repo = f"{built}/build/repo"
    rec = recipes.load_recipe(os.path.join(TOP, "recipes", "minimal.yaml"))
    for arch in rec.architectures:
        commit = run(["ostree", f"--repo={repo}", "rev-parse",
                      rec.ref_for(arch)], built).stdout.strip()
        inspected = json.loads(run(["skopeo", "inspect", "--override-arch",
                                    arch, f"oci:{layout}"], built).stdout)
        assert inspected["Architecture"] == arch
        assert inspected["Labels"]["ostree.commit"] == commit
        assert "containers.bootc" not in inspected["Labels"]
        assert 20 < len(inspected["Layers"]) <= 64
    index = (layout / "index.json").read_bytes()
    remove_tree(layout)
    run(["ninja", "minimal.oci"], built, EPOCH)
    assert (layout / "index.json").read_bytes() == index

    copy = tmp_path / "copy"
    run(["skopeo", "copy", "--quiet", "--all",
         f"oci-archive:{built}/build/oci/minimal.tar", f"oci:{copy}:minimal"],
        built)
    imported = run([os.path.join(TOP, "tools", "import-oci"), str(copy),
                    "--repo", repo, "--branch", "test/reimported",
                    "--arch", "amd64"], built).stdout.strip()

    def content(rev):
        return [line for line in run(["ostree", f"--repo={repo}", "show", rev],
                                     built).stdout.splitlines()
                if line.startswith("ContentChecksum:")]
    assert content(imported) == content(rec.ref_for("amd64"))

    if os.geteuid() != 0 and not subordinate_ids():
        pytest.skip("rootless podman needs subordinate IDs for this user "
                    "(/etc/subuid)")
    storage = tmp_path / "podman"
    user, env = other_user_dir(storage, readable=[str(copy)])
    runroot = tempfile.mkdtemp(prefix="podman-")
    other_user_dir(runroot)
    podman, flags = podman_argv(storage, runroot, user, env)
    result = run(podman + ["run", *flags, f"oci:{copy}:minimal", "sh", "-c",
                           "cat /etc/motd; id demo; ip -V; dpkg --audit"],
                 tmp_path)
    motd = open(os.path.join(TOP, "recipes", "files", "motd")).read()
    assert motd.strip() in result.stdout
    assert "uid=1000(demo)" in result.stdout and "iproute2" in result.stdout
    # Rootless storage holds files of the user's subordinate IDs: podman
    # removes them.
    run(podman + ["system", "reset", "--force"], tmp_path)
    assert not os.path.exists(f"{storage}/root")
    shutil.rmtree(runroot, ignore_errors=True)


FORKY = """\
ref: test/forky/{arch}
architectures: [amd64]
archives:
  # A frozen (snapshot) mirror serves testing's Release past its one-week
  # Valid-Until; the signature is still checked.
  - {name: debian, suites: [forky], components: [main], check-valid-until: false}
stages:
  - {name: base, bootstrap: {variant: minbase}}
  - {name: tools, install: [iproute2]}
"""


def test_testing_resolves_and_bootstraps(tmp_path, pool):
    """Debian testing (forky): resolved, bootstrapped, and dpkg is content."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "forky.yaml").write_text(FORKY)
    run([sys.executable, os.path.join(TOP, "configure.py"), "--recipes",
         "recipes", "--lockfiles", "lockfiles", "--pool", pool], tmp_path)
    run(["ninja", "update-lockfiles"], tmp_path)
    run(["ninja"], tmp_path)
    repo = str(tmp_path / "build" / "repo")
    os_release = run(["ostree", f"--repo={repo}", "cat", "test/forky/amd64",
                      "/usr/lib/os-release"], tmp_path).stdout
    assert "VERSION_CODENAME=forky" in os_release
    for stage in ("base", "tools"):
        audit, verify = dpkg_health(repo, ostree_refs.stage_ref(
            "forky", "amd64", stage), str(tmp_path))
        assert audit == "" and verify == [], (stage, audit, verify)
    remove_tree(tmp_path / "build")
