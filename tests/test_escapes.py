"""A hostile recipe against the sandbox, end to end: what its stages can
see and do (no capabilities, no mounts, no other IPC objects), links it
plants toward the host (the cleanup and a later copy stay in the tree), a
fakeroot daemon killed under it (the stage stops, with one line)."""

import os
import subprocess
import time

import pytest

from conftest import remove_tree
from test_build import TRIXIE_ARCHIVES, configure, ostree, run

pytestmark = [pytest.mark.network, pytest.mark.sandbox, pytest.mark.slow]

RECIPE = """\
ref: test/esc
architecture: amd64
{archives}environment: {{HOST_QUEUE_KEY: "{queue_key}"}}
stages:
  - {{name: base, bootstrap: {{variant: minbase}}}}
  - name: probe
    run: |
      grep -q '^CapEff:[[:space:]]*0000000000000000$' /proc/self/status
      ! mount -t tmpfs none /mnt 2>/dev/null
      ! unshare --mount true 2>/dev/null
      # The host's queue is not in the stage's IPC namespace.
      ! ipcs -q | grep -qi "$HOST_QUEUE_KEY"
  - name: plant
    run: |
      rm -rf /var/log && ln -s {host}/log /var/log
      rm -rf /etc/apt && ln -s {host}/etc /etc/apt
      rm -f /etc/machine-id && ln -s {host}/etc/machine-id /etc/machine-id
      ln -s {host}/copy /srv/x
      mkdir -p /opt/inside && ln -s /opt/inside /srv/y
      mv /usr/sbin /usr/sbin.real && ln -s {host}/sbin /usr/sbin
      mkdir -p /etc/ssh && echo secret > /etc/ssh/ssh_host_test_key
  - name: files
    copy:
      - {{src: motd, dest: /srv/y/motd, owner: 0, group: 0}}
"""
# Through /srv/x, a link to a host directory the tree does not have.
THROUGH_LINK = """\
ref: test/esc-copy
architecture: amd64
from: esc/plant
stages:
  - name: files
    copy:
      - {src: motd, dest: /srv/x/motd}
"""
# /var/lock -> /run/lock, as Debian ships it: the tree's /run is empty.
LOCK = """\
ref: test/esc-lock
architecture: amd64
from: esc/base
stages:
  - name: files
    copy:
      - {src: motd, dest: /var/lock/esc-test-motd}
"""
SLEEPER = """\
ref: test/esc-sleep
architecture: amd64
from: esc/base
stages:
  - {name: sleep, run: "sleep 60"}
"""

HOST_FILES = ["log/dpkg.log", "log/alternatives.log", "log/apt/history.log",
              "etc/machine-id", "sbin/policy-rc.d"]


def host_state(host):
    return {str(p.relative_to(host)): p.read_text() for p in host.rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory, pool):
    work = tmp_path_factory.mktemp("escapes")
    host = work / "host"
    for name in HOST_FILES:
        (host / name).parent.mkdir(parents=True, exist_ok=True)
        (host / name).write_text("the host's own\n")
    (host / "copy").mkdir()
    queue = subprocess.run(["ipcmk", "-Q"], capture_output=True, text=True,
                           check=True).stdout.split()[-1]
    key = [line.split()[0] for line in subprocess.run(
        ["ipcs", "-q"], capture_output=True, text=True).stdout.splitlines()
        if len(line.split()) > 1 and line.split()[1] == queue][0]
    project = work / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "recipes" / "motd").write_text("hello\n")
    (project / "recipes" / "esc.yaml").write_text(RECIPE.format(
        archives=TRIXIE_ARCHIVES, host=host, queue_key=key))
    configure(project, pool)
    run(["ninja", "update-lockfiles"], project)
    yield project, host, pool
    subprocess.run(["ipcrm", "-q", queue])
    remove_tree(work)


def test_hostile_stages_stay_inside(project):
    project, host, _ = project
    before = host_state(host)
    result = run(["ninja", "esc"], project)
    # A per-machine secret left by a run stage is named.
    assert "warning: esc/plant: /etc/ssh/ssh_host_test_key: the stage left a " \
        "per-machine secret" in result.stdout + result.stderr
    assert host_state(host) == before, "a host file changed"
    assert not list((host / "copy").iterdir())
    # The links are the tree's, as planted; the copy followed /srv/x inside.
    assert f"-> {host}/log" in ostree(project, "ls", "test/esc", "/var/log")
    assert ostree(project, "cat", "test/esc", "/opt/inside/motd") == "hello\n"


@pytest.mark.parametrize("name,text,dest", [
    ("esc-lock", LOCK, "/var/lock/esc-test-motd"),
    ("esc-copy", THROUGH_LINK, "/srv/x/motd")])
def test_a_copy_through_a_link_to_what_the_tree_lacks(project, name, text, dest):
    project, host, pool = project
    (project / "recipes" / f"{name}.yaml").write_text(text)
    try:
        configure(project, pool)
        run(["ninja", "update-lockfiles"], project)
        result = subprocess.run(["ninja", name], cwd=project,
                                capture_output=True, text=True)
        assert result.returncode != 0
        assert f"copy: cannot write {dest} in the image" in result.stdout
        assert not os.path.exists("/run/lock/esc-test-motd")
        assert not list((host / "copy").iterdir())
    finally:
        (project / "recipes" / f"{name}.yaml").unlink()


def fakeds(project):
    return subprocess.run(["pgrep", "-f", f"faked-sysv.*{project}"],
                          capture_output=True, text=True).stdout.split()


def test_a_lost_fakeroot_daemon_stops_the_stage(project):
    project, _, pool = project
    (project / "recipes" / "esc-sleep.yaml").write_text(SLEEPER)
    try:
        configure(project, pool)
        run(["ninja", "update-lockfiles"], project)
        build = subprocess.Popen(["ninja", "esc-sleep"], cwd=project,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, start_new_session=True)
        deadline = time.monotonic() + 120
        while not fakeds(project) or not (
                project / "build/logs/esc-sleep/amd64/sleep.log").exists() or \
                "sleep 60" not in (project / "build/logs/esc-sleep/amd64/"
                                   "sleep.log").read_text():
            assert time.monotonic() < deadline and build.poll() is None
            time.sleep(0.2)
        killed = time.monotonic()
        subprocess.run(["pkill", "-KILL", "-f", f"faked-sysv.*{project}"])
        output, _ = build.communicate(timeout=30)
        assert time.monotonic() - killed < 20
        assert build.returncode != 0
        assert "fakeroot daemon ended while the stage ran" in output
        assert not fakeds(project)
    finally:
        (project / "recipes" / "esc-sleep.yaml").unlink()


def test_a_killed_build_leaves_no_daemon(project):
    project, _, pool = project
    (project / "recipes" / "esc-sleep.yaml").write_text(SLEEPER)
    try:
        configure(project, pool)
        run(["ninja", "update-lockfiles"], project)
        build = subprocess.Popen(["ninja", "esc-sleep"], cwd=project,
                                 stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while not fakeds(project):
            assert time.monotonic() < deadline and build.poll() is None
            time.sleep(0.2)
        # A second ninja in the same build directory says so and stops.
        second = subprocess.run(["ninja", "esc-sleep"], cwd=project,
                                capture_output=True, text=True)
        assert second.returncode != 0
        assert f"another ninja (pid {build.pid}) is building in" in second.stdout
        # Only ninja, whose commands run in process groups of their own.
        os.kill(build.pid, 9)
        build.wait()
        deadline = time.monotonic() + 10
        while fakeds(project) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not fakeds(project)
    finally:
        (project / "recipes" / "esc-sleep.yaml").unlink()
