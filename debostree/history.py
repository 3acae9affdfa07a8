"""Branch history: the packages a commit's tree holds and the difference
between two commits, as commit bodies and for ``tools/package-diff``.

A tree's packages are read from its dpkg database (``/var/lib/dpkg/status``,
or ``/usr/lib/sysimage/dpkg/status`` once a 'deployable' stage moved it)
straight out of the OSTree repository, without a checkout.  Branch commits
also carry them in their metadata (``PACKAGES_META``: name, version,
architecture and source package of each), so a commit alone, without its
tree, says what it holds.
"""

from debian import deb822

from . import changes, proc
from .errors import UserError

STATUS_PATHS = ("/usr/lib/sysimage/dpkg/status", "/var/lib/dpkg/status")
PACKAGES_META = "debostree.packages"  # a(ssss): name, version, arch, source
PACKAGES_TYPE = "a(ssss)"


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


def package_records(status_text):
    """Sorted ``(name, version, architecture, source)`` of the installed
    packages of a status file (the source package without its version;
    the package's own name when it has no Source field)."""
    records = []
    for para in deb822.Deb822.iter_paragraphs(status_text.splitlines(True)):
        if "Package" not in para or not para.get("Status", "").endswith(" installed"):
            continue
        source = para.get("Source", "").split(" ")[0] or para["Package"]
        records.append((para["Package"], para.get("Version", ""),
                        para.get("Architecture", ""), source))
    return sorted(records)


def status_text(gi_repo, commit):
    """The dpkg status file of ``commit``'s tree, or None."""
    repo_path = gi_repo.get_path().get_path()
    for path in STATUS_PATHS:
        result = proc.run(["ostree", "cat", f"--repo={repo_path}", commit, path],
                          capture=True, check=False)
        if result.returncode == 0:
            return result.stdout
    return None


def metadata_records(gi_repo, commit):
    """The package records in ``commit``'s metadata, or None when it has
    none (a commit made before they were recorded, or a stage commit)."""
    _, variant, _ = gi_repo.load_commit(commit)
    value = variant.get_child_value(0).lookup_value(PACKAGES_META, None)
    if value is None or value.get_type_string() != PACKAGES_TYPE:
        return None
    return [tuple(row) for row in value.unpack()]


def records_map(records):
    """{package: version} of package records, named as
    ``installed_packages`` names them where that can be told from the
    records: with ``:arch`` when two architectures of a package are in."""
    counts = {}
    for name, _, _, _ in records:
        counts[name] = counts.get(name, 0) + 1
    return {(f"{name}:{arch}" if counts[name] > 1 else name): version
            for name, version, arch, _ in records}


def diff(old, new):
    """The changes (changes.PackageChanges) from package map ``old`` to
    ``new``."""
    return changes.compare(old, new)


def lines(package_changes):
    """The changes as a commit body says them."""
    return [f"Packages: {package_changes.summary()}"] + package_changes.lines()


def commit_packages(gi_repo, commit):
    """The package map of ``commit``'s tree (empty when it has no dpkg)."""
    text = status_text(gi_repo, commit)
    return installed_packages(text) if text is not None else {}


def compare_commits(gi_repo, old, new):
    """The changes from commit ``old`` to ``new``: from their metadata when
    both have the package list (no tree needed), else from their trees."""
    old_records = metadata_records(gi_repo, old)
    new_records = metadata_records(gi_repo, new)
    if old_records is not None and new_records is not None:
        return diff(records_map(old_records), records_map(new_records))
    return diff(commit_packages(gi_repo, old), commit_packages(gi_repo, new))


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
