"""The foreign chroot's fakeroot library comes from the host's apt sources
at the host's fakeroot version, verified, whatever the recipe's suite."""

import hashlib

import pytest

from debarchive import Archive, Server
from debostree import sandboxlib
from debostree.errors import UserError
from debostree.mirrors import HostSource


@pytest.fixture(scope="module")
def host_archive(tmp_path_factory, key):
    arc = Archive(tmp_path_factory.mktemp("host") / "archive", key,
                  architectures=("amd64", "arm64"))
    arc.add("oldrelease", "libfakeroot", "1.31-1.2", "arm64")
    arc.add("release", "libfakeroot", "1.37.1.1-1", "arm64")
    arc.add("release", "libfakeroot", "1.37.1.1-1", "amd64")
    arc.add("release-updates", "other", "1.0", "arm64")
    arc.publish()
    server = Server(arc.root)
    yield arc, server.url
    server.close()


def sources(url, keyring, suites=("release-updates", "release", "oldrelease")):
    return [HostSource(url, tuple(suites), ("main",), keyring, "test.sources")]


def test_finds_the_exact_version_for_the_architecture(host_archive, tmp_path):
    arc, url = host_archive
    base, para = sandboxlib.find("arm64", "1.31-1.2", str(tmp_path),
                                 sources(url, arc.key.keyring))
    assert base == url
    assert para["Filename"].endswith("libfakeroot_1.31-1.2_arm64.deb")
    base, para = sandboxlib.find("arm64", "1.37.1.1-1", str(tmp_path),
                                 sources(url, arc.key.keyring))
    assert para["Architecture"] == "arm64" and para["Version"] == "1.37.1.1-1"


def test_no_such_version_is_one_line(host_archive, tmp_path):
    arc, url = host_archive
    with pytest.raises(UserError) as error:
        sandboxlib.find("arm64", "1.40-1", str(tmp_path),
                        sources(url, arc.key.keyring))
    assert "no libfakeroot 1.40-1 for arm64 in the host's apt sources" in \
        error.value.message
    assert "\n" not in error.value.message


def test_an_unverified_archive_is_never_used(host_archive, tmp_path, other_key):
    arc, url = host_archive
    with pytest.raises(UserError) as error:
        sandboxlib.find("arm64", "1.31-1.2", str(tmp_path),
                        sources(url, other_key.keyring))
    assert "signature" in error.value.format()


def test_fetch_needs_the_host_version(host_archive, tmp_path, monkeypatch):
    arc, url = host_archive
    monkeypatch.setattr(sandboxlib, "host_version", lambda: "1.31-1.2")
    out = tmp_path / "lib.deb"
    with pytest.raises(UserError) as error:
        sandboxlib.fetch("arm64", "1.37.1.1-1", str(out), str(tmp_path / "c"),
                         sources(url, arc.key.keyring))
    assert "run ./configure again" in error.value.format()
    sandboxlib.fetch("arm64", "1.31-1.2", str(out), str(tmp_path / "c"),
                     sources(url, arc.key.keyring))
    wanted = [d for d in arc.suites["oldrelease"]["main"]][0]
    with open(wanted, "rb") as f:
        assert hashlib.sha256(out.read_bytes()).hexdigest() == \
            hashlib.sha256(f.read()).hexdigest()


def test_library_path_is_per_version_and_architecture(tmp_path):
    a = sandboxlib.library_path("build", "arm64", "1.31-1.2")
    b = sandboxlib.library_path("build", "armhf", "1.31-1.2")
    c = sandboxlib.library_path("build", "arm64", "1:1.37-1")
    assert len({a, b, c}) == 3 and ":" not in c
