"""The pool's import store: packages imported once per pool, not per build.

Importing a .deb (``debimport``) creates one repository object per file,
and creating inodes is what an import costs.  So the commits of every
package imported from a pool are kept beside it, in ``POOL/imports/repo``
(bare-user, refs ``pkg/SHA256/data`` and ``pkg/SHA256/info`` as in a build's
repository) with their summaries (``POOL/imports/SHA256.json``).  A build
directory takes them with ``ostree pull-local``, which hardlinks the objects
(a link is a directory entry, not an inode), so a fresh build directory or a
fresh clone with a warm pool imports nothing: the same idea as rpm-ostree's
package cache.

Trust: the store is used only when the pool directory belongs to the user
running the build and nobody else may write to it or to the store (the same
boundary as the build directory's own repository).  A pool shared between
users, or one that others can write to, gets today's behaviour: each build
directory imports into its own repository, checking every .deb's SHA256.
Import commits carry a fixed timestamp, so concurrent importers of one
package make the same commit.  Each summary names its import's key
(``debimport.import_key``: the .deb and the importer's code), and an entry
made by other code is imported again.
"""

import fcntl
import os
import shutil
import stat

from . import debimport, ostree, proc

STORE_DIR = "imports"


def usable(pool):
    """The store's directory when this user may use it (see above), else
    None.  It is created when missing."""
    store = os.path.join(pool, STORE_DIR)
    for path in (pool, store, os.path.join(store, "repo")):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or \
                st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
    if not os.path.isdir(pool):
        return None
    os.makedirs(store, mode=0o755, exist_ok=True)
    with open(os.path.join(store, ".lock"), "a") as lock:
        # Two builds may start from one fresh pool at once.
        fcntl.flock(lock, fcntl.LOCK_EX)
        ostree.Repo(os.path.join(store, "repo")).ensure()
    return store


def summary_path(store, sha256):
    return os.path.join(store, sha256 + ".json")


def _stored(store, item):
    """The store's summary of ``item`` when it has the package, else None."""
    try:
        summary = debimport.load_summary(summary_path(store, item["sha256"]))
    except (FileNotFoundError, ValueError):
        return None
    expect = item.get("expect")
    if summary.get("sha256") != item["sha256"] or expect and [
            summary["package"], summary["version"],
            summary["architecture"]] != list(expect):
        return None
    # Made by other code (another version of the importer): made again.
    if summary.get("key") != debimport.import_key(item["sha256"]):
        return None
    return summary


def missing(store, items):
    """The items whose package the store lacks."""
    return [i for i in items if _stored(store, i) is None]


def take(store, repo_path, items):
    """Pull the packages of ``items`` from the store into the build's
    repository (one ``ostree pull-local``: hardlinks), then give each its
    summary in the build directory."""
    refs = [ostree.package_ref(i["sha256"], part)
            for i in items for part in ("data", "info")]
    if refs:
        proc.run(["ostree", "pull-local", f"--repo={repo_path}",
                  os.path.join(store, "repo"), *refs], capture=True)
    for i in items:
        os.makedirs(os.path.dirname(i["summary"]), exist_ok=True)
        tmp = i["summary"] + ".tmp"
        shutil.copyfile(summary_path(store, i["sha256"]), tmp)
        os.replace(tmp, i["summary"])
