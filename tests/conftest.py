"""Shared fixtures: a throwaway signing key, a tiny signed archive served on
127.0.0.1, and helpers to run the project's commands."""

import os
import shutil
import subprocess
import sys

import pytest

from debarchive import Archive, Key, Server

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)
PYTHON = sys.executable


def remove_tree(path):
    """Delete a test's work (builds, repositories, disk images): the whole
    suite would otherwise keep every test's until the session ends.  Trees
    ostree deployed are made immutable when root deploys them."""
    if not os.path.lexists(path):
        return
    try:
        shutil.rmtree(path)
    except OSError:
        if shutil.which("chattr"):
            subprocess.run(["chattr", "-R", "-i", str(path)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["chmod", "-R", "u+rwX", str(path)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(path, ignore_errors=True)


# A developer's own stage cache must not change what the tests build; the
# tests that use one name it.
os.environ.pop("DEBOSTREE_CACHE", None)
os.environ["DEBOSTREE_CACHE_CONFIG"] = "/nonexistent/debostree-cache.yaml"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.get_result().failed:
        item.debostree_failed = True


@pytest.fixture(autouse=True)
def free_tmp_path_after_passing(request):
    """A passing test's tmp_path goes when it ends; a failing one's stays
    for a look (pytest prints its path)."""
    yield
    path = request.node.funcargs.get("tmp_path")
    if path is not None and not getattr(request.node, "debostree_failed", False):
        remove_tree(path)


@pytest.fixture(scope="session")
def key(tmp_path_factory):
    return Key(tmp_path_factory.mktemp("gnupg"))


@pytest.fixture(scope="session")
def other_key(tmp_path_factory):
    return Key(tmp_path_factory.mktemp("gnupg-other"), name="Someone Else")


def populate(archive):
    """The packages the resolver tests exercise, in suites 'stable' and
    'stable-updates' (newer versions)."""
    s, u = "stable", "stable-updates"
    for arch in ("amd64", "arm64"):
        archive.add(s, "base-files", "1.0", arch, essential="yes",
                    priority="required")
        archive.add(s, "libc", "2.0", arch, multi_arch="same",
                    priority="required")
        archive.add(s, "coreutils", "9.0", arch, essential="yes",
                    priority="required", pre_depends="libc (>= 2.0)")
        archive.add(s, "apt", "2.6", arch, priority="required",
                    depends="libc, gpgv | gpgv2")
        archive.add(s, "gpgv2", "2.2", arch, depends="libc",
                    priority="optional")
        archive.add(s, "libfoo", "1.0", arch, multi_arch="same",
                    depends="libc")
        archive.add(u, "libfoo", "2.0", arch, multi_arch="same",
                    depends="libc")
        archive.add(s, "app", "1.0", arch, depends="libfoo (>= 2.0), "
                    "default-mta | mail-transport-agent", recommends="app-docs")
        archive.add(s, "exim", "4.0", arch, provides="mail-transport-agent",
                    conflicts="mail-transport-agent")
        archive.add(s, "postfix", "3.0", arch, provides="mail-transport-agent",
                    conflicts="mail-transport-agent")
        archive.add(s, "nano", "7.0", arch, provides="editor")
        archive.add(s, "lynx", "2.9", arch, provides="www-browser")
        archive.add(s, "w3m", "0.5", arch, provides="www-browser")
        archive.add(s, "perl", "5.36", arch, multi_arch="allowed",
                    depends="libc")
        archive.add(s, "script-tool", "1.0", arch, depends="perl:any")
        archive.add(s, "helper", "1.0", arch, multi_arch="foreign")
        archive.add(s, "uses-helper", "1.0", arch, depends="helper")
        archive.add(s, "old-tool", "1.0", arch)
        archive.add(s, "new-tool", "1.0", arch, conflicts="old-tool",
                    replaces="old-tool", provides="old-tool")
        archive.add(s, "plugin", "1.0", arch, breaks="app (<< 2.0)")
        archive.add(s, "broken-app", "1.0", arch, depends="middle")
        archive.add(s, "middle", "1.0", arch, depends="missing-lib (>= 5)")
        archive.add(s, "missing-lib", "1.0", arch)
        archive.add(s, "needs-setup", "1.0", arch, pre_depends="coreutils",
                    depends="base-files")
    archive.add(s, "app-docs", "1.0", "all")
    archive.add(s, "data-all", "1.0", "all", depends="libc")
    archive.add(s, "important-tool", "1.0", "all", priority="important")
    return archive


@pytest.fixture(scope="session")
def test_archive(tmp_path_factory, key):
    root = tmp_path_factory.mktemp("archive")
    archive = populate(Archive(root, key)).publish()
    server = Server(root)
    archive.url = server.url
    archive.server = server
    yield archive
    server.close()


def run_tool(argv, cwd=None, env=None, check=False):
    """Run one of the project's commands; return CompletedProcess (text)."""
    result = subprocess.run([PYTHON] + [str(a) for a in argv], cwd=cwd,
                            env={**os.environ, **(env or {})},
                            capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def no_user_config(tmp_path, monkeypatch):
    """Keep the user's own mirror configuration out of a test."""
    monkeypatch.setenv("DEBOSTREE_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.delenv("DEBOSTREE_MIRRORS", raising=False)
    monkeypatch.setenv("DEBOSTREE_CACHE_CONFIG", str(tmp_path / "no-cache.yaml"))
    monkeypatch.delenv("DEBOSTREE_CACHE", raising=False)


@pytest.fixture(scope="session")
def pool(tmp_path_factory):
    """One package pool for every build test of the session."""
    return str(tmp_path_factory.mktemp("pool"))
