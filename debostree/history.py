"""Branch history: the packages a commit's tree holds and the difference
between two commits, as commit bodies and for ``tools/package-diff``.

A tree's packages are read from its dpkg database (``/var/lib/dpkg/status``,
or ``/usr/lib/sysimage/dpkg/status`` once a 'deployable' stage moved it)
straight out of the OSTree repository, without a checkout.
"""

from dataclasses import dataclass

from debian import deb822

from . import proc
from .errors import UserError

STATUS_PATHS = ("/usr/lib/sysimage/dpkg/status", "/var/lib/dpkg/status")


@dataclass
class PackageDiff:
    added: list      # [(name, version)]
    removed: list    # [(name, version)]
    changed: list    # [(name, old version, new version)]

    def __bool__(self):
        return bool(self.added or self.removed or self.changed)

    def summary(self):
        return (f"{len(self.added)} added, {len(self.removed)} removed, "
                f"{len(self.changed)} changed")

    def lines(self):
        out = [f"Packages: {self.summary()}"]
        out += [f"  + {n} {v}" for n, v in self.added]
        out += [f"  - {n} {v}" for n, v in self.removed]
        out += [f"  ~ {n} {old} -> {new}" for n, old, new in self.changed]
        return out


def installed_packages(status_text):
    """{package (with :arch for Multi-Arch: same): version} of a status file."""
    packages = {}
    for para in deb822.Deb822.iter_paragraphs(status_text.splitlines(True)):
        if "Package" not in para or not para.get("Status", "").endswith(" installed"):
            continue
        name = para["Package"]
        if para.get("Multi-Arch") == "same":
            name += ":" + para.get("Architecture", "")
        packages[name] = para.get("Version", "")
    return packages


def diff(old, new):
    """The PackageDiff from package map ``old`` to ``new``."""
    added = sorted((n, new[n]) for n in new.keys() - old.keys())
    removed = sorted((n, old[n]) for n in old.keys() - new.keys())
    changed = sorted((n, old[n], new[n]) for n in old.keys() & new.keys()
                     if old[n] != new[n])
    return PackageDiff(added, removed, changed)


def commit_packages(gi_repo, commit):
    """The package map of ``commit``'s tree (empty when it has no dpkg)."""
    repo_path = gi_repo.get_path().get_path()
    for path in STATUS_PATHS:
        result = proc.run(["ostree", "cat", f"--repo={repo_path}", commit, path],
                          capture=True, check=False)
        if result.returncode == 0:
            return installed_packages(result.stdout)
    return {}


def resolve(gi_repo, rev):
    """A ref, a commit checksum or REV^ to a checksum, or a clear error."""
    from gi.repository import GLib
    try:
        _, checksum = gi_repo.resolve_rev(rev, False)
        return checksum
    except GLib.Error as error:
        raise UserError(f"no commit '{rev}' in the repository: {error.message}",
                        hint="name a branch (see 'ostree refs') or a commit "
                        "checksum; BRANCH^ is the commit before")
