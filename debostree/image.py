"""Bootable disk images: a recipe's branch commit deployed into an OSTree
sysroot and laid out as a raw GPT disk, without root.

The disk (sizes from the recipe's ``image`` key):

    1 MiB   GPT
    ESP     FAT (mkfs.vfat, mtools): the removable-media GRUB binary
            (EFI/BOOT/BOOTX64.EFI or BOOTAA64.EFI), made with grub-mkimage
            from the tree's own GRUB modules, whose built-in configuration
            finds the boot partition by label and sets GRUB's prefix there
    boot    ext4, label "boot": the sysroot's /boot, where ostree keeps the
            kernels, initramfs and boot entries of each deployment, with
            grub/grub.cfg and GRUB's modules (grub/PLATFORM); it is a
            partition of its own because ostree 2022.7 writes entry paths
            relative to /boot
    root    ext4, label "root": the sysroot (/ostree/repo with the commit,
            /ostree/deploy/OS/deploy/COMMIT.0, the shared /var)

The image is made from the published repository (``ninja NAME.img``
publishes first), so its commit is one devices can upgrade from.  The
sysroot is made with ostree's own ``admin init-fs``, ``os-init`` and
``deploy`` (kernel arguments from the recipe), the remote is set to the
published repository's URL (``url`` of the publish configuration) so that
``ostree admin upgrade`` works on the device, and ``sysroot.bootloader`` is
``grub2``: on the device, upgrades regenerate grub.cfg with grub-mkconfig and
the ``15_ostree`` script of ostree-boot.  Here the first grub.cfg comes from
``ostree admin instutil grub2-generate``, the command that script runs.

Everything runs in one fakeroot session so that owners land in the
filesystems as the tree has them: ``mkfs.ext4 -d`` populates each filesystem
from a directory; there are no loop devices and no mounts.
"""

import json
import os
import re
import shutil
import sys

from . import debianlayout, files, proc, signing
from .errors import UserError
from .project import load_config

MIB = 1024 * 1024
GPT_RESERVED = 2 * MIB  # 1 MiB before the first partition, 1 MiB at the end

# Host tools -> the Debian package that has them.
HOST_TOOLS = {"mkfs.ext4": "e2fsprogs", "mkfs.vfat": "dosfstools",
              "mcopy": "mtools", "mmd": "mtools", "sfdisk": "fdisk",
              "grub-mkimage": "grub-common", "fakeroot": "fakeroot",
              "ostree": "ostree", "dd": "coreutils"}
BOOT_TOOLS = {"qemu-system-x86_64": "qemu-system-x86",
              "/usr/share/OVMF/OVMF_CODE_4M.fd": "ovmf"}

EFI = debianlayout.EFI

GRUB_MODULES = ("part_gpt", "fat", "ext2", "normal", "linux", "configfile",
                "search", "search_label", "search_fs_uuid", "echo", "test",
                "gzio", "all_video", "serial", "terminal", "boot", "ls",
                "cat", "reboot", "halt", "loadenv", "sleep", "efi_gop")


def missing_tools(tools=None):
    """'tool (apt-get install PACKAGE)' for each host tool that is missing."""
    missing = []
    for tool, package in (tools or HOST_TOOLS).items():
        found = os.path.exists(tool) if tool.startswith("/") else shutil.which(tool)
        if not found:
            missing.append(f"{tool} (apt-get install {package})")
    return missing


def check_tools(out):
    """The check edge run before any image work: fail naming the packages."""
    missing = missing_tools()
    if missing:
        packages = sorted({m.split("install ")[1].rstrip(")") for m in missing})
        raise UserError("missing host tools for disk images: "
                        + ", ".join(missing),
                        hint="sudo apt-get install " + " ".join(packages)
                        + " (or run tools/setup-host)")
    with open(out, "w") as f:
        f.write("ok\n")


def parse_size(text):
    """'4G', '512M', '1024K' or a number of bytes -> bytes, or None."""
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}
    text = str(text).strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units and text[:-1].isdigit():
        return int(text[:-1]) * units[text[-1]]
    return int(text) if text.isdigit() else None


def build_image(config_path, options_path, commit_path, out):
    """Make the disk image ``out`` (atomically); the work happens in a
    directory beside it, removed at the end."""
    config = load_config(config_path)
    with open(options_path, encoding="utf-8") as f:
        opts = json.load(f)
    with open(commit_path, encoding="utf-8") as f:
        commit = f.read().strip()
    work = out + ".work"
    files.remove_tree(work)
    os.makedirs(work)
    os.makedirs(os.path.dirname(opts["log"]), exist_ok=True)
    with open(opts["log"], "w") as f:
        f.write(f"image {opts['recipe']} ({opts['arch']}) from {commit}\n")
    if not opts.get("url"):
        print(f"{out}: warning: no 'url' in the publish configuration; the "
              "image's remote cannot be reached, so it cannot upgrade")
    # The devices' remote checks the publisher's signatures.
    signer = signing.signer_for(opts)
    opts.update(signer.device_remote(
        work, os.path.join(config.builddir, "publish"), commit,
        lambda text: print(f"{out}: warning: {text}")))
    options_path = os.path.join(work, "options.json")
    with open(options_path, "w", encoding="utf-8") as f:
        json.dump(opts, f)
    env = {**os.environ, "PYTHONPATH": config.top,
           # No immutable bit on the deployment: the work directory must stay
           # removable (and as root it would be set for real).
           "OSTREE_SYSROOT_DEBUG": "mutable-deployments"}
    try:
        proc.run(["fakeroot", "--", sys.executable, "-m", "debostree.image",
                  "inner", config_path, options_path, commit, work],
                 env=env, log=opts["log"])
        os.replace(os.path.join(work, "disk.img"), out)
    finally:
        if not os.environ.get("DEBOSTREE_KEEP_WORK"):
            files.remove_tree(work)
    print(f"{out}: {opts['branch']} {commit[:12]}, "
          f"{os.path.getsize(out) // MIB} MiB")


def ostree_verifies_ed25519(repo, commit):
    """Whether the ostree in ``commit`` checks ed25519 signatures: its build
    features (what ``ostree --version`` lists, a space-separated string in
    the program) name ``sign-ed25519``, whichever crypto library provides it."""
    data = _file_in_commit(repo, commit, "/usr/bin/ostree")
    for text in data.split(b"\0"):
        features = text.split(b" ")
        if len(features) > 1 and b"sign-ed25519" in features \
                and all(re.fullmatch(rb"[a-z0-9][a-z0-9+-]*", f) for f in features):
            return True
    return False


def _file_in_commit(repo, commit, path):
    """The bytes of the regular file ``path`` of ``commit`` (b"" if none)."""
    result = proc.run(["ostree", "cat", f"--repo={repo}", commit, path],
                      capture=True, check=False, input=b"")
    return result.stdout if result.returncode == 0 else b""


def inner(config_path, options_path, commit, work):
    """Under fakeroot: sysroot, filesystems, disk."""
    config = load_config(config_path)
    with open(options_path, encoding="utf-8") as f:
        opts = json.load(f)
    sysroot = os.path.join(work, "sysroot")
    osname = opts["osname"]
    branch = opts["branch"]
    repo = os.path.join(sysroot, "ostree", "repo")
    os.makedirs(sysroot)
    run = proc.run
    run(["ostree", "admin", "init-fs", sysroot])
    run(["ostree", "admin", f"--sysroot={sysroot}", "os-init", osname])
    # No bootloader while deploying here (the host's grub-mkconfig must not
    # run); the device's ostree uses grub2, set below.
    run(["ostree", "config", f"--repo={repo}", "set", "sysroot.bootloader", "none"])
    url = opts.get("url")
    run(["ostree", "remote", "add", f"--repo={repo}"] + opts["remote_args"]
        + [osname, url or "file:///nonexistent", branch])
    if opts.get("gpg_keyring"):
        run(["ostree", "remote", "gpg-import", f"--repo={repo}",
             f"--keyring={opts['gpg_keyring']}", osname])
    # From the published repository: an archive repository keeps owners in
    # its files (fakeroot hides the build repository's xattrs), and the
    # image starts from a commit devices can upgrade from.
    # Not --untrusted: the published repository's objects were each checked
    # when publishing copied them in, and with it ostree 2022.7's pull-local
    # from this archive repository into the bare sysroot was seen to leave
    # objects out (the deploy then failed).
    run(["ostree", "pull-local", f"--repo={repo}", f"--remote={osname}",
         os.path.join(config.builddir, "publish"), commit])
    run(["ostree", "refs", f"--repo={repo}", f"--create={osname}:{branch}", commit])
    # --karg-append: arguments given twice (console=...) are all kept.
    kargs = ["--karg=root=LABEL=root", "--karg=rw"] + \
        [f"--karg-append={a}" for a in opts["kernel_arguments"]]
    run(["ostree", "admin", f"--sysroot={sysroot}", "deploy", f"--os={osname}"]
        + kargs + [f"{osname}:{branch}"])
    deployment = os.path.join(sysroot, "ostree", "deploy", osname, "deploy",
                              f"{commit}.0")
    if not os.path.isdir(deployment):
        raise UserError(f"ostree did not deploy {commit} in {sysroot}")
    _write_fstab(deployment)
    grub_dir = os.path.join(deployment, "usr", "lib", "grub", EFI[opts["arch"]][0])
    if not os.path.isdir(grub_dir):
        raise UserError(f"the tree has no GRUB for EFI ({grub_dir[len(deployment):]})",
                        hint=f"install grub-efi-{opts['arch']}-bin and "
                        "grub2-common in a stage before 'deployable'")
    _write_grub_cfg(sysroot, opts)
    _install_grub_modules(deployment, grub_dir, os.path.join(sysroot, "boot"), opts)
    run(["ostree", "config", f"--repo={repo}", "set", "sysroot.bootloader", "grub2"])
    # The boot partition's content moves out of the root filesystem.
    boot_src = os.path.join(sysroot, "boot")
    boot_dir = os.path.join(work, "boot")
    os.rename(boot_src, boot_dir)
    os.mkdir(boot_src, 0o755)
    esp = _make_esp(work, grub_dir, opts)
    sizes = _layout(opts, work, sysroot, boot_dir)
    boot_img = _mkfs(work, "boot", boot_dir, sizes["boot"])
    root_img = _mkfs(work, "root", sysroot, sizes["root"])
    _assemble(work, opts, sizes, esp, boot_img, root_img)


def _write_fstab(deployment):
    """The device mounts the boot partition at /boot (ostree writes there on
    upgrades); / is the deployment, mounted by the initramfs."""
    with open(os.path.join(deployment, "etc", "fstab"), "w") as f:
        f.write("# Made with the disk image: the boot partition, where ostree\n"
                "# keeps kernels and boot entries.\n"
                "LABEL=boot /boot ext4 defaults 0 2\n")


def _write_grub_cfg(sysroot, opts):
    """grub.cfg on the boot partition, as the device's grub-mkconfig would
    write it: a header, then ostree's menu entries; /boot/grub/grub.cfg is a
    link into the current loader directory, as ostree's grub2 backend
    expects."""
    env = {**os.environ, "GRUB2_BOOT_DEVICE_ID": "boot",
           "GRUB2_PREPARE_ROOT_CACHE": "search --no-floppy --label boot --set=root"}
    entries = proc.run(["ostree", "admin", "instutil", "grub2-generate",
                        f"--sysroot={sysroot}"], capture=True, env=env).stdout
    # load_video: the entries ostree writes call it, and it is defined by
    # the header grub-mkconfig writes on the device (00_header), not by
    # grub2-generate.
    header = ["set timeout=3", "set default=0",
              "function load_video {", "  insmod all_video", "}"]
    # A PC's serial port (com0).  On arm64 GRUB has no such port ("serial
    # port `com0' isn't found"): its menu is on the firmware's console,
    # which the virt machine and SPCR-describing servers put on the serial
    # port.
    if opts.get("serial_console") and opts["arch"] == "amd64":
        header += ["serial --unit=0 --speed=115200",
                   "terminal_input serial console",
                   "terminal_output serial console"]
    boot = os.path.join(sysroot, "boot")
    loader = os.path.realpath(os.path.join(boot, "loader"))
    with open(os.path.join(loader, "grub.cfg"), "w") as f:
        f.write("\n".join(header) + "\n" + entries)
    os.makedirs(os.path.join(boot, "grub"), exist_ok=True)
    os.symlink("../loader/grub.cfg", os.path.join(boot, "grub", "grub.cfg"))


def _install_grub_modules(deployment, grub_dir, boot, opts):
    """GRUB's modules and command lists in grub/PLATFORM on the boot
    partition, and its font in grub/fonts, as grub-install puts them: the
    grub.cfg that grub-mkconfig writes on the device loads modules the
    binary does not have (insmod gfxterm, ...), and normal mode reads
    command.lst there to find commands such as fwsetup."""
    platform = EFI[opts["arch"]][0]
    target = os.path.join(boot, "grub", platform)
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(grub_dir)):
        if name.endswith((".mod", ".lst")):
            shutil.copyfile(os.path.join(grub_dir, name), os.path.join(target, name))
    font = os.path.join(deployment, "usr", "share", "grub", "unicode.pf2")
    if os.path.isfile(font):
        os.makedirs(os.path.join(boot, "grub", "fonts"), exist_ok=True)
        shutil.copyfile(font, os.path.join(boot, "grub", "fonts", "unicode.pf2"))


def _make_esp(work, grub_dir, opts):
    efi_format, efi_name = EFI[opts["arch"]]
    early = os.path.join(work, "grub-early.cfg")
    # Only where GRUB's files are: when this configuration ends, the
    # binary's normal module starts normal mode, which reads the command
    # lists under $prefix and then $prefix/grub.cfg (what 'configfile'
    # here would skip: 'fwsetup' in the device's menu needs them).
    with open(early, "w") as f:
        f.write("search --no-floppy --label boot --set=root\n"
                "set prefix=($root)/grub\n")
    binary = os.path.join(work, efi_name)
    proc.run(["grub-mkimage", "--directory", grub_dir, "--format", efi_format,
              "--output", binary, "--config", early, "--prefix", "/grub"]
             + list(GRUB_MODULES))
    esp = os.path.join(work, "esp.img")
    size_kib = opts["esp_size"] // 1024
    proc.run(["mkfs.vfat", "-C", "-n", "ESP", esp, str(size_kib)], capture=True)
    proc.run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"])
    proc.run(["mcopy", "-i", esp, binary, f"::/EFI/BOOT/{efi_name}"])
    return esp


def _usage(path):
    """Bytes the files under ``path`` take (hard links once), and inodes."""
    seen = set()
    total = 0
    inodes = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            inodes += 1
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total, inodes


def _layout(opts, work, sysroot, boot_dir):
    size = opts["size"]
    boot = opts["boot_size"]
    esp = opts["esp_size"]
    root = size - GPT_RESERVED - esp - boot
    need, inodes = _usage(sysroot)
    # ext4's own metadata (inode tables, journal): about 6% plus 64 MiB.
    need = int(need * 1.06) + inodes * 256 + 64 * MIB
    boot_need, _ = _usage(boot_dir)
    if root < need or boot < boot_need * 2 + 16 * MIB:
        total = GPT_RESERVED + esp + max(boot, boot_need * 2 + 16 * MIB) + need
        raise UserError(
            f"the image does not fit in {size // MIB} MiB: the root filesystem "
            f"needs about {need // MIB} MiB, {max(root, 0) // MIB} MiB are left "
            f"for it (boot: {boot_need // MIB} MiB used, room for two kernels "
            f"needed)", path=opts["recipe_path"], key="image.size",
            hint=f"set image.size to at least {(total + 1023 * MIB) // (1024 * MIB)}G")
    return {"esp": esp, "boot": boot, "root": root}


def _mkfs(work, label, source, size):
    image = os.path.join(work, f"{label}.img")
    with open(image, "wb") as f:
        f.truncate(size)
    proc.run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", source,
              "-E", "lazy_itable_init=1,lazy_journal_init=1", image], capture=True)
    return image


def _assemble(work, opts, sizes, esp, boot_img, root_img):
    disk = os.path.join(work, "disk.img")
    with open(disk, "wb") as f:
        f.truncate(opts["size"])
    esp_start = MIB
    boot_start = esp_start + sizes["esp"]
    root_start = boot_start + sizes["boot"]
    script = "\n".join([
        "label: gpt",
        f"start={esp_start // 512}, size={sizes['esp'] // 512}, "
        "type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP",
        f"start={boot_start // 512}, size={sizes['boot'] // 512}, "
        "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=boot",
        f"start={root_start // 512}, size={sizes['root'] // 512}, "
        f"type={ROOT_TYPE[opts['arch']]}, name=root", ""])
    proc.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", disk],
             input=script, capture=True)
    for image, start in ((esp, esp_start), (boot_img, boot_start),
                         (root_img, root_start)):
        proc.run(["dd", f"if={image}", f"of={disk}", "bs=1M",
                  f"seek={start // MIB}", "conv=notrunc,sparse", "status=none"])


# GPT partition types of the root filesystem (Discoverable Partitions).
ROOT_TYPE = debianlayout.ROOT_TYPE


def main(argv):
    if argv[0] == "inner":
        inner(*argv[1:])
    else:
        raise SystemExit(f"unknown command {argv[0]}")
    return 0


if __name__ == "__main__":
    from .errors import cli_main
    cli_main(main)
