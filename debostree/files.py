"""Writing files atomically, and only when their content changes; removing
trees whatever their permissions.

Outputs that ninja watches (lockfiles, options files, stage outputs,
build.ninja itself) are written through a temporary file and a rename, so a
reader never sees half a file; and an unchanged file keeps its mtime, so
ninja sees no change.
"""

import os
import shutil
import tempfile


def write_atomically(path, text):
    """Write ``text`` to ``path`` through a file of its own beside it
    (``path~XXXX``: not named by the PID, which is 1 in every stage's
    namespace) and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + "~",
                               dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, _new_file_mode())  # mkstemp's is 0600
    os.replace(tmp, path)


def _new_file_mode():
    """The mode ``open`` gives a new file: 0666 less the umask (read from
    /proc: setting the umask to read it is not safe with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


def write_if_changed(path, text):
    """Write ``text`` to ``path`` atomically unless it is already there.

    Returns True when the file changed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    write_atomically(path, text)
    return True


def remove_tree(path):
    """Remove ``path`` (a directory tree, a file or a link), including
    directories without write or search permission (an overlay's work
    directory is mode 000, ostree checks out read-only directories)."""
    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        except OSError:
            pass
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, onerror=fix)
            else:
                os.unlink(p)
        except FileNotFoundError:
            pass
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, onerror=fix)
    elif os.path.lexists(path):
        os.unlink(path)
