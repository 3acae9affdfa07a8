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
import shutil
import stat
import tempfile
from dataclasses import dataclass


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


def special_paths(entries):
    """Paths whose owner, mode or xattrs the fakeroot daemon must be told."""
    return [path for path, entry in entries.items()
            if path != "/" and (entry.uid or entry.gid or entry.mode & 0o7000
                                or entry.xattrs)]


def copy_up(root, paths):
    """Copy up, in the overlay mounted at ``root``, each of ``paths``.

    The fakeroot daemon knows files by device and inode.  A file of the
    lower layer (a hardlinked checkout) shares its inode with every other
    path of the same content, and the overlay gives it a new inode when it
    copies it up (on a chmod, a write or a rename): what the daemon recorded
    before is then lost.  A path copied up before the daemon starts has an
    inode of its own that no longer changes.  Setting a file's times to
    their own value makes the overlay copy it up.  Returns the count.
    """
    from .treepath import Tree
    count = 0
    with Tree(root) as tree:
        for path in sorted(set(paths)):
            if path != "/" and tree.touch_same_times(path):
                count += 1
    return count


class LowerStat:
    """What is kept of a lower-layer path's ``lstat``: its mode and inode."""

    __slots__ = ("st_mode", "st_ino")

    def __init__(self, mode, ino):
        self.st_mode = mode
        self.st_ino = ino


LOWER_WALK_FORMAT = 1


def _lower_identity(lower):
    root = os.lstat(lower)
    return [LOWER_WALK_FORMAT, root.st_dev, root.st_ino]


def lower_walk(lower, cache_path):
    """The ``walk`` of an overlay's lower layer, as ``{path: LowerStat}``.

    The lower layer is a checkout nothing writes to (stagerun.checkout), so
    its walk is kept in ``cache_path`` beside it (``prepare_lower``) and read
    back by every stage on the same checkout.  The cache names the
    checkout's root (device and inode) and is walked again when that
    differs: the checkout was made anew.
    """
    try:
        with open(cache_path, encoding="utf-8") as f:
            cached = json.load(f)
        if cached["identity"] == _lower_identity(lower):
            return {path: LowerStat(mode, ino)
                    for path, (mode, ino) in cached["paths"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return _write_lower_walk(lower, cache_path, walk(lower))


def _write_lower_walk(lower, cache_path, stats):
    found = {path: LowerStat(st.st_mode, st.st_ino)
             for path, st in stats.items()}
    # A name of its own: stages on the same checkout run at once, each in a
    # PID namespace of its own (so the same PID).
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(cache_path) + ".",
                               dir=os.path.dirname(cache_path))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"identity": _lower_identity(lower),
                   "paths": {path: [s.st_mode, s.st_ino]
                             for path, s in found.items()}},
                  f, separators=(",", ":"))
    os.replace(tmp, cache_path)
    return found


def prepare_lower(root, cache_path):
    """Make a fresh checkout at ``root`` ready to be an overlay's lower
    layer, and keep its walk in ``cache_path`` (``lower_walk``).

    Identical files are one inode in a hardlinked checkout, and the fakeroot
    daemon knows files by inode (see ``copy_up``): all paths but the first
    of a shared inode (``shared_inode_paths``) become copies, with the same
    content, mode and times.  Done once here, this spares every stage on the
    checkout the copy-up of those paths.  Returns the count of copies."""
    stats = walk(root)
    paths = shared_inode_paths(lower_inodes(stats))
    top = root.rstrip("/")
    for path in paths:
        real = top + path
        tmp = f"{os.path.dirname(real)}/.{os.path.basename(real)}.separate"
        shutil.copy2(real, tmp, follow_symlinks=False)
        os.replace(tmp, real)
        stats[path] = os.lstat(real)
    _write_lower_walk(root, cache_path, stats)
    return len(paths)


def lower_inodes(lower_stats):
    """``{inode: [path, ...]}`` of the regular files of the lower layer
    (``lower_stats``: its ``walk``)."""
    found = {}
    for path, st in lower_stats.items():
        if stat.S_ISREG(st.st_mode):
            found.setdefault(st.st_ino, []).append(path)
    return found


def shared_inode_paths(inodes):
    """All paths but the first of every inode that several paths share
    (identical files are one object, so a hardlinked checkout links them
    together): copied up, each gets an inode of its own."""
    extra = []
    for paths in inodes.values():
        if len(paths) > 1:
            extra += sorted(paths)[1:]
    return extra


def moved_state(inodes, saved, loaded, stats, dev):
    """Paths whose fakeroot state was recorded on an inode they no longer
    have (or share with another path): the daemon's ``saved`` state has an
    entry for a lower-layer inode that differs from what was ``loaded``, and
    the paths of that inode were copied up, renamed or removed since, or are
    several.  Run again with these copied up first, the stage keeps what
    it set."""
    moved = set()
    for (entry_dev, ino), state in saved.items():
        if entry_dev != dev or ino not in inodes:
            continue
        if loaded.get((entry_dev, ino)) == state:
            continue
        paths = inodes[ino]
        if len(paths) > 1 or any(p not in stats or stats[p].st_ino != ino
                                 for p in paths):
            moved.update(paths)
    return sorted(moved)


def fakeroot_state(root, entries, lower_stats=None):
    """Lines of a fakeroot ``-i`` state file giving ``root``'s files the
    owners and modes of ``entries`` (matched by path, found by dev/ino).

    Only files whose real view differs need an entry: the daemon reports
    any file it does not know as owned by root with its real mode.
    ``lower_stats`` (the ``walk`` of the overlay's lower layer, where the
    overlay takes each path's mode from, a copy-up keeping it) spares the
    look-up through the overlay of the paths that need no entry: most of a
    tree, and the overlay's look-ups are the slow ones."""
    lines = []
    seen = set()
    root = root.rstrip("/")
    lower_stats = lower_stats or {}
    for path, entry in entries.items():
        # Not "/": the overlay's root takes its mode from the upper layer.
        if entry.uid == 0 and entry.gid == 0 and path != "/" and \
                path in lower_stats and lower_stats[path].st_mode == entry.mode:
            continue
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


def parse_fakeroot_state(text):
    """``{(dev, ino): (mode, uid, gid)}`` from fakeroot state lines."""
    state = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = dict(item.split("=", 1) for item in line.strip().split(","))
        state[(int(fields["dev"], 16), int(fields["ino"]))] = (
            int(fields["mode"], 8), int(fields["uid"]), int(fields["gid"]))
    return state


def read_fakeroot_state(path):
    """``{(dev, ino): (mode, uid, gid)}`` from a fakeroot state file."""
    try:
        with open(path, encoding="ascii") as f:
            return parse_fakeroot_state(f.read())
    except FileNotFoundError:
        return {}


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
