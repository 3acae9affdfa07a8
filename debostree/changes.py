"""What changed between two sets of packages, in one model for both places
that say it: a lockfile refresh (update-lockfiles: versions, and the .deb
itself) and a branch's history (commit-branch and tools/package-diff: the
installed versions of two commits)."""

from dataclasses import dataclass, field


@dataclass
class PackageChanges:
    added: list = field(default_factory=list)    # [(name, version)]
    removed: list = field(default_factory=list)  # [(name, version)]
    changed: list = field(default_factory=list)  # [(name, old, new)], either way
    rebuilt: list = field(default_factory=list)  # [(name, version)]: same
    #                                              version, another file

    def __bool__(self):
        return bool(self.added or self.removed or self.changed or self.rebuilt)

    def summary(self):
        return (f"{len(self.added)} added, {len(self.removed)} removed, "
                f"{len(self.changed)} changed"
                + (f", {len(self.rebuilt)} rebuilt" if self.rebuilt else ""))

    def lines(self):
        return ([f"  + {name} {version}" for name, version in self.added]
                + [f"  - {name} {version}" for name, version in self.removed]
                + [f"  ~ {name} {old} -> {new}" for name, old, new in self.changed]
                + [f"  ! {name} {version} (same version, new file)"
                   for name, version in self.rebuilt])


def compare(old, new):
    """The changes from ``old`` to ``new``: ``{name: version}``, or
    ``{name: (version, file)}`` where the file (its hash) counts too."""
    def split(value):
        return value if isinstance(value, tuple) else (value, None)
    old = {name: split(value) for name, value in old.items()}
    new = {name: split(value) for name, value in new.items()}
    changes = PackageChanges()
    for name in sorted(new.keys() - old.keys()):
        changes.added.append((name, new[name][0]))
    for name in sorted(old.keys() - new.keys()):
        changes.removed.append((name, old[name][0]))
    for name in sorted(old.keys() & new.keys()):
        (old_version, old_file), (new_version, new_file) = old[name], new[name]
        if old_version != new_version:
            changes.changed.append((name, old_version, new_version))
        elif old_file != new_file:
            changes.rebuilt.append((name, new_version))
    return changes
