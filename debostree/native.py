"""Native stand-ins for the emulated chroot of a foreign stage.

Under qemu-user every program start costs tens of milliseconds of
translation before it does any work, and a bootstrap's maintainer scripts
start hundreds of small programs (``basename``, ``cp``, ``sed``, shells and
perl).  When the host has the very same source version of such a program
installed, the host's build runs in its place: its behaviour is that of the
target's program, only compiled for another machine.

This module owns the decision and nothing else: which host files may be
bind-mounted over which target files for the length of one stage command,
and the host runtime (its multiarch library directory and dynamic loader)
they need.  It refuses whenever the stand-ins could be noticed:

- only interpreters and text tools whose output does not depend on the
  machine (``uname`` and ``arch`` stay emulated, and dpkg always does: it
  knows its architecture at compile time);
- never in a tree that holds or receives a kernel: initramfs generators
  copy the programs they find into its image, and would copy host binaries;
- never when the target already has files at the host runtime's paths;
- perl only when the target has no architecture-specific perl modules that
  a native perl could not load.

The bind mounts vanish with the sandbox, so the committed tree never holds a
host file; the fidelity tests compare a foreign bootstrap with mmdebstrap's.
"""

import os
import shutil
import struct

from debian import deb822

from . import proc

# Packages whose programs may stand in, and files of theirs that must not:
# they report the machine they run on.
HELPER_PACKAGES = ("dash", "bash", "coreutils", "sed", "grep", "findutils",
                   "diffutils", "perl-base")
MACHINE_REPORTERS = {"/usr/bin/uname", "/bin/uname", "/usr/bin/arch", "/bin/arch"}
BIN_DIRS = ("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/")
# Where kernels live.  Initramfs generators (initramfs-tools, dracut,
# kernel-install) copy the tree's programs into an image, but only for a
# kernel: with none in the tree or arriving, they have nothing to build.
KERNEL_PATHS = ("/boot", "/usr/lib/modules", "/lib/modules")

# Host architecture -> (multiarch triplet, dynamic loader, ELF e_machine).
HOST_RUNTIMES = {
    "amd64": ("x86_64-linux-gnu", "/lib64/ld-linux-x86-64.so.2", 62),
    "arm64": ("aarch64-linux-gnu", "/lib/ld-linux-aarch64.so.1", 183),
    "ppc64el": ("powerpc64le-linux-gnu", "/lib64/ld64.so.2", 21),
    "s390x": ("s390x-linux-gnu", "/lib/ld64.so.1", 22),
    "riscv64": ("riscv64-linux-gnu", "/lib/ld-linux-riscv64-lp64d.so.1", 243),
}

# What LD_PRELOAD names when host and target programs share a sandbox: each
# dynamic loader expands $LIB to its own multiarch directory (Debian's
# glibc), so each process finds the fakeroot library of its own machine.
FAKEROOT_PRELOAD = "/usr/$LIB/libfakeroot/libfakeroot-sysv.so"


class StandIns:
    """What one stage may run natively, and what to say about it in its log."""

    def __init__(self, programs=(), host_lib=None, loader=None, used=(),
                 skipped=(), reason=None):
        self.programs = list(programs)  # (host program, path inside)
        self.host_lib = host_lib        # (host library directory, path inside)
        self.loader = loader            # the host's dynamic loader
        self.used = list(used)          # "dash 0.5.12-2 (1 program)"
        self.skipped = list(skipped)    # "sed: host 4.9-1, target 4.9-1+deb12u1"
        self.reason = reason            # why there are none at all

    def __bool__(self):
        return bool(self.programs)

    def describe(self):
        if self.reason:
            return f"native stand-ins: none ({self.reason})"
        text = "native stand-ins: " + ", ".join(self.used)
        if self.skipped:
            text += "; emulated: " + "; ".join(self.skipped)
        return text

    def mounts(self, directory):
        """Read-only binds (host path, path inside) that put the stand-ins in
        place, from copies made in ``directory``.

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
        for number, (host, inside) in enumerate(self.programs):
            copy = os.path.join(directory, f"{number}-{os.path.basename(host)}")
            shutil.copyfile(host, copy)
            os.chmod(copy, 0o755)
            if set_interpreter(copy, LOADER):
                binds.append((copy, inside))
            else:
                os.unlink(copy)
        return binds


LOADER = "/run/ld.so"  # short enough for every loader path it replaces


def set_interpreter(path, interpreter):
    """Point the ELF program ``path`` at another dynamic loader, in place.

    False when it has none, or when ``interpreter`` is longer than the path
    it replaces (the segment keeps its size).
    """
    with open(path, "r+b") as f:
        ident = f.read(64)
        if len(ident) < 52 or ident[:4] != b"\x7fELF":
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


def installed_sources(status_path, names):
    """{package: (source, source version, architecture)} of ``names`` whose
    files are in place."""
    found = {}
    try:
        f = open(status_path, encoding="utf-8")
    except FileNotFoundError:
        return found
    with f:
        for para in deb822.Packages.iter_paragraphs(f, use_apt_pkg=False):
            name = para.get("Package")
            # A bootstrap's packages are unpacked, not yet configured: their
            # programs are in place all the same.
            state = para.get("Status", "").rpartition(" ")[2]
            if name not in names or state in UNUSABLE_STATES:
                continue
            source, _, version = para.get("Source", name).partition(" ")
            version = version.strip("()") or para.get("Version", "")
            found[name] = (source, version, para.get("Architecture", ""))
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


def _elf_machine(path):
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return None
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    order = "little" if header[5] == 1 else "big"
    return int.from_bytes(header[18:20], order)


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


def kernel_in(debs):
    """The first (package file, path) among ``debs`` that brings a kernel or
    its modules, or None: what an install stage would add."""
    for deb in debs:
        listing = proc.run(["dpkg-deb", "--contents", deb], capture=True).stdout
        for line in listing.splitlines():
            fields = line.split(None, 5)
            if len(fields) < 6:
                continue
            path = fields[5].split(" -> ")[0].lstrip(".").rstrip("/")
            if path.startswith(tuple(p + "/" for p in KERNEL_PATHS)):
                return deb, path
    return None


def stand_ins(target, host_arch, target_triplet, host_root="/",
              keep_versions=None):
    """The host programs that may stand in for the target's in ``target``.

    ``keep_versions``: {package: version} the stage is about to install;
    a helper whose package the stage installs in another version is left
    emulated (dpkg could not replace a file with a mount on it).
    """
    runtime = HOST_RUNTIMES.get(host_arch)
    if runtime is None:
        return StandIns(reason=f"no known runtime for {host_arch} hosts")
    triplet, loader, machine = runtime
    host_libdir = f"/usr/lib/{triplet}"
    host_lib = os.path.realpath(os.path.join(host_root, host_libdir.lstrip("/")))
    if os.path.realpath(os.path.join(host_root, "lib", triplet)) != host_lib:
        return StandIns(reason="the host's /lib is not merged into /usr/lib")
    for path in (host_libdir, f"/lib/{triplet}"):
        if os.path.lexists(target + resolve_in_root(target, path)):
            return StandIns(reason=f"the tree has {path}")
    for path in KERNEL_PATHS:
        if _has_content(target + resolve_in_root(target, path)):
            return StandIns(reason=f"the tree has a kernel in {path}, for "
                            "which initramfs generators copy programs")
    host_status = os.path.join(host_root, "var/lib/dpkg/status")
    on_host = installed_sources(host_status, set(HELPER_PACKAGES))
    in_target = installed_sources(target + "/var/lib/dpkg/status",
                                  set(HELPER_PACKAGES))
    binds, used, skipped = [], [], []
    seen = set()
    for name in HELPER_PACKAGES:
        if name not in in_target:
            continue
        source, version, arch = in_target[name]
        if name not in on_host:
            skipped.append(f"{name}: not on the host")
            continue
        if on_host[name][:2] != (source, version):
            skipped.append(f"{name}: host {on_host[name][1]}, target {version}")
            continue
        if keep_versions and keep_versions.get(name, version) != version:
            skipped.append(f"{name}: replaced by this stage")
            continue
        if name == "perl-base" and any(
                os.path.lexists(f"{target}/usr/lib/{target_triplet}/{d}")
                for d in ("perl5", "perl")):
            skipped.append("perl-base: the tree has compiled perl modules")
            continue
        list_path = _list_file(target, name, arch)
        if list_path is None:
            continue
        with open(list_path, encoding="utf-8", errors="replace") as f:
            paths = [line.rstrip("\n") for line in f]
        count = 0
        for path in paths:
            if not path.startswith(BIN_DIRS) or path in MACHINE_REPORTERS:
                continue
            inside = resolve_in_root(target, path)
            if inside in seen or inside in MACHINE_REPORTERS:
                continue
            if not os.path.isfile(target + inside) or os.path.islink(target + inside):
                continue
            host = os.path.realpath(os.path.join(host_root, path.lstrip("/")))
            if os.path.islink(host) or _elf_machine(host) != machine:
                continue
            seen.add(inside)
            binds.append((host, inside))
            count += 1
        if count:
            used.append(f"{name} {version} ({count} program{'s' * (count != 1)})")
    if not binds:
        return StandIns(skipped=skipped, reason="no host program has the "
                        "target's version" if skipped else "no helper packages")
    host_loader = os.path.realpath(os.path.join(host_root, loader.lstrip("/")))
    return StandIns(binds, (host_lib, host_libdir), host_loader, used, skipped)
