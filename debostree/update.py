"""Updating lockfiles: recipes + archives -> lockfiles, with a change report.

For every recipe and architecture, fetch and verify the archives' indices
(``archive.py``), resolve the stages in order (``resolve.py``), render the
lockfile (``lockfile.py``) and compare it with the committed one.  Stages
that start from another recipe's stage resolve on top of that stage's state,
so recipes are processed parents first.
"""

import os
import sys
from email.utils import parsedate_to_datetime

from debian import deb822

from . import (archive, bases, debianlayout, files, kinds, lockfile, native,
               proc, resolve)
from .errors import UserError, display_path
from .recipe import is_base_parent


def effective_archives(recipe, by_name):
    """A recipe's archives, inherited through ``from`` when it names none."""
    seen = set()
    current = recipe
    while not current.archives and current.parent:
        if current.name in seen:
            break
        seen.add(current.name)
        current = by_name[current.parent.split("/")[0]]
    return current.archives


def stage_order(recipes):
    """All (recipe, stage) pairs, each after the stage it starts from."""
    by_name = {r.name: r for r in recipes}
    order, done = [], set()

    def visit(recipe, stage):
        key = (recipe.name, stage.name)
        if key in done:
            return
        if stage.parent and not is_base_parent(recipe, stage.parent):
            other_recipe, other_stage = stage.parent.split("/")
            parent_recipe = by_name[other_recipe]
            visit(parent_recipe, parent_recipe.stage(other_stage))
        done.add(key)
        order.append((recipe, stage))

    for recipe in recipes:
        for stage in recipe.stages + recipe.sysext_stages():
            visit(recipe, stage)
    return order


def resolve_all(recipes, mirrors, cache_dir, out=sys.stderr, releases=None,
                remotes=None, pins=None):
    """Resolve every recipe; return ``{(recipe name, arch): lockfile text}``.
    ``releases``, a dict, receives the Date of every Release file used;
    ``pins``, a dict, the base commit (``bases.Pin``) of each derived
    recipe and architecture, pinned from ``remotes`` (bases.read_settings)."""
    by_name = {r.name: r for r in recipes}
    archive_cache = archive.ArchiveCache(os.path.join(cache_dir, "archives"),
                                         mirrors)
    roots = {}
    states = {}
    locked = {}
    pins = {} if pins is None else pins
    base_states = {}
    for recipe in recipes:
        if recipe.base is None:
            continue
        if remotes is None:
            remotes = bases.read_settings()
        for arch in recipe.architectures:
            pinned = bases.pin_base(recipe.base, arch, remotes, cache_dir,
                                    recipe, out)
            packages = bases.base_packages(pinned, pinned.pin.describe())
            state = resolve.StageState(packages)
            states[(recipe.name, bases.BASE_STAGE, arch)] = state
            base_states[(recipe.name, arch)] = state.packages
            pins[(recipe.name, arch)] = pinned.pin
            locked[(recipe.name, arch)] = list(packages)
            print(f"base of {recipe.name} ({arch}): {pinned.pin.describe()}, "
                  f"{len(packages)} packages, signed by "
                  f"{pinned.pin.signed_by[:40]}", file=out, flush=True)
    for recipe, stage in stage_order(recipes):
        for arch in recipe.architectures:
            key = (recipe.name, arch)
            if key not in roots:
                archives = effective_archives(recipe, by_name)
                indices = []
                for arc in archives:
                    try:
                        indices += archive_cache.indices(arc, arch)
                    except UserError as error:
                        keypath = ("archives",) if recipe.archives else ("from",)
                        raise UserError(error.message, path=recipe.path,
                                        line=recipe.source.line(keypath),
                                        key=".".join(keypath),
                                        hint=error.hint)
                print(f"resolving {recipe.name} ({arch})", file=out, flush=True)
                roots[key] = resolve.AptRoot(
                    os.path.join(cache_dir, "apt", f"{recipe.name}.{arch}"),
                    arch, indices, recipe.recommends)
                locked.setdefault(key, [])
            if stage.parent:
                parent = tuple(stage.parent.split("/"))
                state = states[parent + (arch,)]
            else:
                state = resolve.StageState()
            context = (f"{display_path(recipe.path)}:{stage.line}: "
                       f"stage '{stage.name}' ({arch})")
            new_state, installed = kinds.resolve_stage(
                roots[key], stage.for_arch(arch), state, context)
            if key in base_states:
                bases.check_unmoved(base_states[key], installed, context)
            states[(recipe.name, stage.name, arch)] = new_state
            locked[key].extend(installed)
    for (name, arch), packages in locked.items():
        packages.extend(lock_stand_ins(by_name[name], arch, states,
                                       archive_cache, by_name, cache_dir, out))
    if releases is not None:
        releases.update(archive_cache.release_dates())
    return {key: lockfile.render(packages, pins.get(key))
            for key, packages in locked.items()}


def lock_stand_ins(recipe, arch, states, archive_cache, by_name, cache_dir, out):
    """For a foreign recipe, the host-architecture builds of its helper
    packages at the versions its stages install (resolve.resolve_stand_ins),
    locked under the reserved stage name: which host programs may stand in
    for emulated ones then depends on the lockfile alone, not on the host."""
    if not any(kinds.get(s.kind).uses_stand_ins for s in recipe.stages):
        return []
    helpers = {}
    for stage in recipe.stages:  # the last stage's version of each wins
        for pkg in states[(recipe.name, stage.name, arch)].packages.values():
            if (pkg.name in native.HELPER_PACKAGES + (native.LIBC,) or
                    native.is_perl_xs(pkg.stanza)) and pkg.arch == arch:
                helpers[pkg.name] = pkg
    found = []
    for host in debianlayout.STAND_IN_HOSTS:
        if host == arch or native.LIBC not in helpers:
            continue
        indices = [i for arc in effective_archives(recipe, by_name)
                   for i in archive_cache.indices(arc, host)]
        print(f"resolving {recipe.name} ({arch}): stand-ins for {host} hosts",
              file=out, flush=True)
        root = resolve.AptRoot(
            os.path.join(cache_dir, "apt", f"{recipe.name}.{arch}.{host}"),
            host, indices)
        for pkg in resolve.resolve_stand_ins(
                root, helpers.values(), f"{display_path(recipe.path)}: "
                f"stand-ins of {arch} for {host} hosts"):
            pkg.stage = lockfile.STAND_INS_STAGE
            found.append(pkg)
    return found


def host_architecture():
    return proc.run(["dpkg", "--print-architecture"], capture=True).stdout.strip()


RELEASES_FILE = "releases"


def read_release_dates(lockfile_dir):
    """``{(archive, suite): Date}`` the lockfiles were last made from."""
    path = os.path.join(lockfile_dir, RELEASES_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return {(p["Archive"], p["Suite"]): p["Date"]
                    for p in deb822.Deb822.iter_paragraphs(f)
                    if p.get("Archive") and p.get("Suite") and p.get("Date")}
    except FileNotFoundError:
        return {}
    except (UnicodeDecodeError, ValueError) as error:
        raise UserError(f"unreadable: {error}", path=path,
                        hint="restore it from git, or delete it")


def check_release_dates(recorded, fetched, allow_downgrade=False):
    """Refuse a Release older than the one the lockfiles were made from: a
    mirror replaying old (still validly signed) files would downgrade
    packages."""
    for key in sorted(fetched.keys() & recorded.keys()):
        try:
            new = parsedate_to_datetime(fetched[key])
            old = parsedate_to_datetime(recorded[key])
        except (TypeError, ValueError):
            continue
        if new < old and not allow_downgrade:
            raise UserError(
                f"archive '{key[0]}' suite '{key[1]}': the mirror's Release is "
                f"dated {fetched[key]}, older than the {recorded[key]} the "
                "lockfiles were made from; refusing to go back",
                hint="a stale or replayed mirror; if going back is meant, run "
                "tools/update-lockfiles --config build/config.json "
                "--allow-downgrade")


def write_release_dates(lockfile_dir, recorded, fetched):
    merged = {**recorded, **fetched}
    text = "\n".join(f"Archive: {a}\nSuite: {s}\nDate: {d}\n"
                     for (a, s), d in sorted(merged.items()) if d)
    files.write_if_changed(os.path.join(lockfile_dir, RELEASES_FILE), text)


def update_lockfiles(recipes, lockfile_dir, mirrors, cache_dir, check=False,
                     out=sys.stdout, allow_downgrade=False, remotes=None):
    """Rewrite changed lockfiles (or, with ``check``, only report them).

    Returns the number of lockfiles that changed (or would change).  The
    Release dates they were made from go to ``lockfiles/releases``
    (rewritten only with a lockfile, so a night without package changes
    changes nothing), and no Release older than those is accepted.
    """
    fetched = {}
    texts = resolve_all(recipes, mirrors, cache_dir, releases=fetched,
                        remotes=remotes)
    recorded = read_release_dates(lockfile_dir)
    check_release_dates(recorded, fetched, allow_downgrade)
    changed = 0
    for (name, arch), text in sorted(texts.items()):
        path = os.path.join(lockfile_dir, lockfile.lockfile_name(name, arch))
        old_entries = []
        old_text = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old_text = f.read()
            try:
                old_entries = lockfile.parse(old_text, path)
            except UserError:
                old_entries = []
        if old_text == text:
            print(f"{display_path(path)}: up to date", file=out)
            continue
        changed += 1
        new_entries = lockfile.parse(text, path)
        verb = "is stale" if check else ("created" if old_text is None
                                         else "updated")
        pin = lockfile.parse_pin(text, path)
        if pin is None:
            changes = lockfile.compare(old_entries, new_entries)
            print(f"{display_path(path)}: {verb}: {changes.summary()}", file=out)
            for line in changes.lines():
                print(line, file=out)
        else:
            # A derived recipe: what its base brings apart from what its
            # own stages do.
            old_pin = None
            if old_text is not None:
                try:
                    old_pin = lockfile.parse_pin(old_text, path)
                except UserError:
                    pass
            print(f"{display_path(path)}: {verb}", file=out)
            if old_pin is None or old_pin.commit != pin.commit:
                print(f"  base: {old_pin.describe() if old_pin else '(none)'}"
                      f" -> {pin.describe()}", file=out)
            for label, mine in (("base", True), ("layer", False)):
                changes = lockfile.compare(
                    [e for e in old_entries
                     if (e.stage == bases.BASE_STAGE) == mine],
                    [e for e in new_entries
                     if (e.stage == bases.BASE_STAGE) == mine])
                print(f"  {label} packages: {changes.summary()}", file=out)
                for line in changes.lines():
                    print("  " + line, file=out)
        if not check:
            files.write_if_changed(path, text)
    if not check and (changed or not recorded):
        write_release_dates(lockfile_dir, recorded, fetched)
    # Lockfiles whose recipe or architecture is gone are left for the user
    # to delete, but named, since configure ignores them.
    wanted = {lockfile.lockfile_name(n, a) for n, a in texts}
    if os.path.isdir(lockfile_dir):
        for name in sorted(os.listdir(lockfile_dir)):
            if name.endswith(".lock") and name not in wanted:
                print(f"{os.path.join(display_path(lockfile_dir), name)}: no "
                      "recipe uses it any more; delete it", file=out)
    return changed


def check_consistency(recipe, arch, entries, path, inherited=()):
    """Check, without the network, that a lockfile still fits its recipe.

    Every stage of the recipe that installs packages must have its requested
    packages locked in it (or before it), and every locked stage must exist.
    """
    all_stages = recipe.stages + recipe.sysext_stages()
    stage_names = [s.name for s in all_stages]
    archive_names = {a.name for a in effective_archives(recipe, None)} \
        if recipe.archives or not recipe.parent else None
    for entry in entries:
        if entry.stage == bases.BASE_STAGE and recipe.base is not None:
            continue  # the base's, from its own archives
        if archive_names is not None and entry.archive not in archive_names:
            raise UserError(f"package {entry.name} is locked from archive "
                            f"'{entry.archive}', which the recipe does not "
                            "list", path=path, line=entry.line,
                            hint="the recipe changed: run 'ninja update-lockfiles'")
        if entry.stage not in stage_names and \
                entry.stage != lockfile.STAND_INS_STAGE:
            raise UserError(f"package {entry.name} is locked for stage "
                            f"'{entry.stage}', which the recipe does not have",
                            path=path, line=entry.line,
                            hint="the recipe changed: run 'ninja update-lockfiles'")
    locked = {}
    for entry in list(entries) + list(inherited):
        if entry.stage == lockfile.STAND_INS_STAGE:
            continue  # never what a stage installs
        locked.setdefault(entry.name, []).append(entry)
        for item in (entry.get("Provides") or "").split(","):
            provided = item.strip().split(" ")[0]
            if provided:
                locked.setdefault(provided, []).append(entry)
    for index, stage in enumerate(all_stages):
        requests = kinds.get(stage.kind).requests(stage.for_arch(arch).options)
        for request in requests:
            candidates = [e for e in locked.get(request.name, [])
                          if not request.version or e.version == request.version]
            if not candidates:
                raise UserError(
                    f"stage '{stage.name}' requests '{request}', which is not "
                    f"in the lockfile {display_path(path)}",
                    path=recipe.path, line=stage.line,
                    key=f"stages[{index}].{stage.kind}"
                    if index < len(recipe.stages) else "sysexts",
                    hint="run 'ninja update-lockfiles' and commit the result")
