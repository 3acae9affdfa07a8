"""Debian's per-architecture layout, in one table: the architectures this
tool builds, their multiarch triplets, dynamic loaders and ELF machines,
which top-level directories a merged /usr links, where fakeroot's library
is, and the UEFI names and partition types of bootable images."""

# Debian architecture -> multiarch triplet.
TRIPLETS = {
    "amd64": "x86_64-linux-gnu",
    "arm64": "aarch64-linux-gnu",
    "armhf": "arm-linux-gnueabihf",
    "armel": "arm-linux-gnueabi",
    "i386": "i386-linux-gnu",
    "ppc64el": "powerpc64le-linux-gnu",
    "riscv64": "riscv64-linux-gnu",
    "s390x": "s390x-linux-gnu",
    "mips64el": "mips64el-linux-gnuabi64",
}

# The Debian architecture names this tool knows how to build.
ARCHITECTURES = tuple(TRIPLETS)

# Debian architecture -> the ELF e_machine of its programs.
ELF_MACHINES = {"amd64": 62, "arm64": 183, "armhf": 40, "armel": 40,
                "i386": 3, "ppc64el": 21, "riscv64": 243, "s390x": 22,
                "mips64el": 8}

# fakeroot's preload library directory, per architecture.
FAKEROOT_LIB_DIRS = {arch: f"/usr/lib/{triplet}/libfakeroot"
                     for arch, triplet in TRIPLETS.items()}

# Host architectures whose programs can stand in for a foreign target's
# (native.py): (multiarch triplet, dynamic loader, ELF e_machine).
HOST_RUNTIMES = {
    "amd64": (TRIPLETS["amd64"], "/lib64/ld-linux-x86-64.so.2", 62),
    "arm64": (TRIPLETS["arm64"], "/lib/ld-linux-aarch64.so.1", 183),
    "ppc64el": (TRIPLETS["ppc64el"], "/lib64/ld64.so.2", 21),
    "s390x": (TRIPLETS["s390x"], "/lib/ld64.so.1", 22),
    "riscv64": (TRIPLETS["riscv64"], "/lib/ld-linux-riscv64-lp64d.so.1", 243),
}

# Host architectures for which a foreign recipe's lockfile pins the builds
# of its helper programs that may stand in for emulated ones (native.py):
# the machines images are usually built on.
STAND_IN_HOSTS = ("amd64",)

# The top-level links of a merged /usr (usrmerge's, per architecture), for
# releases whose packages do not ship them themselves (up to Debian 12).
MERGED_USR_LINKS = {
    "amd64": ("bin", "sbin", "lib", "lib32", "lib64", "libx32"),
    "i386": ("bin", "sbin", "lib", "lib64", "libx32"),
    "ppc64el": ("bin", "sbin", "lib", "lib64"),
    "s390x": ("bin", "sbin", "lib", "lib32"),
    "mips64el": ("bin", "sbin", "lib", "lib32", "lib64", "libo32"),
}
MERGED_USR_DEFAULT = ("bin", "sbin", "lib")


def merged_usr_dirs(arch):
    return MERGED_USR_LINKS.get(arch, MERGED_USR_DEFAULT)


# Bootable images: GRUB's EFI platform and the removable-media file name.
EFI = {"amd64": ("x86_64-efi", "BOOTX64.EFI"),
       "arm64": ("arm64-efi", "BOOTAA64.EFI")}
# The root partition's type GUID (Discoverable Partitions Specification).
ROOT_TYPE = {"amd64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
             "arm64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"}
