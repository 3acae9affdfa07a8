"""The 'deployable' stage kind: a Debian tree rearranged into what
``ostree admin deploy`` expects, and a device boots.

What OSTree needs, and why each step is here:

* The kernel and an initramfs in ``/usr/lib/modules/VERSION/`` (``vmlinuz``
  and ``initramfs.img``): ``ostree admin deploy`` copies them from there into
  ``/boot`` and writes the boot entries.  The initramfs is dracut's with the
  ``ostree`` module (Debian's ostree-boot package): it finds the deployment
  named by the ``ostree=`` kernel argument and makes it the root.  It is built
  generic (``--no-hostonly``), as the build host is not the device.
* ``/etc`` becomes ``/usr/etc``: the deployment's ``/etc`` is a three-way
  merge of the new ``/usr/etc``, the old one and the device's changes.
* ``/var`` holds no OS content: ostree shares one ``/var`` between all
  deployments and never updates it.  The package state dpkg, apt and debconf
  keep under ``/var`` moves to ``/usr/lib/sysimage/`` (read-only, matching
  the tree, as rpm-ostree does with the rpm database), with links back from
  ``/var``; every other directory, link and file under ``/var`` becomes a
  tmpfiles.d line (files are kept in ``/usr/share/factory/var`` and copied
  when missing), so the first boot and every boot after an upgrade create
  what the new tree needs.  Logs and caches are dropped.
* ``/home``, ``/root``, ``/opt``, ``/srv``, ``/mnt`` and ``/usr/local`` are
  links into ``/var`` (``/var/home``, ``/var/roothome``, ...), ``/media``
  into ``/run``: they hold the device's data, which must survive upgrades.
* ``/sysroot`` (where the physical root is mounted) and ``/ostree`` (a link
  to ``sysroot/ostree``) exist, ``/boot`` is empty (the boot partition is
  mounted there), and ``/etc/machine-id`` is "uninitialized" so that each
  device makes its own.
* No per-machine secret is shipped: SSH host keys, random seeds, the D-Bus
  machine id and ssl-cert's snakeoil key pair are removed (each named in the
  stage's log), and a tree with an SSH server gets a unit that makes the
  device's own host keys at its first boot, before the server starts.

The kernel part runs inside the sandbox (``dracut`` is the tree's own); the
rearrangement runs on the host under the stage's fakeroot, so owners and
modes are kept exactly.  It is the last stage of a recipe: later stages would
not find ``/var/lib/dpkg`` or ``/etc`` where Debian's tools look.
"""

import errno
import os
import shutil

from . import files, treepath
from .stagefiles import RUN_INSIDE
from .errors import UserError

TMPFILES = "/usr/lib/tmpfiles.d/debostree-var.conf"
FACTORY = "/usr/share/factory"
SYSIMAGE = "/usr/lib/sysimage"

# Package state under /var -> its place under /usr.
STATE_DIRS = (("/var/lib/dpkg", SYSIMAGE + "/dpkg"),
              ("/var/lib/apt", SYSIMAGE + "/apt"),
              ("/var/cache/debconf", SYSIMAGE + "/debconf"))

# Top-level directories that hold the device's data -> their link target.
DATA_LINKS = (("/home", "var/home"), ("/root", "var/roothome"),
              ("/opt", "var/opt"), ("/srv", "var/srv"), ("/mnt", "var/mnt"),
              ("/usr/local", "../var/usrlocal"), ("/media", "run/media"))

# Files under these are build leftovers (logs, caches, downloaded indices),
# not content: they are dropped, their directories kept.
DROPPED_FILES_UNDER = ("/var/log/", "/var/cache/apt/", "/var/lib/apt/lists/",
                       "/var/cache/man/", "/var/tmp/", "/var/cache/ldconfig/")


LDD_WRAPPER = "ldd"
LDD_WRAPPER_TEXT = """\
#!/bin/sh
# ldd for dracut, without the build's fakeroot library (LD_PRELOAD), which
# the dynamic loader would list as a dependency of every program.
unset LD_PRELOAD
exec ldd "$@"
"""
INSTALL_WRAPPER = "dracut-install"
DRACUT_INSTALL = "/usr/lib/dracut/dracut-install"   # Debian's, 059 and 106
# dracut-install for a tree with native stand-ins bound over some of its
# programs: the copies of stand-ins it made are replaced by the tree's own
# files (same path under $DEBOSTREE_SYSROOT, where no stand-in is mounted),
# found by their digests.  In dracut's lazy mode that happens before the
# pass that resolves libraries (-R), which then sees the target's programs;
# otherwise after each install, with the restored files' libraries resolved
# as dracut-install -l would have.  Runs on the stand-ins (sh, find,
# sha256sum, grep, cp), so it costs a fraction of a second per pass.
INSTALL_WRAPPER_TEXT = """\
#!/bin/sh
real={real}
digests={digests}
initdir=${{DESTROOTDIR:-}}
previous=
for arg in "$@"; do
    [ "$previous" != -D ] || initdir=$arg
    previous=$arg
done
preserve=mode,timestamps,ownership
[ "$(id -u)" != 0 ] || [ -n "${{DRACUT_NO_XATTR:-}}" ] ||
    preserve=mode,xattr,timestamps,ownership

restore() {{
    [ -n "$initdir" ] && [ -d "$initdir" ] || return 0
    find "$initdir" -type f ! -name '*.ko' ! -name '*.ko.*' -print0 |
        xargs -0r sha256sum | grep -F -f "$digests.only" |
        while read -r digest file; do
            inside=$(grep -m1 "^$digest " "$digests" | cut -d' ' -f2-)
            cp --reflink=auto --sparse=auto --preserve=$preserve -fL \\
                "$DEBOSTREE_SYSROOT$inside" "$file" || exit 1
            echo "$file"
        done
}}

case " $* " in
*" -R "*)
    restore > /dev/null || exit 1
    exec "$real" "$@" ;;
esac
"$real" "$@"
status=$?
if [ -z "${{DRACUT_RESOLVE_LAZY:-}}" ]; then
    restored=$(restore) || exit 1
    [ -z "$restored" ] || printf '%s\\n' "$restored" |
        xargs -d '\\n' "$real" -D "$initdir" -R -- || status=$?
fi
exit $status
"""


def write_dracut_helpers(work):
    """The ldd and dracut-install wrappers ``kernel_script`` names, into the
    stage's run directory (``work``: WorkFiles; RUN_INSIDE in the sandbox)."""
    digests = RUN_INSIDE + "/" + os.path.relpath(work.stand_in_digests, work.run)
    texts = {LDD_WRAPPER: LDD_WRAPPER_TEXT,
             INSTALL_WRAPPER: INSTALL_WRAPPER_TEXT.format(
                 real=DRACUT_INSTALL, digests=digests)}
    for name, text in texts.items():
        path = os.path.join(work.run, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)


def kernel_script(dracut_modules):
    """Shell lines run in the sandbox: build the initramfs, move the kernel."""
    modules = " ".join(["ostree"] + list(dracut_modules))
    return [
        'fail() { echo "deployable: $*" >&2; exit 1; }',
        "[ -d /usr/lib/modules ] || fail 'no kernel in /usr/lib/modules: "
        "install a kernel package (for example linux-image-amd64) in an "
        "earlier stage'",
        "set -- $(ls /usr/lib/modules)",
        '[ $# -eq 1 ] || fail "expected one kernel in /usr/lib/modules, '
        'found $#: $*; remove the others in an earlier stage"',
        "kver=$1 dir=/usr/lib/modules/$1",
        "command -v dracut >/dev/null || fail 'dracut is not installed: add "
        "dracut and ostree-boot to an earlier stage'",
        "[ -d /usr/lib/dracut/modules.d/98ostree ] || fail 'dracut has no "
        "ostree module: add ostree-boot to an earlier stage'",
        '[ -e "$dir/vmlinuz" ] || mv "/boot/vmlinuz-$kver" "$dir/vmlinuz" || '
        'fail "no kernel image $dir/vmlinuz or /boot/vmlinuz-$kver"',
        "for f in config System.map; do [ ! -e \"/boot/$f-$kver\" ] || "
        "mv \"/boot/$f-$kver\" \"$dir/$f\"; done",
        'echo "deployable: initramfs for $kver with dracut modules: '
        f'{modules}"',
        # zstd when the tree has it: dracut's default (gzip -9) takes
        # minutes on a generic initramfs, zstd seconds.
        'compress="gzip -n -6"; ! command -v zstd >/dev/null || '
        'compress="zstd -q -T0 -10"',
        # The build's fakeroot library is preloaded into every program:
        # ldd lists it, and dracut would copy it into the initramfs.
        f'export DRACUT_LDD={RUN_INSIDE}/{LDD_WRAPPER}',
        # With native stand-ins bound over some of the tree's programs,
        # dracut copies them like any program: its installer puts the
        # tree's own back (from $DEBOSTREE_SYSROOT) before their libraries
        # are resolved.
        'if [ -n "${DEBOSTREE_SYSROOT:-}" ]; then',
        f'  export DRACUT_INSTALL={RUN_INSIDE}/{INSTALL_WRAPPER}',
        '  echo "deployable: dracut runs with native stand-ins; the tree\'s '
        'own programs replace their copies in the initramfs"',
        'fi',
        f'dracut --quiet --force --no-hostonly --reproducible --add "{modules}" '
        '--compress "$compress" --kver "$kver" "$dir/initramfs.img"',
        'rm -f "/boot/vmlinuz-$kver" "/boot/initrd.img-$kver" /vmlinuz '
        "/vmlinuz.old /initrd.img /initrd.img.old",
    ]


# Files that must differ on every device: a tree made once for many
# machines never carries them (machine-id(5) is handled apart).
MACHINE_SECRETS = ("/etc/ssh/ssh_host_*_key", "/etc/ssh/ssh_host_*_key.pub",
                   "/var/lib/systemd/random-seed", "/var/lib/urandom/random-seed",
                   "/var/lib/dbus/machine-id",
                   "/etc/ssl/private/ssl-cert-snakeoil.key",
                   "/etc/ssl/certs/ssl-cert-snakeoil.pem")
SSH_KEYGEN_UNIT = "debostree-ssh-host-keys.service"
SSH_KEYGEN_UNIT_TEXT = """\
# Made by the image build: the image ships no SSH host keys (every device
# would share them), so each device makes its own at its first boot.
[Unit]
Description=Generate this machine's SSH host keys
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service ssh.socket
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes
"""


def machine_secrets(target):
    """The paths of MACHINE_SECRETS present in the tree at ``target``."""
    import glob
    found = []
    for pattern in MACHINE_SECRETS:
        directory, name = os.path.split(pattern)
        if treepath.link_on_the_way(target, directory, including_last=True):
            continue
        found += sorted(directory + "/" + os.path.basename(p) for p in
                        glob.glob(glob.escape(target + directory) + "/" + name)
                        if not os.path.isdir(p) or os.path.islink(p))
    return found


def remove_machine_secrets(target):
    """Remove what MACHINE_SECRETS names, saying so; with an SSH server in
    the tree, enable the unit that makes the device's own host keys."""
    for path in machine_secrets(target):
        os.unlink(_at(target, path))
        print(f"deployable: removed {path}, a per-machine secret "
              "(each device makes its own)", flush=True)
    if os.path.lexists(_at(target, "/usr/sbin/sshd")):
        units = "/usr/lib/systemd/system"
        os.makedirs(_at(target, units + "/multi-user.target.wants"),
                    exist_ok=True)
        unit = _at(target, units + "/" + SSH_KEYGEN_UNIT)
        with open(unit, "w", encoding="utf-8") as f:
            f.write(SSH_KEYGEN_UNIT_TEXT)
        os.chmod(unit, 0o644)
        wants = _at(target, f"{units}/multi-user.target.wants/{SSH_KEYGEN_UNIT}")
        if os.path.lexists(wants):
            os.unlink(wants)
        os.symlink("../" + SSH_KEYGEN_UNIT, wants)
        print(f"deployable: {SSH_KEYGEN_UNIT} makes the SSH host keys at the "
              "first boot", flush=True)


def rearrange(target, sysext_level=None):
    """The host-side part, run under the stage's fakeroot: see the module's
    docstring.  ``target`` is the tree's root directory; ``sysext_level``
    goes to os-release as SYSEXT_LEVEL."""
    if os.path.lexists(_at(target, "/usr/etc")):
        raise UserError("deployable: the tree already has /usr/etc",
                        hint="a tree is made deployable once, by the last stage")
    if not os.path.isdir(_at(target, "/etc")) or os.path.islink(_at(target, "/etc")):
        raise UserError("deployable: the tree has no /etc directory")
    remove_machine_secrets(target)
    for path, link in DATA_LINKS:
        full = _at(target, path)
        if os.path.isdir(full) and not os.path.islink(full):
            dest = _at(target, os.path.normpath(
                os.path.join(os.path.dirname(path), link)))
            if not link.startswith("run/"):
                _move(full, dest)
            else:
                shutil.rmtree(full)
        elif os.path.lexists(full):
            os.unlink(full)
        os.symlink(link, full)
    for path, dest in STATE_DIRS:
        if os.path.isdir(_at(target, path)) and not os.path.islink(_at(target, path)):
            os.makedirs(os.path.dirname(_at(target, dest)), exist_ok=True)
            _move(_at(target, path), _at(target, dest))
            # Relative, so that tools given the tree as --root find it too.
            os.symlink(os.path.relpath(dest, os.path.dirname(path)),
                       _at(target, path))
    _override_tmpfiles_for_links(target)
    lines = _var_to_tmpfiles(target)
    with open(_at(target, TMPFILES), "w", encoding="utf-8") as f:
        f.write("# What /var needs, made by the image build from the tree's "
                "/var:\n# directories, links, and files copied from "
                f"{FACTORY}/var.\n")
        f.write("".join(line + "\n" for line in lines))
    os.chmod(_at(target, TMPFILES), 0o644)
    machine_id = _at(target, "/etc/machine-id")
    if os.path.lexists(machine_id):
        os.unlink(machine_id)
        with open(machine_id, "w") as f:
            f.write("uninitialized\n")
        os.chmod(machine_id, 0o444)
    if sysext_level:
        set_sysext_level(target, sysext_level)
    _move(_at(target, "/etc"), _at(target, "/usr/etc"))
    boot = _at(target, "/boot")
    if os.path.isdir(boot):
        for name in os.listdir(boot):
            files.remove_tree(os.path.join(boot, name))
    else:
        os.mkdir(boot, 0o755)
    if not os.path.isdir(_at(target, "/sysroot")):
        os.mkdir(_at(target, "/sysroot"), 0o755)
    if os.path.lexists(_at(target, "/ostree")):
        files.remove_tree(_at(target, "/ostree"))
    os.symlink("sysroot/ostree", _at(target, "/ostree"))


def set_sysext_level(target, level):
    """``SYSEXT_LEVEL=`` in the tree's os-release: a system extension whose
    extension-release names another level is refused by systemd-sysext.
    Written to /etc/os-release, which takes precedence over
    /usr/lib/os-release (os-release(5)), as a file of its own instead of
    the usual link to it, so that base-files' /usr/lib/os-release stays as
    dpkg installed it (``dpkg --verify``)."""
    etc = _at(target, "/etc/os-release")
    usr = _at(target, "/usr/lib/os-release")
    source = etc if os.path.isfile(etc) and not os.path.islink(etc) else usr
    if not os.path.isfile(source) or os.path.islink(source):
        raise UserError("deployable: the tree has no os-release",
                        hint="install base-files in an earlier stage")
    with open(source, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines()
                 if not line.startswith("SYSEXT_LEVEL=")]
    # A new file in place of the link (or of a file that may share its
    # inode with the repository's object).
    with open(etc + ".new", "w", encoding="utf-8") as f:
        f.write("\n".join(lines + [f"SYSEXT_LEVEL={level}"]) + "\n")
    os.chmod(etc + ".new", 0o644)
    os.replace(etc + ".new", etc)


def _override_tmpfiles_for_links(target):
    """The tree's tmpfiles.d files that create the top-level directories
    now linked into /var (systemd's home.conf: /home, /srv, /root) would
    warn at every boot; the systemd way to drop lines is a file of the same
    name in /etc/tmpfiles.d, here a copy with those lines commented out."""
    linked = {path for path, _ in DATA_LINKS}
    directory = _at(target, "/usr/lib/tmpfiles.d", directory=True)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return
    for name in names:
        override = _at(target, "/etc/tmpfiles.d/" + name)
        if not name.endswith(".conf") or os.path.lexists(override):
            continue
        with open(os.path.join(directory, name), encoding="utf-8",
                  errors="replace") as f:
            lines = f.read().splitlines()
        out = []
        for line in lines:
            fields = line.split()
            if len(fields) >= 2 and fields[1] in linked and \
                    fields[0].rstrip("!+-=~^") in ("d", "D", "v", "q", "Q", "e"):
                out.append("# a link into /var on OSTree systems: " + line)
            else:
                out.append(line)
        if out != lines:
            os.makedirs(os.path.dirname(override), exist_ok=True)
            with open(override, "w", encoding="utf-8") as f:
                f.write(f"# /usr/lib/tmpfiles.d/{name} without the directories "
                        "that are links here.\n" + "\n".join(out) + "\n")
            os.chmod(override, 0o644)


def _declared_paths(target):
    """Paths that the tree's own tmpfiles.d files already declare."""
    declared = set()
    for directory in ("/usr/lib/tmpfiles.d", "/etc/tmpfiles.d"):
        try:
            names = os.listdir(_at(target, directory, directory=True))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".conf"):
                continue
            try:
                with open(_at(target, directory + "/" + name),
                          encoding="utf-8", errors="replace") as f:
                    for line in f:
                        fields = line.split()
                        if len(fields) >= 2 and not fields[0].startswith("#"):
                            declared.add(fields[1])
            except OSError:
                continue
    return declared


def _var_to_tmpfiles(target):
    """Empty the tree's /var; return tmpfiles.d lines that recreate it."""
    declared = _declared_paths(target)
    lines = []
    var = _at(target, "/var")
    if os.path.islink(var):
        raise UserError("deployable: /var is a symbolic link; a deployable "
                        "tree needs /var to be a directory")
    for dirpath, dirnames, filenames in os.walk(var, topdown=True):
        dirnames.sort()
        rel_dir = dirpath[len(target):]
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            path = os.path.join(rel_dir, name)
            st = os.lstat(full)
            mode = f"{st.st_mode & 0o7777:04o}"
            owner = f"{st.st_uid} {st.st_gid}"
            if os.path.islink(full):
                if path not in declared:
                    lines.append(f"L {_quote(path)} - - - - {_quote(os.readlink(full))}")
            elif os.path.isdir(full):
                if path not in declared:
                    lines.append(f"d {_quote(path)} {mode} {owner} -")
            elif os.path.isfile(full):
                if path.startswith(DROPPED_FILES_UNDER) or path in declared:
                    continue
                kept = _at(target, FACTORY + path)
                os.makedirs(os.path.dirname(kept), exist_ok=True)
                os.rename(full, kept)
                lines.append(f"C {_quote(path)} - - - - {_quote(FACTORY + path)}")
    for name in os.listdir(var):
        files.remove_tree(os.path.join(var, name))
    return lines


def _at(target, path, directory=False):
    """``target + path`` once no directory on its way (nor ``path`` itself,
    for a ``directory`` to read) is a symbolic link: a stage may have left
    one pointing anywhere, and these steps run on the host side."""
    link = treepath.link_on_the_way(target, path, including_last=directory)
    if link:
        raise UserError(f"deployable: {path} lies under {link}, a symbolic "
                        f"link; a deployable tree needs {link} to be a "
                        "directory")
    return target + path


def _quote(path):
    """A tmpfiles.d path field: C-style escapes for what would split it."""
    return "".join(f"\\x{ord(c):02x}" if c.isspace() or c == "\\" else c
                   for c in path)


def _move(src, dest):
    """Rename ``src`` to ``dest`` (merging into a directory already there);
    an overlay refuses to rename directories
    it merges (EXDEV), so those are rebuilt at ``dest`` with the same owner,
    mode and xattrs while their entries are renamed one by one (files keep
    their inodes, so fakeroot keeps their owners)."""
    if os.path.islink(src):
        # Never entered: a link is moved as the link it is.
        if os.path.lexists(dest):
            files.remove_tree(dest)
        os.rename(src, dest)
        return
    merge = os.path.isdir(dest) and not os.path.islink(dest)
    if not merge:
        try:
            os.rename(src, dest)
            return
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
    st = os.lstat(src)
    if not merge:  # else: merged into the directory that is there
        os.mkdir(dest)
    os.chown(dest, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(dest, st.st_mode & 0o7777)
    for name in os.listxattr(src, follow_symlinks=False):
        os.setxattr(dest, name, os.getxattr(src, name, follow_symlinks=False),
                    follow_symlinks=False)
    for name in os.listdir(src):
        _move(os.path.join(src, name), os.path.join(dest, name))
    os.rmdir(src)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
