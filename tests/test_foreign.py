"""Foreign architectures: armhf images of Debian 13 and 12 built on this
host with qemu-user (through binfmt_misc), rootless (arm64 ones are built by
test_defaults.py and test_fidelity.py)."""



import pytest

from debostree import sandbox
from conftest import remove_tree
from helpers import check_stand_ins
from test_build import configure, run

pytestmark = [pytest.mark.network, pytest.mark.sandbox, pytest.mark.qemu,
              pytest.mark.slow]

# Debian 13 for both, on this Debian 12 host: the chroots' fakeroot library
# is the host's release's (sandboxlib.py).  armhf draws from the main
# archive only: the security archive's armhf index has been seen out of step
# with its Release on this machine's mirror.
RUN_CHECKS = """\
  - name: users
    run: |
      useradd --create-home demo
      chmod 4755 /usr/bin/dpkg-query
      ls -ln /usr/bin/passwd | grep -q '^-rwsr-xr-x [0-9]* 0 0 '
      ls -ln /etc/shadow | grep -q ' 0 42 '
      dpkg --audit
      test -z "$(dpkg --verify)"
      case "$(uname -m)" in aarch64|armv7l|armv8l) ;; *) exit 1 ;; esac
"""
RECIPE = """\
ref: test/foreign/{arch}
architectures: [armhf]
archives:
  - {name: debian, suites: [trixie, trixie-updates], components: [main]}
stages:
  - {name: base, bootstrap: {variant: minbase}}
""" + RUN_CHECKS
BOOKWORM = """\
ref: test/foreign-bookworm/{arch}
architectures: [armhf]
archives:
  - {name: debian, suites: [bookworm, bookworm-updates], components: [main]}
stages:
  - {name: base, bootstrap: {variant: minbase}}
""" + RUN_CHECKS

ELF_MACHINE = {"arm64": 0xB7, "armhf": 0x28}
TRIPLET = {"arm64": "aarch64-linux-gnu", "armhf": "arm-linux-gnueabihf"}


@pytest.fixture(scope="module")
def built(tmp_path_factory, pool):
    for arch in ("armhf",):
        problem = sandbox.binfmt_problem(arch, "amd64")
        if problem:
            pytest.fail(f"cannot run {arch} programs here: {problem}")
    project = tmp_path_factory.mktemp("foreign")
    (project / "recipes").mkdir()
    (project / "recipes" / "foreign.yaml").write_text(RECIPE)
    (project / "recipes" / "foreign-bookworm.yaml").write_text(BOOKWORM)
    configure(project, pool)
    run(["ninja", "update-lockfiles"], project)
    result = run(["ninja"], project)
    yield project, result.stdout
    remove_tree(project)


def ostree(project, *args):
    return run(["ostree", f"--repo={project}/build/repo", *args], project).stdout


# arm64: the default minimal recipe (test_defaults.py) and the fidelity
# corpus (test_fidelity.py) build Debian 12 and 13 for it.
@pytest.mark.parametrize("name,arch", [("foreign", "armhf"),
                                       ("foreign-bookworm", "armhf")])
def test_foreign_image(built, name, arch):
    project, _ = built
    assert (project / "lockfiles" / f"{name}.{arch}.lock").exists()
    ref = f"test/{name}/{arch}"
    elf = ostree_bytes(project, ref, "/usr/bin/bash")
    assert elf[:4] == b"\x7fELF"
    assert int.from_bytes(elf[18:20], "little") == ELF_MACHINE[arch]
    listing = ostree(project, "ls", ref, "/usr/bin/passwd", "/etc/shadow",
                     "/usr/bin/dpkg-query")
    assert "-04755 0 0" in listing and "-00640 0 42" in listing
    assert listing.count("-04755") == 2
    # The sandbox's own helpers are not left in the image.
    usr_lib = ostree(project, "ls", ref, f"/usr/lib/{TRIPLET[arch]}")
    assert "libfakeroot" not in usr_lib
    assert "policy-rc.d" not in ostree(project, "ls", ref, "/usr/sbin")
    # Nor the host programs' runtime that native stand-ins bring along.
    assert "x86_64-linux-gnu" not in ostree(project, "ls", ref, "/usr/lib")
    assert "lib64" not in ostree(project, "ls", ref, "/")
    log = (project / "build" / "logs" / name / arch / "base.log").read_text()
    # Host programs stood in, for either release and whatever the host has
    # installed: the lockfile's amd64 builds of the target's versions.
    check_stand_ins(log, project / "lockfiles" / f"{name}.{arch}.lock")


def ostree_bytes(project, ref, path):
    import subprocess
    return subprocess.run(["ostree", f"--repo={project}/build/repo", "cat", ref,
                           path], capture_output=True, check=True).stdout
