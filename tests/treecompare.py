"""Comparing trees path by path: type, mode, owner, link target, content
and extended attributes (security.capability and the like).

Used by the fidelity tests: a directory built by mmdebstrap in root mode
against an OSTree commit of ours.
"""

import fnmatch
import hashlib
import os
import stat


def tree_from_dir(root):
    result = {}
    root = os.path.abspath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        names = dirnames + filenames
        if dirpath == root:
            names = [""] + names
        for name in names:
            full = os.path.join(dirpath, name) if name else dirpath
            path = "/" + os.path.relpath(full, root) if name or dirpath != root else "/"
            st = os.lstat(full)
            result[path] = _entry(
                st.st_mode, st.st_uid, st.st_gid,
                os.readlink(full) if stat.S_ISLNK(st.st_mode) else None,
                _hash_file(full) if stat.S_ISREG(st.st_mode) else None,
                _dir_xattrs(full))
    return result


# Attributes of the machinery, not of the image.
IGNORED_XATTRS = ("user.ostreemeta", "security.selinux", "user.overlay.",
                  "trusted.overlay.")


def _entry(mode, uid, gid, target, digest, xattrs=()):
    return (stat.S_IFMT(mode), stat.S_IMODE(mode), uid, gid, target, digest,
            tuple(sorted((n, v) for n, v in xattrs
                         if not n.startswith(IGNORED_XATTRS))))


def _dir_xattrs(path):
    pairs = []
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    for name in names:
        try:
            pairs.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            pass
    return pairs


def _hash_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_from_commit(repo_path, rev):
    import gi
    gi.require_version("OSTree", "1.0")
    from gi.repository import Gio, OSTree
    repo = OSTree.Repo.new(Gio.File.new_for_path(repo_path))
    repo.open(None)
    _, root, _ = repo.read_commit(rev, None)
    result = {}
    attrs = ("standard::name,standard::type,standard::symlink-target,"
             "unix::mode,unix::uid,unix::gid")

    def visit(gfile, path):
        info = gfile.query_info(attrs, Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None)
        mode = info.get_attribute_uint32("unix::mode")
        target = info.get_symlink_target() if stat.S_ISLNK(mode) else None
        digest = None
        if stat.S_ISREG(mode):
            stream = gfile.read(None)
            h = hashlib.sha256()
            while True:
                chunk = stream.read_bytes(1 << 20, None).get_data()
                if not chunk:
                    break
                h.update(chunk)
            digest = h.hexdigest()
        _, xattrs = gfile.get_xattrs(None)
        pairs = [(bytes(n).rstrip(b"\0").decode(), bytes(v))
                 for n, v in (xattrs.unpack() if xattrs is not None else [])]
        result[path] = _entry(mode, info.get_attribute_uint32("unix::uid"),
                              info.get_attribute_uint32("unix::gid"), target,
                              digest, pairs)
        if stat.S_ISDIR(mode):
            for child in gfile.enumerate_children(attrs,
                                                  Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS,
                                                  None):
                name = child.get_name()
                visit(gfile.get_child(name), path.rstrip("/") + "/" + name)

    visit(root, "/")
    return result


def differences(ours, theirs, ignore=()):
    """Human-readable differences, skipping paths matching ``ignore`` globs."""
    def ignored(path):
        return any(fnmatch.fnmatch(path, pattern) for pattern in ignore)
    out = []
    for path in sorted(set(ours) | set(theirs)):
        if ignored(path):
            continue
        a, b = ours.get(path), theirs.get(path)
        if a == b:
            continue
        if a is None:
            out.append(f"only in reference: {path} {b[:5]}")
        elif b is None:
            out.append(f"only in ours: {path} {a[:5]}")
        else:
            what = [name for name, x, y in zip(
                ("type", "mode", "uid", "gid", "target", "content", "xattrs"),
                a, b) if x != y]
            shown = [i for i in (1, 2, 3, 4, 6) if a[i] != b[i]] or [5]
            out.append(f"differs ({', '.join(what)}): {path} "
                       f"ours={[a[i] for i in shown]} "
                       f"reference={[b[i] for i in shown]}")
    return out
