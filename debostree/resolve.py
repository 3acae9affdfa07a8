"""Resolution: package requests -> the exact set apt would install.

Resolution runs apt's own solver (libapt through python-apt) on the host,
against a private apt directory that holds only the verified Packages indices
from ``archive.py`` and a dpkg status file describing what earlier stages
installed.  No chroot, no root and no network are involved, and because it is
apt's solver the answer is what ``apt-get install`` would do on the image:
alternatives, virtual packages, versioned and architecture-qualified
relations, Multi-Arch, Pre-Depends, Conflicts and Breaks, and the newest
candidate across several suites.

A recipe's stages resolve in order: a bootstrap stage follows mmdebstrap's
two steps (the Essential set first, then the variant's priority set, apt and
the extra packages on top of it); an ``install`` stage resolves on top of the
state its parent left; a ``remove`` stage takes packages (and whatever depends
on them) out of that state.  The host's own apt configuration is never read.
"""

import os
import shutil
from dataclasses import dataclass

from .errors import UserError
from .recipefields import PackageRequest

DEP_TYPES = ("PreDepends", "Depends")

# apt's cache flags the package "apt" Essential (pkgCacheGen::ForceEssential,
# "apt" by default) even though no archive says so.  mmdebstrap clears that
# with "," for every variant but 'apt', so that ?essential is the archive's
# Essential: yes set; its 'apt' variant keeps apt's default and takes the
# Essential set plus apt from an upgrade of an empty system.
NO_FORCED_ESSENTIAL = ","
APT_DEFAULT_FORCED_ESSENTIAL = "apt"


def private_apt_conf(directory, arch, recommends=False,
                     force_essential=NO_FORCED_ESSENTIAL, dpkg=None):
    """apt's configuration for a private directory: ``sources.list``,
    ``status``, ``lists/`` and ``cache/`` in it, nothing of the host's
    configuration read.  ``force_essential`` None keeps apt's own default
    (apt itself counted Essential); ``dpkg`` replaces the dpkg it would call."""
    d = directory
    lines = [
        f'Dir "{d}/";',
        f'Dir::Etc "{d}/";',
        f'Dir::Etc::main "{d}/apt.conf";',
        f'Dir::Etc::parts "{d}/empty.d/";',
        f'Dir::Etc::sourcelist "{d}/sources.list";',
        f'Dir::Etc::sourceparts "{d}/empty.d/";',
        f'Dir::Etc::preferences "{d}/preferences";',
        f'Dir::Etc::preferencesparts "{d}/empty.d/";',
        f'Dir::Etc::trusted "{d}/trusted.gpg";',
        f'Dir::Etc::trustedparts "{d}/empty.d/";',
        f'Dir::State "{d}/";',
        f'Dir::State::lists "{d}/lists/";',
        f'Dir::State::status "{d}/status";',
        f'Dir::State::extended_states "{d}/extended_states";',
        f'Dir::Cache "{d}/cache/";',
        'Dir::Cache::pkgcache "";',
        'Dir::Cache::srcpkgcache "";',
        f'Dir::Log "{d}/log/";',
    ]
    if dpkg:
        lines.append(f'Dir::Bin::dpkg "{dpkg}";')
    if force_essential is not None:
        lines.append(f'pkgCacheGen::ForceEssential "{force_essential}";')
    lines += [
        f'APT::Architecture "{arch}";',
        f'APT::Architectures {{ "{arch}"; }};',
        f'APT::Install-Recommends "{str(recommends).lower()}";',
        'APT::Install-Suggests "false";',
        'Acquire::Languages "none";',
        'Debug::NoLocking "true";',
    ]
    return "\n".join(lines) + "\n"


@dataclass
class LockedPackage:
    """One resolved package: its index stanza and where it came from."""
    name: str
    arch: str
    version: str
    archive: str
    suite: str
    stanza: dict    # the archive's Packages stanza (field -> value)
    stage: str = None

    @property
    def key(self):
        return (self.name, self.arch)


def _apt_pkg():
    try:
        import apt_pkg
    except ImportError:
        raise UserError("python3-apt is not installed",
                        hint="run tools/setup-host, or apt-get install python3-apt")
    return apt_pkg


class AptRoot:
    """A private apt directory: config, sources, lists and a status file."""

    def __init__(self, directory, arch, indices, recommends=False):
        apt_pkg = _apt_pkg()
        self.dir = os.path.abspath(directory)
        self.arch = arch
        self.recommends = recommends
        self.lists = os.path.join(self.dir, "lists")
        self.status = os.path.join(self.dir, "status")
        if os.path.exists(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.lists)
        os.makedirs(os.path.join(self.dir, "empty.d"))
        os.makedirs(os.path.join(self.dir, "cache", "archives", "partial"))
        # list file name -> (archive, suite); its order is the recipe's order
        # of archives and suites, which breaks ties between identical versions.
        self.origin_of = {}
        self.rank_of = {}
        sources = []
        seen_suites = set()
        for rank, index in enumerate(indices):
            uri = f"file:/debostree/{index.archive}"
            dist = f"{uri}/dists/{index.suite}"
            packages_name = apt_pkg.uri_to_filename(
                f"{dist}/{index.component}/binary-{index.arch}/Packages")
            os.symlink(index.path, os.path.join(self.lists, packages_name))
            self.origin_of[packages_name] = (index.archive, index.suite)
            self.rank_of[packages_name] = rank
            if (index.archive, index.suite) not in seen_suites:
                seen_suites.add((index.archive, index.suite))
                os.symlink(index.release_path, os.path.join(
                    self.lists, apt_pkg.uri_to_filename(f"{dist}/Release")))
                components = sorted({i.component for i in indices
                                     if (i.archive, i.suite) ==
                                     (index.archive, index.suite)})
                sources.append(f"deb [trusted=yes arch={arch}] {uri} "
                               f"{index.suite} {' '.join(components)}\n")
        with open(os.path.join(self.dir, "sources.list"), "w") as f:
            f.writelines(sources)
        self.write_status([])
        self.config_file = os.path.join(self.dir, "apt.conf")
        with open(self.config_file, "w") as f:
            f.write(self.apt_conf())

    def apt_conf(self):
        return private_apt_conf(self.dir, self.arch, self.recommends,
                                dpkg="/bin/false") + \
            'APT::Get::Show-Versions "true";\n'

    def env(self):
        """Environment for running apt-get on this root (for comparisons)."""
        return {**os.environ, "APT_CONFIG": self.config_file, "LC_ALL": "C"}

    def write_status(self, packages):
        """Describe ``packages`` (LockedPackage) as installed in dpkg's status."""
        with open(self.status, "w", encoding="utf-8") as f:
            for pkg in sorted(packages, key=lambda p: p.key):
                from debian import deb822  # here: stages load this module
                para = deb822.Deb822()
                para["Package"] = pkg.name
                para["Status"] = "install ok installed"
                for field, value in pkg.stanza.items():
                    if field in ("Package", "Filename", "Size", "SHA256",
                                 "MD5sum", "Description-md5") or \
                            field.startswith("Lock-"):
                        continue
                    para[field] = value
                f.write(str(para) + "\n")

    def open(self, force_essential=None):
        """Load the apt cache of this root; returns (cache, depcache, records).

        ``force_essential`` overrides pkgCacheGen::ForceEssential (the
        configuration file has NO_FORCED_ESSENTIAL) for this cache.
        """
        apt_pkg = _apt_pkg()
        config = apt_pkg.config
        # The configuration is global to the process: start from a clean one
        # so that nothing of the host's or of a previous root leaks in.
        for key in list(config.keys()):
            if "::" not in key:
                config.clear(key)
        os.environ["APT_CONFIG"] = self.config_file
        apt_pkg.init_config()
        if force_essential is not None:
            config.set("pkgCacheGen::ForceEssential", force_essential)
        apt_pkg.init_system()
        cache = apt_pkg.Cache(None)
        depcache = apt_pkg.DepCache(cache)
        records = apt_pkg.PackageRecords(cache)
        return cache, depcache, records


class Resolution:
    """One resolution step: requests marked on a cache of a given state."""

    def __init__(self, root, installed, context, force_essential=None):
        self.apt_pkg = _apt_pkg()
        self.root = root
        self.context = context  # for error messages: "recipe stage 'x'"
        root.write_status(installed)
        self.cache, self.depcache, self.records = root.open(force_essential)
        self.requested = []

    # -- marking ---------------------------------------------------------
    def lookup(self, request):
        """The package for a request (resolving purely virtual names)."""
        name = request.name if not request.arch else f"{request.name}:{request.arch}"
        try:
            pkg = self.cache[name]
        except KeyError:
            pkg = None
        if pkg is None or (not pkg.has_versions and not pkg.has_provides):
            raise UserError(f"{self.context}: unknown package '{request}'",
                            hint="no such package in the recipe's archives for "
                            f"{self.root.arch}; check the name, suites and "
                            "components")
        if not pkg.has_versions:
            providers = sorted({ver.parent_pkg.get_fullname(True)
                                for _, _, ver in pkg.provides_list})
            if len(providers) == 1:
                return self.cache[providers[0]]
            raise UserError(f"{self.context}: '{request}' is a virtual package "
                            "provided by " + ", ".join(providers),
                            hint="request one of them explicitly")
        if request.version:
            for ver in pkg.version_list:
                if ver.ver_str == request.version:
                    self.depcache.set_candidate_ver(pkg, ver)
                    break
            else:
                available = ", ".join(v.ver_str for v in pkg.version_list)
                raise UserError(f"{self.context}: package '{request.name}' has "
                                f"no version {request.version}",
                                hint=f"available: {available}")
        elif self.depcache.get_candidate_ver(pkg) is None:
            raise UserError(f"{self.context}: package '{request}' has no "
                            "installable version")
        return pkg

    def version_of_source(self, name, wanted_source_version):
        """The package ``name`` of this root's architecture with its
        candidate set to a version built from ``wanted_source_version``, or
        None."""
        try:
            pkg = self.cache[f"{name}:{self.root.arch}"]
        except KeyError:
            return None
        for ver in pkg.version_list:
            if not ver.file_list:
                continue
            self.records.lookup(ver.file_list[0])
            if (self.records.source_ver or ver.ver_str) == wanted_source_version:
                self.depcache.set_candidate_ver(pkg, ver)
                return pkg
        return None

    def has_package(self, name):
        try:
            return self.cache[name].has_versions
        except KeyError:
            return False

    def install(self, packages):
        """Mark ``packages`` for installation the way ``apt-get install`` does."""
        self.requested.extend(packages)
        with self.apt_pkg.ActionGroup(self.depcache):
            for pkg in packages:
                self.depcache.mark_install(pkg, False, True)
            for pkg in packages:
                if not self.depcache.marked_install(pkg) and pkg.current_ver:
                    continue
                self.depcache.mark_install(pkg, True, True)
        if self.depcache.broken_count:
            resolver = self.apt_pkg.ProblemResolver(self.depcache)
            for pkg in packages:
                resolver.protect(pkg)
            try:
                resolver.resolve(True)
            except SystemError:
                pass
        self.check_broken()

    def remove(self, packages):
        """Mark ``packages`` for purging, and whatever cannot stay without them."""
        resolver = self.apt_pkg.ProblemResolver(self.depcache)
        for pkg in packages:
            if pkg.current_ver is None:
                raise UserError(f"{self.context}: cannot remove "
                                f"'{pkg.get_fullname(True)}': it is not installed "
                                "at this stage")
            self.depcache.mark_delete(pkg, True)
            resolver.protect(pkg)
            resolver.remove(pkg)
        if self.depcache.broken_count:
            try:
                resolver.resolve(True)
            except SystemError:
                pass
        self.check_broken()
        removed = [pkg for pkg in self.cache.packages
                   if self.depcache.marked_delete(pkg)]
        essential = [p.get_fullname(True) for p in removed if p.essential]
        if essential:
            raise UserError(f"{self.context}: removing these would remove "
                            "essential packages: " + ", ".join(sorted(essential)))
        return removed

    def upgrade_all(self):
        """``apt-get dist-upgrade`` on an empty system: the Essential set,
        plus apt when the cache was opened with apt forced Essential (as
        mmdebstrap's 'apt' variant does)."""
        self.depcache.upgrade(True)
        self.check_broken()

    # -- selections ------------------------------------------------------
    def native_packages(self, predicate):
        """Packages of the native arch whose candidate satisfies ``predicate``."""
        result = []
        for pkg in self.cache.packages:
            if pkg.architecture != self.root.arch or not pkg.has_versions:
                continue
            ver = self.depcache.get_candidate_ver(pkg)
            if ver is not None and predicate(pkg, ver):
                result.append(pkg)
        return sorted(result, key=lambda p: p.name)

    def essential_set(self):
        # The package flag, as apt's ?essential pattern (and so mmdebstrap)
        # uses it: set when a version of the package is Essential: yes.
        return self.native_packages(lambda pkg, ver: pkg.essential)

    def essential_provides(self, name):
        """Whether a package of the Essential set provides ``name``."""
        for pkg in self.essential_set():
            ver = self.depcache.get_candidate_ver(pkg)
            if any(provided == name for provided, _, _ in ver.provides_list):
                return True
        return False

    def priority_set(self, priorities):
        return self.native_packages(
            lambda pkg, ver: ver.priority in priorities and not pkg.essential)

    # -- diagnosis -------------------------------------------------------
    def check_broken(self):
        """Raise a UserError that names the failing chain, if apt failed."""
        unmarked = [pkg for pkg in self.requested
                    if not self._will_have(pkg)]
        broken = [pkg for pkg in self.cache.packages
                  if self.depcache.is_inst_broken(pkg)]
        if not broken and not unmarked:
            return
        messages = []
        for pkg in sorted(set(broken) | set(unmarked), key=lambda p: p.name)[:3]:
            clash = self._clash(pkg)
            ver = self.depcache.get_candidate_ver(pkg)
            if clash:
                chain, reason = [pkg.get_fullname(True)], clash
            elif ver is not None:
                chain, reason = self._explain(ver, [], set())
            else:
                chain, reason = [pkg.get_fullname(True)], "is not installable"
            messages.append(" -> ".join(chain) + f": {reason}")
        raise UserError(f"{self.context}: unsatisfiable dependencies: "
                        + "; ".join(messages),
                        hint="request another version or alternative, or add "
                        "the archive or suite that has the missing package")

    def _will_have(self, pkg):
        if self.depcache.marked_install(pkg) or self.depcache.marked_upgrade(pkg):
            return True
        return pkg.current_ver is not None and not self.depcache.marked_delete(pkg)

    def _target_ok(self, dep):
        for ver in dep.all_targets():
            pkg = ver.parent_pkg
            if self.depcache.marked_install(pkg) or \
                    self.depcache.marked_upgrade(pkg):
                if self.depcache.get_candidate_ver(pkg).id == ver.id:
                    return True
            elif pkg.current_ver is not None and pkg.current_ver.id == ver.id \
                    and not self.depcache.marked_delete(pkg):
                return True
        return False

    def _clash(self, pkg):
        """A Conflicts/Breaks between ``pkg`` and what is to be installed."""
        ver = self.depcache.get_candidate_ver(pkg)
        if ver is None:
            return None
        for dep_type in ("Conflicts", "Breaks"):
            for group in ver.depends_list.get(dep_type, []):
                for dep in group:
                    if dep.target_pkg.id != pkg.id and self._target_ok(dep):
                        return (f"{dep_type.lower()} with {self._dep_str(dep)},"
                                " which is to be installed")
        for other in self.requested:
            other_ver = self.depcache.get_candidate_ver(other)
            if other.id == pkg.id or other_ver is None:
                continue
            for dep_type in ("Conflicts", "Breaks"):
                for group in other_ver.depends_list.get(dep_type, []):
                    for dep in group:
                        if any(t.id == ver.id for t in dep.all_targets()):
                            return (f"{other.name} {dep_type.lower()} "
                                    f"{self._dep_str(dep)}")
        return None

    def _explain(self, ver, chain, seen):
        """Follow unsatisfied dependencies down to the one that fails."""
        chain = chain + [ver.parent_pkg.get_fullname(True)]
        if ver.id in seen:
            return chain, "dependency loop"
        seen.add(ver.id)
        for dep_type in DEP_TYPES:
            for group in ver.depends_list.get(dep_type, []):
                if any(self._target_ok(dep) for dep in group):
                    continue
                wanted = " | ".join(self._dep_str(d) for d in group)
                for dep in group:
                    targets = dep.all_targets()
                    if targets:
                        return self._explain(targets[0], chain, seen)
                have = []
                for dep in group:
                    target = dep.target_pkg
                    cand = self.depcache.get_candidate_ver(target) \
                        if target.has_versions else None
                    have.append(f"{target.name} {cand.ver_str} is the newest "
                                "available" if cand else
                                f"{target.name} is not available")
                return chain, (f"{ver.parent_pkg.name} {dep_type.lower()} on "
                               f"{wanted}, but {', '.join(have)}")
        return chain, self._clash(ver.parent_pkg) or "cannot be installed"

    @staticmethod
    def _dep_str(dep):
        text = dep.target_pkg.name
        if dep.target_ver:
            text += f" ({dep.comp_type_deb} {dep.target_ver})"
        return text

    # -- result ----------------------------------------------------------
    def to_install(self):
        """LockedPackage for every package marked for installation."""
        result = []
        for pkg in self.cache.packages:
            if not (self.depcache.marked_install(pkg) or
                    self.depcache.marked_upgrade(pkg)):
                continue
            ver = self.depcache.get_candidate_ver(pkg)
            result.append(self.locked(ver))
        return sorted(result, key=lambda p: p.key)

    def locked(self, ver):
        files = [pf for pf, _ in ver.file_list
                 if os.path.basename(pf.filename) in self.root.origin_of]
        if not files:
            raise UserError(f"{self.context}: {ver.parent_pkg.name} "
                            f"{ver.ver_str} is in no index of the recipe")
        files.sort(key=lambda pf: self.root.rank_of[os.path.basename(pf.filename)])
        chosen = files[0]
        for pf, index in ver.file_list:
            if pf.id == chosen.id:
                self.records.lookup((pf, index))
                break
        from debian import deb822
        stanza = deb822.Packages(self.records.record)
        archive, suite = self.root.origin_of[os.path.basename(chosen.filename)]
        return LockedPackage(ver.parent_pkg.name, ver.arch, ver.ver_str,
                             archive, suite, dict(stanza))


# Priorities of the priority-based variants, as in mmdebstrap.
def _priorities(apt_pkg, variant):
    return {
        "required": {apt_pkg.PRI_REQUIRED},
        "important": {apt_pkg.PRI_REQUIRED, apt_pkg.PRI_IMPORTANT},
        "standard": {apt_pkg.PRI_REQUIRED, apt_pkg.PRI_IMPORTANT,
                     apt_pkg.PRI_STANDARD},
    }.get(variant, set())


class StageState:
    """Installed packages after a stage, keyed by (name, arch)."""

    def __init__(self, packages=()):
        self.packages = {p.key: p for p in packages}

    def copy(self):
        return StageState(self.packages.values())


def resolve_bootstrap(root, variant, requests, state, context):
    """A bootstrap on top of ``state``, in mmdebstrap's two steps:
    ``(new_state, installed)``."""
    apt_pkg = _apt_pkg()
    installed = []
    new_state = state.copy()
    # Where the packages do not ship the merged-/usr links (up to Debian
    # 12), the bootstrap lays out a merged /usr itself, so, as mmdebstrap
    # does with its merged-usr hook, apt sees usr-is-merged as installed
    # while it resolves the Essential set (which would otherwise pull in
    # usrmerge and perl), and the real usr-is-merged is installed with
    # the rest.
    merged_usr = LockedPackage("usr-is-merged", "all", "1", "", "",
                               {"Package": "usr-is-merged", "Version": "1",
                                "Architecture": "all",
                                "Multi-Arch": "foreign"})
    # mmdebstrap's apt configuration, for both of its steps: apt is
    # Essential only in the 'apt' variant.
    force = APT_DEFAULT_FORCED_ESSENTIAL if variant == "apt" \
        else NO_FORCED_ESSENTIAL
    if variant == "custom":
        merged_usr = None
    else:
        before = list(new_state.packages.values())
        step = Resolution(root, before + [merged_usr],
                          f"{context} (Essential set)", force)
        if step.essential_provides("usr-is-merged"):
            # Since Debian 13, base-files ships /bin -> usr/bin & co
            # and Provides usr-is-merged: mmdebstrap needs no hook, and
            # neither the stand-in nor the real usr-is-merged is installed.
            merged_usr = None
            step = Resolution(root, before, f"{context} (Essential set)",
                              force)
        if variant == "apt":
            step.upgrade_all()
        else:
            step.install(step.essential_set())
        for pkg in step.to_install():
            new_state.packages[pkg.key] = pkg
            installed.append(pkg)
    priorities = _priorities(apt_pkg, variant)
    step = Resolution(root, list(new_state.packages.values()) +
                      ([merged_usr] if merged_usr else []), context, force)
    targets = step.priority_set(priorities) if priorities else []
    if priorities:
        targets.append(step.lookup(PackageRequest("apt")))
    if merged_usr and step.has_package("usr-is-merged"):
        targets.append(step.lookup(PackageRequest("usr-is-merged")))
    targets += [step.lookup(r) for r in requests]
    if targets:
        step.install(targets)
        for pkg in step.to_install():
            new_state.packages[pkg.key] = pkg
            installed.append(pkg)
    return new_state, installed


def resolve_install(root, requests, state, context):
    """``apt-get install`` of ``requests`` on top of ``state``.  install and
    remove stages run apt inside the image, with apt's default
    configuration: apt is Essential there."""
    new_state = state.copy()
    step = Resolution(root, list(new_state.packages.values()), context,
                      APT_DEFAULT_FORCED_ESSENTIAL)
    step.install([step.lookup(r) for r in requests])
    installed = step.to_install()
    for pkg in installed:
        new_state.packages[pkg.key] = pkg
    return new_state, list(installed)


def resolve_remove(root, names, state, context):
    """``apt-get purge`` of the packages ``names`` (NAME or NAME:ARCH)."""
    new_state = state.copy()
    step = Resolution(root, list(new_state.packages.values()), context,
                      APT_DEFAULT_FORCED_ESSENTIAL)
    targets = [step.lookup(PackageRequest(n.split(":")[0],
                                          n.split(":")[1] if ":" in n else None))
               for n in names]
    for pkg in step.remove(targets):
        for arch in (pkg.architecture, "all"):
            new_state.packages.pop((pkg.name, arch), None)
    return new_state, []


def resolve_stand_ins(root, targets, context):
    """The builds for ``root``'s (host) architecture of ``targets`` (a
    foreign tree's helper packages, LockedPackage) in their very versions,
    with what those depend on: the host runtime their programs need to
    stand in for the target's (native.py).  A package the host architecture
    lacks in that version is left out (it stays emulated); so is everything
    when the host's C library cannot be had in the target's version."""
    step = Resolution(root, [], context, NO_FORCED_ESSENTIAL)
    wanted = []
    for pkg in sorted(targets, key=lambda p: p.name):
        try:
            wanted.append(step.lookup(PackageRequest(pkg.name, root.arch,
                                                     pkg.version)))
            continue
        except UserError:
            pass
        # A binNMU of one architecture only: the same source version under
        # another binary version is the same program.
        found = step.version_of_source(pkg.name, source_version(pkg.stanza,
                                                                pkg.version))
        if found is not None:
            wanted.append(found)
    if not wanted:
        return []
    try:
        step.install(wanted)
    except UserError:
        return []
    return step.to_install()


def source_version(stanza, version):
    """The source version of a package (its own version unless the Source
    field names another, as binNMUs do)."""
    source = stanza.get("Source", "")
    if "(" in source:
        return source.split("(", 1)[1].rstrip(")").strip()
    return version
