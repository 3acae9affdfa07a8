"""Reading initramfs images: members across concatenated and compressed
cpio archives (written by the cpio tool, an independent writer), and the
check that every ELF file in one is for the target's machine."""

import gzip
import os
import shutil
import struct
import subprocess

import pytest

from debostree import debianlayout, initramfs
from debostree.errors import UserError

X86_64, AARCH64 = 62, 183


def elf(machine, bits=64):
    if bits == 64:
        return (b"\x7fELF\x02\x01\x01" + b"\0" * 9
                + struct.pack("<HH", 2, machine) + b"\0" * 44)
    return b"\x7fELF\x01\x01\x01" + b"\0" * 9 + struct.pack("<HH", 2, machine) \
        + b"\0" * 32


def cpio(directory):
    """A newc archive of ``directory``, made by the cpio tool."""
    names = subprocess.run(["find", ".", "-mindepth", "1"], cwd=directory,
                           capture_output=True, text=True, check=True).stdout
    return subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=directory,
                          input=names.encode(), capture_output=True,
                          check=True).stdout


def tree(path, files):
    for name, data in files.items():
        full = os.path.join(path, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
        os.chmod(full, 0o755)
    return path


pytestmark = pytest.mark.skipif(shutil.which("cpio") is None,
                                reason="the cpio tool writes the archives")


@pytest.mark.parametrize("compress", ["gzip", "zstd", "xz", None])
def test_members_of_an_early_and_a_compressed_archive(tmp_path, compress):
    if compress and shutil.which(compress) is None:
        pytest.skip(f"{compress} is not installed")
    early = cpio(tree(str(tmp_path / "early"), {
        "kernel/x86/microcode/GenuineIntel.bin": b"microcode"}))
    main = cpio(tree(str(tmp_path / "main"), {
        "usr/bin/sh": elf(AARCH64),
        "usr/lib/aarch64-linux-gnu/libc.so.6": elf(AARCH64),
        "usr/bin/sed": elf(X86_64),
        "init": b"#!/bin/sh\n",
        "etc/os-release": b"ID=debian\n"}))
    if compress:
        main = subprocess.run([compress, "-c"], input=main, capture_output=True,
                              check=True).stdout
    image = tmp_path / "initramfs.img"
    image.write_bytes(early + b"\0" * 512 + main)
    names = {m.name for m in initramfs.members(image.read_bytes())}
    assert {"kernel/x86/microcode/GenuineIntel.bin", "usr/bin/sh", "init",
            "etc/os-release", "usr/lib/aarch64-linux-gnu/libc.so.6"} <= names
    assert initramfs.foreign_elf_files(str(image), AARCH64) == \
        [("usr/bin/sed", X86_64)]
    assert initramfs.elf_files(str(image)) == {
        "usr/bin/sh": AARCH64, "usr/lib/aarch64-linux-gnu/libc.so.6": AARCH64,
        "usr/bin/sed": X86_64}


def test_32_bit_and_big_endian_programs(tmp_path):
    big = b"\x7fELF\x02\x02\x01" + b"\0" * 9 + struct.pack(">HH", 2, 22) \
        + b"\0" * 44
    image = tmp_path / "initramfs.img"
    image.write_bytes(gzip.compress(cpio(tree(str(tmp_path / "t"), {
        "bin/arm": elf(40, bits=32), "bin/s390x": big}))))
    assert initramfs.elf_files(str(image)) == {"bin/arm": 40, "bin/s390x": 22}
    assert initramfs.foreign_elf_files(str(image),
                                       debianlayout.ELF_MACHINES["armhf"]) == \
        [("bin/s390x", 22)]


def test_damaged_images_are_one_clear_error(tmp_path):
    image = tmp_path / "initramfs.img"
    image.write_bytes(b"not an initramfs")
    with pytest.raises(UserError, match="unknown data at byte 0"):
        initramfs.foreign_elf_files(str(image), AARCH64)
    whole = cpio(tree(str(tmp_path / "t"), {"init": b"#!/bin/sh\n"}))
    image.write_bytes(whole[:150])
    with pytest.raises(UserError, match="truncated or damaged"):
        initramfs.foreign_elf_files(str(image), AARCH64)


def test_an_initramfs_made_with_stand_ins_is_checked(tmp_path, capsys):
    """What a stage run does after a command that ran with stand-ins."""
    from debostree import stagerun
    target = tmp_path / "tree"
    (target / "boot").mkdir(parents=True)
    image = target / "boot" / "initrd.img-6.12.0-arm64"
    image.write_bytes(gzip.compress(cpio(tree(str(tmp_path / "a"), {
        "usr/bin/sh": elf(AARCH64), "usr/bin/cp": elf(AARCH64)}))))
    stagerun.check_initramfs_images(str(target), "arm64", {})
    assert "checked /boot/initrd.img-6.12.0-arm64: every program in it is " \
        "for arm64" in capsys.readouterr().out
    # Changed by the command, and holding a host program: the stage fails.
    before = {"/boot/initrd.img-6.12.0-arm64": None}
    image.write_bytes(gzip.compress(cpio(tree(str(tmp_path / "b"), {
        "usr/bin/sh": elf(AARCH64), "usr/bin/sed": elf(X86_64)}))))
    with pytest.raises(UserError, match=r"the initramfs /boot/initrd.img-6.12.0-"
                       r"arm64, made while native stand-ins were bound in, "
                       r"holds programs for another machine \(usr/bin/sed\)"):
        stagerun.check_initramfs_images(str(target), "arm64", before)
    # Unchanged since before the command: not read again.
    from debostree import native
    stagerun.check_initramfs_images(str(target), "arm64",
                                    native.initramfs_images(str(target)))
