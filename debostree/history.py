"""Branch history: the packages a commit's tree holds and the difference
between two commits, as commit bodies and for ``tools/package-diff``.

A tree's packages are read from its dpkg database (``/var/lib/dpkg/status``,
or ``/usr/lib/sysimage/dpkg/status`` once a 'deployable' stage moved it)
straight out of the OSTree repository, without a checkout.
"""

from debian import deb822

from . import changes, proc
from .errors import UserError

STATUS_PATHS = ("/usr/lib/sysimage/dpkg/status", "/var/lib/dpkg/status")


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
    """The changes (changes.PackageChanges) from package map ``old`` to
    ``new``."""
    return changes.compare(old, new)


def lines(package_changes):
    """The changes as a commit body says them."""
    return [f"Packages: {package_changes.summary()}"] + package_changes.lines()


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
