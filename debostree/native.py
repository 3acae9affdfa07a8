"""Native stand-ins for the emulated chroot of a foreign stage.

Under qemu-user every program start costs tens of milliseconds of
translation before it does any work, and a bootstrap's maintainer scripts
start hundreds of small programs (``basename``, ``cp``, ``sed``, shells and
perl).  A build for the host's architecture of the very same source version
of such a program runs in its place: its behaviour is that of the target's
program, only compiled for another machine.  Those builds come from the
lockfile (``Lock-Stage: stand-ins``, resolve.resolve_stand_ins), unpacked
into a tree of their own that this module takes for "the host"
(``host_root``), so what stands in never depends on the host system.

This module owns the decision and nothing else: which host files may be
bind-mounted over which target files for the length of one stage command,
and the host runtime (its multiarch library directory and dynamic loader)
they need.  It refuses whenever the stand-ins could be noticed:

- only interpreters, text tools and archive tools whose output does not
  depend on the machine (``uname`` and ``arch`` stay emulated, and dpkg
  always does: it knows its architecture at compile time; its dpkg-deb,
  which unpacks each package, and update-alternatives may stand in);
  kmod, whose depmod writes the same machine-independent indices, udev's
  systemd-hwdb likewise, and dracut's installer;
- in a tree that holds or receives a kernel, only where the stage keeps
  initramfs generators from copying them (they copy the programs they find
  into the image): an install stage whose environment defers the
  initramfs (``INITRD=No``, which the kernel's hooks honour), and the
  deployable stage, whose dracut installer puts the tree's own files (read
  through a second mount of the tree, without the stand-ins) in place of
  its copies of them.  Every initramfs a command makes
  with stand-ins bound in is then checked to hold only target programs;
- never when the target already has files at the host runtime's paths;
- only when host and target have the same libc6 version, since a host
  program runs on the host's C library (bound in with the host runtime);
- perl only when every architecture-specific perl module the target has
  (or the stage brings) has a host build of the same source version among
  the stand-ins (never for perl's own archlib): a native perl sees a host
  module only through a link to the target's .pm file, and the host's other
  modules are hidden under empty directories, so it finds exactly the
  modules an emulated one would.

What still tells a stand-in from the target's program is the machine it was
built for: bash's ``$HOSTTYPE`` and perl's ``$Config{archname}`` name the
host's.  Debian's maintainer scripts ask dpkg for the architecture (dpkg
stays emulated), not these.

The bind mounts vanish with the sandbox, so the committed tree never holds a
host file; the fidelity tests compare a foreign bootstrap with mmdebstrap's.
"""

import hashlib
import os
import shutil
import struct

from . import debianlayout, initramfs, proc

# Packages whose programs may stand in, and files of theirs that must not:
# they report the machine they run on.
HELPER_PACKAGES = ("dash", "bash", "coreutils", "sed", "grep", "findutils",
                   "diffutils", "perl-base", "kmod", "dpkg", "udev",
                   "dracut-install")
# Of these packages, only these programs stand in.  dpkg itself knows its
# architecture at compile time; dpkg-deb (which dpkg runs to unpack every
# package) and update-alternatives do not.  systemd-hwdb writes hwdb.bin in
# one byte order whatever the machine (the other programs of udev stay
# emulated).
ONLY_PROGRAMS = {"dpkg": {"dpkg-deb", "update-alternatives"},
                 "udev": {"systemd-hwdb"}}
# Programs that stand in although they are not in a bin directory: dracut's
# installer (the deployable stage puts the tree's programs back in place of
# the copies it makes of stand-ins).
PROGRAMS_ELSEWHERE = {"/usr/lib/dracut/dracut-install"}
# stdbuf preloads the tree's (foreign) libstdbuf.so into what it starts.
MACHINE_REPORTERS = {"/usr/bin/uname", "/bin/uname", "/usr/bin/arch", "/bin/arch",
                     "/usr/bin/stdbuf", "/bin/stdbuf"}
# The C library the stand-ins run on must be the target's version.
LIBC = "libc6"
# Directories of architecture-specific perl modules, under /usr/lib/<triplet>.
PERL_ARCH_DIRS = ("perl5", "perl")
# The one of them where compiled modules packaged apart from perl live
# (perl's vendorarch).  Their host builds are locked with the stand-ins
# (``is_perl_xs``); a native perl sees each host module only through the
# target's own .pm file (a link to it), so it loads a module exactly when an
# emulated perl would.  The other (perl's own archlib) has no such view.
PERL_XS_DIR = "perl5"


def is_perl_xs(stanza):
    """Whether a package (its index stanza) is a compiled perl module:
    those depend on the perl ABI they were built for."""
    return "perlapi-" in stanza.get("Depends", "")
BIN_DIRS = ("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/")
# Where kernels live.  Initramfs generators (initramfs-tools, dracut,
# kernel-install) copy the tree's programs into an image, but only for a
# kernel: with none in the tree or arriving, they have nothing to build.
KERNEL_PATHS = ("/boot", "/usr/lib/modules", "/lib/modules")

HOST_RUNTIMES = debianlayout.HOST_RUNTIMES

# What LD_PRELOAD names when host and target programs share a sandbox: each
# dynamic loader expands $LIB to its own multiarch directory (Debian's
# glibc), so each process finds the fakeroot library of its own machine.
FAKEROOT_PRELOAD = "/usr/$LIB/libfakeroot/libfakeroot-sysv.so"


class StandIns:
    """What one stage may run natively, and what to say about it in its log."""

    def __init__(self, programs=(), host_lib=None, loader=None, skipped=(),
                 reason=None, hidden=()):
        self.programs = list(programs)  # (host program, path inside, package)
        self.host_lib = host_lib        # (host library directory, path inside)
        self.loader = loader            # the host's dynamic loader
        self.skipped = list(skipped)    # "sed: host 4.9-1, target 4.9-1+deb12u1"
        self.reason = reason            # why there are none at all
        self.hidden = list(hidden)      # host runtime paths inside, shown empty
        self.initramfs_kept_apart = None  # see stand_ins()
        self.copies = []                # (bound file, path inside): mounts()
        # (host's compiled perl module directory, its path inside, the
        # target's): the view a native perl gets of compiled modules.
        self.perl_view = None

    def write_digests(self, path, digests_only_path):
        """Write "SHA256 PATH-INSIDE" for each bound program (after
        ``mounts``) to ``path``, and the digests alone to the other file:
        what a copy of a stand-in looks like, and whose place it took
        (deployable.py restores the tree's own from that)."""
        with open(path, "w") as out, open(digests_only_path, "w") as only:
            for copy, inside in self.copies:
                digest = hashlib.sha256()
                with open(copy, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                out.write(f"{digest.hexdigest()} {inside}\n")
                only.write(f"{digest.hexdigest()}\n")

    def __bool__(self):
        return bool(self.programs)

    def describe(self):
        if self.reason:
            return f"native stand-ins: none ({self.reason})"
        counts = {}
        for _, _, package in self.programs:
            counts[package] = counts.get(package, 0) + 1
        text = "native stand-ins: " + ", ".join(
            f"{package} ({count} program{'s' * (count != 1)})"
            for package, count in counts.items())
        if self.skipped:
            text += "; emulated: " + "; ".join(self.skipped)
        if self.initramfs_kept_apart:
            text += f"; with a kernel: {self.initramfs_kept_apart}"
        return text

    def mounts(self, directory):
        """Read-only binds (host path, path inside) that put the stand-ins in
        place, from copies made in ``directory``.  Programs that cannot be
        patched are dropped from ``programs`` (and so from ``describe``).

        The copies ask for the loader at LOADER (under the sandbox's own
        /run) instead of the host's path: a missing /lib64 made for it would
        be visible to the tree's merged-/usr checks, and usr-is-merged's
        postinst removes a /lib64 that does not belong to the architecture.
        """
        os.makedirs(directory, exist_ok=True)
        loader_copy = os.path.join(directory, "ld.so")
        shutil.copyfile(self.loader, loader_copy)
        os.chmod(loader_copy, 0o755)
        binds = [self.host_lib, (loader_copy, LOADER)]
        kept = []
        for number, (host, inside, package) in enumerate(self.programs):
            copy = os.path.join(directory, f"{number}-{os.path.basename(host)}")
            shutil.copyfile(host, copy)
            os.chmod(copy, 0o755)
            if set_interpreter(copy, LOADER):
                binds.append((copy, inside))
                kept.append((host, inside, package))
                self.copies.append((copy, inside))
            else:
                os.unlink(copy)
        self.programs = kept
        if not kept:
            self.reason = "no host program could be pointed at the host's loader"
            return []
        hidden = list(self.hidden)
        if self.perl_view and not any(p.startswith("perl-base ")
                                      for _, _, p in kept):
            hidden.append(self.perl_view[1])
            self.perl_view = None
        if hidden:
            empty = os.path.join(directory, "empty")
            os.makedirs(empty, exist_ok=True)
            binds[2:2] = [(empty, inside) for inside in hidden]
        if self.perl_view:
            host_dir, inside, target_dir = self.perl_view
            view = os.path.join(directory, "perl")
            perl_module_view(host_dir, target_dir, view)
            binds.insert(2, (view, inside))
        return binds


LOADER = "/run/ld.so"  # short enough for every loader path it replaces


def perl_module_view(host_dir, target_dir, view):
    """Make ``view``: the host's compiled perl modules (``host_dir``) with
    each file but the shared objects replaced by a link to the target's
    file of the same name (in ``target_dir``, a path inside the sandbox).
    A module is then found only once the target has it, and loads the host
    build of its shared object."""
    for directory, subdirs, names in os.walk(host_dir):
        relative = os.path.relpath(directory, host_dir)
        os.makedirs(os.path.join(view, relative), exist_ok=True)
        for name in names:
            source = os.path.join(directory, name)
            dest = os.path.normpath(os.path.join(view, relative, name))
            if name.endswith(".so"):
                shutil.copyfile(source, dest)
                os.chmod(dest, 0o644)
            else:
                os.symlink(os.path.normpath(
                    os.path.join(target_dir, relative, name)), dest)


def set_interpreter(path, interpreter):
    """Point the ELF program ``path`` at another dynamic loader, in place.

    False when it has none, or when ``interpreter`` is longer than the path
    it replaces (the segment keeps its size).
    """
    with open(path, "r+b") as f:
        ident = f.read(64)
        if len(ident) < 52 or ident[:4] != b"\x7fELF" \
                or (ident[4] == 2 and len(ident) < 64):
            return False
        order = "<" if ident[5] == 1 else ">"
        if ident[4] == 2:
            phoff, = struct.unpack_from(order + "Q", ident, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", ident, 54)
            layout = order + "I4xQ16xQ"   # type, offset, file size
        else:
            phoff, = struct.unpack_from(order + "I", ident, 28)
            phentsize, phnum = struct.unpack_from(order + "HH", ident, 42)
            layout = order + "II8xI"
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        for i in range(phnum):
            kind, offset, size = struct.unpack_from(layout, table, i * phentsize)
            if kind != 3:  # PT_INTERP
                continue
            value = interpreter.encode()
            if len(value) + 1 > size:
                return False
            f.seek(offset)
            f.write(value.ljust(size, b"\0"))
            return True
    return False


UNUSABLE_STATES = ("", "not-installed", "config-files", "half-installed")


class Installed:
    """A package of a dpkg status file whose files are in place."""

    def __init__(self, source, source_version, version, arch):
        self.source = source
        self.source_version = source_version
        self.version = version
        self.arch = arch


def installed_sources(status_path, names):
    """{package: Installed} of ``names`` whose files are in place."""
    found = {}
    try:
        f = open(status_path, encoding="utf-8")
    except FileNotFoundError:
        return found
    with f:
        from debian import deb822  # here: costly, most stages need none
        for para in deb822.Packages.iter_paragraphs(f, use_apt_pkg=False):
            name = para.get("Package")
            # A bootstrap's packages are unpacked, not yet configured: their
            # programs are in place all the same.
            state = para.get("Status", "").rpartition(" ")[2]
            if name not in names or state in UNUSABLE_STATES:
                continue
            version = para.get("Version", "")
            source, _, source_version = para.get("Source", name).partition(" ")
            found[name] = Installed(source, source_version.strip("()") or version,
                                    version, para.get("Architecture", ""))
    return found


def resolve_in_root(root, path, depth=0):
    """``path`` inside ``root`` with the symlinks of its directories followed
    (as the sandbox will see it); the last component is left alone."""
    if depth > 20:
        return path
    parts = [p for p in path.split("/") if p]
    resolved = ""
    for i, part in enumerate(parts):
        candidate = resolved + "/" + part
        if i < len(parts) - 1 and os.path.islink(root + candidate):
            link = os.readlink(root + candidate)
            base = link if link.startswith("/") else resolved + "/" + link
            rest = "/".join(parts[i + 1:])
            return resolve_in_root(root, os.path.normpath(base) + "/" + rest,
                                   depth + 1)
        resolved = candidate
    return resolved or "/"


def realpath_in(root, path):
    """``root`` + ``path`` with every symbolic link on the way, the last one
    too, followed inside ``root`` (an absolute link means ``root``'s /): a
    tree of unpacked packages as if it were the running system."""
    inside = resolve_in_root(root, path)
    full = root.rstrip("/") + inside
    for _ in range(40):
        if not os.path.islink(full):
            break
        link = os.readlink(full)
        base = link if link.startswith("/") else \
            os.path.dirname(inside) + "/" + link
        inside = resolve_in_root(root, os.path.normpath(base))
        full = root.rstrip("/") + inside
    return full or "/"


def _elf_machine(path):
    try:
        with open(path, "rb") as f:
            return initramfs.elf_machine(f.read(20))
    except OSError:
        return None


def _list_file(target, name, arch):
    info = target + "/var/lib/dpkg/info/"
    for candidate in (f"{name}:{arch}.list", f"{name}.list"):
        if os.path.exists(info + candidate):
            return info + candidate
    return None


def _has_content(path):
    if os.path.islink(path) or os.path.isfile(path):
        return True
    return os.path.isdir(path) and bool(os.listdir(path))


def deb_paths(debs):
    """The paths the package files ``debs`` would install: [(deb, path)]."""
    paths = []
    for deb in debs:
        listing = proc.run(["dpkg-deb", "--contents", deb], capture=True).stdout
        for line in listing.splitlines():
            fields = line.split(None, 5)
            if len(fields) < 6:
                continue
            path = fields[5].split(" -> ")[0].lstrip(".").rstrip("/")
            if path:
                paths.append((deb, path))
    return paths


def _under(path, directories):
    return any(path == d or path.startswith(d + "/") for d in directories)


def _merged(paths):
    """``paths`` and, for each, its /usr twin or the other way round (a
    merged-/usr tree has both through its /lib and /bin links)."""
    both = set()
    for path in paths:
        both.add(path)
        if path.startswith("/usr/"):
            both.add(path[4:])
        else:
            both.add("/usr" + path)
    return sorted(both)


def stand_ins(target, host_arch, target_triplet, host_root="/",
              keep_versions=None, incoming=(), initramfs_kept_apart=None):
    """The host programs that may stand in for the target's in ``target``.

    ``keep_versions``: {package: version} the stage is about to install;
    a helper whose package the stage installs in another version is left
    emulated (dpkg could not replace a file with a mount on it).
    ``incoming``: [(package file, path)] the stage is about to install
    (``deb_paths``), checked like the tree's own files.
    ``initramfs_kept_apart``: why no initramfs made in this stage will hold
    a stand-in (the caller's promise, which the stage run
    checks afterwards: ``initramfs_images``); then a kernel is no reason to
    refuse.
    """
    runtime = HOST_RUNTIMES.get(host_arch)
    if runtime is None:
        return StandIns(reason=f"no known runtime for {host_arch} hosts")
    triplet, loader, machine = runtime
    host_libdir = f"/usr/lib/{triplet}"
    host_lib = realpath_in(host_root, host_libdir)
    if realpath_in(host_root, f"/lib/{triplet}") != host_lib:
        return StandIns(reason="the host's /lib is not merged into /usr/lib")
    for path in (host_libdir, f"/lib/{triplet}"):
        if os.path.lexists(target + resolve_in_root(target, path)):
            return StandIns(reason=f"the tree has {path}")
    for path in () if initramfs_kept_apart else KERNEL_PATHS:
        if _has_content(target + resolve_in_root(target, path)):
            return StandIns(reason=f"the tree has a kernel in {path}, for "
                            "which initramfs generators copy programs")
    host_runtime_paths = _merged([host_libdir])
    target_perl_paths = _merged(f"/usr/lib/{target_triplet}/{d}"
                                for d in PERL_ARCH_DIRS)
    xs_paths = _merged([f"/usr/lib/{target_triplet}/{PERL_XS_DIR}"])
    perl_incoming = None
    xs_incoming = {}    # package file -> a path it brings under xs_paths
    for deb, path in incoming:
        name = os.path.basename(deb)
        if not initramfs_kept_apart and \
                path.startswith(tuple(p + "/" for p in KERNEL_PATHS)):
            return StandIns(reason=f"{name} brings {path}, for which "
                            "initramfs generators copy programs")
        if _under(path, host_runtime_paths):
            return StandIns(reason=f"{name} brings {path}")
        if _under(path, xs_paths):
            xs_incoming.setdefault(deb, path)
        elif perl_incoming is None and _under(path, target_perl_paths):
            perl_incoming = f"{name} brings {path}"

    host_status = os.path.join(host_root, "var/lib/dpkg/status")
    wanted = set(HELPER_PACKAGES) | {LIBC}
    on_host = installed_sources(host_status, wanted)
    in_target = installed_sources(target + "/var/lib/dpkg/status", wanted)
    if LIBC not in on_host or LIBC not in in_target:
        return StandIns(reason=f"{LIBC} is missing on the host or in the tree")
    if on_host[LIBC].source_version != in_target[LIBC].source_version:
        return StandIns(reason=f"{LIBC}: host {on_host[LIBC].source_version}, "
                        f"target {in_target[LIBC].source_version}")
    programs, skipped = [], []
    seen = set()
    for name in HELPER_PACKAGES:
        if name not in in_target:
            continue
        mine = in_target[name]
        if name not in on_host:
            skipped.append(f"{name}: not on the host")
            continue
        host_package = on_host[name]
        if (host_package.source, host_package.source_version) != \
                (mine.source, mine.source_version):
            skipped.append(f"{name}: host {host_package.source_version}, "
                           f"target {mine.source_version}")
            continue
        if keep_versions and keep_versions.get(name, mine.version) != mine.version:
            skipped.append(f"{name}: replaced by this stage")
            continue
        if name == "perl-base":
            problem = perl_incoming or _perl_modules_problem(
                target, target_triplet, host_status, xs_paths, xs_incoming)
            if problem:
                skipped.append(f"perl-base: {problem}")
                continue
        list_path = _list_file(target, name, mine.arch)
        if list_path is None:
            continue
        with open(list_path, encoding="utf-8", errors="replace") as f:
            paths = [line.rstrip("\n") for line in f]
        label = f"{name} {mine.source_version}"
        only = ONLY_PROGRAMS.get(name)
        for path in paths:
            if not (path.startswith(BIN_DIRS) or path in PROGRAMS_ELSEWHERE) \
                    or path in MACHINE_REPORTERS:
                continue
            if only is not None and os.path.basename(path) not in only:
                continue
            inside = resolve_in_root(target, path)
            if inside in seen or inside in MACHINE_REPORTERS:
                continue
            if not os.path.isfile(target + inside) or os.path.islink(target + inside):
                continue
            host = realpath_in(host_root, path)
            if os.path.islink(host) or _elf_machine(host) != machine:
                continue
            seen.add(inside)
            programs.append((host, inside, label))
    if not programs:
        return StandIns(skipped=skipped, reason="no host program has the "
                        "target's version" if skipped else "no helper packages")
    # The host's own compiled perl modules would be on a native perl's
    # path: hidden, or shown only where the target has the same module.
    perl_native = any(label.startswith("perl-base ") for _, _, label in programs)
    hidden = [f"{host_libdir}/{d}" for d in PERL_ARCH_DIRS
              if os.path.isdir(os.path.join(host_lib, d))
              and not (perl_native and d == PERL_XS_DIR)]
    host_loader = realpath_in(host_root, loader)
    found = StandIns(programs, (host_lib, host_libdir), host_loader, skipped,
                     hidden=hidden)
    if perl_native and os.path.isdir(os.path.join(host_lib, PERL_XS_DIR)):
        found.perl_view = (os.path.join(host_lib, PERL_XS_DIR),
                           f"{host_libdir}/{PERL_XS_DIR}",
                           f"/usr/lib/{target_triplet}/{PERL_XS_DIR}")
    found.initramfs_kept_apart = initramfs_kept_apart
    return found


def _perl_modules_problem(target, target_triplet, host_status, xs_paths,
                          xs_incoming):
    """Why a native perl could not load the compiled modules the tree has
    or the stage brings, or None: perl's own archlib ones never, the others
    (PERL_XS_DIR) only from a host build of the same source version."""
    archlib = _merged([f"/usr/lib/{target_triplet}/{d}" for d in PERL_ARCH_DIRS
                       if d != PERL_XS_DIR])
    if any(os.path.lexists(target + resolve_in_root(target, path))
           for path in archlib):
        return "the tree has compiled perl modules of perl's own"
    owners = {}     # package -> source version, of the modules' packages
    info = target + "/var/lib/dpkg/info"
    listings = sorted(os.listdir(info)) if os.path.isdir(info) else []
    for listing in listings:
        if not listing.endswith(".list"):
            continue
        with open(os.path.join(info, listing), encoding="utf-8",
                  errors="replace") as f:
            if any(_under(line.rstrip("\n"), xs_paths) and
                   not os.path.isdir(target + line.rstrip("\n")) for line in f):
                owners[listing[:-5].split(":")[0]] = None
    for name, found in installed_sources(target + "/var/lib/dpkg/status",
                                         set(owners)).items():
        owners[name] = (found.source, found.source_version)
    for deb, path in xs_incoming.items():
        fields = proc.run(["dpkg-deb", "--field", deb, "Package", "Version",
                           "Source"], capture=True).stdout
        control = dict(line.split(": ", 1) for line in fields.splitlines()
                       if ": " in line)
        name, version = control.get("Package", ""), control.get("Version", "")
        source, _, source_version = control.get("Source", name).partition(" ")
        owners[name] = (source, source_version.strip("()") or version)
    on_host = installed_sources(host_status, set(owners))
    for name, wanted in sorted(owners.items()):
        host = on_host.get(name)
        if wanted is None:
            continue    # listed, but no longer installed
        if host is None or (host.source, host.source_version) != wanted:
            return (f"{name} {wanted[1]} has compiled perl modules with no "
                    "host build of that version among the stand-ins")
    return None


# Where initramfs generators write their images: initramfs-tools and
# dracut's kernel hooks in /boot, kernel-install under /boot or /efi, an
# OSTree tree beside its kernel in /usr/lib/modules/VERSION.
INITRAMFS_DIRS = ("/boot", "/efi")
INITRAMFS_NAMES = ("initrd", "initramfs")


def initramfs_images(target):
    """{path inside: (size, mtime_ns, inode)} of the initramfs images in
    the tree at ``target``; compared before and after a command that ran
    with stand-ins, it says which images that command made."""
    found = {}

    def add(directory, names):
        for name in names:
            full = os.path.join(directory, name)
            if name.lower().startswith(INITRAMFS_NAMES) and \
                    os.path.isfile(full) and not os.path.islink(full):
                st = os.stat(full)
                found["/" + os.path.relpath(full, target)] = \
                    (st.st_size, st.st_mtime_ns, st.st_ino)
    for top in INITRAMFS_DIRS:
        for directory, _, names in os.walk(target + resolve_in_root(target, top)):
            add(directory, names)
    modules = target + resolve_in_root(target, "/usr/lib/modules")
    if os.path.isdir(modules):
        for version in os.listdir(modules):
            if os.path.isdir(os.path.join(modules, version)):
                add(os.path.join(modules, version),
                    os.listdir(os.path.join(modules, version)))
    return found
