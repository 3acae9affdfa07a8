"""The 'bootstrap' stage kind: a Debian tree from nothing, as mmdebstrap
makes it.

The recipe names a variant (mmdebstrap's) and extra packages.  The resolver
follows mmdebstrap's two steps (the Essential set, then the variant's
priority set, apt and the extra packages).  The stage composes the
packages' imported trees into one unpacked tree (``base``), runs the
preinsts and ``dpkg --configure`` in the order apt and dpkg would
(dpkgorder.py, planned on the host by an edge of its own,
tools/order-packages, beside the imports), and may let host programs
stand in for a foreign target's (native.py).
"""

import json
import os
import shlex
import shutil
import stat
from dataclasses import dataclass, field

from .. import debianlayout, debimport, dpkgorder, fetch, lockfile, manifest
from .. import native, ostree, resolve
from ..errors import UserError
from ..recipefields import check_keys, describe, package_requests, shown
from .base import (NOT_IN_KEY, Kind, PackageFile, StageOptions,
                   package_requests_for_arch)

# mmdebstrap's variants: what a bootstrap stage starts from before its
# extra packages.  "minbase" is an alias of "required" there, too.
VARIANTS = ("custom", "essential", "apt", "required", "minbase", "important",
            "standard")


@dataclass(frozen=True)
class BootstrapSpec:
    variant: str                    # one of VARIANTS, "minbase" as "required"
    packages: tuple = ()            # PackageRequest, beyond the variant's


@dataclass(kw_only=True)
class BootstrapOptions(StageOptions):
    variant: str
    requests: list                  # what apt is asked (for dpkgorder)
    packages: list                  # PackageFile, in install order
    # The packages' import summaries (their SHA256s are in ``packages``).
    summaries: list = field(metadata=NOT_IN_KEY)
    merged_usr_dirs: list           # links to lay out (up to Debian 12)
    # The steps (StageFiles.plan), planned apart from ``packages``.
    plan: str = field(default=None, metadata=NOT_IN_KEY)

    NESTED = {"packages": PackageFile}


class Bootstrap(Kind):
    name = "bootstrap"
    Options = BootstrapOptions
    uses_stand_ins = True

    def validate(self, src, keypath, value, context):
        if not isinstance(value, dict):
            raise src.error(keypath, f"expected a mapping with 'variant' and "
                            f"'packages', got {describe(value)}")
        check_keys(src, keypath, value, {"variant", "packages"})
        variant = value.get("variant", "minbase")
        if variant not in VARIANTS:
            raise src.error(keypath + ("variant",),
                            f"unknown variant '{shown(variant)}'",
                            hint="one of " + ", ".join(VARIANTS))
        if variant == "minbase":
            variant = "required"
        packages = package_requests(src, keypath + ("packages",),
                                    value.get("packages", []),
                                    context.architectures, allow_empty=True)
        if variant == "custom" and not packages:
            raise src.error(keypath, "variant 'custom' needs a list of packages")
        return BootstrapSpec(variant, packages)

    def for_arch(self, spec, arch):
        return package_requests_for_arch(spec, arch)

    def requests(self, spec):
        return spec.packages

    def resolve(self, root, spec, state, context):
        return resolve.resolve_bootstrap(root, spec.variant, spec.packages,
                                         state, context)

    def options(self, graph, recipe, arch, stage, entries):
        ordered = lockfile.install_order(entries)
        summaries = [graph.import_edge(e) for e in ordered]
        plan = graph.plan_edge(recipe, arch, stage,
                               [graph.fetch_edge(e) for e in ordered])
        return {
            "plan": graph.absolute(plan),
            "merged_usr_dirs": list(debianlayout.merged_usr_dirs(arch)),
            "packages": [PackageFile.of(e, fetch.pool_path(graph.config.pool,
                                                           e.sha256),
                                        with_dpkg_name=True)
                         for e in ordered],
            # What apt is asked, so the maintainer scripts run in its order.
            "variant": stage.options.variant,
            "requests": [str(r) for r in stage.options.packages],
            "summaries": [graph.absolute(p) for p in summaries],
        }, summaries + [plan]

    def plan(self, run):
        # Planned by its own edge (tools/order-packages) while the packages
        # were imported.
        if not run.opts.plan:
            raise UserError(f"stage {run.opts.label}: no plan was given",
                            hint="run ./configure again")
        shutil.copyfile(run.opts.plan, run.files.plan)

    def base(self, run):
        return compose(run)

    def copy_first(self, base_manifest):
        # The conffiles dpkg will move into place keep their inode.
        return [p for p in base_manifest if p.endswith(".dpkg-new")]

    def script(self, opts, work, target):
        return preinst_script(opts, work, target)

    def stand_ins(self, config, opts, target, triplet, host_root):
        return native.stand_ins(target, config.host_arch, triplet,
                                host_root=host_root)


def write_plan(opts, apt_dir, out):
    """The bootstrap's steps in apt's order (dpkgorder.plan), as JSON in
    ``out``; ``apt_dir``: apt's private directory for it."""
    steps = dpkgorder.plan(opts.packages, opts.arch, opts.variant,
                           opts.requests, apt_dir)
    with open(out, "w") as f:
        json.dump(steps, f)


def read_steps(work):
    with open(work.plan, encoding="utf-8") as f:
        return json.load(f)


def compose(run):
    """Merge the packages' commits into an unpacked tree (metadata only):
    ``(commit, manifest)``."""
    opts = run.opts
    summaries = [debimport.load_summary(p) for p in opts.summaries]
    # dpkg registers trigger interests as it unpacks: in the plan's order.
    unpacked = [name for kind, args in read_steps(run.files)
                if kind == "preinst" for name in args]
    rank = {name: i for i, name in enumerate(unpacked)}
    summaries.sort(key=lambda s: rank.get(s["dpkg_name"], len(rank)))
    skel = run.files.skeleton
    entries = {}

    def add_dir(path, mode=0o755):
        os.makedirs(skel + path, exist_ok=True)
        os.chmod(skel + path, mode)
        entries[path] = manifest.Entry(path, stat.S_IFDIR | mode)

    add_dir("/")
    add_dir("/usr")
    # Packages that ship the merged-/usr links themselves (base-files
    # since Debian 13) decide which there are, as under dpkg.
    shipped = any(s.get("merged_usr_links") for s in summaries)
    for name in [] if shipped else opts.merged_usr_dirs:
        add_dir(f"/usr/{name}")
        os.symlink(f"usr/{name}", skel + "/" + name)
        entries["/" + name] = manifest.Entry("/" + name, stat.S_IFLNK | 0o777,
                                             target=f"usr/{name}")
    for path in SKELETON_DIRS:
        add_dir(path, 0o1777 if path == "/tmp" else 0o755)

    def add_file(path, text, mode=0o644):
        with open(skel + path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(skel + path, mode)
        entries[path] = manifest.Entry(path, stat.S_IFREG | mode)

    for path, text in dpkg_database(summaries, opts.arch).items():
        add_file(path, text)
    # The skeleton is committed on its own: --owner-uid applies to every
    # tree of a commit, and the packages' trees keep their tar owners.
    skeleton = run.repo.commit_trees(
        f"tmp/{opts.ref}/skeleton", [f"dir={skel}"],
        f"{opts.label}: skeleton", log=run.log,
        extra=["--owner-uid=0", "--owner-gid=0"])
    trees = [skeleton]
    for summary in summaries:
        trees.append(ostree.package_ref(summary['sha256'], 'data'))
        trees.append(ostree.package_ref(summary['sha256'], 'info'))
        for line in summary["manifest"]:
            entry = manifest.Entry.from_json(line)
            entries[entry.path] = entry
        for line in summary["info_manifest"]:
            entry = manifest.Entry.from_json(line)
            entries[entry.path] = entry
    # The skeleton's directories stay as they are under packages' ones.
    commit = ostree.merge_commits(
        run.repo.path, f"tmp/{opts.ref}/unpacked", trees,
        f"{opts.label}: packages unpacked")
    run.note(f"merged {len(trees)} commits into {commit}")
    return commit, entries


def dpkg_database(summaries, arch):
    """dpkg's database files as dpkg leaves them after unpacking the
    packages (``summaries``, in unpack order): ``{path: text}``."""
    status = []
    triggers_file = []   # /var/lib/dpkg/triggers/File: "PATH PKG[/noawait]"
    interests = {}       # named triggers: name -> ["PKG[/noawait]"]
    for summary in summaries:
        # What dpkg registers when it unpacks a package with interests.
        for line in summary.get("triggers", "").splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) != 2 or not words[0].startswith("interest"):
                continue
            who = summary["dpkg_name"] + (
                "/noawait" if words[0] == "interest-noawait" else "")
            if words[1].startswith("/"):
                triggers_file.append(f"{words[1]} {who}\n")
            else:
                interests.setdefault(words[1], []).append(who + "\n")
        control = summary.get("control_text", summary["control"]) \
            .rstrip("\n").split("\n")
        # Unpacked but not yet selected: "dpkg --configure --pending"
        # leaves it alone until the bootstrap's steps reach it (the
        # selection is set as its preinst runs, as dpkg's unpack does).
        lines = [control[0], "Status: deinstall ok unpacked"] + control[1:]
        if summary["conffiles"]:
            lines.append("Conffiles:")
            flags = summary.get("conffile_flags", {})
            lines += [f" {path} newconffile" + (f" {flags[path]}" if path in flags
                                                else "")
                      for path, _ in summary["conffiles"]]
        status.append("\n".join(lines) + "\n")
    files = {"/var/lib/dpkg/status": "\n".join(status),
             "/var/lib/dpkg/diversions": "",
             "/var/lib/dpkg/arch": arch + "\n",
             "/var/lib/dpkg/triggers/File": "".join(triggers_file),
             "/var/lib/dpkg/triggers/Unincorp": ""}
    for name, lines in interests.items():
        files[f"/var/lib/dpkg/triggers/{name}"] = "".join(lines)
    return files


# What dpkg and apt expect before the first package is unpacked.
SKELETON_DIRS = (
    "/var", "/var/lib", "/var/lib/dpkg", "/var/lib/dpkg/info",
    "/var/lib/dpkg/updates", "/var/lib/dpkg/alternatives",
    "/var/lib/dpkg/triggers", "/var/lib/dpkg/parts",
    "/etc", "/etc/apt", "/etc/apt/apt.conf.d",
    "/etc/apt/sources.list.d", "/etc/apt/preferences.d",
    "/etc/apt/trusted.gpg.d", "/var/cache", "/var/cache/apt",
    "/var/cache/apt/archives", "/var/cache/apt/archives/partial",
    "/var/lib/apt", "/var/lib/apt/lists",
    "/var/lib/apt/lists/partial", "/var/log", "/tmp")


def preinst_script(opts, work, target):
    """Each preinst runs as dpkg runs it: from /var/lib/dpkg/tmp.ci beside
    the package's control files (debconf reads its templates and the
    package name there), before "dpkg --configure -a" does the rest.  The
    steps follow apt's and dpkg's order (dpkgorder.py, planned on the host
    before the stage ran); "dpkg --configure -a" settles anything left."""
    controls = os.path.join(work.run, "control")
    os.makedirs(controls)
    summaries = {}
    for path in opts.summaries:
        summary = debimport.load_summary(path)
        summaries[summary["sha256"]] = summary
    by_name = {pkg.dpkg_name: pkg for pkg in opts.packages}
    lines = ["DPKG_RUNNING_VERSION=$(dpkg-query -W -f='${Version}' dpkg)"]
    for kind, args in read_steps(work):
        if kind == "dpkg":
            lines.append(shlex.join(["dpkg"] + args))
            continue
        if args:
            lines.append("printf '%s install\\n' " + shlex.join(args)
                         + " | dpkg --set-selections")
        for pkg in (by_name[name] for name in args):
            info = f"/var/lib/dpkg/info/{pkg.dpkg_name}"
            if not os.path.exists(target + info + ".preinst"):
                continue
            with open(os.path.join(controls, pkg.sha256), "w") as f:
                f.write(summaries[pkg.sha256]["control"])
            lines += [
                "rm -rf /var/lib/dpkg/tmp.ci && mkdir /var/lib/dpkg/tmp.ci",
                f"cp /run/debostree/control/{pkg.sha256} "
                "/var/lib/dpkg/tmp.ci/control",
                f"for f in {shlex.quote(info)}.*; do case ${{f##*.}} in "
                "list|md5sums) ;; *) cp -p \"$f\" "
                "/var/lib/dpkg/tmp.ci/${f##*.} ;; esac; done",
                f"DPKG_MAINTSCRIPT_PACKAGE={shlex.quote(pkg.name)} "
                f"DPKG_MAINTSCRIPT_ARCH={shlex.quote(pkg.arch)} "
                f"DPKG_MAINTSCRIPT_NAME=preinst DPKG_ADMINDIR=/var/lib/dpkg "
                f"DPKG_ROOT= DPKG_RUNNING_VERSION=$DPKG_RUNNING_VERSION "
                f"DPKG_MAINTSCRIPT_PACKAGE_REFCOUNT=1 "
                f"/var/lib/dpkg/tmp.ci/preinst install"]
        lines.append("rm -rf /var/lib/dpkg/tmp.ci")
    lines.append("dpkg --configure -a")
    return lines


KIND = Bootstrap()
