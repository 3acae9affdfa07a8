"""Fetching .debs into the pool: verified, atomic, never half there."""

import http.server
import os
import threading

import pytest

from debostree import fetch, lockfile
from debostree.errors import UserError
from helpers import resolve_recipe


@pytest.fixture
def entries(tmp_path, test_archive):
    text, _ = resolve_recipe(tmp_path, test_archive, [
        {"name": "base", "bootstrap": {"variant": "custom",
                                       "packages": ["app", "exim"]}}])
    return lockfile.parse(text)


def pool_files(pool):
    found = []
    for dirpath, _, files in os.walk(pool):
        found += [os.path.join(dirpath, f) for f in files]
    return found


def test_fetch_verifies_and_skips_present(tmp_path, test_archive, entries):
    pool = str(tmp_path / "pool")
    assert fetch.fetch_entries(entries, {"test": test_archive.url}, pool) == 4
    for entry in entries:
        assert os.path.getsize(fetch.pool_path(pool, entry.sha256)) == entry.size
    before = len(test_archive.server.requests)
    assert fetch.fetch_entries(entries, {"test": test_archive.url}, pool) == 0
    assert len(test_archive.server.requests) == before


def test_tampered_deb_is_refused_and_not_kept(tmp_path, test_archive, entries):
    entry = next(e for e in entries if e.name == "exim")
    bad = list(entries)
    bad[bad.index(entry)] = lockfile.Entry(
        entry.name, entry.version, entry.arch, entry.archive, entry.suite,
        entry.stage, entry.filename, entry.size, "0" * 64, entry.fields)
    pool = str(tmp_path / "pool")
    with pytest.raises(UserError) as info:
        fetch.fetch_entries(bad, {"test": test_archive.url}, pool)
    message = info.value.format()
    assert "package exim 4.0" in message
    assert f"{test_archive.url}/{entry.filename}" in message
    assert "0" * 64 in message and entry.sha256 in message
    assert not any("0" * 64 in p or ".part" in p for p in pool_files(pool))


class Truncating(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"x" * 1000)  # then hang up

    def log_message(self, *args):
        pass


def test_broken_download_never_looks_complete(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pool = str(tmp_path / "pool")
    url = f"http://127.0.0.1:{server.server_address[1]}/pool/x.deb"
    try:
        with pytest.raises(UserError) as info:
            fetch.fetch_one(pool, url, "1" * 64, 100000, "x 1.0")
    finally:
        server.shutdown()
        server.server_close()
    assert url in info.value.format()
    assert pool_files(pool) == []
