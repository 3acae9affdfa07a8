"""Writing files atomically, and only when their content changes; removing
trees whatever their permissions.

Outputs that ninja watches (lockfiles, options files, stage outputs,
build.ninja itself) are written through a temporary file and a rename, so a
reader never sees half a file; and an unchanged file keeps its mtime, so
ninja sees no change.
"""

import os
import shutil


def write_atomically(path, text):
    """Write ``text`` to ``path`` through ``path~`` and a rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}~{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


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
