"""Input keys: a SHA256 per stage over everything that determines its tree.

A stage's key covers its options as configure wrote them, without what only
names places on this machine (the pool's paths, import summaries, the
build directory: each kind's options say which fields those are, see
``kinds.base.key_value``), with the content of every file a copy stage
takes; the parent stage's key; the architecture and SOURCE_DATE_EPOCH (in
the options); the project's own code that shapes trees (``debostree/``,
``stages/``); the versions of the host tools that do (ostree, fakeroot);
and ``FORMAT``.  So the same source revision and lockfile give the same
keys on every machine, and a change to any of these gives new keys to the
stage and everything after it.

Configure writes each stage's key and what went into it to
``StageFiles.key`` (not an input of the stage's edge: a key changes when
an input does, so it would only rerun what ninja reruns anyway).  One more
input is known only when the stage runs: the system user and group IDs it
keeps from its branch's history (ids.py); ``run_key`` adds it.  A
package's import has a key of its own (``debimport.import_key``), which the
pool's import store checks.
"""

import glob
import hashlib
import json
import os

from . import proc

FORMAT = "debostree-stage-key/1"


def digest_json(value):
    """SHA256 of a JSON value in one canonical spelling."""
    return hashlib.sha256(json.dumps(value, sort_keys=True,
                                     separators=(",", ":")).encode()).hexdigest()


def code_digest(top):
    """SHA256 over the project's files that shape trees, by relative path."""
    paths = sorted(glob.glob(os.path.join(top, "debostree", "**", "*.py"),
                             recursive=True)
                   + glob.glob(os.path.join(top, "stages", "*")))
    digest = hashlib.sha256()
    for path in paths:
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            content = hashlib.sha256(f.read()).hexdigest()
        digest.update(f"{os.path.relpath(path, top)}\0{content}\n".encode())
    return digest.hexdigest()


def tool_versions():
    """The versions of the host tools whose work ends up in the trees."""
    from . import sandboxlib
    result = proc.run(["ostree", "--version"], capture=True, check=False)
    ostree_version = None
    for line in result.stdout.splitlines():
        name, _, value = line.strip().partition(":")
        if name == "Version":
            ostree_version = value.strip().strip("'\"")
            break
    return {"ostree": ostree_version, "fakeroot": sandboxlib.host_version()}


def tree_digest(path):
    """SHA256 of a file or directory tree as a copy stage takes it: each
    entry's relative path, type, permission bits, and content or link
    target."""
    digest = hashlib.sha256()

    def add(real, name):
        st = os.lstat(real)
        mode = st.st_mode
        if os.path.islink(real):
            digest.update(f"L {name} {os.readlink(real)}\n".encode())
        elif os.path.isdir(real):
            digest.update(f"D {name} {mode & 0o7777:o}\n".encode())
            for child in sorted(os.listdir(real)):
                add(os.path.join(real, child), f"{name}/{child}")
        else:
            content = hashlib.sha256()
            with open(real, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    content.update(chunk)
            digest.update(f"F {name} {mode & 0o7777:o} "
                          f"{content.hexdigest()}\n".encode())

    add(path, ".")
    return digest.hexdigest()


def stage_key(options_value, parent_key, code, tools):
    """``(key, inputs)``: a stage's key and the value it is the digest of."""
    inputs = {"format": FORMAT, "options": options_value,
              "parent": parent_key, "code": code, "tools": tools}
    return digest_json(inputs), inputs


def run_key(key, ids_reference):
    """The key a stage's commit is cached under: its configured ``key`` and
    the digest of the IDs reference it ran with (``ids.reference_digest``:
    None when its branch has no commit yet)."""
    if ids_reference is None:
        return key
    return digest_json({"key": key, "ids": ids_reference})


def run_keys(key, ids_reference, renumbered):
    """The keys a commit the stage built is cached under: ``run_key``, and
    also ``key`` alone when the IDs reference changed nothing (the tree is
    then the one a build without a reference makes)."""
    keys = [run_key(key, ids_reference)]
    if ids_reference is not None and not renumbered:
        keys.append(key)
    return keys


def read_key(path):
    """The key configure wrote to ``path`` (StageFiles.key), or None."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
