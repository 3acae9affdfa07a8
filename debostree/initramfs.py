"""Reading initramfs images: what files they hold, and for which machine.

An initramfs is one or more cpio archives ("newc" format, magic 070701 or
070702) laid end to end, each possibly compressed (dracut puts an
uncompressed early-microcode archive before the compressed main one).
This module owns walking such an image and the check that every ELF file in
it was built for the target's machine: a foreign build whose initramfs held
a host program would not boot.

gzip, xz, lzma and bzip2 are read with Python's own modules; zstd and lz4
(dracut's usual choices besides gzip) with the host's ``zstd``/``lz4``.
"""

import bz2
import gzip
import lzma
import shutil
import stat
import subprocess

from .errors import UserError

CPIO_MAGICS = (b"070701", b"070702")
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"
# Compressed streams by their first bytes.
COMPRESSIONS = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"\x02\x21\x4c\x18", "lz4"),   # the kernel's legacy lz4 framing
)


class Member:
    """One archive member: its path (no leading ./ or /), mode, content."""

    def __init__(self, name, mode, data):
        self.name = name
        self.mode = mode
        self.data = data

    @property
    def is_file(self):
        return stat.S_ISREG(self.mode)


def _decompress(kind, data, path):
    if kind == "gzip":
        # Several gzip members in a row read as one stream.
        return gzip.decompress(data)
    if kind in ("xz", "lzma"):
        return lzma.decompress(data)
    if kind == "bzip2":
        return bz2.decompress(data)
    tool = {"zstd": ["zstd", "-dcq"], "lz4": ["lz4", "-dcq"]}[kind]
    if shutil.which(tool[0]) is None:
        raise UserError(f"{path}: the initramfs is {kind}-compressed and "
                        f"{tool[0]} is not installed; install it "
                        f"(apt-get install {tool[0]})")
    # Not proc.run: the archive goes in and comes out as bytes, in memory.
    result = subprocess.run(tool, input=data, capture_output=True)
    if result.returncode != 0:
        raise UserError(f"{path}: {tool[0]} cannot decompress the initramfs: "
                        f"{result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def _cpio(data, offset, path):
    """Members of the cpio archive at ``offset``; the offset after it."""
    members = []
    while True:
        header = data[offset:offset + HEADER_SIZE]
        if len(header) < HEADER_SIZE or header[:6] not in CPIO_MAGICS:
            raise UserError(f"{path}: truncated or damaged cpio archive at "
                            f"byte {offset}")
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_start = offset + HEADER_SIZE
        name = data[name_start:name_start + name_size - 1].decode(
            errors="surrogateescape")
        data_start = (name_start + name_size + 3) & ~3
        end = (data_start + size + 3) & ~3
        if name == TRAILER:
            return members, end
        if name.startswith("./"):
            name = name[2:]
        members.append(Member(name.lstrip("/"), mode,
                              data[data_start:data_start + size]))
        offset = end


def members(data, path="initramfs"):
    """Every member of every archive in the image ``data`` (bytes)."""
    found = []
    offset = 0
    while offset < len(data):
        if data[offset] == 0:
            offset += 1  # padding between archives
            continue
        if data[offset:offset + 6] in CPIO_MAGICS:
            archive, offset = _cpio(data, offset, path)
            found += archive
            continue
        for magic, kind in COMPRESSIONS:
            if data.startswith(magic, offset):
                # The compressed archive runs to the end of the image.
                found += members(_decompress(kind, data[offset:], path), path)
                return found
        raise UserError(f"{path}: unknown data at byte {offset} of the "
                        "initramfs (neither cpio nor a known compression)")
    return found


def elf_machine(data):
    """The ELF e_machine of ``data``, or None when it is no ELF file."""
    if len(data) < 20 or data[:4] != b"\x7fELF":
        return None
    return int.from_bytes(data[18:20], "little" if data[5] == 1 else "big")


def elf_files(image_path):
    """{member name: e_machine} of every ELF file in the initramfs."""
    with open(image_path, "rb") as f:
        data = f.read()
    found = {}
    for member in members(data, image_path):
        machine = elf_machine(member.data) if member.is_file else None
        if machine is not None:
            found[member.name] = machine
    return found


def foreign_elf_files(image_path, machine):
    """[(member name, its e_machine)] of the ELF files in the initramfs at
    ``image_path`` that were not built for ``machine``."""
    return [(name, found) for name, found in elf_files(image_path).items()
            if found != machine]
