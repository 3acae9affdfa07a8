"""Downloads that never end or never stop: a trickling mirror is given up,
an oversized body is cut off, neither leaves a file behind, and a transient
failure is retried."""

import hashlib
import http.server
import threading
import time

import pytest

from debostree import archive
from debostree.errors import UserError


class Handler(http.server.BaseHTTPRequestHandler):
    calls = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.calls[self.path] = Handler.calls.get(self.path, 0) + 1
        if self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "600")
            self.end_headers()
            for _ in range(600):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.3)
        elif self.path == "/huge":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(300):
                    self.wfile.write(b"y" * (1 << 20))
            except OSError:
                return
        elif self.path == "/flaky":
            if Handler.calls[self.path] == 1:
                self.send_response(503)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"abc")
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(archive, "STALL_SECONDS", 1)
    monkeypatch.setattr(archive, "BACKOFF_SECONDS", 0)


def test_a_trickle_is_given_up(server, tmp_path):
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        archive.download(server + "/trickle", str(tmp_path / "x.deb"),
                         expect_size=600, what="package x")
    assert "stalled" in error.value.message
    assert "tried 3 times" in error.value.message
    assert time.monotonic() - started < 20
    assert list(tmp_path.iterdir()) == []


def test_an_oversized_body_is_cut_off(server, tmp_path):
    with pytest.raises(UserError) as error:
        archive.download(server + "/huge", str(tmp_path / "x.deb"),
                         expect_size=600, what="package x")
    assert "sent more than the 4696 bytes expected" in error.value.message
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError):
        archive.fetch_bytes(server + "/huge", limit=1 << 20)


def test_a_transient_failure_is_retried(server, tmp_path):
    digest = archive.download(server + "/flaky", str(tmp_path / "x"),
                              expect_size=3,
                              expect_sha256=hashlib.sha256(b"abc").hexdigest())
    assert (tmp_path / "x").read_bytes() == b"abc"
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o644
    assert digest == hashlib.sha256(b"abc").hexdigest()
    assert Handler.calls["/flaky"] == 2


def test_not_found_is_not_retried(server, tmp_path):
    with pytest.raises(UserError) as error:
        archive.download(server + "/nothing", str(tmp_path / "x"))
    assert "HTTP 404" in error.value.message
    assert Handler.calls["/nothing"] == 1
