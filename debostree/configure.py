"""What ./configure does: validate all inputs, then write build.ninja.

Nothing is written until every recipe and lockfile has been read and
checked, so bad input leaves the previous build.ninja and build directory as
they were.
"""

import os
import sys

from . import (bases, files, graph, lockfile, mirrors, ninja, publish,
               recipe, stagecache, update)
from .errors import UserError, display_path
from .project import TOP, BuildConfig


def load_locks(recipes, lockfile_dir):
    """Read and check the lockfile of every recipe and architecture.

    Returns ``{(recipe, arch): (path, entries or None)}`` and
    ``{(recipe, arch): problem}`` for the lockfiles that are missing or no
    longer match their recipe: those recipes' targets fail with the problem,
    while 'ninja update-lockfiles' (the fix) still works.
    """
    by_name = {r.name: r for r in recipes}
    locks = {}
    problems = {}
    for rec in recipes:
        for arch in rec.architectures:
            path = os.path.join(lockfile_dir, lockfile.lockfile_name(rec.name, arch))
            if os.path.exists(path):
                locks[(rec.name, arch)] = (path, lockfile.read(path))
            else:
                locks[(rec.name, arch)] = (path, None)
                problems[(rec.name, arch)] = (
                    f"{display_path(path)}: missing; run 'ninja "
                    "update-lockfiles' and commit it")
    for rec in recipes:
        for arch in rec.architectures:
            path, entries = locks[(rec.name, arch)]
            if entries is None:
                continue
            inherited = []
            parent = None if rec.base else rec.parent
            seen = set()
            while parent and parent not in seen:
                seen.add(parent)
                other = by_name[parent.split("/")[0]]
                other_entries = locks.get((other.name, arch), (None, None))[1]
                inherited += other_entries or []
                parent = other.parent
            try:
                check_pin(rec, arch, path)
                update.check_consistency(rec, arch, entries, path, inherited)
            except UserError as error:
                locks[(rec.name, arch)] = (path, None)
                problems[(rec.name, arch)] = error.format()
    return locks, problems


def check_pin(rec, arch, path):
    """A derived recipe's lockfile pins a commit of the branch the recipe
    names (and only a derived recipe's does)."""
    pin = lockfile.read_pin(path)
    if rec.base is None and pin is None:
        return
    if rec.base is None:
        raise UserError(f"the lockfile pins a base ({pin.describe()}), the "
                        "recipe has none", path=path, line=pin.line,
                        hint="the recipe changed: run 'ninja update-lockfiles'")
    wanted = (rec.base.remote, rec.base.ref_for(arch))
    if pin is None or (pin.remote, pin.ref) != wanted:
        raise UserError(f"the recipe's base is {wanted[0]}:{wanted[1]}, the "
                        "lockfile pins " + (pin.describe() if pin else
                                            "none"), path=path,
                        hint="the recipe changed: run 'ninja update-lockfiles'")


def source_date_epoch_problem(environ=os.environ):
    """SOURCE_DATE_EPOCH, when set, must be a number of seconds."""
    value = environ.get("SOURCE_DATE_EPOCH")
    if value is not None and value != "" and \
            not (value.isascii() and value.isdigit() and len(value) <= 12):
        raise UserError(f"the environment's SOURCE_DATE_EPOCH={value!r} is not "
                        "a number of seconds since 1970",
                        hint="set it to an integer (git log -1 --format=%ct) "
                        "or unset it")


def configure(args, argv):
    top = TOP
    recipes_dir = os.path.abspath(args.recipes or os.path.join(top, "recipes"))
    lockfile_dir = os.path.abspath(args.lockfiles or
                                   os.path.join(top, "lockfiles"))
    builddir = os.path.abspath(args.builddir)
    source_date_epoch_problem()
    recipes = recipe.load_recipes(recipes_dir)
    if not recipes:
        raise UserError("no recipes found", path=recipes_dir,
                        hint="add a RECIPE.yaml file")
    locks, lock_problems = load_locks(recipes, lockfile_dir)
    mirror_config = mirrors.Mirrors(cli=args.mirror)
    by_name = {r.name: r for r in recipes}
    archives = {}
    for rec in recipes:
        for arc in update.effective_archives(rec, by_name):
            archives.setdefault(arc.name, arc)
    try:
        mirror_map = mirror_config.as_dict(archives.values())
    except UserError as error:
        raise UserError(error.message, hint=error.hint)
    remotes = {}
    derived = [rec for rec in recipes if rec.base is not None]
    if derived:
        settings = bases.read_settings()
        for rec in derived:
            remotes[rec.base.remote] = bases.settings_of(
                settings, rec.base.remote, rec)
    pool = os.path.abspath(args.pool) if args.pool else os.path.join(builddir, "pool")
    config = BuildConfig(top=top, builddir=builddir, pool=pool,
                         recipes=recipes_dir, lockfiles=lockfile_dir,
                         mirrors=mirror_map, python=sys.executable,
                         host_arch=update.host_architecture(),
                         publish=publish.read_settings(),
                         stage_cache=stagecache.read_settings(
                             getattr(args, "cache", None),
                             getattr(args, "cache_push", None)),
                         native_helpers=getattr(args, "native_helpers", True),
                         remotes=remotes)
    # ninja runs the regeneration in the directory of build.ninja, which is
    # where configure runs, so the arguments keep their meaning there.
    configure_args = list(argv)
    builder = graph.GraphBuilder(config, recipes, locks, configure_args,
                                 lock_problems)
    text = ninja.render(builder.build(), os.path.join(top, "build.ninja.in"))
    # Nothing is written before everything is known to be good.
    builder.flush()
    os.makedirs(lockfile_dir, exist_ok=True)
    config.save()
    # Always rewritten: ninja reruns a generator whose output is older than
    # its inputs.
    files.write_atomically(os.path.join(os.getcwd(), "build.ninja"), text)
    for key in sorted(lock_problems):
        print(f"configure: warning: {lock_problems[key]}", file=sys.stderr)
    print(f"configure: {len(recipes)} recipes, "
          f"{sum(len(e or []) for _, e in locks.values())} locked packages; "
          "wrote build.ninja", file=sys.stderr)
