"""The fakeroot preload library of a foreign chroot, matched to the host.

A foreign stage's processes are the target architecture's, so they preload
the target's ``libfakeroot``; they talk to this host's ``faked``, and the
daemon's messages change between upstream releases (a 1.37 library waits
forever on a 1.31 daemon).  So the library is the one the host's Debian
release builds for the target architecture, at exactly the version of the
host's fakeroot: found in the host's own apt sources (verified like any
archive: signed Release, then the Packages index, then the .deb's SHA256),
never in the recipe's archives.  It is a build tool like the host's daemon,
not part of any image: the same recipe builds on a Debian 12 and a Debian 13
host, each with its own matched pair.
"""

import os
import re

from . import proc
from .errors import UserError
from .mirrors import DEFAULT_KEYRING, Mirrors, read_host_sources

PACKAGE = "libfakeroot"


def host_version():
    """The version of the host's fakeroot package, or None."""
    try:
        result = proc.run(["dpkg-query", "-W", "-f=${Version}", "fakeroot"],
                          capture=True, check=False)
    except (OSError, UserError):
        return None
    version = result.stdout.strip()
    return version if result.returncode == 0 and version else None


def upstream(version):
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


def library_path(builddir, arch, version):
    """Where the build keeps the matched library package."""
    safe = re.sub(r"[^A-Za-z0-9.+~-]", "_", version)
    return os.path.join(builddir, "sandbox", f"{PACKAGE}_{safe}_{arch}.deb")


def _source_name(uri):
    return "host-" + re.sub(r"[^A-Za-z0-9.-]+", "_", uri.split("://", 1)[-1]).strip("_")


def find(arch, version, cache_dir, host_sources=None):
    """The Packages stanza and base URL of ``libfakeroot`` ``version`` for
    ``arch`` in the host's apt sources; UserError when none has it."""
    # Imported here: stages load this module for host_version alone.
    from debian import deb822
    from . import archive
    from .recipe import Archive
    sources = read_host_sources() if host_sources is None else host_sources
    searched = []
    for source in sources:
        name = _source_name(source.uri)
        keyring = source.signed_by if source.signed_by and \
            os.path.isfile(source.signed_by) else DEFAULT_KEYRING
        mirrors = Mirrors(environ={}, config_file=os.devnull,
                          host_sources=[source])
        mirrors.explicit[name] = source.uri
        cache = archive.ArchiveCache(cache_dir, mirrors)
        for suite in source.suites:
            searched.append(f"{source.uri} {suite}")
            found = Archive(name, (suite,), tuple(c for c in source.components
                                                  if c == "main"), keyring)
            if not found.components:
                continue
            try:
                indices = cache.indices(found, arch)
            except UserError as error:
                # A suite without this architecture (or out of reach) may
                # not be the one that has the library; say so only if none
                # has it.
                searched[-1] += f" ({error.message})"
                continue
            for index in indices:
                with open(index.path, encoding="utf-8", errors="replace") as f:
                    for para in deb822.Packages.iter_paragraphs(f, use_apt_pkg=False):
                        if para.get("Package") == PACKAGE and \
                                para.get("Version") == version and \
                                para.get("Architecture") == arch:
                            return source.uri, para
    raise UserError(
        f"no {PACKAGE} {version} for {arch} in the host's apt sources "
        f"(searched: {'; '.join(searched) or 'none'})",
        hint="a foreign chroot needs the fakeroot library of the host's own "
        "Debian release for its architecture, at the version of the host's "
        "fakeroot; keep the host's apt sources pointing at its release")


def fetch(arch, version, out, cache_dir, host_sources=None):
    """Download the matched library package to ``out``, verified."""
    from . import archive
    installed = host_version()
    if installed != version:
        raise UserError(
            f"the host's fakeroot is {installed or 'not installed'}, but the "
            f"build was configured for {version}",
            hint="run ./configure again" if installed else
            "apt-get install fakeroot, then run ./configure again")
    base, para = find(arch, version, cache_dir, host_sources)
    filename = para["Filename"]
    if ".." in filename.split("/") or filename.startswith("/"):
        raise UserError(f"{base}: {PACKAGE} has an unsafe Filename '{filename}'")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    archive.download(f"{base}/{filename}", out, expect_size=int(para["Size"]),
                     expect_sha256=para["SHA256"],
                     what=f"{PACKAGE} {version} ({arch})")
