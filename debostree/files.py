"""Writing files atomically, and only when their content changes.

Outputs that ninja watches (lockfiles, options files, stage outputs,
build.ninja itself) are written through a temporary file and a rename, so a
reader never sees half a file; and an unchanged file keeps its mtime, so
ninja sees no change.
"""

import os


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
