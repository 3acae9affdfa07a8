"""Reading a tree's extended attributes under fakeroot, in a small process.

fakeroot keeps the xattrs a stage sets (file capabilities, above all) in its
daemon's memory, so they can only be read by a process that preloads its
library.  Every file access of such a process is a round trip to the
daemon, Python's imports included: this module imports nothing of the
project, so its process starts in a fraction of the time a stage's own
modules would take.

    python3 -m debostree.xattrs TARGET < CANDIDATES.json > FOUND.json

reads the xattrs of the paths (a JSON list) given on standard input and
writes ``{path: [[name, hex value], ...]}`` to standard output.  The stage
starts it beside the fakeroot daemon and gives it the paths when its
command is done, so its start-up costs nothing.
"""

import json
import os
import sys

# Extended attributes that belong to the machinery, not to the image.
IGNORED_PREFIXES = ("user.ostreemeta", "user.overlay.", "trusted.overlay.",
                    "security.selinux")


def read(root, paths):
    """``{path: [(name, value), ...]}`` of ``paths`` under ``root`` that have
    xattrs of the image's own."""
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
            if name.startswith(IGNORED_PREFIXES):
                continue
            try:
                pairs.append((name, os.getxattr(real, name, follow_symlinks=False)))
            except OSError:
                continue
        if pairs:
            found[path] = sorted(pairs)
    return found


def main(argv):
    target, = argv
    candidates = json.load(sys.stdin)
    found = read(target, candidates)
    json.dump({p: [[n, v.hex()] for n, v in pairs]
               for p, pairs in found.items()}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
