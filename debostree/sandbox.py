"""Command lines for the sandbox: user namespace, overlay, fakeroot, bubblewrap.

Pure functions that build argv lists and environments; they know nothing of
OSTree or recipes, so they are tested without running anything.

The layers of a stage, outside in:

1. ``unshare --user --map-root-user --mount --ipc --pid``: unprivileged user,
   mount, IPC and PID namespaces, in which the build user is root and may
   mount an overlay, and which die with the stage;
2. an overlay whose lower layer is the hardlinked checkout, so that a
   command writing into a file in place (``>>``, ``truncate``) writes a copy
   in the upper layer and can never touch the repository's objects;
3. ``faked`` holding the tree's real owners, modes and xattrs, and the
   ``libfakeroot`` preload library in every process of the stage;
4. ``bwrap`` with the overlay as ``/``: no network, fresh ``/tmp`` and
   ``/run``, ``/proc``, a minimal ``/dev``, its own PID and UTS namespaces,
   no capabilities.
"""

import os
import shlex
import shutil

from . import debianlayout

FAKEROOT_LIB_DIRS = debianlayout.FAKEROOT_LIB_DIRS
FAKEROOT_LIB = "libfakeroot-sysv.so"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unshare_argv(inner_argv):
    """Run ``inner_argv`` as root of new user, mount, IPC and PID namespaces.

    The IPC namespace keeps the stage's fakeroot daemon (SysV message
    queues and semaphores) away from every other build's, and the stage's
    processes from the build user's other queues.  In the PID namespace the
    inner process is init: when it ends, or ``unshare`` is killed
    (``--kill-child``), the kernel kills everything left in it, the daemon
    included, so a killed build leaves no ``faked`` behind."""
    return ["unshare", "--user", "--map-root-user", "--mount",
            "--propagation", "private", "--ipc", "--pid", "--fork",
            "--kill-child", "--mount-proc", "--"] + list(inner_argv)


def overlay_mount_argv(lower, upper, work, target):
    # userxattr: the unprivileged overlay keeps its bookkeeping in user.*
    # xattrs; it needs lower files owned by the (mapped) build user.
    options = f"userxattr,lowerdir={lower},upperdir={upper},workdir={work}"
    return ["mount", "-t", "overlay", "overlay", "-o", options, target]


def faked_argv(save_file=None):
    argv = ["faked-sysv", "--load"]
    if save_file:
        argv += ["--save-file", save_file]
    return argv


def fakeroot_env(key, lib_dir, base=None, preload=None):
    """Environment that puts a process under the fakeroot daemon ``key``.

    ``preload``: the library path to preload instead of the one in
    ``lib_dir`` (for example one with $LIB in it).
    """
    env = dict(base or {})
    env.update({
        "FAKEROOTKEY": str(key),
        "LD_PRELOAD": preload or os.path.join(lib_dir, FAKEROOT_LIB),
        "FAKED_MODE": "unknown-is-root",
        # Never attempt real chown: in the namespace only root is mapped.
        "FAKEROOTDONTTRYCHOWN": "1",
    })
    return env


def chroot_env(extra, fakeroot_key, lib_dir, source_date_epoch, preload=None):
    env = {
        "PATH": CHROOT_PATH,
        "HOME": "/root",
        "LC_ALL": "C",
        "TERM": "dumb",
        "SHELL": "/bin/sh",
        "DEBIAN_FRONTEND": "noninteractive",
        "DEBCONF_NONINTERACTIVE_SEEN": "true",
        "SOURCE_DATE_EPOCH": str(source_date_epoch),
    }
    env.update(extra)
    return fakeroot_env(fakeroot_key, lib_dir, env, preload)


def bwrap_argv(target, command, env, binds=(), ro_binds=(), hostname="debostree"):
    """bubblewrap with ``target`` as the root; ``command`` runs inside it.

    ``binds``/``ro_binds``: (host path, path inside) pairs.
    """
    argv = ["bwrap", "--bind", target, "/",
            "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp", "--tmpfs", "/run",
            # No --unshare-ipc: the fakeroot daemon is reached through SysV
            # message queues of the namespace it was started in, which is
            # the stage's own (unshare_argv).
            "--unshare-net", "--unshare-pid", "--unshare-uts",
            # Root of the sandbox owns its files, nothing more: no mounts,
            # no raw sockets, no capabilities at all.
            "--cap-drop", "ALL",
            "--hostname", hostname, "--die-with-parent",
            "--chdir", "/", "--clearenv"]
    for host, inside in ro_binds:
        argv += ["--ro-bind", host, inside]
    for host, inside in binds:
        argv += ["--bind", host, inside]
    for name, value in sorted(env.items()):
        argv += ["--setenv", name, value]
    return argv + ["--"] + list(command)


def shell_script(lines):
    return "set -e\n" + "\n".join(lines) + "\n"


def missing_tools(arch, host_arch="amd64"):
    """Host tools a stage needs that are not installed, with their packages."""
    needs = {"unshare": "util-linux", "bwrap": "bubblewrap",
             "faked-sysv": "fakeroot", "ostree": "ostree", "mount": "mount"}
    missing = [f"{tool} (apt-get install {pkg})" for tool, pkg in needs.items()
               if shutil.which(tool) is None]
    if not os.path.exists(os.path.join(FAKEROOT_LIB_DIRS.get(host_arch, ""),
                                       FAKEROOT_LIB)):
        missing.append("libfakeroot (apt-get install fakeroot)")
    return missing


QEMU_BINFMT = {
    "arm64": "qemu-aarch64", "armhf": "qemu-arm", "armel": "qemu-arm",
    "i386": None, "amd64": None, "ppc64el": "qemu-ppc64le",
    "riscv64": "qemu-riscv64", "s390x": "qemu-s390x", "mips64el": "qemu-mips64el",
}
# Architectures the host runs natively, by host architecture.
NATIVE = {"amd64": ("amd64", "i386"), "arm64": ("arm64", "armhf", "armel")}


def binfmt_problem(arch, host_arch, binfmt_dir="/proc/sys/fs/binfmt_misc"):
    """None if ``arch`` binaries run here, else how to make them run."""
    if arch in NATIVE.get(host_arch, (host_arch,)):
        return None
    name = QEMU_BINFMT.get(arch)
    if name is None:
        return f"no emulator is known for {arch}"
    entry = os.path.join(binfmt_dir, name)
    if not os.path.exists(os.path.join(binfmt_dir, "register")):
        return ("binfmt_misc is not mounted; run: sudo mount -t binfmt_misc "
                f"binfmt_misc {binfmt_dir} && sudo update-binfmts --enable {name}")
    if not shutil.which(f"{name}-static") and not os.path.exists(entry):
        return ("qemu-user-static is not installed; run: sudo apt-get install "
                "qemu-user-static binfmt-support")
    try:
        with open(entry) as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return (f"{arch} binaries have no binfmt_misc entry; run: "
                f"sudo update-binfmts --enable {name}")
    if lines[0] != "enabled":
        return f"the {name} binfmt_misc entry is disabled; run: sudo update-binfmts --enable {name}"
    flags = [line for line in lines if line.startswith("flags:")]
    if not flags or "F" not in flags[0]:
        return (f"the {name} binfmt_misc entry lacks the F flag, so it cannot "
                "run inside a chroot; install Debian's qemu-user-static, whose "
                "entries have it")
    return None


def fakeroot_mismatch(arch, daemon_version, library_version):
    """None when the host's fakeroot daemon and the chroot's preload library
    speak one protocol, else why not.  Their messages changed between
    upstream releases (a 1.37 library waits forever on a 1.31 daemon), so
    the upstream versions must be equal (sandboxlib.py fetches the library
    that matches)."""
    def upstream(version):
        return version.split(":", 1)[-1].rsplit("-", 1)[0]
    if upstream(daemon_version) == upstream(library_version):
        return None
    return (f"the {arch} chroots' fakeroot library ({library_version}) does "
            "not speak the protocol of this host's fakeroot daemon "
            f"({daemon_version}); the host's fakeroot changed since "
            "./configure: run ./configure again")


def quote(argv):
    return shlex.join(argv)
