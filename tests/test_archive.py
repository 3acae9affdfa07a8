"""Release verification and index download: every bad archive is refused."""

import lzma
import os
import time

import pytest

from debarchive import Archive, Server
from debostree import archive, recipe
from debostree.errors import UserError
from helpers import mirrors_for


def small(tmp_path, key, **publish):
    arc = Archive(tmp_path / "archive", key, architectures=("amd64",))
    arc.add("stable", "hello", "1.0", "amd64")
    arc.publish(**publish)
    server = Server(arc.root)
    arc.url, arc.server = server.url, server
    return arc


def indices(arc, tmp_path, suites=("stable",), components=("main",),
            keyring=None, check_valid_until=True):
    spec = recipe.Archive("test", tuple(suites), tuple(components),
                          keyring or arc.key.keyring, check_valid_until)
    cache = archive.ArchiveCache(str(tmp_path / "cache"), mirrors_for(arc))
    return cache.indices(spec, "amd64")


def test_good_archive(tmp_path, key):
    arc = small(tmp_path, key)
    (index,) = indices(arc, tmp_path)
    with open(index.path) as f:
        assert "Package: hello" in f.read()
    with open(index.release_path) as f:
        text = f.read()
    assert "Origin: Test" in text and "BEGIN PGP" not in text


def test_cache_is_reused(tmp_path, key):
    arc = small(tmp_path, key)
    indices(arc, tmp_path)
    before = [r for r in arc.server.requests if "Packages" in r]
    indices(arc, tmp_path)
    after = [r for r in arc.server.requests if "Packages" in r]
    assert before and after == before  # only InRelease fetched again


def test_detached_signature(tmp_path, key):
    arc = small(tmp_path, key, sign="detached")
    assert len(indices(arc, tmp_path)) == 1


def test_bad_signature(tmp_path, key, other_key):
    arc = small(tmp_path, key)
    with pytest.raises(UserError) as info:
        indices(arc, tmp_path, keyring=other_key.keyring)
    assert "signature check failed" in info.value.format()
    assert "not in the keyring" in info.value.format()


def test_tampered_release(tmp_path, key):
    arc = small(tmp_path, key)
    path = os.path.join(arc.root, "dists", "stable", "InRelease")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("Origin: Test", "Origin: Evil"))
    with pytest.raises(UserError) as info:
        indices(arc, tmp_path)
    assert "bad signature" in info.value.format()


def test_unsigned_release(tmp_path, key):
    arc = small(tmp_path, key, sign="none")
    with pytest.raises(UserError) as info:
        indices(arc, tmp_path)
    assert "not signed" in info.value.format()


def test_expired_release(tmp_path, key):
    arc = small(tmp_path, key, valid_until=time.time() - 3600)
    with pytest.raises(UserError) as info:
        indices(arc, tmp_path)
    assert "expired" in info.value.format()
    assert "check-valid-until: false" in info.value.format()


def test_expired_release_of_a_snapshot_when_asked(tmp_path, key, other_key):
    arc = small(tmp_path, key, valid_until=time.time() - 3600)
    assert indices(arc, tmp_path, check_valid_until=False)
    # Still signed by the archive's key, or refused.
    with pytest.raises(UserError) as info:
        indices(arc, tmp_path / "other", keyring=other_key.keyring,
                check_valid_until=False)
    assert "signature" in info.value.format()


def test_release_of_another_suite(tmp_path, key):
    """oldstable's signed InRelease served as stable's is refused."""
    arc = Archive(tmp_path / "archive", key, architectures=("amd64",))
    arc.add("stable", "hello", "2.0", "amd64")
    arc.add("oldstable", "hello", "1.0", "amd64")
    arc.publish()
    dists = tmp_path / "archive" / "dists"
    (dists / "stable" / "InRelease").write_bytes(
        (dists / "oldstable" / "InRelease").read_bytes())
    server = Server(arc.root)
    arc.url, arc.server = server.url, server
    with pytest.raises(UserError) as info:
        indices(arc, tmp_path)
    assert "the signed Release is for suite 'oldstable'" in info.value.message
    assert "not 'stable'" in info.value.message


def test_valid_until_in_future_is_fine(tmp_path, key):
    arc = small(tmp_path, key, valid_until=time.time() + 3600)
    assert indices(arc, tmp_path)


def test_tampered_index(tmp_path, key):
    arc = small(tmp_path, key)
    path = os.path.join(arc.root, "dists", "stable", "main", "binary-amd64",
                        "Packages.xz")
    with lzma.open(path) as f:
        text = f.read()
    with lzma.open(path, "wb") as f:
        f.write(text.replace(b"Version: 1.0", b"Version: 6.6"))
    os.unlink(path[:-3])  # the plain index too, or it would be used instead
    with pytest.raises(UserError) as info:
        indices(arc, tmp_path)
    message = info.value.format()
    assert "does not match" in message and "binary-amd64/Packages" in message
    cached = tmp_path / "cache" / "test" / "dists" / "stable" / "main" / \
        "binary-amd64"
    assert not (cached / "Packages").exists()
    assert not [p for p in os.listdir(cached) if "download" in p or "part" in p]


def test_unknown_suite(tmp_path, key):
    arc = small(tmp_path, key)
    with pytest.raises(UserError) as info:
        indices(arc, tmp_path, suites=("stabel",))
    assert "no such suite" in info.value.format()
    assert "'stabel'" in info.value.format()


def test_unknown_component(tmp_path, key):
    arc = small(tmp_path, key)
    with pytest.raises(UserError) as info:
        indices(arc, tmp_path, components=("contrib",))
    assert "no component 'contrib'" in info.value.format()


def test_unreachable_mirror(tmp_path, key):
    arc = small(tmp_path, key)
    arc.server.close()
    with pytest.raises(UserError) as info:
        indices(arc, tmp_path)
    assert arc.url in info.value.format()
