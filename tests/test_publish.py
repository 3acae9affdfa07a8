"""History, publishing and deployment without the network.

Small deployable trees (a fake kernel and initramfs where ostree looks for
them, /usr/etc, a dpkg status file) are committed through the same branch
code the build uses, published with signatures, served on 127.0.0.1,
pulled with verification, deployed into a sysroot directory, upgraded and
rolled back with ``ostree admin``.
"""

import base64
import json
import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import TOP, run_tool
from debarchive import Server
from debostree import branch, ostree, publish
from debostree.errors import UserError
from debostree.project import BuildConfig

BRANCH = "exampleos/test/amd64/server"
KVER = "6.0.0-test"


def sh(argv, check=True, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def admin(*args, check=True):
    """``ostree admin`` (and sysroot repo commands): as root, or under
    fakeroot for an unprivileged user, since a bare repository and a
    deployment record file owners."""
    prefix = [] if os.geteuid() == 0 else ["fakeroot"]
    return sh(prefix + ["ostree"] + list(args), check=check)


def status_text(packages):
    """A dpkg status file of ``{name: version or (version, KiB installed)}``."""
    text = ""
    for name, value in sorted(packages.items()):
        version, kib = value if isinstance(value, tuple) else (value, None)
        text += (f"Package: {name}\nStatus: install ok installed\n"
                 + ("Source: glibc (2.36-9)\n" if name == "libc6" else "")
                 + f"Architecture: amd64\nVersion: {version}\n"
                 + (f"Installed-Size: {kib}\n" if kib is not None else "")
                 + "\n")
    return text


def make_tree(root, packages, marker):
    """A deployable tree, as a 'deployable' stage leaves it."""
    files = {
        f"usr/lib/modules/{KVER}/vmlinuz": "kernel " + marker,
        f"usr/lib/modules/{KVER}/initramfs.img": "initramfs " + marker,
        "usr/lib/os-release": 'NAME="Example OS"\nID=exampleos\n',
        "usr/etc/os-release": "",
        "usr/etc/hostname": "exampleos\n",
        "usr/etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
        "usr/etc/group": "root:x:0:\n",
        "usr/lib/sysimage/dpkg/status": status_text(packages),
        "usr/share/marker": marker + "\n",
    }
    for path, text in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
    os.unlink(os.path.join(root, "usr/etc/os-release"))
    os.symlink("../lib/os-release", os.path.join(root, "usr/etc/os-release"))
    for d in ("boot", "sysroot", "var", "dev", "proc", "sys", "run", "tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.symlink("sysroot/ostree", os.path.join(root, "ostree"))


class Project:
    """A build directory with a repository, and the branch edge's inputs."""

    def __init__(self, path, settings=None):
        self.path = path
        self.config = BuildConfig(top=TOP, builddir=str(path / "build"),
                                  pool=str(path / "pool"), recipes="",
                                  lockfiles="", mirrors={},
                                  publish=settings or {})
        os.makedirs(self.config.builddir, exist_ok=True)
        self.config.save()
        ostree.Repo(self.config.repo).ensure()
        self.builds = 0
        self.lockfile = path / "test.lock"
        self.lockfile.write_text("")

    def build(self, packages, marker, version=None):
        """Commit a tree as the last stage, then through the branch code."""
        self.builds += 1
        tree = self.path / f"tree{self.builds}"
        shutil.rmtree(tree, ignore_errors=True)
        make_tree(str(tree), packages, marker)
        stage = sh(["ostree", "commit", f"--repo={self.config.repo}",
                    "--branch=stage/test", f"--tree=dir={tree}",
                    "--owner-uid=0", "--owner-gid=0", "--no-bindings"]
                   ).stdout.strip()
        stage_file = self.path / "stage.commit"
        stage_file.write_text(stage + "\n")
        options = self.path / "branch.options.json"
        options.write_text(json.dumps({
            "recipe": "server", "arch": "amd64", "branch": BRANCH,
            "lockfile": str(self.lockfile), "version": version,
            "commit_timestamp": 1767225600 + self.builds}))
        out = self.path / "build" / "branches" / "server" / "amd64.commit"
        os.makedirs(out.parent, exist_ok=True)
        (out.parent / "amd64.options.json").write_text(options.read_text())
        return branch.commit_branch(self.config.config_path, str(options),
                                    str(stage_file), str(out))

    def publish(self):
        return run_tool([os.path.join(TOP, "tools", "publish"), "--config",
                         self.config.config_path, "--summary", "--out",
                         os.path.join(self.config.builddir, "publish", "summary"),
                         os.path.join(self.config.builddir, "branches", "server",
                                      "amd64.commit")])

    def log(self, repo=None):
        return sh(["ostree", "log", f"--repo={repo or self.config.repo}",
                   BRANCH]).stdout


def gpg_settings(key):
    fingerprint = sh(["gpg", "--homedir", key.home, "--with-colons",
                      "--list-secret-keys"]).stdout
    fpr = [line.split(":")[9] for line in fingerprint.splitlines()
           if line.startswith("fpr:")][0]
    return {"gpg_key": fpr, "gpg_homedir": key.home}


V1 = {"base-files": "12.4", "libc6": "2.36-9", "old-tool": "1.0"}
V2 = {"base-files": "12.4+deb12u1", "libc6": "2.36-9", "new-tool": "2.0"}


def test_history_versions_and_changelog(tmp_path):
    project = Project(tmp_path)
    first = project.build(V1, "one")
    # Same tree: no new commit.
    assert project.build(V1, "one") == first
    second = project.build(V2, "two")
    parent = sh(["ostree", "rev-parse", f"--repo={project.config.repo}",
                 f"{BRANCH}^"]).stdout.strip()
    assert parent == first
    log = project.log()
    assert "Version: 20260101.0" in log and "Version: 20260101.1" in log
    assert "First commit: 3 packages" in log
    assert "Packages: 1 added, 1 removed, 1 changed" in log
    assert "+ new-tool 2.0" in log and "- old-tool 1.0" in log
    assert "~ base-files 12.4 -> 12.4+deb12u1" in log
    # The tool, between any two commits, and REV against its parent.
    result = run_tool([os.path.join(TOP, "tools", "package-diff"), "--repo",
                       project.config.repo, first, second])
    assert result.returncode == 0, result.stderr
    assert "+ new-tool 2.0" in result.stdout
    assert "~ base-files 12.4 -> 12.4+deb12u1" in result.stdout
    reverse = run_tool([os.path.join(TOP, "tools", "package-diff"), "--repo",
                        project.config.repo, second, first]).stdout
    assert "- new-tool 2.0" in reverse and "+ old-tool 1.0" in reverse
    assert run_tool([os.path.join(TOP, "tools", "package-diff"), "--repo",
                     project.config.repo, BRANCH]).stdout == result.stdout
    # Each commit names its packages (name, version, architecture, source
    # package), so package-diff needs the commits alone, not their trees.
    metadata = sh(["ostree", "show", f"--repo={project.config.repo}",
                   "--print-metadata-key=debostree.packages", second]).stdout
    assert "('libc6', '2.36-9', 'amd64', 'glibc')" in metadata, metadata
    assert "('new-tool', '2.0', 'amd64', 'new-tool')" in metadata
    commits_only = tmp_path / "commits-only"
    sh(["ostree", "init", "--mode=archive", f"--repo={commits_only}"])
    sh(["ostree", "pull-local", f"--repo={commits_only}",
        "--commit-metadata-only", project.config.repo, first, second])
    assert sh(["ostree", "ls", f"--repo={commits_only}", second, "/"],
              check=False).returncode != 0  # no tree there
    assert run_tool([os.path.join(TOP, "tools", "package-diff"), "--repo",
                     str(commits_only), first, second]).stdout == result.stdout
    # A commit without the list (a stage's; or one made before branches
    # carried it): the packages come from the trees.
    stage_second = sh(["ostree", "rev-parse", f"--repo={project.config.repo}",
                       "stage/test"]).stdout.strip()
    from_tree = run_tool([os.path.join(TOP, "tools", "package-diff"), "--repo",
                          project.config.repo, first, stage_second]).stdout
    assert from_tree.splitlines()[1:] == result.stdout.splitlines()[1:]
    bad = run_tool([os.path.join(TOP, "tools", "package-diff"), "--repo",
                    project.config.repo, "no/such/branch"])
    assert bad.returncode == 2 and "no commit 'no/such/branch" in bad.stderr
    assert "Traceback" not in bad.stderr
    # A version from the recipe replaces the automatic one.
    project.build(V1, "three", version="1.2")
    assert "Version: 1.2" in project.log()


def test_publish_unsigned_says_so(tmp_path):
    project = Project(tmp_path)
    project.build(V1, "one")
    result = project.publish()
    assert result.returncode == 0, result.stderr
    assert "unsigned" in result.stdout
    published = os.path.join(project.config.builddir, "publish")
    assert sh(["ostree", "rev-parse", f"--repo={published}", BRANCH]).stdout
    config = sh(["ostree", "config", f"--repo={published}", "get", "core.mode"])
    assert config.stdout.strip() == "archive-z2"


def corrupt_one_file_object(repo):
    """Flip the content of the largest file object of a bare-user repository,
    as a disk error or a tampering hand would; returns its path."""
    objects = [os.path.join(d, f) for d, _, names in os.walk(
        os.path.join(repo, "objects")) for f in names if f.endswith(".file")]
    victim = max(objects, key=os.path.getsize)
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(bytes([data[0] ^ 0xFF]) + data[1:])
    return victim


def test_a_corrupt_object_is_never_published_and_fsck_finds_it(tmp_path):
    project = Project(tmp_path)
    project.build(V1, "one")
    corrupt_one_file_object(project.config.repo)
    result = project.publish()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    published = os.path.join(project.config.builddir, "publish")
    refs = sh(["ostree", "refs", f"--repo={published}"]).stdout \
        if os.path.exists(os.path.join(published, "config")) else ""
    assert BRANCH not in refs
    check = run_tool([os.path.join(TOP, "tools", "fsck"), "--config",
                      project.config.config_path])
    assert check.returncode == 2, check.stdout + check.stderr
    assert "has corrupt objects" in check.stderr
    assert len(check.stderr.strip().splitlines()) == 1


def serve_copy(tmp_path, published, name):
    copy = tmp_path / name
    shutil.copytree(published, copy, symlinks=True)
    return copy, Server(copy)


def fresh_remote_repo(path, url, key, verify=True):
    sh(["ostree", "init", "--mode=archive", f"--repo={path}"])
    sh(["ostree", "remote", "add", f"--repo={path}",
        f"--set=gpg-verify={'true' if verify else 'false'}",
        "--set=gpg-verify-summary=true", "origin", url])
    sh(["ostree", "remote", "gpg-import", f"--repo={path}",
        f"--keyring={key.keyring}", "origin"])


def test_publish_pull_verify_deploy_upgrade_rollback(tmp_path, key, other_key):
    project = Project(tmp_path, gpg_settings(key))
    first = project.build(V1, "one")
    result = project.publish()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signed (gpg)" in result.stdout and "summary" not in result.stderr
    published = os.path.join(project.config.builddir, "publish")
    server = Server(published)
    try:
        # Pulled with signature verification (commit and summary).
        client = tmp_path / "client"
        fresh_remote_repo(client, server.url, key)
        sh(["ostree", "pull", f"--repo={client}", "origin", BRANCH])
        assert sh(["ostree", "rev-parse", f"--repo={client}",
                   f"origin:{BRANCH}"]).stdout.strip() == first

        # A device: a sysroot directory with the published commit deployed.
        sysroot = tmp_path / "sysroot"
        sysroot.mkdir()
        admin("admin", "init-fs", str(sysroot))
        admin("admin", f"--sysroot={sysroot}", "os-init", "exampleos")
        repo = f"--repo={sysroot}/ostree/repo"
        admin("remote", "add", repo, "--set=gpg-verify=true",
              "exampleos", server.url)
        admin("remote", "gpg-import", repo, f"--keyring={key.keyring}",
              "exampleos")
        admin("pull", repo, "exampleos", BRANCH)
        admin("admin", f"--sysroot={sysroot}", "deploy", "--os=exampleos",
              f"exampleos:{BRANCH}")
        deployments = sysroot / "ostree" / "deploy" / "exampleos" / "deploy"
        assert os.path.exists(deployments / f"{first}.0" / "usr" / "share" / "marker")
        entries = list((sysroot / "boot" / "loader" / "entries").iterdir())
        assert len(entries) == 1 and "ostree=" in entries[0].read_text()

        # A second build, published: a delta from the first; the device
        # upgrades to it.
        second = project.build(V2, "two")
        result = project.publish()
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"delta from {first[:12]}" in result.stdout
        deltas = sh(["ostree", "static-delta", "list", f"--repo={published}"])
        assert len(deltas.stdout.split()) == 1
        admin("admin", f"--sysroot={sysroot}", "upgrade", "--os=exampleos")
        status = admin("admin", f"--sysroot={sysroot}", "status").stdout
        assert status.index(second) < status.index(first), status
        assert "Version: 20260101.1" in status
        assert (deployments / f"{second}.0" / "usr" / "share" / "marker"
                ).read_text() == "two\n"
        # Rollback: drop the new deployment; the previous one is the
        # default again.
        admin("admin", f"--sysroot={sysroot}", "undeploy", "0")
        status = admin("admin", f"--sysroot={sysroot}", "status").stdout
        assert first in status and second not in status
        entry = list((sysroot / "boot" / "loader" / "entries").iterdir())
        assert len(entry) == 1 and "20260101.0" in entry[0].read_text()
    finally:
        server.close()

    # A tampered object is refused.
    copy, bad_server = serve_copy(tmp_path, published, "tampered")
    try:
        objects = [os.path.join(d, f) for d, _, files in os.walk(copy / "objects")
                   for f in files if f.endswith(".filez")]
        victim = max(objects, key=os.path.getsize)
        with open(victim, "r+b") as f:
            f.seek(os.path.getsize(victim) // 2)
            f.write(b"XXXXXXXX")
        client = tmp_path / "client-tampered"
        fresh_remote_repo(client, bad_server.url, key)
        pulled = sh(["ostree", "pull", f"--repo={client}", "origin", BRANCH],
                    check=False)
        assert pulled.returncode != 0
        assert "orrupted" in pulled.stderr or "checksum" in pulled.stderr.lower()
    finally:
        bad_server.close()

    # A commit signed by another key is refused.
    copy, bad_server = serve_copy(tmp_path, published, "badsig")
    try:
        head = sh(["ostree", "rev-parse", f"--repo={copy}", BRANCH]).stdout.strip()
        other = gpg_settings(other_key)
        # Only the other key's signature: drop the detached metadata.
        os.unlink(copy / "objects" / head[:2] / f"{head[2:]}.commitmeta")
        sh(["ostree", "gpg-sign", f"--repo={copy}", head, other["gpg_key"],
            f"--gpg-homedir={other_key.home}"])
        client = tmp_path / "client-badsig"
        fresh_remote_repo(client, bad_server.url, key)
        # The summary is still the good one; the commit is the test.
        sh(["ostree", "config", f"--repo={client}", "set",
            'remote "origin".gpg-verify-summary', "false"])
        pulled = sh(["ostree", "pull", f"--repo={client}", "origin", BRANCH],
                    check=False)
        assert pulled.returncode != 0
        assert "GPG" in pulled.stderr or "signature" in pulled.stderr.lower()
    finally:
        bad_server.close()


def test_history_continues_from_the_published_repository(tmp_path, key):
    """Another machine: pull the published history, build, and the new
    commit follows the published one."""
    first_machine = Project(tmp_path / "one", gpg_settings(key))
    first = first_machine.build(V1, "one")
    assert first_machine.publish().returncode == 0
    server = Server(os.path.join(first_machine.config.builddir, "publish"))
    try:
        other = Project(tmp_path / "two", gpg_settings(key))
        publish.pull_published(other.config, server.url, [BRANCH],
                               other.config.publish)
        second = other.build(V2, "two")
        assert second != first
        log = other.log()
        assert "Version: 20260101.1" in log  # continues the numbering too
        assert "Packages: 1 added, 1 removed, 1 changed" in log
        parent = sh(["ostree", "rev-parse", f"--repo={other.config.repo}",
                     f"{BRANCH}^"]).stdout.strip()
        assert parent == first
        result = other.publish()
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"delta from {first[:12]}" in result.stdout
    finally:
        server.close()


def test_publish_settings_are_validated(tmp_path):
    path = tmp_path / "publish.yaml"
    path.write_text("url: http://updates.example.invalid/repo\n"
                    "gpg-key: nothex!\n")
    with pytest.raises(UserError) as error:
        publish.read_settings(str(path))
    assert "publish.yaml:2" in error.value.format()
    assert "invalid GPG key id" in error.value.format()
    path.write_text("url: ftp://x\n")
    with pytest.raises(UserError, match="invalid URL"):
        publish.read_settings(str(path))
    path.write_text("ed25519-key: missing.key\n")
    with pytest.raises(UserError, match="no such file"):
        publish.read_settings(str(path))
    path.write_text("signing: yes\n")
    with pytest.raises(UserError, match="unknown key 'signing'"):
        publish.read_settings(str(path))
    path.write_text("url: https://updates.example.invalid/repo/\n")
    assert publish.read_settings(str(path)) == {
        "url": "https://updates.example.invalid/repo"}
    assert publish.read_settings(str(tmp_path / "absent.yaml")) == {}


def ed25519_keys(directory):
    """A key pair made as ostree's documentation says: openssl's seed and
    public key, the secret file holding both, base64."""
    pem = os.path.join(directory, "key.pem")
    sh(["openssl", "genpkey", "-algorithm", "ed25519", "-out", pem])
    seed = subprocess.run(["openssl", "pkey", "-outform", "DER", "-in", pem],
                          capture_output=True, check=True).stdout[-32:]
    public = subprocess.run(["openssl", "pkey", "-outform", "DER", "-pubout",
                             "-in", pem], capture_output=True, check=True).stdout[-32:]
    secret = os.path.join(directory, "secret.key")
    with open(secret, "w") as f:
        f.write(base64.b64encode(seed + public).decode() + "\n")
    return secret, public


def commit_bytes(repo, commit):
    shard = os.path.join(repo, "objects", commit[:2], commit[2:] + ".commit")
    with open(shard, "rb") as f:
        return f.read()


def detached_signatures(repo, commit):
    path = os.path.join(repo, "objects", commit[:2], commit[2:] + ".commitmeta")
    with open(path, "rb") as f:
        return variant_signatures(f.read())


def variant_signatures(raw):
    from gi.repository import GLib
    metadata = GLib.Variant.new_from_bytes(GLib.VariantType("a{sv}"),
                                           GLib.Bytes.new(raw), False)
    return [bytes(s) for s in metadata.lookup_value(
        "ostree.sign.ed25519", None).unpack()]


class OpensslVerifier:
    """Ed25519 verification by openssl, independent of the signing code
    (PyNaCl): the public key as SubjectPublicKeyInfo DER (RFC 8410)."""

    DER_PREFIX = bytes.fromhex("302a300506032b6570032100")

    def __init__(self, public, directory):
        self.directory = directory
        self.key = os.path.join(directory, "public.der")
        with open(self.key, "wb") as f:
            f.write(self.DER_PREFIX + public)

    def verify(self, data, signature):
        message = os.path.join(self.directory, "message")
        sigfile = os.path.join(self.directory, "signature")
        for path, content in ((message, data), (sigfile, signature)):
            with open(path, "wb") as f:
                f.write(content)
        result = subprocess.run(
            ["openssl", "pkeyutl", "-verify", "-rawin", "-pubin", "-keyform",
             "DER", "-inkey", self.key, "-in", message, "-sigfile", sigfile],
            capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise BadSignature(result.stdout + result.stderr)


class BadSignature(Exception):
    pass


def test_ed25519_signatures_verify_with_openssl(tmp_path):
    """Commits and summary signed with an ed25519 key carry signatures in
    ostree's format that openssl (an implementation independent of the
    signing code's libsodium) verifies; a changed commit does not verify;
    pulling the history back checks them and refuses a commit signed by
    another key."""
    secret, public = ed25519_keys(str(tmp_path))
    verify_key = OpensslVerifier(public, str(tmp_path))
    project = Project(tmp_path / "one", {"ed25519_key": secret})
    first = project.build(V1, "one")
    result = project.publish()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signed (ed25519)" in result.stdout
    published = os.path.join(project.config.builddir, "publish")
    data = commit_bytes(published, first)
    [signature] = detached_signatures(published, first)
    verify_key.verify(data, signature)
    with pytest.raises(BadSignature):
        verify_key.verify(data.replace(b"one", b"two", 1) if b"one" in data
                          else data[:-1] + bytes([data[-1] ^ 1]), signature)
    with open(os.path.join(published, "summary"), "rb") as f:
        summary = f.read()
    with open(os.path.join(published, "summary.sig"), "rb") as f:
        [summary_signature] = variant_signatures(f.read())
    verify_key.verify(summary, summary_signature)

    # The second commit, and an unchanged rerun, sign once each.
    second = project.build(V2, "two")
    assert project.publish().returncode == 0
    assert project.publish().returncode == 0
    assert len(detached_signatures(published, second)) == 1
    verify_key.verify(commit_bytes(published, second),
                      detached_signatures(published, second)[0])

    server = Server(published)
    try:
        other = Project(tmp_path / "two", {"ed25519_key": secret})
        assert publish.pull_published(other.config, server.url, [BRANCH],
                                      other.config.publish) == [BRANCH]
        # Another machine whose key is not the publisher's refuses the head.
        stranger_secret, _ = ed25519_keys(str(tmp_path / "two"))
        third = Project(tmp_path / "three", {"ed25519_key": stranger_secret})
        with pytest.raises(UserError, match="without a valid ed25519 signature"):
            publish.pull_published(third.config, server.url, [BRANCH],
                                   third.config.publish)
        repo = os.path.join(third.config.builddir, "publish")
        assert sh(["ostree", "refs", f"--repo={repo}"]).stdout.strip() == ""
    finally:
        server.close()


def test_ed25519_key_files_are_checked(tmp_path):
    path = tmp_path / "publish.yaml"
    (tmp_path / "bad.key").write_text("AAAA\n")
    path.write_text("url: http://updates.example.invalid/repo\n"
                    "ed25519-key: bad.key\n")
    with pytest.raises(UserError) as error:
        publish.read_settings(str(path))
    assert "publish.yaml:2" in error.value.format()
    assert "not an ed25519 secret key" in error.value.format()
    secret, public = ed25519_keys(str(tmp_path))
    raw = base64.b64decode(open(secret).read())
    (tmp_path / "mixed.key").write_text(
        base64.b64encode(raw[:32] + bytes(32)).decode() + "\n")
    path.write_text("ed25519-key: mixed.key\n")
    with pytest.raises(UserError, match="does not match its seed"):
        publish.read_settings(str(path))
    path.write_text(f"ed25519-key: {secret}\n")
    assert publish.read_settings(str(path)) == {"ed25519_key": secret}


def test_publish_and_deploy_unprivileged(tmp_path):
    """No root needed: when the suite runs as root, run this module's
    publish/deploy test as an ordinary user too (``ostree admin`` under
    fakeroot, as an unprivileged user runs it)."""
    if os.geteuid() != 0:
        pytest.skip("the whole suite already runs unprivileged")
    user = "debostree-test"
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", user], check=True)
    info = pwd.getpwnam(user)
    # Short: gpg-agent's socket path under it must fit in a sockaddr_un.
    base = pathlib.Path(tempfile.mkdtemp(prefix="dbt", dir="/tmp"))
    os.chown(base, info.pw_uid, info.pw_gid)
    try:
            result = sh(["runuser", "-u", user, "--", "env", f"HOME={info.pw_dir}",
                     sys.executable, "-m", "pytest", "-q", "-p",
                     "no:cacheprovider", f"--basetemp={base / 't'}", "-k",
                     "publish_pull_verify_deploy or continues_from",
                     os.path.join(TOP, "tests", "test_publish.py")],
                    check=False, cwd=str(base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
