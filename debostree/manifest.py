"""Manifests: the owner, mode, link target and xattrs of every path in a tree.

On disk every file of a checkout belongs to the build user; the truth about
ownership, setuid bits and capabilities lives in a manifest that travels
with each stage's commit.  Before a stage runs, the manifest becomes the
fakeroot daemon's state (so the stage's commands see the real owners and
modes); after it runs, the tree is walked under fakeroot to write the new
manifest, which the commit then uses.

A manifest file holds one JSON array a line:
``[path, mode, uid, gid, link_target_or_null, [[xattr_name, hex_value], ...]]``
with ``mode`` the full ``st_mode`` (type bits included), sorted by path.
"""

import json
import os
import stat
from dataclasses import dataclass

# Extended attributes that belong to the machinery, not to the image.
IGNORED_XATTR_PREFIXES = ("user.ostreemeta", "user.overlay.", "trusted.overlay.",
                          "security.selinux")


@dataclass(frozen=True)
class Entry:
    path: str
    mode: int
    uid: int = 0
    gid: int = 0
    target: str = None
    xattrs: tuple = ()  # ((name, bytes), ...)

    def to_json(self):
        return json.dumps([self.path, self.mode, self.uid, self.gid, self.target,
                           [[n, v.hex()] for n, v in self.xattrs]],
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, line):
        path, mode, uid, gid, target, xattrs = json.loads(line)
        return cls(path, mode, uid, gid, target,
                   tuple((n, bytes.fromhex(v)) for n, v in xattrs))


def write(path, entries):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for entry in sorted(entries.values(), key=lambda e: e.path):
            f.write(entry.to_json() + "\n")
    os.replace(tmp, path)


def read(path):
    entries = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            entry = Entry.from_json(line)
            entries[entry.path] = entry
    return entries


def copy_up_special(root, entries):
    """Copy up, in the overlay mounted at ``root``, every path whose owner or
    mode the fakeroot daemon must know.

    The daemon knows files by device and inode; a lower file that is a
    hardlink (as every file of a hardlinked checkout is) gets a new inode
    when the overlay copies it up, and the daemon would lose its owner.  A
    path copied up before the daemon starts keeps its inode: setting its
    times to their own value makes the overlay copy it up.
    """
    root = root.rstrip("/")
    count = 0
    for path, entry in entries.items():
        if path == "/" or (entry.uid == 0 and entry.gid == 0 and
                           not entry.mode & 0o7000 and not entry.xattrs):
            continue
        real = root + path
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        os.utime(real, ns=(st.st_atime_ns, st.st_mtime_ns),
                 follow_symlinks=False)
        count += 1
    return count


def fakeroot_state(root, entries):
    """Lines of a fakeroot ``-i`` state file giving ``root``'s files the
    owners and modes of ``entries`` (matched by path, found by dev/ino).

    Only files whose real view differs need an entry: the daemon reports
    any file it does not know as owned by root with its real mode."""
    lines = []
    seen = set()
    root = root.rstrip("/")
    for path, entry in entries.items():
        real = root + path if path != "/" else root or "/"
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        if st.st_mode == entry.mode and entry.uid == 0 and entry.gid == 0:
            continue
        lines.append(f"dev={st.st_dev:x},ino={st.st_ino},mode={entry.mode:o},"
                     f"uid={entry.uid},gid={entry.gid},nlink={st.st_nlink},rdev=0\n")
    return "".join(lines)


def read_fakeroot_state(path):
    """``{(dev, ino): (mode, uid, gid)}`` from a fakeroot state file."""
    state = {}
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                fields = dict(item.split("=", 1) for item in line.strip().split(","))
                state[(int(fields["dev"], 16), int(fields["ino"]))] = (
                    int(fields["mode"], 8), int(fields["uid"]), int(fields["gid"]))
    except FileNotFoundError:
        pass
    return state


def walk(root, skip=()):
    """Real ``lstat`` of every path under ``root``: ``{path: stat_result}``."""
    result = {}
    skip = set(skip)
    root = root.rstrip("/")

    def visit(real, path):
        st = os.lstat(real)
        result[path] = st
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(real) as it:
                for item in it:
                    child = path.rstrip("/") + "/" + item.name
                    if child not in skip:
                        visit(item.path, child)

    visit(root or "/", "/")
    return result


def xattr_candidates(stats, previous):
    """Paths whose xattrs must be read: executables (file capabilities)
    and whatever had xattrs before."""
    paths = [p for p, st in stats.items()
             if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111]
    paths += [p for p, e in previous.items() if e.xattrs and p in stats]
    return sorted(set(paths))


def read_xattrs(root, paths):
    """Extended attributes of ``paths`` (run under fakeroot)."""
    found = {}
    root = root.rstrip("/")
    for path in paths:
        real = root + path
        try:
            names = os.listxattr(real, follow_symlinks=False)
        except OSError:
            continue
        pairs = []
        for name in names:
            if name.startswith(IGNORED_XATTR_PREFIXES):
                continue
            try:
                pairs.append((name, os.getxattr(real, name, follow_symlinks=False)))
            except OSError:
                continue
        if pairs:
            found[path] = sorted(pairs)
    return found


def combine(root, stats, state, xattrs):
    """The manifest of a tree from its real stats, the fakeroot daemon's saved
    state and the xattrs read under fakeroot."""
    entries = {}
    root = root.rstrip("/")
    for path, st in stats.items():
        mode, uid, gid = state.get((st.st_dev, st.st_ino), (st.st_mode, 0, 0))
        if stat.S_IFMT(mode) != stat.S_IFMT(st.st_mode):
            mode, uid, gid = st.st_mode, 0, 0  # a stale entry for a reused inode
        target = os.readlink(root + path) if stat.S_ISLNK(st.st_mode) else None
        entries[path] = Entry(path, mode, uid, gid, target,
                              tuple((n, v) for n, v in xattrs.get(path, ())))
    return entries
