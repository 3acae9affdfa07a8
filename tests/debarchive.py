"""Test helpers: tiny .deb packages and a tiny signed archive, made on the fly.

``Archive`` builds packages with ``dpkg-deb``, indexes them with
``apt-ftparchive``, and signs the Release with a throwaway ed25519 key;
``serve`` publishes a directory on 127.0.0.1.  Nothing here touches the
network beyond the loopback.
"""

import functools
import http.server
import lzma
import os
import shutil
import subprocess
import threading
from email.utils import formatdate


def run(argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          **kwargs)


class Key:
    """A throwaway OpenPGP signing key in its own GNUPGHOME."""

    def __init__(self, home, name="Test Archive"):
        self.home = str(home)
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        run(["gpg", "--homedir", self.home, "--batch", "--passphrase", "",
             "--quick-gen-key", f"{name} <archive@example.invalid>", "ed25519",
             "sign", "never"])
        self.keyring = os.path.join(self.home, "keyring.gpg")
        with open(self.keyring, "wb") as f:
            f.write(subprocess.run(["gpg", "--homedir", self.home, "--export"],
                                   check=True, capture_output=True).stdout)

    def clearsign(self, src, dest):
        run(["gpg", "--homedir", self.home, "--batch", "--yes", "--clearsign",
             "--digest-algo", "SHA256", "-o", dest, src])

    def detach_sign(self, src, dest):
        run(["gpg", "--homedir", self.home, "--batch", "--yes",
             "--detach-sign", "--armor", "-o", dest, src])


def build_deb(workdir, name, version="1.0", arch="all", files=None,
              scripts=None, links=None, dirs=(), **fields):
    """Build ``name_version_arch.deb``; ``fields`` become control fields
    (underscores in keyword names become dashes: pre_depends=...);
    ``links`` maps paths to symbolic link targets, ``dirs`` are empty
    directories."""
    root = os.path.join(workdir, f"{name}_{version}_{arch}")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "DEBIAN"))
    control = {"Package": name, "Version": version, "Architecture": arch,
               "Maintainer": "Test <test@example.invalid>",
               "Description": f"test package {name}"}
    for key, value in fields.items():
        control["-".join(part.capitalize() for part in key.split("_"))
                .replace("Multi-Arch", "Multi-Arch")] = value
    with open(os.path.join(root, "DEBIAN", "control"), "w") as f:
        for key, value in control.items():
            f.write(f"{key}: {value}\n")
    for script, text in (scripts or {}).items():
        path = os.path.join(root, "DEBIAN", script)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
    for path, content in (files or {"usr/share/doc/" + name + "/README":
                                    f"{name} {version}\n"}).items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(content)
    for path in dirs:
        os.makedirs(os.path.join(root, path), exist_ok=True)
    for path, target in (links or {}).items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        os.symlink(target, full)
    deb = os.path.join(workdir, f"{name}_{version.replace(':', '%3a')}_{arch}.deb")
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, deb])
    shutil.rmtree(root)
    return deb


class Archive:
    """A Debian archive under ``root``: ``pool/`` and ``dists/SUITE/``."""

    def __init__(self, root, key, architectures=("amd64", "arm64")):
        self.root = str(root)
        self.key = key
        self.architectures = tuple(architectures)
        self.suites = {}  # suite -> {component: [deb paths]}
        os.makedirs(os.path.join(self.root, "pool"), exist_ok=True)
        self.workdir = os.path.join(self.root, ".work")
        os.makedirs(self.workdir, exist_ok=True)

    def add(self, suite, name, version="1.0", arch="all", component="main",
            **fields):
        deb = build_deb(self.workdir, name, version, arch, **fields)
        dest_dir = os.path.join(self.root, "pool", component, name[0], name)
        os.makedirs(dest_dir, exist_ok=True)
        dest = os.path.join(dest_dir, os.path.basename(deb))
        shutil.move(deb, dest)
        self.suites.setdefault(suite, {}).setdefault(component, []).append(dest)
        return dest

    def publish(self, valid_until=None, sign="inrelease", date=None):
        """Write indices and a signed Release for every suite."""
        for suite, components in self.suites.items():
            dist = os.path.join(self.root, "dists", suite)
            shutil.rmtree(dist, ignore_errors=True)
            for component, debs in components.items():
                for arch in self.architectures:
                    index_dir = os.path.join(dist, component, f"binary-{arch}")
                    os.makedirs(index_dir)
                    rel_debs = [os.path.relpath(d, self.root) for d in debs
                                if d.endswith(f"_{arch}.deb") or
                                d.endswith("_all.deb")]
                    text = ""
                    for rel in sorted(rel_debs):
                        text += run(["apt-ftparchive", "packages", rel],
                                    cwd=self.root).stdout
                    with open(os.path.join(index_dir, "Packages"), "w") as f:
                        f.write(text)
                    with lzma.open(os.path.join(index_dir, "Packages.xz"), "wb") as f:
                        f.write(text.encode())
            release = run([
                "apt-ftparchive",
                "-o", f"APT::FTPArchive::Release::Suite={suite}",
                "-o", f"APT::FTPArchive::Release::Codename={suite}",
                "-o", "APT::FTPArchive::Release::Origin=Test",
                "-o", "APT::FTPArchive::Release::Architectures="
                + " ".join(self.architectures),
                "-o", "APT::FTPArchive::Release::Components="
                + " ".join(sorted(components)),
                "release", "."], cwd=dist).stdout
            lines = release.splitlines(keepends=True)
            if date is not None:
                lines = [f"Date: {formatdate(date, usegmt=True)}\n"
                         if line.startswith("Date:") else line for line in lines]
            if valid_until is not None:
                lines.insert(1, f"Valid-Until: {formatdate(valid_until, usegmt=True)}\n")
            with open(os.path.join(dist, "Release"), "w") as f:
                f.writelines(lines)
            if sign in ("inrelease", "both"):
                self.key.clearsign(os.path.join(dist, "Release"),
                                   os.path.join(dist, "InRelease"))
            if sign in ("detached", "both"):
                self.key.detach_sign(os.path.join(dist, "Release"),
                                     os.path.join(dist, "Release.gpg"))
            if sign in ("inrelease", "none"):
                if sign == "inrelease":
                    os.unlink(os.path.join(dist, "Release"))
        return self


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Server:
    """A static HTTP server for a directory on 127.0.0.1; records requests."""

    def __init__(self, directory):
        self.requests = []
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                server.requests.append(self.path)
                # Always the file as it is now: Last-Modified has whole
                # seconds, so a summary published twice within one second
                # would otherwise be "not modified" to ostree's cached copy
                # (the unprivileged publish test is that fast).
                del self.headers["If-Modified-Since"]
                super().do_GET()

        handler = functools.partial(Handler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
