"""Paths inside an image tree, resolved as if the tree were ``/``.

A stage's command may leave any symbolic link anywhere in its tree
(``/var/log -> /home/builder``), and Debian itself ships absolute ones
(``/var/lock -> /run/lock``).  The steps that run on the host side of the
sandbox (copies into the tree, xattrs, the cleanup after a stage, the
deployable rearrangement) must never follow such a link out of the tree.
So every path they touch is resolved by the kernel with ``openat2(2)`` and
``RESOLVE_IN_ROOT`` (as a chroot would resolve it: ``..`` and absolute
links stay inside), and the last component is acted on through its
parent's descriptor without following it.
"""

import ctypes
import errno
import os
import shutil
import stat

# openat2 has one number on every architecture (new system calls share the
# generic table since Linux 5.1).
SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def openat2(dirfd, path, flags, mode=0, resolve=RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS):
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0,
                   resolve)
    fd = _libc.syscall(SYS_OPENAT2, ctypes.c_int(dirfd),
                       ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def split(path):
    """``/a/b/c`` -> (``/a/b``, ``c``); refuses paths without a last name."""
    parent, name = os.path.split("/" + path.strip("/"))
    if name in ("", ".", ".."):
        raise ValueError(f"not a path to a file: {path!r}")
    return parent, name


class Tree:
    """An image tree at ``root``; paths are the tree's own (``/etc/x``)."""

    def __init__(self, root):
        self.root = root
        self.fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- resolution ---------------------------------------------------------
    def open(self, path, flags=os.O_RDONLY, mode=0o644):
        """A descriptor for ``path`` resolved inside the tree (links
        followed, but never out of it)."""
        return openat2(self.fd, path.lstrip("/") or ".", flags, mode)

    def dir(self, path):
        """An O_PATH descriptor of the directory ``path``, or None."""
        try:
            return self.open(path, os.O_PATH | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return None

    class _Parent:
        def __init__(self, tree, path):
            parent, self.name = split(path)
            self.fd = tree.dir(parent)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            if self.fd is not None:
                os.close(self.fd)

        @property
        def proc(self):
            """A path naming the entry (not followed) for calls that take
            no directory descriptor; valid while this is open."""
            return f"/proc/self/fd/{self.fd}/{self.name}"

    def parent(self, path):
        """``with tree.parent(path) as p``: ``p.fd`` (None when the parent
        is missing) and ``p.name``."""
        return Tree._Parent(self, path)

    # -- queries ------------------------------------------------------------
    def lstat(self, path):
        """The entry's own stat (a link is not followed), or None."""
        if path.strip("/") == "":
            return os.stat(self.fd)
        with self.parent(path) as p:
            if p.fd is None:
                return None
            try:
                return os.stat(p.name, dir_fd=p.fd, follow_symlinks=False)
            except FileNotFoundError:
                return None

    def is_dir(self, path):
        st = self.lstat(path)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def is_file(self, path):
        st = self.lstat(path)
        return st is not None and stat.S_ISREG(st.st_mode)

    def exists(self, path):
        return self.lstat(path) is not None

    def read(self, path):
        """The content of the regular file ``path`` (the last component
        must not be a link)."""
        fd = self.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def listdir(self, path):
        fd = self.dir(path)
        if fd is None:
            return []
        try:
            real = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                return os.listdir(real)
            finally:
                os.close(real)
        finally:
            os.close(fd)

    # -- changes ------------------------------------------------------------
    def unlink(self, path):
        """Remove the file or link ``path``; returns its stat, or None."""
        with self.parent(path) as p:
            if p.fd is None:
                return None
            try:
                st = os.stat(p.name, dir_fd=p.fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            os.unlink(p.name, dir_fd=p.fd)
            return st

    def rmdir(self, path):
        with self.parent(path) as p:
            os.rmdir(p.name, dir_fd=p.fd)

    def rmtree(self, path):
        """Remove ``path`` and, if it is a directory, what is in it; links
        are removed, never followed."""
        st = self.lstat(path)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            self.unlink(path)
            return
        for name in self.listdir(path):
            self.rmtree(path.rstrip("/") + "/" + name)
        self.rmdir(path)

    def makedirs(self, path, mode=0o755):
        """Make ``path`` and its missing parents inside the tree.  Returns
        the directories made."""
        made = []
        current = ""
        for part in [p for p in path.split("/") if p and p != "."]:
            if part == "..":
                raise ValueError(f"'..' in {path!r}")
            current += "/" + part
            fd = self.dir(current)
            if fd is not None:
                os.close(fd)
                continue
            with self.parent(current) as p:
                os.mkdir(p.name, mode, dir_fd=p.fd)
            made.append(current)
        return made

    def write(self, path, data, mode=0o644):
        """Replace ``path`` with a new regular file holding ``data`` (bytes
        or a file to copy from; a new inode: never a write into a
        hardlinked file in place)."""
        with self.parent(path) as p:
            try:
                st = os.stat(p.name, dir_fd=p.fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, "is a directory", path)
                os.unlink(p.name, dir_fd=p.fd)
            except FileNotFoundError:
                pass
            fd = os.open(p.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                         os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=p.fd)
            with os.fdopen(fd, "wb") as f:
                if isinstance(data, (bytes, bytearray)):
                    f.write(data)
                else:
                    shutil.copyfileobj(data, f, 1 << 20)
            os.chmod(p.name, mode, dir_fd=p.fd)

    def symlink(self, target, path):
        with self.parent(path) as p:
            os.symlink(target, p.name, dir_fd=p.fd)

    def rename(self, src, dest):
        with self.parent(src) as s, self.parent(dest) as d:
            os.rename(s.name, d.name, src_dir_fd=s.fd, dst_dir_fd=d.fd)

    def chown(self, path, uid, gid):
        with self.parent(path) as p:
            os.chown(p.name, uid, gid, dir_fd=p.fd, follow_symlinks=False)

    def chmod(self, path, mode):
        """Set the mode of ``path``, which must not be a link."""
        with self.parent(path) as p:
            st = os.stat(p.name, dir_fd=p.fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, "is a symbolic link", path)
            os.chmod(p.name, mode, dir_fd=p.fd)

    def setxattr(self, path, name, value):
        with self.parent(path) as p:
            os.setxattr(p.proc, name, value, follow_symlinks=False)

    def touch_same_times(self, path):
        """Set a file's times to their own value (the overlay then copies
        it up); False for directories, links and missing paths."""
        with self.parent(path) as p:
            if p.fd is None:
                return False
            try:
                st = os.stat(p.name, dir_fd=p.fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return False
            if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
                return False
            os.utime(p.name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=p.fd,
                     follow_symlinks=False)
            return True


RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08


def link_on_the_way(root, path, including_last=False):
    """The first directory on the way to ``path`` (and ``path`` itself with
    ``including_last``) that is a symbolic link in the tree at ``root``, or None.  For host-side
    steps that act on a tree by plain paths after the stage's command has
    ended (nothing else changes the tree then): checked first, they can
    act without following anything out of it."""
    parts = [p for p in path.strip("/").split("/") if p]
    if not including_last:
        parts = parts[:-1]
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            try:
                fd = openat2(root_fd, sub, os.O_PATH | os.O_NOFOLLOW,
                             resolve=RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
            except FileNotFoundError:
                return None
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.EXDEV):
                    return "/" + sub
                raise
            try:
                if stat.S_ISLNK(os.fstat(fd).st_mode):
                    return "/" + sub
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
    return None
