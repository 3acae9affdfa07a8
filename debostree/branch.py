"""Recipe branches: the final stage's tree as a commit on the recipe's ref.

A new commit is added, with the branch's previous commit as parent, only
when the tree differs from it.  It carries a version (the recipe's
``version``, or ``YYYYMMDD.N`` with N counting builds of that day), a body
listing the package changes against the parent (so ``ostree log`` reads as
a changelog), and metadata naming the lockfile's SHA256 and the source
revision (``git describe`` of the checkout).

The previous commit is the local repository's branch, or the published
repository's (``build/publish``, restored from a CI cache or pulled with
``tools/pull-published``) when the local one is missing or not its
descendant: the published history is the one devices follow.
"""

import hashlib
import json
import time

from . import bases, history, ostree, proc, publish
from .changes import PackageChanges
from .project import load_config
from .files import write_if_changed
from .stagerun import read_commit_file


def source_revision(top):
    # safe.directory: another user's checkout (git refuses to read it
    # otherwise) must give the same revision, hence the same commits.
    result = proc.run(["git", "-c", f"safe.directory={top}", "-C", top,
                       "describe", "--always", "--dirty", "--abbrev=12"],
                      capture=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def next_version(previous_version, timestamp):
    day = time.strftime("%Y%m%d", time.gmtime(timestamp))
    if previous_version and previous_version.startswith(day + "."):
        try:
            return f"{day}.{int(previous_version.split('.', 1)[1]) + 1}"
        except ValueError:
            pass
    return f"{day}.0"


def commit_branch(config_path, options_path, stage_path, out_path):
    config = load_config(config_path)
    with open(options_path, encoding="utf-8") as f:
        opts = json.load(f)
    stage_commit = read_commit_file(stage_path)
    repo = ostree.Repo(config.repo)
    gi_repo = repo.open_gi()
    branch = opts["branch"]
    previous = parent_commit(config, repo, gi_repo, branch)
    _, stage_root, _ = gi_repo.read_commit(stage_commit, None)
    if previous:
        _, prev_root, _ = gi_repo.read_commit(previous, None)
        if prev_root.tree_get_contents_checksum() == stage_root.tree_get_contents_checksum() \
                and prev_root.tree_get_metadata_checksum() == \
                stage_root.tree_get_metadata_checksum():
            if repo.rev_parse(branch) != previous:  # continued from publish
                gi_repo.set_ref_immediate(None, branch, previous, None)
            write_if_changed(out_path, previous + "\n")
            return previous
    with open(opts["lockfile"], "rb") as f:
        lock_bytes = f.read()
    lock_digest = hashlib.sha256(lock_bytes).hexdigest()
    timestamp = opts.get("commit_timestamp") or int(time.time())
    prev_version = None
    if previous:
        _, variant, _ = gi_repo.load_commit(previous)
        prev_version = variant.get_child_value(0).unpack().get("version")
    version = opts.get("version") or next_version(prev_version, timestamp)
    if opts.get("version") and prev_version == version:
        print(f"{branch}: warning: version {version} is also the previous "
              "commit's; raise 'version' in the recipe")
    status = history.status_text(gi_repo, stage_commit)
    records = history.package_records(status) if status is not None else []
    changes = history.diff(history.commit_packages(gi_repo, previous)
                           if previous else {},
                           history.installed_packages(status or ""))
    base = opts.get("base")
    if not previous:
        body = f"First commit: {len(changes.added)} packages"
    elif base:
        body = _layered_body(gi_repo, previous, base, changes)
    elif changes:
        body = "\n".join(history.lines(changes))
    else:
        body = "Packages: unchanged (files or settings changed)"
    from gi.repository import GLib
    metadata = {}
    if base:
        metadata[bases.BASE_META] = " ".join(
            (base["remote"], base["ref"], base["commit"], base["version"]))
    commit, _ = ostree.commit_tree_of(
        config.repo, stage_commit, f"{opts['recipe']} {version}",
        branch=branch, parent=previous, timestamp=timestamp, body=body,
        metadata={"version": version,
                  "debostree.lockfile-sha256": lock_digest,
                  "debostree.source": source_revision(config.top),
                  "debostree.recipe": opts["recipe"],
                  # What it was built from, for recipes built on it.
                  bases.LOCKFILE_META: lock_bytes.decode("utf-8"),
                  history.PACKAGES_META: GLib.Variant(history.PACKAGES_TYPE,
                                                      records), **metadata})
    write_if_changed(out_path, commit + "\n")
    print(f"{branch}: {commit} (version {version}; "
          f"{changes.summary() if previous else 'first commit'})")
    return commit


def _layered_body(gi_repo, previous, base, changes):
    """A derived branch's changelog: the base's move and its packages
    apart from the layer's own."""
    _, variant, _ = gi_repo.load_commit(previous)
    before = variant.get_child_value(0).lookup_value(bases.BASE_META, None)
    before = before.get_string().split() if before is not None else None
    base_names = set()
    for commit in (base["commit"], before[2] if before else None):
        try:
            records = history.metadata_records(gi_repo, commit) \
                if commit else None
        except Exception:  # a base commit no longer in this repository
            records = None
        base_names.update(history.records_map(records or []))
    lines = []
    if before is None or before[2] != base["commit"]:
        lines.append(f"Base: {base['ref']} "
                     f"{before[3] if before else '(none)'} -> "
                     f"{base['version']} ({base['commit'][:12]})")
    for label, mine in (("Base packages", True), ("Layer packages", False)):
        part = PackageChanges(
            [a for a in changes.added if (a[0] in base_names) == mine],
            [r for r in changes.removed if (r[0] in base_names) == mine],
            [c for c in changes.changed if (c[0] in base_names) == mine])
        if part:
            lines.append(f"{label}: {part.summary()}")
            lines += part.lines()
    return "\n".join(lines) or "Packages: unchanged (files or settings changed)"


def parent_commit(config, repo, gi_repo, branch):
    """The commit a new one on ``branch`` follows (None: the first)."""
    local = repo.rev_parse(branch)
    published_repo = ostree.Repo(publish.repo_path(config))
    if not published_repo.exists():
        return local
    published = published_repo.rev_parse(branch)
    if not published or published == local:
        return local
    if local and ostree.is_ancestor(gi_repo, published, local):
        return local
    # The published head is the history devices follow: continue it.
    # Not --untrusted: publishing checked each of these objects (and see
    # image.py for what it does from an archive repository).
    proc.run(["ostree", "pull-local", f"--repo={config.repo}",
              published_repo.path, published])
    print(f"{branch}: continuing the published history at {published}")
    return published
