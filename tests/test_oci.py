"""OCI images without a build: trees committed path by path (owners,
setuid bits and a capability included) with a dpkg database like a real
one, made into image layouts by oci.py.  Layers follow the packages dpkg
says installed each path, what stages changed is one layer of its own, the
same commit gives the same bytes, re-importing the layers gives the same
tree, and a one-package update changes two layers.  The default recipes'
images under skopeo and podman are in test_defaults.py."""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile

import pytest

from conftest import TOP, run_tool
from debarchive import Archive, Server
from debostree import oci, ostree
from debostree.manifest import Entry
from helpers import write_recipe

DIR, FILE, LINK = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777
CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep


def package_files(name, version, size=100):
    """A package's files: a program, a shared file and a conffile."""
    body = (f"{name} {version}\n" * (size // 10 + 1)).encode()
    return {f"/usr/bin/{name}": body,
            f"/usr/share/doc/{name}/copyright": f"{name} license\n".encode(),
            f"/etc/{name}.conf": f"{name}=1\n".encode()}


def tree_entries(packages, deployable=False, extra=None):
    """``(path, Entry, data)`` of a Debian-like tree with ``packages``
    ({name: (version, size)}) installed and the dpkg database saying so;
    ``extra`` ({path: (Entry fields, data)}) as stages left it."""
    etc = "/usr/etc" if deployable else "/etc"
    admin = "/usr/lib/sysimage/dpkg" if deployable else "/var/lib/dpkg"
    files, status = {}, []
    for name, (version, size) in sorted(packages.items()):
        shipped = package_files(name, version, size)
        listing = ["/.", "/usr", "/usr/bin", "/usr/share", "/usr/share/doc",
                   f"/usr/share/doc/{name}", "/etc"] + sorted(shipped)
        sums = "".join(f"{hashlib.md5(d).hexdigest()}  {p[1:]}\n"
                       for p, d in sorted(shipped.items())
                       if not p.startswith("/etc/"))
        for path, data in shipped.items():
            files[etc + path[4:] if path.startswith("/etc/") else path] = data
        files[f"{admin}/info/{name}.list"] = "\n".join(listing).encode() + b"\n"
        files[f"{admin}/info/{name}.md5sums"] = sums.encode()
        files[f"{admin}/info/{name}.postinst"] = b"#!/bin/sh\n"
        conf = f"/etc/{name}.conf"
        status.append(f"Package: {name}\nStatus: install ok installed\n"
                      f"Version: {version}\nArchitecture: amd64\nConffiles:\n"
                      f" {conf} {hashlib.md5(shipped[conf]).hexdigest()}\n")
    files[f"{admin}/status"] = "\n".join(status).encode()
    meta = {path: (FILE, 0, 0, None, ()) for path in files}
    for path, (fields, data) in (extra or {}).items():
        files[path] = data
        meta[path] = fields
    dirs = set()
    for path in files:
        parent = os.path.dirname(path)
        while parent != "/":
            dirs.add(parent)
            parent = os.path.dirname(parent)
    entries = [(d, Entry(d, DIR), None) for d in sorted(dirs)]
    entries += [(p, Entry(p, *meta[p]), files[p]) for p in sorted(files)]
    return sorted(entries, key=lambda e: (e[0].count("/"), e[0]))


def stage_changes(deployable=False):
    etc = "/usr/etc" if deployable else "/etc"
    return {
        "/usr/bin/su-helper": ((stat.S_IFREG | 0o4755, 0, 8, None, ()), b"su\n"),
        "/usr/bin/pinger": ((FILE, 0, 0, None,
                             (("security.capability", CAP),)), b"ping\n"),
        "/usr/bin/awk": ((LINK, 0, 0, "mawk", ()), b""),
        f"{etc}/passwd": ((FILE, 0, 0, None, ()), b"root:x:0:0::/root:/bin/sh\n"),
        f"{etc}/shadow": ((stat.S_IFREG | 0o640, 0, 42, None, ()), b"root:*:1::::::\n"),
        # What a stage changed in a package: a program and a conffile.
        "/usr/bin/beta": ((FILE, 0, 0, None, ()), b"patched\n"),
        f"{etc}/gamma.conf": ((FILE, 0, 0, None, ()), b"gamma=2\n"),
    }


PACKAGES = {"alpha": ("1.0", 5000), "beta": ("2.0", 300), "gamma": ("1:3", 200)}


@pytest.fixture
def repo(tmp_path):
    path = str(tmp_path / "repo")
    ostree.Repo(path).ensure()
    return path


def commit(repo, entries, branch="test/tree", metadata=None):
    return ostree.commit_entries(repo, entries, branch, "tree", timestamp=1700000000,
                                 metadata=metadata)


def layout_of(repo, commit_id, out, changes=None, max_layers=oci.MAX_LAYERS,
              epoch=None):
    gi_repo = ostree.Repo(repo).open_gi()
    return oci.write_layout(str(out), [("amd64", lambda blobs: oci.image_manifest(
        gi_repo, commit_id, "amd64", "test", blobs, changes or {}, epoch,
        max_layers=max_layers, say=lambda _: None))])


def layers_of(layout):
    """``[(history title, {path: TarInfo})]`` of the layout's one image."""
    manifest, config = oci.read_image(str(layout))
    result = []
    for layer, history in zip(manifest["layers"], config["history"]):
        with tarfile.open(os.path.join(layout, "blobs", "sha256",
                                       layer["digest"][7:])) as tar:
            result.append((history["created_by"],
                           {"/" + m.name: m for m in tar.getmembers()}))
    return result


def content_checksum(repo, rev):
    out = subprocess.run(["ostree", "show", f"--repo={repo}", rev],
                         capture_output=True, text=True, check=True).stdout
    return next(line.split()[1] for line in out.splitlines()
                if line.startswith("ContentChecksum:"))


def test_layers_follow_the_packages_dpkg_installed(repo, tmp_path):
    commit_id = commit(repo, tree_entries(PACKAGES, extra=stage_changes()))
    layers = dict(layers_of(layout_of(repo, commit_id, tmp_path / "oci")))
    # The biggest first (none changed in the lockfile's history), the
    # stages' last.
    assert list(layers) == ["package alpha", "package gamma", "package beta",
                            oci.STAGES_LAYER]
    alpha = layers["package alpha"]
    assert {p for p, m in alpha.items() if not m.isdir()} == {
        "/usr/bin/alpha", "/usr/share/doc/alpha/copyright", "/etc/alpha.conf",
        "/var/lib/dpkg/info/alpha.list", "/var/lib/dpkg/info/alpha.md5sums",
        "/var/lib/dpkg/info/alpha.postinst"}
    # Each layer has the directories its files are in, as the tree has them.
    assert {"/usr", "/usr/bin", "/usr/share/doc/alpha", "/var/lib/dpkg/info"} \
        <= {p for p, m in alpha.items() if m.isdir()}
    # What stages changed (a patched program, an edited conffile) and what
    # no package installed is the stages' layer, not the package's.
    stages = {p for p, m in layers[oci.STAGES_LAYER].items() if not m.isdir()}
    assert stages == {"/usr/bin/su-helper", "/usr/bin/pinger", "/usr/bin/awk",
                      "/etc/passwd", "/etc/shadow", "/usr/bin/beta",
                      "/etc/gamma.conf", "/var/lib/dpkg/status"}
    assert "/usr/bin/beta" not in layers["package beta"]
    assert "/etc/gamma.conf" not in layers["package gamma"]
    # Every file in exactly one layer.
    everywhere = [p for members in layers.values() for p, m in members.items()
                  if not m.isdir()]
    assert len(everywhere) == len(set(everywhere))
    # Owners, modes, links and capabilities in the tar headers.
    helper = layers[oci.STAGES_LAYER]["/usr/bin/su-helper"]
    assert (helper.mode, helper.uid, helper.gid, helper.uname) == (0o4755, 0, 8, "")
    shadow = layers[oci.STAGES_LAYER]["/etc/shadow"]
    assert (shadow.mode, shadow.gid) == (0o640, 42)
    assert layers[oci.STAGES_LAYER]["/usr/bin/awk"].linkname == "mawk"
    pinger = layers[oci.STAGES_LAYER]["/usr/bin/pinger"]
    assert pinger.pax_headers["SCHILY.xattr.security.capability"].encode(
        "utf-8", "surrogateescape") == CAP
    # No times: the same files make the same layer in any commit.
    assert {m.mtime for members in layers.values() for m in members.values()} \
        == {0}


def test_a_layout_is_the_same_bytes_each_time_and_reimports_as_the_tree(
        repo, tmp_path):
    commit_id = commit(repo, tree_entries(PACKAGES, extra=stage_changes()),
                       metadata={"version": "20240101.0",
                                 "debostree.source": "abc123",
                                 "debostree.lockfile-sha256": "f" * 64})
    first = layout_of(repo, commit_id, tmp_path / "one")
    second = layout_of(repo, commit_id, tmp_path / "two")

    def files(top):
        return {os.path.relpath(os.path.join(d, n), top):
                open(os.path.join(d, n), "rb").read()
                for d, _, names in os.walk(top) for n in names}
    assert files(first) == files(second)
    manifest, config = oci.read_image(first)
    assert config["created"] == "2023-11-14T22:13:20Z"
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == "20240101.0"
    assert labels["org.opencontainers.image.revision"] == "abc123"
    assert labels["debostree.lockfile.sha256"] == "f" * 64
    assert labels["ostree.commit"] == commit_id
    assert "containers.bootc" not in labels
    # SOURCE_DATE_EPOCH, when given, is every time in the image.
    third = layout_of(repo, commit_id, tmp_path / "three", epoch=1600000000)
    assert oci.read_image(third)[1]["created"] == "2020-09-13T12:26:40Z"

    imported = oci.import_layout(first, repo, "test/imported")
    assert content_checksum(repo, imported) == content_checksum(repo, commit_id)
    listing = subprocess.run(["ostree", "ls", "-X", f"--repo={repo}", imported,
                              "/usr/bin/pinger", "/usr/bin/su-helper"],
                             capture_output=True, text=True, check=True).stdout
    assert "security.capability" in listing and "-04755 0 8" in listing

    archive = tmp_path / "image.tar"
    oci.write_archive(first, str(archive), 1700000000)
    again = tmp_path / "again.tar"
    oci.write_archive(second, str(again), 1700000000)
    assert archive.read_bytes() == again.read_bytes()
    with tarfile.open(archive) as tar:
        assert {"index.json", "oci-layout"} <= set(tar.getnames())


def test_a_deployable_tree_is_a_bootable_container_image(repo, tmp_path):
    extra = stage_changes(deployable=True)
    extra["/usr/lib/modules/6.1.0-9-amd64/vmlinuz"] = ((FILE, 0, 0, None, ()),
                                                       b"kernel\n")
    extra["/usr/lib/modules/6.1.0-9-amd64/initramfs.img"] = (
        (stat.S_IFREG | 0o600, 0, 0, None, ()), b"initramfs\n")
    commit_id = commit(repo, tree_entries(PACKAGES, deployable=True, extra=extra))
    layout = layout_of(repo, commit_id, tmp_path / "oci")
    labels = oci.read_image(layout)[1]["config"]["Labels"]
    assert labels["containers.bootc"] == "1"
    assert labels["ostree.bootable"] == "true"
    assert labels["ostree.linux"] == "6.1.0-9-amd64"
    layers = dict(layers_of(layout))
    # /usr/etc is /etc in the image, as container tools and bootc expect;
    # dpkg's database under /usr/lib/sysimage still says who installed it.
    assert "/etc/alpha.conf" in layers["package alpha"]
    assert "/usr/lib/sysimage/dpkg/info/alpha.list" in layers["package alpha"]
    paths = {p for members in layers.values() for p in members}
    assert not any(p.startswith("/usr/etc") for p in paths)
    assert "/etc/shadow" in layers[oci.STAGES_LAYER]
    imported = oci.import_layout(layout, repo, "test/imported")
    assert content_checksum(repo, imported) == content_checksum(repo, commit_id)


def test_one_package_update_changes_its_layer_and_the_stages_one(repo, tmp_path):
    # More packages than layers: the big and the often-changed alone, the
    # rest grouped by name.
    packages = {f"pkg{i:03d}": ("1.0", 100 + 37 * i) for i in range(150)}
    changes = {"pkg001": 9}
    old = commit(repo, tree_entries(packages, extra=stage_changes()))
    limit = 16
    old_layers = oci.read_image(layout_of(repo, old, tmp_path / "old", changes,
                                          limit))[0]["layers"]
    assert len(old_layers) == limit
    titles = [t for t, _ in layers_of(tmp_path / "old")]
    assert "package pkg001" in titles  # small, but it changes often
    assert "package pkg149" in titles  # the biggest
    for updated in ("pkg002", "pkg149"):  # in a shared layer; alone
        new_packages = dict(packages, **{updated: ("1.1", packages[updated][1])})
        new = commit(repo, tree_entries(new_packages, extra=stage_changes()),
                     branch="test/new")
        new_layers = oci.read_image(layout_of(repo, new, tmp_path / updated,
                                              changes, limit))[0]["layers"]
        old_digests = {layer["digest"] for layer in old_layers}
        changed = [layer for layer in new_layers
                   if layer["digest"] not in old_digests]
        # The updated package's layer, and the stages' (dpkg's status file).
        assert len(new_layers) == limit and len(changed) == 2, updated


def test_grouping_is_stable_and_bounded():
    sizes = {f"p{i}": i * 10 for i in range(200)}
    groups = oci.group_packages(sizes, {}, 63)
    assert len(groups) == 63
    assert sorted(p for g in groups for p in g) == sorted(sizes)
    assert ["p199"] in groups and ["p5"] not in groups
    # A new version of a grouped package (another size) moves nothing.
    assert oci.group_packages(dict(sizes, p5=55), {}, 63) == groups
    # One that changes often gets a layer of its own.
    assert ["p5"] in oci.group_packages(sizes, {"p5": 3}, 63)
    assert oci.group_packages({"a": 1, "b": 2}, {}, 63) == [["a"], ["b"]]


def test_change_counts_come_from_the_lockfiles_git_history(tmp_path):
    top = tmp_path / "project"
    (top / "lockfiles").mkdir(parents=True)
    lock = top / "lockfiles" / "r.amd64.lock"

    def stanza(name, version):
        return (f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
                f"Filename: pool/{name}_{version}_amd64.deb\nSize: 10\n"
                f"SHA256: {'a' * 64}\nLock-Archive: test\nLock-Suite: stable\n"
                "Lock-Stage: base\n")

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t",
                        *args], cwd=top, check=True, capture_output=True)
    git("init", "-q")
    for a, b in (("1", "1"), ("2", "1"), ("3", "1"), ("3", "2")):
        lock.write_text(stanza("often", a) + "\n" + stanza("rarely", b))
        git("add", ".")
        git("commit", "-q", "-m", "lock")
    assert oci.change_counts(str(top), [str(lock)]) == {"often": 2, "rarely": 1}
    assert oci.change_counts(str(tmp_path), [str(lock)]) == {}
    # A shallow clone has one revision: no changes, and it is told apart.
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{top}",
                    str(shallow)], check=True, capture_output=True)
    assert oci.shallow_checkout(str(shallow))
    assert not oci.shallow_checkout(str(top))
    assert not oci.shallow_checkout(str(tmp_path))
    assert oci.change_counts(str(shallow), [str(shallow / "lockfiles" /
                                                "r.amd64.lock")]) == {}


def test_a_layout_with_several_images_needs_an_architecture(repo, tmp_path):
    commit_id = commit(repo, tree_entries(PACKAGES))
    gi_repo = ostree.Repo(repo).open_gi()
    layout = oci.write_layout(str(tmp_path / "multi"), [
        (arch, lambda blobs, arch=arch: oci.image_manifest(
            gi_repo, commit_id, arch, "test", blobs, {}, say=lambda _: None))
        for arch in ("amd64", "arm64")])
    index = json.load(open(os.path.join(layout, "index.json")))
    assert index["manifests"][0]["mediaType"] == oci.MEDIA_INDEX
    assert oci.read_image(layout, "arm64")[1]["architecture"] == "arm64"
    assert oci.read_image(layout, "arm64")[1]["variant"] == "v8"
    with pytest.raises(oci.UserError, match="2 images; name the architecture"):
        oci.read_image(layout)


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is not installed")
def test_skopeo_reads_and_copies_the_layout(repo, tmp_path):
    commit_id = commit(repo, tree_entries(PACKAGES, extra=stage_changes()),
                       metadata={"version": "7"})
    layout = layout_of(repo, commit_id, tmp_path / "oci")
    inspected = json.loads(subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}"], capture_output=True,
        text=True, check=True).stdout)
    assert inspected["Labels"]["org.opencontainers.image.version"] == "7"
    assert len(inspected["Layers"]) == 4
    copy = tmp_path / "copy"
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}",
                    f"oci:{copy}:v7"], check=True, capture_output=True)
    copied = oci.import_layout(str(copy), repo, "test/copied")
    assert content_checksum(repo, copied) == content_checksum(repo, commit_id)


def test_import_oci_tool_commits_the_image(repo, tmp_path):
    commit_id = commit(repo, tree_entries(PACKAGES, extra=stage_changes()))
    layout = layout_of(repo, commit_id, tmp_path / "oci")
    result = subprocess.run([os.path.join(TOP, "tools", "import-oci"), layout,
                             "--repo", repo, "--branch", "test/tool"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert content_checksum(repo, result.stdout.strip()) == \
        content_checksum(repo, commit_id)
    bad = subprocess.run([os.path.join(TOP, "tools", "import-oci"),
                          str(tmp_path), "--repo", repo, "--branch", "x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not an OCI image layout" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_configure_writes_the_oci_targets(tmp_path, key, no_user_config):
    arc = Archive(tmp_path / "archive", key)
    for arch in ("amd64", "arm64"):
        arc.add("stable", "base-files", "1.0", arch, essential="yes",
                priority="required")
    arc.publish()
    server = Server(arc.root)
    arc.url = server.url
    try:
        work = tmp_path / "work"
        write_recipe(work / "recipes", "img", [
            {"name": "base", "bootstrap": {"variant": "custom",
                                           "packages": ["base-files"]}}],
            arc, suites=["stable"], architectures=["amd64", "arm64"])
        argv = [os.path.join(TOP, "configure.py"), "--recipes", "recipes",
                "--lockfiles", "lockfiles", "--mirror", f"test={arc.url}"]
        assert run_tool(argv, cwd=work).returncode == 0
        subprocess.run(["ninja", "update-lockfiles"], cwd=work, check=True,
                       capture_output=True)
        assert run_tool(argv, cwd=work).returncode == 0
    finally:
        server.close()

    def inputs(target):
        out = subprocess.run(["ninja", "-t", "query", target], cwd=work,
                             capture_output=True, text=True, check=True).stdout
        return out
    assert "build/oci/img/index.json" in inputs("img.oci")
    assert "build/oci/img.tar" in inputs("img.oci-archive")
    assert "build/oci/img.arm64/index.json" in inputs("img/arm64.oci")
    both = inputs("build/oci/img/index.json")
    assert "build/branches/img/amd64" in both and \
        "build/branches/img/arm64" in both, both
    options = json.load(open(work / "build" / "oci" / "img.options.json"))
    assert [arch for arch, _ in options["commits"]] == ["amd64", "arm64"]
