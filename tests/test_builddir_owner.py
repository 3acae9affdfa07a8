"""Two ninja runs in one build directory: the second stops with one line
instead of racing the first."""

import shutil
import subprocess

import pytest

from debostree import project
from debostree.errors import UserError


@pytest.fixture
def ninjas(tmp_path):
    """Processes named ``ninja`` (copies of sleep), as a command's parent."""
    fake = tmp_path / "ninja"
    shutil.copy(shutil.which("sleep"), fake)
    started = []

    def start():
        started.append(subprocess.Popen([str(fake), "60"]))
        return started[-1]
    yield start
    for p in started:
        p.kill()
        p.wait()


def test_second_ninja_stops(tmp_path, ninjas):
    builddir = str(tmp_path / "build")
    first, second = ninjas(), ninjas()
    project.claim_builddir(builddir, parent=first.pid)
    project.claim_builddir(builddir, parent=first.pid)  # its own commands
    with pytest.raises(UserError) as error:
        project.claim_builddir(builddir, parent=second.pid)
    assert f"another ninja (pid {first.pid}) is building in {builddir}" in \
        error.value.message
    first.kill()
    first.wait()
    project.claim_builddir(builddir, parent=second.pid)  # the first is gone
    with pytest.raises(UserError):
        project.claim_builddir(builddir, parent=ninjas().pid)


def test_commands_run_by_hand_are_not_checked(tmp_path, ninjas):
    builddir = str(tmp_path / "build")
    project.claim_builddir(builddir, parent=ninjas().pid)
    project.claim_builddir(builddir)  # parent: pytest, not a ninja
