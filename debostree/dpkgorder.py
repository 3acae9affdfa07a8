"""The order in which a bootstrap's maintainer scripts run: apt's and dpkg's.

What maintainer scripts do depends on the order they run in: the first
``adduser --system`` gets the first free ID.  A bootstrap must run them in
the order a Debian installation does, the one mmdebstrap (the reference)
follows:

1. the Essential set (for the ``custom`` variant: everything), in one
   ``dpkg --install --force-depends`` of the .debs in the order apt would
   unpack them: every ``preinst`` in that order, then dpkg configures them;
2. with a merged-/usr bootstrap that locks ``usr-is-merged`` (Debian 12),
   ``apt-get install usr-is-merged`` on top;
3. the rest (apt, the variant's priority set, the recipe's packages) with
   ``apt-get install``: apt's sequence of unpacks and configures.

The host's ``apt-get`` answers those questions without running anything: on
a private directory whose only source is the stage's locked packages (from
the pool) and with ``Debug::pkgDpkgPm``, it prints the dpkg calls it would
make.  ``plan`` returns them as steps the stage replays in the chroot, where
the files are in place already: an unpack runs the packages' ``preinst
install`` as dpkg does, a configure is dpkg's own call with apt's options.
"""

import os
import re
import subprocess

from . import resolve
from .errors import UserError

DPKG_CALL = re.compile(r"^\S*dpkg --status-fd \d+ (.*?)\s*$")
# The patterns mmdebstrap installs for its priority variants.
PRIORITY_PATTERNS = {
    "minbase": "?and(?priority(required),?not(?essential))",
    "required": "?and(?priority(required),?not(?essential))",
    "important": "?and(?or(?priority(required),?priority(important)),"
                 "?not(?essential))",
    "standard": "?and(?or(?priority(required),?priority(important),"
                "?priority(standard)),?not(?essential))",
}
MERGED_USR = "usr-is-merged"


def _full_name(pkg):
    return f"{pkg.name}:{pkg.arch}"


class _AptDir:
    """A private apt directory whose only source is the given packages."""

    def __init__(self, work, arch, packages, force_essential):
        self.dir = os.path.abspath(work)
        source = os.path.join(self.dir, "source")
        for sub in ("lists/partial", "cache/archives/partial", "empty.d", "log"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        os.makedirs(source, exist_ok=True)
        self.by_file = {}
        with open(os.path.join(source, "Packages"), "w", encoding="utf-8") as f:
            f.write("\n".join(p.stanza.rstrip("\n") + "\n" for p in packages))
        for pkg in packages:
            link = os.path.join(source, pkg.filename)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if not os.path.lexists(link):
                os.symlink(pkg.pool_path, link)
            self.by_file[os.path.normpath(link)] = pkg
        self.status = os.path.join(self.dir, "status")
        with open(os.path.join(self.dir, "sources.list"), "w") as f:
            f.write(f"deb [trusted=yes] file:{source} ./\n")
        self.config = os.path.join(self.dir, "apt.conf")
        with open(self.config, "w") as f:
            f.write(resolve.private_apt_conf(
                self.dir, arch, force_essential=None if force_essential
                else resolve.NO_FORCED_ESSENTIAL))
        self.set_installed([])
        self.apt(["update"])

    def set_installed(self, packages, dummy_merged_usr=False):
        with open(self.status, "w", encoding="utf-8") as f:
            if dummy_merged_usr:
                f.write(f"Package: {MERGED_USR}\nStatus: install ok installed\n"
                        "Version: 1\nArchitecture: all\nMulti-Arch: foreign\n\n")
            for pkg in packages:
                lines = pkg.stanza.rstrip("\n").split("\n")
                f.write("\n".join([lines[0], "Status: install ok installed"] +
                                  lines[1:]) + "\n\n")

    def apt(self, args):
        # Never "--recursive DIR": apt names every .deb on dpkg's command line
        # instead of a temporary directory of links, in the same order.
        argv = ["apt-get", "--yes", "-oDebug::pkgDpkgPm=1",
                "-odpkg::install::recursive::minimum=1000000"] + list(args)
        # The dpkg calls are printed on standard error, interleaved with the
        # rest: not proc.run, which keeps the two apart.
        result = subprocess.run(argv, env={**os.environ, "LC_ALL": "C",
                                           "APT_CONFIG": self.config},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            tail = "\n".join(result.stdout.splitlines()[-10:])
            raise UserError("apt-get cannot order the bootstrap's packages "
                            f"({' '.join(args)}): {tail}")
        return result.stdout

    def calls(self, args):
        """The dpkg calls apt would make: [[arg, ...], ...]."""
        found = []
        for line in self.apt(args).splitlines():
            match = DPKG_CALL.match(line)
            if match:
                found.append(match.group(1).split())
        return found

    def package_of(self, deb):
        pkg = self.by_file.get(os.path.normpath(deb))
        if pkg is None:
            raise UserError(f"apt would install {deb}, which the lockfile "
                            "does not have for this stage",
                            hint="run 'ninja update-lockfiles'")
        return pkg


def _replay(apt_dir, calls, done):
    """Steps for apt's dpkg calls: unpacks become preinst runs."""
    steps = []
    for args in calls:
        if "--unpack" in args or "--install" in args:
            pkgs = [apt_dir.package_of(a) for a in args if a.endswith(".deb")]
            steps.append(["preinst", [p.dpkg_name for p in pkgs]])
            done.extend(pkgs)
        else:
            steps.append(["dpkg", args])
    return steps


def plan(packages, arch, variant, requests, work):
    """The bootstrap's steps, in order: ``["preinst", [DPKG_NAME, ...]]``
    (run each package's ``preinst install``) and ``["dpkg", [ARG, ...]]``
    (run dpkg with these arguments).  ``packages``: the stage's locked
    packages (kinds.base.PackageFile, with dpkg_name); ``requests``: the recipe's extra packages, as apt arguments."""
    apt_dir = _AptDir(work, arch, packages, force_essential=variant == "apt")
    names = {p.name for p in packages}
    merged_usr = variant != "custom" and MERGED_USR in names
    apt_dir.set_installed([], dummy_merged_usr=merged_usr)
    if variant == "custom":
        first_args = ["install"] + (list(requests) or
                                    [_full_name(p) for p in packages])
    elif variant == "apt":
        first_args = ["dist-upgrade"]
    else:
        first_args = ["install", f"?narrow(?architecture({arch}),?essential)"]
    steps = []
    done = []
    first = [apt_dir.package_of(a)
             for call in apt_dir.calls(first_args) for a in call
             if a.endswith(".deb")]
    if first:
        # One "dpkg --install --force-depends" of them all, as mmdebstrap.
        steps.append(["preinst", [p.dpkg_name for p in first]])
        steps.append(["dpkg", ["--configure", "--force-depends"] +
                      [_full_name(p) for p in first]])
        done.extend(first)
    if merged_usr and MERGED_USR not in {p.name for p in done}:
        apt_dir.set_installed(done, dummy_merged_usr=True)
        steps += _replay(apt_dir, apt_dir.calls(["install", MERGED_USR]), done)
    # mmdebstrap's arguments, in its order: the extra packages, then the
    # variant's priority set (apt is Priority: required).
    rest = list(requests) if variant != "custom" else []
    if variant in PRIORITY_PATTERNS:
        rest.append(f"?narrow(?architecture({arch}),{PRIORITY_PATTERNS[variant]})")
    if rest:
        apt_dir.set_installed(done)
        steps += _replay(apt_dir, apt_dir.calls(["install"] + rest), done)
    left = [p for p in packages
            if p.dpkg_name not in {d.dpkg_name for d in done}]
    if left:
        # Nothing should be left; if apt's answer and the lockfile ever
        # differ, the rest still gets its preinst, and configure -a follows.
        steps.append(["preinst", [p.dpkg_name for p in left]])
    return steps
