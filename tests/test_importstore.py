"""The pool's import store: a package is imported once per pool, and build
directories take its commits by hardlink.  Tiny packages are built with
dpkg-deb on the fly; nothing needs the network or root."""

import hashlib
import json
import os
import shutil
import subprocess

from conftest import TOP, run_tool
from debarchive import build_deb
from debostree import fetch, importstore, ostree
from debostree.project import BuildConfig


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make_pool(tmp_path):
    """A pool with two packages, and the import list of a build directory."""
    pool = tmp_path / "pool"
    pool.mkdir(mode=0o755)
    debs = [build_deb(str(tmp_path), "hello", "1.0", "amd64",
                      files={"usr/bin/hello": "#!/bin/sh\necho hello\n",
                             "etc/hello.conf": "greeting=hi\n"},
                      scripts={"conffiles": "/etc/hello.conf\n"}),
            build_deb(str(tmp_path), "world", "2.0", "amd64",
                      files={"usr/share/world/data": "x" * 5000})]
    items = []
    for deb, (name, version) in zip(debs, [("hello", "1.0"), ("world", "2.0")]):
        sha = sha256_of(deb)
        dest = fetch.pool_path(str(pool), sha)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(deb, dest)
        items.append({"deb": dest, "sha256": sha, "name": f"{name} {version}",
                      "expect": [name, version, "amd64"]})
    return str(pool), items


def import_into_builddir(tmp_path, pool, items, name):
    """Run tools/import-debs for a fresh build directory ``name``."""
    builddir = tmp_path / name
    config = BuildConfig(top=TOP, builddir=str(builddir), pool=pool,
                         recipes="", lockfiles="", mirrors={})
    config.save()
    ostree.Repo(config.repo).ensure()
    listed = [{**i, "summary": str(builddir / "pkgs" / f"{i['sha256']}.json")}
              for i in items]
    list_path = builddir / "pkgs" / "import-test.json"
    list_path.parent.mkdir(parents=True, exist_ok=True)
    list_path.write_text(json.dumps(listed))
    result = run_tool([os.path.join(TOP, "tools", "import-debs"), "--config",
                       config.config_path, str(list_path)])
    assert result.returncode == 0, result.stderr
    return config, listed, result.stdout


def object_inodes(repo_path):
    inodes = {}
    for dirpath, _, names in os.walk(os.path.join(repo_path, "objects")):
        for name in names:
            if name.endswith(".file"):
                st = os.stat(os.path.join(dirpath, name))
                inodes[name] = (st.st_dev, st.st_ino)
    return inodes


def test_two_build_directories_import_once(tmp_path):
    pool, items = make_pool(tmp_path)
    first, listed1, out1 = import_into_builddir(tmp_path, pool, items, "one")
    assert "imported 2 packages into the pool's import store, 0 were there" \
        in out1
    second, listed2, out2 = import_into_builddir(tmp_path, pool, items, "two")
    assert "imported 0 packages into the pool's import store, 2 were there" \
        in out2
    assert "] imported " not in out2
    for a, b in zip(listed1, listed2):
        with open(a["summary"]) as f:
            one = json.load(f)
        with open(b["summary"]) as f:
            two = json.load(f)
        assert one == two
        for part in ("data", "info"):
            ref = ostree.package_ref(a["sha256"], part)
            assert ostree.Repo(first.repo).rev_parse(ref) == \
                ostree.Repo(second.repo).rev_parse(ref) == one[f"{part}_commit"]
    # The second build directory's objects are the store's, by hardlink.
    store = object_inodes(os.path.join(pool, importstore.STORE_DIR, "repo"))
    mine = object_inodes(second.repo)
    assert mine and all(mine[name] == store[name] for name in mine)
    # The trees are complete: a checkout has the packages' files.
    checkout = tmp_path / "co"
    ostree.Repo(second.repo).checkout(
        ostree.Repo(second.repo).rev_parse(
            ostree.package_ref(items[0]["sha256"], "data")), str(checkout))
    assert (checkout / "usr/bin/hello").read_text() == "#!/bin/sh\necho hello\n"
    assert (checkout / "etc/hello.conf.dpkg-new").exists()
    fsck = subprocess.run(["ostree", "fsck", f"--repo={second.repo}"],
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr


def test_an_import_is_the_same_commit_wherever_it_is_made(tmp_path):
    """Import commits depend on the .deb alone (no clock in them), so two
    builds importing one package at once agree, and so do two machines."""
    pool, items = make_pool(tmp_path)
    os.chmod(pool, 0o775)  # not the store: each build directory imports
    first, listed1, _ = import_into_builddir(tmp_path, pool, items, "one")
    second, listed2, _ = import_into_builddir(tmp_path, pool, items, "two")
    for a, b in zip(listed1, listed2):
        with open(a["summary"]) as f:
            one = json.load(f)
        with open(b["summary"]) as f:
            two = json.load(f)
        assert one["data_commit"] == two["data_commit"]
        assert one["info_commit"] == two["info_commit"]


def test_a_pool_others_may_write_to_gets_no_store(tmp_path):
    """Another user could put commits in a group-writable pool's store:
    then each build directory imports into its own repository, checking
    every .deb, and nothing is written beside the pool."""
    pool, items = make_pool(tmp_path)
    os.chmod(pool, 0o775)
    assert importstore.usable(pool) is None
    config, listed, out = import_into_builddir(tmp_path, pool, items, "one")
    assert "imported 2 packages in" in out
    assert not os.path.exists(os.path.join(pool, importstore.STORE_DIR))
    assert ostree.Repo(config.repo).rev_parse(
        ostree.package_ref(items[0]["sha256"], "data"))
    # Nor when the store itself is open to others.
    os.chmod(pool, 0o755)
    store = importstore.usable(pool)
    assert store
    os.chmod(store, 0o777)
    assert importstore.usable(pool) is None


def test_a_store_entry_for_another_package_is_not_taken(tmp_path):
    """A store summary that does not describe the package the lockfile
    pins (name, version, architecture) is imported again."""
    pool, items = make_pool(tmp_path)
    import_into_builddir(tmp_path, pool, items, "one")
    store = os.path.join(pool, importstore.STORE_DIR)
    path = importstore.summary_path(store, items[0]["sha256"])
    with open(path) as f:
        summary = json.load(f)
    summary["version"] = "0.9"
    with open(path, "w") as f:
        json.dump(summary, f)
    assert importstore.missing(store, items) == [items[0]]
    _, listed, out = import_into_builddir(tmp_path, pool, items, "two")
    assert "imported 1 packages into the pool's import store, 1 were there" \
        in out
    with open(listed[0]["summary"]) as f:
        assert json.load(f)["version"] == "1.0"


def test_an_import_made_by_other_code_is_made_again(tmp_path):
    """Each summary names its import's key (the .deb's SHA256 and the
    importer's code); a store entry with another key, as an older importer
    left it, is imported again."""
    from debostree import debimport
    pool, items = make_pool(tmp_path)
    import_into_builddir(tmp_path, pool, items, "one")
    store = os.path.join(pool, importstore.STORE_DIR)
    path = importstore.summary_path(store, items[1]["sha256"])
    with open(path) as f:
        summary = json.load(f)
    assert summary["key"] == debimport.import_key(items[1]["sha256"])
    assert summary["key"] != debimport.import_key(items[0]["sha256"])
    summary["key"] = "0" * 64
    with open(path, "w") as f:
        json.dump(summary, f)
    assert importstore.missing(store, items) == [items[1]]
    _, listed, out = import_into_builddir(tmp_path, pool, items, "two")
    assert "imported 1 packages into the pool's import store, 1 were there" \
        in out
    with open(listed[1]["summary"]) as f:
        assert json.load(f)["key"] == debimport.import_key(items[1]["sha256"])
