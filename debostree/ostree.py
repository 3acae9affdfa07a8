"""The OSTree wrapper: the one place that talks to the repository.

Most operations run the ``ostree`` command line through ``proc.run``.  The
commit of a stage's result uses libostree through GObject introspection,
because only the library lets a commit take each file's owner, mode and
extended attributes from a manifest (the fakeroot view of the tree) rather
than from the disk, where everything belongs to the unprivileged build user.

Refs that name things the user did not (package commits, stage commits) are
encoded: ``+``, ``:``, ``~`` and spaces are not allowed in OSTree ref names.
"""

import os
import re
import time

from . import proc
from .errors import CommandFailed, UserError

REF_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def encode_ref_part(text):
    """One ref component for arbitrary text (``a b+c`` -> ``a_20b_2bc``)."""
    out = REF_UNSAFE.sub(lambda m: "_%02x" % ord(m.group()), text.replace("_", "_5f"))
    return out if out[:1].isalnum() else "x" + out


def package_ref(sha256, part):
    return f"pkg/{sha256}/{part}"


def stage_ref(recipe, arch, stage):
    return f"stage/{encode_ref_part(recipe)}/{arch}/{encode_ref_part(stage)}"


# libostree's transactions can remove a concurrent writer's staging
# directory ("opendir(staging-...): No such file or directory", ostree issue
# 1620, still open); the writer that loses just tries again.
STAGING_RACE = "opendir(staging-"
ATTEMPTS = 4


class CommitFailed(UserError):
    """libostree failed to commit; ``detail`` is its own message."""

    def __init__(self, message, detail):
        self.detail = detail
        super().__init__(f"{message}: {detail}")


def retry_staging_race(fn):
    for attempt in range(ATTEMPTS):
        try:
            return fn()
        except (CommandFailed, CommitFailed) as error:
            detail = error.output if isinstance(error, CommandFailed) \
                else error.detail
            if STAGING_RACE not in detail or attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


class Repo:
    def __init__(self, path):
        self.path = os.path.abspath(path)

    def ensure(self):
        """Create the repository (bare-user: no root needed) when missing."""
        if not os.path.exists(os.path.join(self.path, "config")):
            os.makedirs(self.path, exist_ok=True)
            proc.run(["ostree", "init", "--mode=bare-user", f"--repo={self.path}"])
            # Many small commits from parallel edges: fsync per object costs
            # more than the build, and a crash only loses what ninja redoes.
            proc.run(["ostree", "config", f"--repo={self.path}", "set",
                      "core.fsync", "false"])

    def exists(self):
        return os.path.exists(os.path.join(self.path, "config"))

    def rev_parse(self, ref):
        result = proc.run(["ostree", "rev-parse", f"--repo={self.path}", ref],
                          capture=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else None

    def open_gi(self):
        import gi
        gi.require_version("OSTree", "1.0")
        from gi.repository import Gio, OSTree
        repo = OSTree.Repo.new(Gio.File.new_for_path(self.path))
        repo.open(None)
        return repo

    def checkout(self, checksum, dest, log=None):
        """Check out with hardlinks into the repository's objects."""
        proc.run(["ostree", "checkout", f"--repo={self.path}", "-U", "-H",
                  "--require-hardlinks", checksum, dest],
                 log=log, capture=log is None)

    def commit_trees(self, branch, trees, subject, log=None, parent=None,
                     timestamp=None, extra=()):
        """Merge ``trees`` (``ref=...``, ``dir=...``, ``tar=...``) into one commit.

        Merging ``ref=`` trees is metadata-only: no file content is read.
        """
        argv = ["ostree", "commit", f"--repo={self.path}", f"--branch={branch}",
                f"--subject={subject}", "--no-bindings", "--fsync=false"]
        if parent:
            argv.append(f"--parent={parent}")
        if timestamp is not None:
            argv.append(f"--timestamp=@{int(timestamp)}")
        argv += list(extra) + [f"--tree={t}" for t in trees]
        result = retry_staging_race(
            lambda: proc.run(argv, log=log, capture=log is None))
        if log is None:
            return result.stdout.strip()
        return self.rev_parse(branch)



def load_library():
    """Load libostree's bindings (a tenth of a second), e.g. in a thread
    while other work goes on."""
    _gi()


def resolve_ref(gi_repo, ref):
    """The commit ``ref`` names in an opened repository (``open_gi``), or
    None: ``ostree rev-parse`` without a process of its own."""
    return gi_repo.resolve_rev(ref, True)[1]


def parent_of(gi_repo, commit):
    """The parent of ``commit`` when the repository has it, else None."""
    from gi.repository import GLib, OSTree
    _, variant, _ = gi_repo.load_commit(commit)
    parent = OSTree.commit_get_parent(variant)
    if parent is None:
        return None
    try:
        gi_repo.load_commit(parent)
    except GLib.Error:
        return None  # history cut short (a shallow pull)
    return parent


def is_ancestor(gi_repo, ancestor, commit):
    """Whether ``ancestor`` is ``commit`` or in its history (as far as the
    repository has it)."""
    from gi.repository import GLib, OSTree
    while commit:
        if commit == ancestor:
            return True
        try:
            _, variant, _ = gi_repo.load_commit(commit)
        except GLib.Error:
            return False  # history cut short (a shallow pull)
        commit = OSTree.commit_get_parent(variant)
    return False


def _gi():
    import gi
    gi.require_version("OSTree", "1.0")
    from gi.repository import Gio, GLib, OSTree
    return Gio, GLib, OSTree


def _xattr_variant(GLib, entry):
    return GLib.Variant("a(ayay)", [(name.encode() + b"\0", value)
                                    for name, value in sorted(entry.xattrs)])


def _file_info(Gio, entry, size=0):
    import stat as stat_mod
    info = Gio.FileInfo()
    if stat_mod.S_ISDIR(entry.mode):
        ftype = Gio.FileType.DIRECTORY
    elif stat_mod.S_ISLNK(entry.mode):
        ftype = Gio.FileType.SYMBOLIC_LINK
        info.set_attribute_byte_string("standard::symlink-target", entry.target)
    else:
        ftype = Gio.FileType.REGULAR
    info.set_attribute_uint32("standard::type", int(ftype))
    info.set_size(size)
    info.set_attribute_uint32("unix::uid", entry.uid)
    info.set_attribute_uint32("unix::gid", entry.gid)
    info.set_attribute_uint32("unix::mode", entry.mode)
    return info


def _write_dirmeta(Gio, GLib, OSTree, repo, entry):
    """The checksum of the directory metadata object (owner, mode, xattrs)
    of ``entry``, a manifest.Entry, written into ``repo``'s transaction."""
    variant = OSTree.create_directory_metadata(_file_info(Gio, entry),
                                               _xattr_variant(GLib, entry))
    _, csum = repo.write_metadata(OSTree.ObjectType.DIR_META, None, variant, None)
    return _hex(OSTree, csum)


def commit_changes(repo_path, base_commit, target, upper, base_manifest,
                   result_manifest, branch, subject, parent=None,
                   timestamp=None, metadata=None):
    """Commit the stage's result as the base commit plus what changed.

    What changed is known without reading the unchanged files: the overlay's
    upper layer holds every file written or created (and whiteouts for
    deletions), and the two manifests differ where only owner, mode or xattrs
    changed.  Only those paths are read and written; everything else keeps
    its object from the base commit.  Returns ``(commit, changed)``; when the
    tree equals the parent's, the parent is returned and nothing is written.
    """
    Gio, GLib, OSTree = _gi()
    repo = OSTree.Repo.new(Gio.File.new_for_path(repo_path))
    repo.open(None)
    return retry_staging_race(lambda: _commit_changes(
        Gio, GLib, OSTree, repo, base_commit, target, upper, base_manifest,
        result_manifest, branch, subject, parent, timestamp, metadata))


def _commit_changes(Gio, GLib, OSTree, repo, base_commit, target, upper,
                    base_manifest, result_manifest, branch, subject, parent,
                    timestamp, metadata):
    import stat as stat_mod
    repo.prepare_transaction(None)
    try:
        root = OSTree.MutableTree.new_from_commit(repo, base_commit)
        dirs = {"/": root}

        def mdir(path, create=True):
            if path in dirs:
                return dirs[path]
            parent_path, _, name = path.rpartition("/")
            parent = mdir(parent_path or "/", create)
            if parent is None:
                return None
            try:
                _, file_csum, sub = parent.lookup(name)
            except GLib.Error:
                file_csum, sub = None, None
            if sub is None:
                if not create:
                    return None
                if file_csum:
                    parent.remove(name, True)
                _, sub = parent.ensure_dir(name)
            dirs[path] = sub
            return sub

        def remove(path):
            parent_path, _, name = path.rpartition("/")
            parent = mdir(parent_path or "/", create=False)
            if parent is not None:
                parent.remove(name, True)
            for key in [k for k in dirs if k == path or k.startswith(path + "/")]:
                del dirs[key]

        def set_dirmeta(path, entry):
            mdir(path).set_metadata_checksum(
                _write_dirmeta(Gio, GLib, OSTree, repo, entry))

        def write_file(path, entry):
            real = target + path
            if stat_mod.S_ISLNK(entry.mode):
                stream, size = Gio.MemoryInputStream.new(), 0
            else:
                size = os.lstat(real).st_size
                stream = Gio.File.new_for_path(real).read(None)
            _, content, length = OSTree.raw_file_to_content_stream(
                stream, _file_info(Gio, entry, size), _xattr_variant(GLib, entry),
                None)
            _, csum = repo.write_content(None, content, length, None)
            parent_path, _, name = path.rpartition("/")
            parent = mdir(parent_path or "/")
            try:
                _, _, sub = parent.lookup(name)
                if sub is not None:
                    remove(path)
            except GLib.Error:
                pass
            parent.replace_file(name, _hex(OSTree, csum))

        # 1. Deletions, from the overlay's whiteouts and opaque directories.
        changed = set()
        upper = upper.rstrip("/")
        for dirpath, dirnames, filenames in os.walk(upper):
            rel_dir = dirpath[len(upper):] or "/"
            try:
                opaque = os.getxattr(dirpath, "user.overlay.opaque") == b"y"
            except OSError:
                opaque = False
            if opaque and rel_dir != "/":
                remove(rel_dir)
            for name in dirnames + filenames:
                path = (rel_dir.rstrip("/") + "/" + name)
                st = os.lstat(os.path.join(dirpath, name))
                if stat_mod.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    remove(path)
                else:
                    changed.add(path)
        # 2. Owner, mode and xattr changes, and anything new to the manifest.
        for path, entry in result_manifest.items():
            if base_manifest.get(path) != entry:
                changed.add(path)
        # 3. Write what changed, parents before children.
        for path in sorted(changed, key=lambda p: (p.count("/"), p)):
            entry = result_manifest.get(path)
            if entry is None:
                continue  # skipped (volatile), or gone again
            if stat_mod.S_ISDIR(entry.mode):
                set_dirmeta(path, entry)
            else:
                write_file(path, entry)
        if "/" in result_manifest and base_manifest.get("/") != result_manifest["/"]:
            set_dirmeta("/", result_manifest["/"])
        _, root_file = repo.write_mtree(root, None)
        if parent:
            _, parent_root, _ = repo.read_commit(parent, None)
            if root_file.tree_get_contents_checksum() == \
                    parent_root.tree_get_contents_checksum() and \
                    root_file.tree_get_metadata_checksum() == \
                    parent_root.tree_get_metadata_checksum():
                repo.abort_transaction(None)
                return parent, False
        checksum = _write_commit(GLib, repo, parent, subject, metadata,
                                 root_file, timestamp)
        repo.transaction_set_ref(None, branch, checksum)
        repo.commit_transaction(None)
        return checksum, True
    except GLib.Error as error:
        repo.abort_transaction(None)
        raise CommitFailed(f"ostree commit of {target} failed", error.message)


def _metadata_variant(GLib, metadata):
    """``a{sv}`` of ``{key: str, bytes or GLib.Variant}`` (bytes as
    ``ay``)."""
    values = {}
    for key, value in (metadata or {}).items():
        if isinstance(value, GLib.Variant):
            values[key] = value
        elif isinstance(value, bytes):
            values[key] = GLib.Variant.new_from_bytes(
                GLib.VariantType.new("ay"), GLib.Bytes.new(value), True)
        else:
            values[key] = GLib.Variant("s", value)
    return GLib.Variant("a{sv}", values)


def _write_commit(GLib, repo, parent, subject, metadata, root_file,
                  timestamp, body=None):
    """A commit object in the open transaction; ``timestamp`` None: now
    (or SOURCE_DATE_EPOCH, as libostree reads it)."""
    meta = _metadata_variant(GLib, metadata)
    if timestamp is None:
        _, checksum = repo.write_commit(parent, subject, body, meta, root_file,
                                        None)
    else:
        _, checksum = repo.write_commit_with_time(
            parent, subject, body, meta, root_file, int(timestamp), None)
    return checksum


def commit_tree_of(repo_path, source, subject, branch=None, parent=None,
                   timestamp=None, metadata=None, body=None):
    """A commit of the tree of commit ``source`` (nothing is read but its
    root), with ``parent``, ``timestamp`` (None: now), ``metadata``
    (``{key: str, bytes or GLib.Variant}``) and ``body``, on ``branch`` if
    one is given.  Returns ``(commit, changed)``: the parent itself when
    its tree is the same."""
    Gio, GLib, OSTree = _gi()
    repo = OSTree.Repo.new(Gio.File.new_for_path(repo_path))
    repo.open(None)
    return retry_staging_race(lambda: _commit_tree_of(
        GLib, OSTree, repo, source, subject, branch, parent, timestamp,
        metadata, body))


def _commit_tree_of(GLib, OSTree, repo, source, subject, branch, parent,
                    timestamp, metadata, body):
    _, variant, _ = repo.load_commit(source)
    contents = _variant_hex(variant.get_child_value(6))
    dirmeta = _variant_hex(variant.get_child_value(7))
    if parent:
        _, parent_variant, _ = repo.load_commit(parent)
        if _variant_hex(parent_variant.get_child_value(6)) == contents and \
                _variant_hex(parent_variant.get_child_value(7)) == dirmeta:
            return parent, False
    repo.prepare_transaction(None)
    try:
        mtree = OSTree.MutableTree.new_from_checksum(repo, contents, dirmeta)
        _, root_file = repo.write_mtree(mtree, None)
        checksum = _write_commit(GLib, repo, parent, subject, metadata,
                                 root_file, timestamp, body)
        if branch:
            repo.transaction_set_ref(None, branch, checksum)
        repo.commit_transaction(None)
        return checksum, True
    except GLib.Error as error:
        repo.abort_transaction(None)
        raise CommitFailed(f"ostree could not commit the tree of {source}",
                           error.message)


def commit_entries(repo_path, entries, branch, subject, timestamp=0,
                   metadata=None):
    """A commit of a tree given path by path, as a container image's layers
    give it: ``entries`` yields ``(path, manifest.Entry, content bytes)``,
    a directory before what is in it; a later entry replaces an earlier one
    (a directory keeps its contents), and ``(path, None, None)`` removes a
    path.  The root is root's, 0755, unless an entry for ``/`` says
    otherwise.  Returns the commit."""
    Gio, GLib, OSTree = _gi()
    import stat as stat_mod
    from .manifest import Entry
    repo = OSTree.Repo.new(Gio.File.new_for_path(repo_path))
    repo.open(None)
    repo.prepare_transaction(None)
    try:
        root = OSTree.MutableTree.new()
        dirs = {"/": root}

        def dirmeta(entry):
            return _write_dirmeta(Gio, GLib, OSTree, repo, entry)

        root.set_metadata_checksum(dirmeta(Entry("/", stat_mod.S_IFDIR | 0o755)))

        def parent_of(path):
            parent_path, _, name = path.rpartition("/")
            parent = dirs.get(parent_path or "/")
            if parent is None:
                raise UserError(f"{path}: its directory is not there")
            return parent, name

        def forget(path):
            for key in [k for k in dirs if k == path or k.startswith(path + "/")]:
                del dirs[key]

        for path, entry, data in entries:
            if path == "/":
                if entry is not None:
                    root.set_metadata_checksum(dirmeta(entry))
                continue
            parent, name = parent_of(path)
            try:
                _, file_csum, sub = parent.lookup(name)
            except GLib.Error:
                file_csum = sub = None
            if entry is None or (sub is not None and not
                                 stat_mod.S_ISDIR(entry.mode)) or \
                    (file_csum and stat_mod.S_ISDIR(entry.mode)):
                if file_csum or sub is not None:
                    parent.remove(name, True)
                    forget(path)
                sub = None
                if entry is None:
                    continue
            if stat_mod.S_ISDIR(entry.mode):
                if sub is None:
                    _, sub = parent.ensure_dir(name)
                dirs[path] = sub
                sub.set_metadata_checksum(dirmeta(entry))
                continue
            data = data or b""
            stream = Gio.MemoryInputStream.new_from_bytes(GLib.Bytes.new(data))
            _, content, length = OSTree.raw_file_to_content_stream(
                stream, _file_info(Gio, entry, len(data)),
                _xattr_variant(GLib, entry), None)
            _, csum = repo.write_content(None, content, length, None)
            parent.replace_file(name, _hex(OSTree, csum))
        _, root_file = repo.write_mtree(root, None)
        checksum = _write_commit(GLib, repo, None, subject, metadata,
                                 root_file, timestamp)
        repo.transaction_set_ref(None, branch, checksum)
        repo.commit_transaction(None)
        return checksum
    except GLib.Error as error:
        repo.abort_transaction(None)
        raise CommitFailed(f"ostree could not commit {branch}", error.message)


def same_tree(gi_repo, a, b):
    """Whether commits ``a`` and ``b`` have the same tree (contents and
    root metadata: owners, modes and xattrs are part of every checksum)."""
    _, first, _ = gi_repo.load_commit(a)
    _, second, _ = gi_repo.load_commit(b)
    return all(_variant_hex(first.get_child_value(i))
               == _variant_hex(second.get_child_value(i)) for i in (6, 7))


def commit_metadata(gi_repo, commit):
    """``(metadata, timestamp)`` of a commit: ``{key: str or bytes}`` of its
    string and byte-array entries, and its time (seconds)."""
    from gi.repository import OSTree
    _, variant, _ = gi_repo.load_commit(commit)
    entries = variant.get_child_value(0)
    found = {}
    for i in range(entries.n_children()):
        entry = entries.get_child_value(i)
        name = entry.get_child_value(0).get_string()
        value = entry.get_child_value(1).get_variant()
        if value.get_type_string() == "s":
            found[name] = value.get_string()
        elif value.get_type_string() == "ay":
            found[name] = bytes(value.get_data_as_bytes().get_data())
    return found, OSTree.commit_get_timestamp(variant)


def walk_tree(gi_repo, commit):
    """Every entry of a commit's tree from its directory objects alone, in
    depth-first order: ``(path, True, dirmeta checksum)`` for a directory
    (the root is ``/``) and ``(path, False, content checksum)`` for a file
    or symbolic link."""
    from gi.repository import OSTree
    _, variant, _ = gi_repo.load_commit(commit)
    stack = [("", _variant_hex(variant.get_child_value(6)),
              _variant_hex(variant.get_child_value(7)))]
    while stack:
        path, contents, meta = stack.pop()
        yield path or "/", True, meta
        _, tree = gi_repo.load_variant(OSTree.ObjectType.DIR_TREE, contents)
        files, dirs = tree.get_child_value(0), tree.get_child_value(1)
        for i in range(files.n_children()):
            entry = files.get_child_value(i)
            yield (f"{path}/{entry.get_child_value(0).get_string()}", False,
                   _variant_hex(entry.get_child_value(1)))
        for i in reversed(range(dirs.n_children())):
            entry = dirs.get_child_value(i)
            stack.append((f"{path}/{entry.get_child_value(0).get_string()}",
                          _variant_hex(entry.get_child_value(1)),
                          _variant_hex(entry.get_child_value(2))))


def dirmeta(gi_repo, checksum):
    """``(uid, gid, mode, xattrs variant)`` of a directory metadata object
    (stored big-endian, whatever the host)."""
    from gi.repository import OSTree
    _, meta = gi_repo.load_variant(OSTree.ObjectType.DIR_META, checksum)
    uid, gid, mode = (int.from_bytes(meta.get_child_value(i).get_uint32()
                                     .to_bytes(4, "little"), "big")
                      for i in range(3))
    return uid, gid, mode, meta.get_child_value(3)


def tree_outline(gi_repo, commit):
    """``{path: (is_dir, uid, gid, mode)}`` of a commit's tree from its
    directory objects alone (a file's owner and mode would need a read of
    each file: ``None`` there)."""
    outline = {}
    for path, is_dir, checksum in walk_tree(gi_repo, commit):
        if not is_dir:
            outline[path] = (False, None, None, None)
            continue
        uid, gid, mode, _ = dirmeta(gi_repo, checksum)
        outline[path] = (True, uid, gid, mode)
    return outline


def merge_commits(repo_path, branch, commits, subject):
    """A commit of the union of the trees of ``commits`` (checksums or
    refs), later ones winning
    where two have the same path: what ``ostree commit --tree=ref=A
    --tree=ref=B ...`` makes, from the directory listings alone.

    The command line asks every file of every tree for its attributes
    (an open and several xattr reads per file); here only the trees'
    directory objects are read, and a directory that a single commit
    brings is taken whole, unread.  Returns the commit's checksum."""
    Gio, GLib, OSTree = _gi()
    repo = OSTree.Repo.new(Gio.File.new_for_path(repo_path))
    repo.open(None)
    return retry_staging_race(lambda: _merge_commits(
        GLib, OSTree, repo, branch, commits, subject))


def _merge_commits(GLib, OSTree, repo, branch, commits, subject):
    def merge(mtree, contents, metadata):
        if _is_empty(mtree):
            # Lazily: read only if a later commit adds to this directory.
            mtree.fill_empty_from_dirtree(repo, contents, metadata)
            return
        mtree.set_metadata_checksum(metadata)
        _, tree = repo.load_variant(OSTree.ObjectType.DIR_TREE, contents)
        files, dirs = tree.get_child_value(0), tree.get_child_value(1)
        for i in range(files.n_children()):
            entry = files.get_child_value(i)
            mtree.replace_file(entry.get_child_value(0).get_string(),
                               _variant_hex(entry.get_child_value(1)))
        for i in range(dirs.n_children()):
            entry = dirs.get_child_value(i)
            _, child = mtree.ensure_dir(entry.get_child_value(0).get_string())
            merge(child, _variant_hex(entry.get_child_value(1)),
                  _variant_hex(entry.get_child_value(2)))

    repo.prepare_transaction(None)
    try:
        root = OSTree.MutableTree.new()
        for commit in commits:
            _, checksum = repo.resolve_rev(commit, False)
            _, variant, _ = repo.load_commit(checksum)
            merge(root, _variant_hex(variant.get_child_value(6)),
                  _variant_hex(variant.get_child_value(7)))
        _, root_file = repo.write_mtree(root, None)
        _, checksum = repo.write_commit(None, subject, None, None, root_file,
                                        None)
        repo.transaction_set_ref(None, branch, checksum)
        repo.commit_transaction(None)
        return checksum
    except GLib.Error as error:
        repo.abort_transaction(None)
        raise CommitFailed(f"ostree could not merge {len(commits)} commits "
                           f"into {branch}", error.message)


def _variant_hex(checksum):
    """A checksum (a GVariant ``ay``) as hex; GVariant.unpack would make a
    Python object of every byte."""
    return checksum.get_data_as_bytes().get_data().hex()


def _is_empty(mtree):
    """A directory of the merge that nothing was put in yet."""
    return mtree.get_metadata_checksum() is None and \
        not mtree.get_files() and not mtree.get_subdirs()


def _hex(OSTree, csum):
    if isinstance(csum, str):
        return csum
    return OSTree.checksum_from_bytes(bytes(csum))
