"""./configure and the ninja targets of the lockfile workflow, end to end
against a local signed archive."""

import os
import subprocess

import pytest

from conftest import TOP, populate, run_tool
from debarchive import Archive, Server
from debostree import fetch, lockfile
from helpers import write_recipe


def ninja(cwd, *args):
    return subprocess.run(["ninja"] + list(args), cwd=cwd, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)


@pytest.fixture
def project(tmp_path, key, no_user_config):
    arc = populate(Archive(tmp_path / "archive", key)).publish()
    server = Server(arc.root)
    arc.url, arc.server = server.url, server
    work = tmp_path / "work"
    work.mkdir()
    write_recipe(work / "recipes", "my image", [
        {"name": "base", "bootstrap": {"variant": "custom",
                                       "packages": ["coreutils"]}},
        {"name": "apps", "install": ["app", "exim"]}], arc)
    result = run_tool([os.path.join(TOP, "configure.py"), "--recipes",
                       "recipes", "--lockfiles", "lockfiles",
                       "--mirror", f"test={arc.url}"], cwd=work)
    assert result.returncode == 0, result.stderr
    assert "missing" in result.stderr  # no lockfile yet
    yield work, arc
    server.close()


def test_lockfile_workflow(project):
    work, arc = project
    lock = work / "lockfiles" / "my image.amd64.lock"
    # Without a lockfile, building says what to do.
    result = ninja(work, "my image")
    assert result.returncode != 0
    assert "run 'ninja update-lockfiles'" in result.stdout + result.stderr

    result = ninja(work, "update-lockfiles")
    assert result.returncode == 0, result.stdout
    assert "+ app:amd64 1.0" in result.stdout
    entries = {e.name: e for e in lockfile.read(str(lock))}
    assert entries["app"].stage == "apps" and entries["libc"].stage == "base"

    result = ninja(work, "fetch")  # regenerates build.ninja, then fetches
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("FETCH ") == len(entries)
    pool = str(work / "build" / "pool")
    for entry in entries.values():
        assert os.path.exists(fetch.pool_path(pool, entry.sha256))
    assert "no work to do" in ninja(work, "fetch").stdout
    targets = ninja(work, "-t", "targets", "all").stdout
    for target in ("my image", "my image/packages", "update-lockfiles",
                   "check-lockfiles", "fetch"):
        assert f"\n{target}: " in "\n" + targets, targets

    # Nothing changed upstream: the lockfile is not rewritten.
    mtime = os.stat(lock).st_mtime_ns
    result = ninja(work, "check-lockfiles")
    assert result.returncode == 0 and "up to date" in result.stdout
    assert ninja(work, "update-lockfiles").returncode == 0
    assert os.stat(lock).st_mtime_ns == mtime

    # A newer libfoo appears: check fails and names it; update takes it;
    # only the new package is fetched.
    arc.add("stable-updates", "libfoo", "3.0", "amd64", multi_arch="same",
            depends="libc")
    arc.add("stable-updates", "libfoo", "3.0", "arm64", multi_arch="same",
            depends="libc")
    arc.publish()
    before = lock.read_text()
    result = ninja(work, "check-lockfiles")
    assert result.returncode != 0
    assert "~ libfoo:amd64 2.0 -> 3.0" in result.stdout
    assert lock.read_text() == before
    result = ninja(work, "update-lockfiles")
    assert result.returncode == 0
    assert "0 added, 0 removed, 1 changed" in result.stdout
    result = ninja(work, "fetch")
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("FETCH ") == 1 and "FETCH libfoo 3.0" in result.stdout


def test_a_replayed_older_release_is_refused(project):
    """A mirror serving an older (validly signed) Release than the one the
    lockfiles were made from would downgrade packages: refused, naming both
    dates, unless asked for."""
    import time
    work, arc = project
    assert ninja(work, "update-lockfiles").returncode == 0
    releases = (work / "lockfiles" / "releases").read_text()
    assert "Archive: test\nSuite: stable\nDate: " in releases
    arc.publish(date=time.time() - 30 * 86400)
    result = ninja(work, "update-lockfiles")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "archive 'test' suite 'stable': the mirror's Release is dated" in output
    assert "older than the" in output and "--allow-downgrade" in output
    assert (work / "lockfiles" / "releases").read_text() == releases
    result = run_tool([os.path.join(TOP, "tools", "update-lockfiles"), "--config",
                       "build/config.json", "--allow-downgrade"], cwd=work)
    assert result.returncode == 0, result.stderr


def test_stale_lockfile_is_caught_by_configure(project):
    """A recipe edited past its lockfile: configure says so, the recipe's
    build fails with that line, and the fix ('ninja update-lockfiles', which
    regenerates build.ninja first) works."""
    work, arc = project
    assert ninja(work, "update-lockfiles").returncode == 0
    recipe = work / "recipes" / "my image.yaml"
    recipe.write_text(recipe.read_text().replace("- exim", "- exim\n  - nano"))
    result = run_tool([os.path.join(TOP, "configure.py"), "--recipes", "recipes",
                       "--lockfiles", "lockfiles", "--mirror",
                       f"test={arc.url}"], cwd=work)
    assert result.returncode == 0
    assert "requests 'nano', which is not in the lockfile" in result.stderr
    assert "my image.yaml" in result.stderr
    result = ninja(work, "my image")
    assert result.returncode != 0
    assert "requests 'nano', which is not in the lockfile" in \
        result.stdout + result.stderr
    assert ninja(work, "update-lockfiles").returncode == 0
    entries = {e.name for e in lockfile.read(str(work / "lockfiles" /
                                                 "my image.amd64.lock"))}
    assert "nano" in entries


def test_tampered_lockfile_hash_fails_the_fetch(project):
    work, arc = project
    assert ninja(work, "update-lockfiles").returncode == 0
    lock = work / "lockfiles" / "my image.amd64.lock"
    entries = lockfile.read(str(lock))
    victim = next(e for e in entries if e.name == "exim")
    lock.write_text(lock.read_text().replace(victim.sha256, "f" * 64))
    result = ninja(work, "fetch")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "package exim_4.0_amd64.deb" in output and "f" * 64 in output
    assert victim.sha256 in output


def test_a_stage_imports_only_its_own_packages(project):
    """The import edges a bootstrap depends on bring the packages it needs,
    no more: building one recipe's base does not import what another
    recipe's bootstrap needs, and packages both need are imported once."""
    import json
    work, arc = project
    write_recipe(work / "recipes", "other", [
        {"name": "base", "bootstrap": {"variant": "custom",
                                       "packages": ["coreutils", "nano"]}}],
        arc)
    assert ninja(work, "update-lockfiles").returncode == 0
    assert ninja(work, "build.ninja").returncode == 0

    def bootstrap_set(recipe_name):
        return {e.name for e in lockfile.read(
            str(work / "lockfiles" / f"{recipe_name}.amd64.lock"))
            if e.stage == "base"}

    def imported_for(target):
        commands = ninja(work, "-t", "commands", target).stdout.splitlines()
        lists = [line.split()[-1] for line in commands if "import-debs" in line]
        assert lists, commands
        names = []
        for path in lists:
            with open(os.path.join(work, path.strip("'"))) as f:
                names += [item["expect"][0] for item in json.load(f)]
        assert len(names) == len(set(names))
        return set(names)

    mine, other = bootstrap_set("my image"), bootstrap_set("other")
    assert "nano" in other - mine and mine & other
    assert imported_for("my image/base") == mine
    assert imported_for("other/base") == other
    # A later stage needs its parent's imports (install stages unpack
    # their packages themselves).
    assert imported_for("my image/apps") == mine


def test_a_bootstrap_is_planned_beside_the_imports(project):
    """apt's order of a bootstrap's packages is an edge of its own that
    needs the fetched packages, not their imports: ninja runs it while the
    packages are imported, and the stage only reads it."""
    import json
    work, arc = project
    assert ninja(work, "update-lockfiles").returncode == 0
    assert ninja(work, "build.ninja").returncode == 0
    plan = "build/stages/my image/amd64/base.plan.json"
    query = ninja(work, "-t", "query", plan).stdout
    inputs = query.split("input:", 1)[1].split("outputs:", 1)[0]
    assert "base.options.json" in inputs and ".deb" in inputs
    assert "build/pkgs/" not in inputs
    stage = ninja(work, "-t", "query", "build/stages/my image/amd64/base.commit")
    assert plan in stage.stdout
    result = ninja(work, plan)
    assert result.returncode == 0, result.stdout
    assert "ORDER my image/base" in result.stdout
    assert "IMPORT" not in result.stdout
    with open(work / plan) as f:
        steps = json.load(f)
    assert steps[0][0] == "preinst" and "coreutils" in steps[0][1]
    # Nothing changed: nothing to do.
    assert "no work to do" in ninja(work, plan).stdout
