"""Building images: ./configure && ninja against Debian's archive.

These tests bootstrap real Debian 13 systems in the sandbox (bubblewrap,
fakeroot, an overlay in a user namespace), so they need the network once
(packages are shared by the whole session through one pool) and take
minutes in all.
"""

import os
import pwd
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import TOP
from debostree import lockfile

pytestmark = [pytest.mark.network, pytest.mark.sandbox, pytest.mark.slow]

ARCHIVES = """\
archives:
  - {name: debian, suites: [bookworm, bookworm-updates], components: [main]}
  - {name: debian-security, suites: [bookworm-security], components: [main]}
"""

# The current stable release for the build tests; Debian 12 (ARCHIVES) for
# the fidelity, owner and ID tests that use it.
TRIXIE_ARCHIVES = """\
archives:
  - {name: debian, suites: [trixie, trixie-updates], components: [main]}
  - {name: debian-security, suites: [trixie-security], components: [main]}
"""

APPLIANCE = f"""\
ref: test/appliance
architecture: amd64
{TRIXIE_ARCHIVES}environment: {{GREETING: hello}}
stages:
  - {{name: base, bootstrap: {{variant: minbase}}}}
  - {{name: users, run: "useradd --create-home --shell /bin/bash demo"}}
  - {{name: tools, install: [iproute2]}}
  - name: perms
    run: |
      chown demo:demo /srv
      chmod 4755 /usr/bin/ip
      setcap cap_net_admin+ep /usr/bin/ss
  - name: files
    copy:
      - {{src: "files/my $release", dest: /etc/exampleos-release, owner: demo, mode: "0600"}}
  - name: check
    run: |
      test "$(stat -c %U /srv)" = demo
      test "$(stat -c %a /usr/bin/ip)" = 4755
      getcap /usr/bin/ss | grep -q cap_net_admin
      test "$(stat -c %U:%a /etc/exampleos-release)" = demo:600
      test "$(stat -c %G /etc/shadow)" = shadow
      test "$GREETING" = hello
      dpkg --audit
      test -z "$(dpkg --verify)"
      test "$(ip -o link | wc -l)" = 1
  - {{name: slim, remove: [iproute2]}}
  - name: verify
    run: |
      ! dpkg -s iproute2 2>/dev/null | grep -q "^Status: install ok installed"
      test ! -e /usr/bin/ip
      dpkg --audit
"""

DERIVED = """\
ref: test/derived
architecture: amd64
from: appliance/tools
stages:
  - {name: extra, run: "echo derived > /etc/derived"}
"""


def run(argv, cwd, env=None, check=True, user=None):
    if user is not None:
        argv = ["runuser", "-u", user, "--"] + argv
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, **(env or {})},
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def stages_run(output):
    """The stages a ninja run executed, e.g. {'appliance/base', ...}."""
    return set(re.findall(r"STAGE (\S+) \(", output))


@pytest.fixture(scope="session")
def template(tmp_path_factory, pool):
    """A project with two recipes and their lockfiles (resolved once)."""
    root = tmp_path_factory.mktemp("template")
    (root / "recipes" / "files").mkdir(parents=True)
    (root / "recipes" / "appliance.yaml").write_text(APPLIANCE)
    (root / "recipes" / "derived.yaml").write_text(DERIVED)
    (root / "recipes" / "files" / "my $release").write_text("exampleos 1\n")
    configure(root, pool)
    run(["ninja", "update-lockfiles"], root)
    return root


def configure(project, pool, builddir="build", extra=(), env=None):
    return run([sys.executable, os.path.join(TOP, "configure.py"),
                "--recipes", "recipes", "--lockfiles", "lockfiles",
                "--builddir", builddir, "--pool", pool, *extra], project,
               env=env)


def fresh(template, tmp_path, name="project"):
    project = tmp_path / name
    shutil.copytree(template, project, ignore=shutil.ignore_patterns(
        "build", "build.ninja", ".ninja_*"))
    return project


def ostree(project, *args, check=True):
    return run(["ostree", f"--repo={project}/build/repo", *args], project,
               check=check).stdout


def test_build_and_incremental_rebuilds(template, pool, tmp_path):
    project = fresh(template, tmp_path)
    configure(project, pool)
    first = run(["ninja"], project).stdout
    # Import progress names each package's architecture.
    assert re.search(r"\] imported \S+ \S+ \((amd64|all)\)$", first, re.M), first
    ran = stages_run(first)
    assert {"appliance/base", "appliance/users", "appliance/tools",
            "appliance/perms", "appliance/files", "appliance/check",
            "appliance/slim", "appliance/verify", "derived/extra"} == ran
    # The shared stages ran once: one edge for both recipes.
    assert first.count("STAGE appliance/base ") == 1
    assert "test/appliance" in ostree(project, "refs")
    assert "test/derived" in ostree(project, "refs")
    listing = ostree(project, "ls", "stage/appliance/amd64/check", "/usr/bin/ip",
                     "/srv", "/etc/exampleos-release")
    assert "-04755 0 0" in listing
    demo = re.search(r"d00755 (\d+) (\d+) +0 /srv", listing)
    assert demo and demo.group(1) != "0"
    assert "-00600 " + demo.group(1) in listing
    # useradd rewrote /etc/shadow: it keeps its group.
    assert "-00640 0 42 " in ostree(project, "ls", "stage/appliance/amd64/users",
                                    "/etc/shadow")
    caps = ostree(project, "ls", "-X", "stage/appliance/amd64/check", "/usr/bin/ss")
    assert "security.capability" in caps
    # Intermediate stages have refs of their own, so ostree diff works.
    diff = ostree(project, "diff", "stage/appliance/amd64/users",
                  "stage/appliance/amd64/tools")
    assert "A    /usr/bin/ip" in diff

    # Nothing changed: nothing to do.
    assert "no work to do" in run(["ninja"], project).stdout

    recipe = project / "recipes" / "appliance.yaml"
    # A comment or whitespace change reruns nothing.
    recipe.write_text(recipe.read_text() + "\n# a comment\n\n")
    assert stages_run(run(["ninja"], project).stdout) == set()

    # Editing a stage's command reruns it and the stages after it.
    text = recipe.read_text()
    recipe.write_text(text.replace(
        "useradd --create-home --shell /bin/bash demo",
        "useradd --create-home --shell /bin/bash demo; echo 1 > /etc/marker"))
    assert stages_run(run(["ninja"], project).stdout) == {
        "appliance/users", "appliance/tools", "appliance/perms",
        "appliance/files", "appliance/check", "appliance/slim",
        "appliance/verify", "derived/extra"}

    # A stage that reruns but yields the same tree stops there (restat).
    recipe.write_text(recipe.read_text().replace(
        "echo 1 > /etc/marker", "echo 1 > /etc/marker; true"))
    assert stages_run(run(["ninja"], project).stdout) == {"appliance/users"}

    # A lockfile change to one package reruns only the stage installing it
    # (and, since its tree is the same, nothing after it).
    lock = project / "lockfiles" / "appliance.amd64.lock"
    entries = lockfile.read(str(lock))
    victim = next(e for e in entries if e.name == "iproute2")
    assert victim.stage == "tools"
    lock.write_text(lock.read_text().replace(
        "Package: iproute2\n", "Package: iproute2\nX-Note: touched\n"))
    assert stages_run(run(["ninja"], project).stdout) == {"appliance/tools"}

    # The final branch has history: a new commit only when the tree changed.
    log = ostree(project, "log", "test/appliance")
    assert log.count("commit ") == 2
    assert "Version: " in log
    meta = ostree(project, "show", "--print-metadata-key=debostree.lockfile-sha256",
                  "test/appliance")
    assert re.search(r"[0-9a-f]{64}", meta)
    assert run(["ostree", f"--repo={project}/build/repo", "fsck"],
               project).returncode == 0


def test_in_place_writes_cannot_corrupt_the_repository(template, pool, tmp_path):
    project = fresh(template, tmp_path)
    (project / "recipes" / "derived.yaml").unlink()
    (project / "lockfiles" / "derived.amd64.lock").unlink()
    recipe = project / "recipes" / "appliance.yaml"
    recipe.write_text(recipe.read_text().replace(
        '  - {name: users, run: "useradd --create-home --shell /bin/bash demo"}',
        '  - {name: users, run: "useradd --create-home --shell /bin/bash demo; '
        'echo corrupt >> /usr/share/doc/bash/copyright; '
        'truncate -s 0 /etc/debian_version"}'))
    configure(project, pool)
    run(["ninja", "appliance/users"], project)
    base = ostree(project, "cat", "stage/appliance/amd64/base", "/etc/debian_version")
    users = ostree(project, "cat", "stage/appliance/amd64/users", "/etc/debian_version")
    assert base.strip() and users == ""
    assert "corrupt" not in ostree(project, "cat", "stage/appliance/amd64/base",
                                   "/usr/share/doc/bash/copyright")
    assert "corrupt" in ostree(project, "cat", "stage/appliance/amd64/users",
                               "/usr/share/doc/bash/copyright")
    assert run(["ostree", f"--repo={project}/build/repo", "fsck"],
               project).returncode == 0


def test_failing_stage_moves_no_ref_and_shows_the_log(template, pool, tmp_path):
    project = fresh(template, tmp_path)
    configure(project, pool)
    run(["ninja", "appliance/users"], project)
    before = ostree(project, "rev-parse", "stage/appliance/amd64/users")
    recipe = project / "recipes" / "appliance.yaml"
    recipe.write_text(recipe.read_text().replace(
        "useradd --create-home --shell /bin/bash demo",
        "echo something went wrong here; exit 3"))
    result = run(["ninja", "appliance/users"], project, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "something went wrong here" in output
    assert "exit status 3" in output
    assert "build/logs/appliance/amd64/users.log" in output
    assert ostree(project, "rev-parse", "stage/appliance/amd64/users") == before


def test_killed_build_completes_when_run_again(template, pool, tmp_path):
    project = fresh(template, tmp_path)
    configure(project, pool)
    run(["ninja", "appliance/base"], project)
    recipe = project / "recipes" / "appliance.yaml"
    recipe.write_text(recipe.read_text().replace(
        "useradd --create-home --shell /bin/bash demo",
        "useradd --create-home --shell /bin/bash demo; sleep 4"))
    process = subprocess.Popen(["ninja", "appliance/users"], cwd=project,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    log = project / "build" / "logs" / "appliance" / "amd64" / "users.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and "sleep 4" in log.read_text():
            break
        time.sleep(0.1)
    time.sleep(1)
    # Kill everything the build started (ninja puts each command in a
    # process group of its own, so kill the whole session).
    subprocess.run(["pkill", "-KILL", "-s", str(process.pid)])
    process.wait()
    result = run(["ninja", "appliance/users"], project)
    assert "appliance/users" in stages_run(result.stdout)
    assert run(["ostree", f"--repo={project}/build/repo", "fsck"],
               project).returncode == 0
    assert "demo" in ostree(project, "cat", "stage/appliance/amd64/users",
                            "/etc/passwd")


def check_shell(project, env=None, user=None):
    """tools/shell in the built appliance: commands and their exit status,
    an interactive shell on standard input, and --commit."""
    shell = [sys.executable, os.path.join(TOP, "tools", "shell")]
    before = ostree(project, "refs")
    out = run(shell + ["appliance/tools", "--", "sh", "-c",
                       "id -u; test -x /usr/bin/ip && echo has-ip; "
                       "test -e /etc/exampleos-release || echo no-release; "
                       "echo $GREETING"], project, env=env, user=user).stdout
    assert out.split() == ["0", "has-ip", "no-release", "hello"], out
    assert run(shell + ["appliance", "--", "sh", "-c", "exit 7"], project,
               env=env, user=user, check=False).returncode == 7
    # The last stage by default ('verify', after iproute2 was removed).
    out = run(shell + ["appliance", "--", "sh", "-c",
                       "test -e /usr/bin/ip || echo slim"], project, env=env,
              user=user).stdout
    assert out == "slim\n", out
    argv = shell + ["appliance/amd64/perms"]
    if user is not None:
        argv = ["runuser", "-u", user, "--"] + argv
    session = subprocess.run(argv, cwd=project, capture_output=True, text=True,
                             env={**os.environ, **(env or {})},
                             input="stat -c %a /usr/bin/ip; touch /etc/gone\n"
                             "exit\n")
    assert session.returncode == 0, session.stderr
    assert "4755" in session.stdout.split(), session.stdout
    assert ostree(project, "refs") == before  # nothing kept
    # --commit: on a scratch ref, the stage's own ref untouched.
    out = run(shell + ["--commit", "appliance/users", "--", "sh", "-c",
                       "echo made > /etc/from-shell"], project, env=env,
              user=user).stdout
    assert "on scratch/appliance/amd64/users" in out and \
        "run: \"sh -c 'echo made > /etc/from-shell'\"" in out, out
    assert ostree(project, "cat", "scratch/appliance/amd64/users",
                  "/etc/from-shell") == "made\n"
    assert ostree(project, "ls", "stage/appliance/amd64/users",
                  "/etc/from-shell", check=False) == ""
    bad = run(shell + ["appliance/nosuch"], project, env=env, user=user,
              check=False)
    assert bad.returncode == 2 and "is neither an architecture" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_reproducible_and_a_shell_in_any_stage(template, pool, tmp_path):
    trees, commits = [], []
    for name in ("one", "two"):
        project = fresh(template, tmp_path, name)
        env = {"SOURCE_DATE_EPOCH": "1700000000"}
        run([sys.executable, os.path.join(TOP, "configure.py"), "--recipes",
             "recipes", "--lockfiles", "lockfiles", "--pool", pool], project,
            env=env)
        run(["ninja", "appliance"], project, env=env)
        trees.append(ostree(project, "show", "test/appliance").split(
            "ContentChecksum:")[1].split()[0])
        commits.append(ostree(project, "rev-parse", "test/appliance").strip())
    assert trees[0] == trees[1]
    assert commits[0] == commits[1]
    check_shell(project, env={"SOURCE_DATE_EPOCH": "1700000000"})


def test_unprivileged_build(template, pool, tmp_path):
    """The build needs no root: when the suite runs as root, build as an
    ordinary user too."""
    if os.geteuid() != 0:
        pytest.skip("the whole suite already runs unprivileged")
    user = "debostree-test"
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", user], check=True)
    info = pwd.getpwnam(user)
    home = tmp_path / "unprivileged"
    home.mkdir()
    project = fresh(template, home)
    (project / "recipes" / "derived.yaml").unlink()
    (project / "lockfiles" / "derived.amd64.lock").unlink()
    user_pool = home / "pool"
    shutil.copytree(pool, user_pool)
    for path in [home] + [p for p in home.rglob("*")]:
        os.lchown(path, info.pw_uid, info.pw_gid)
    os.chmod(tmp_path, 0o755)
    for parent in tmp_path.parents:
        if str(parent) in ("/", "/tmp"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o005)
    env = {"HOME": info.pw_dir}
    run([sys.executable, os.path.join(TOP, "configure.py"), "--recipes", "recipes",
         "--lockfiles", "lockfiles", "--pool", str(user_pool)], project,
        env=env, user=user)
    result = run(["ninja", "appliance"], project, env=env, user=user)
    assert "appliance/check" in stages_run(result.stdout)
    owner = os.stat(project / "build" / "repo" / "objects").st_uid
    assert owner == info.pw_uid
    check_shell(project, env=env, user=user)
