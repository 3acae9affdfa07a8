"""The package pool: .deb files keyed by SHA256, fetched and verified.

A pool is a directory (under the build directory, or a user cache shared by
several checkouts) holding ``ab/abcdef....deb`` for each package, named by
its SHA256.  A file enters the pool only by an atomic rename after its size
and SHA256 matched the lockfile, so anything in the pool is complete and
correct; a mismatch removes the download and names the package, the URL and
both hashes.
"""

import os
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed

from .errors import UserError


def pool_path(pool, sha256):
    return os.path.join(pool, sha256[:2], sha256 + ".deb")


def package_url(mirror_map, archive_name, filename):
    try:
        base = mirror_map[archive_name]
    except KeyError:
        raise UserError(f"no mirror for archive '{archive_name}'",
                        hint=f"pass --mirror {archive_name}=URL to ./configure")
    # The Filename is a path, not a URL: a '%' or ':' in it is quoted, as
    # apt quotes it.
    return f"{base}/{urllib.parse.quote(filename, safe='/+~')}"


def fetch_one(pool, url, sha256, size, name):
    """Make sure the pool holds the file with ``sha256``; download it if not.

    Returns ``(path, downloaded_bytes)``.
    """
    dest = pool_path(pool, sha256)
    if os.path.exists(dest) and os.path.getsize(dest) == size:
        return dest, 0
    from . import archive  # here: stages need only pool_path
    archive.download(url, dest, expect_size=size, expect_sha256=sha256,
                     what=f"package {name}")
    return dest, size


def fetch_entries(entries, mirror_map, pool, jobs=8, out=sys.stderr):
    """Fetch every lockfile entry missing from the pool, in parallel."""
    todo = {}
    for entry in entries:
        if not os.path.exists(pool_path(pool, entry.sha256)):
            todo[entry.sha256] = entry
    total = sum(e.size for e in todo.values())
    if not todo:
        print(f"all {len(entries)} packages are in the pool", file=out)
        return 0
    print(f"fetching {len(todo)} of {len(entries)} packages "
          f"({total / 1e6:.1f} MB)", file=out, flush=True)
    done_bytes = 0
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=jobs) as executor:
        futures = {
            executor.submit(fetch_one, pool,
                            package_url(mirror_map, e.archive, e.filename),
                            e.sha256, e.size, f"{e.name} {e.version}"): e
            for e in todo.values()}
        for count, future in enumerate(as_completed(futures), 1):
            entry = futures[future]
            future.result()
            done_bytes += entry.size
            rate = done_bytes / max(time.monotonic() - start, 1e-3) / 1e6
            print(f"[{count}/{len(todo)}] {entry.name} {entry.version} "
                  f"({entry.size / 1e6:.1f} MB, {done_bytes / 1e6:.1f}/"
                  f"{total / 1e6:.1f} MB, {rate:.1f} MB/s)", file=out, flush=True)
    return len(todo)


def make_apt_source(entries, lockfile_path, pool, dest):
    """Make ``dest`` a flat apt source: the lockfile as ``Packages`` and each
    package linked at its ``Filename``.  Use it as ``deb [trusted=yes]
    file:DEST ./``; apt then needs no network."""
    os.makedirs(dest, exist_ok=True)
    with open(lockfile_path, "rb") as src, \
            open(os.path.join(dest, "Packages"), "wb") as dst:
        dst.write(src.read())
    placed = {}
    for entry in entries:
        target = pool_path(pool, entry.sha256)
        if not os.path.exists(target):
            raise UserError(f"package {entry.name} {entry.version} is not in "
                            f"the pool ({target})", hint="fetch it first")
        if placed.get(entry.filename, entry.sha256) != entry.sha256:
            raise UserError(f"two packages share the file name {entry.filename}")
        placed[entry.filename] = entry.sha256
        link = os.path.join(dest, entry.filename)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.abspath(target), link)
    return dest
