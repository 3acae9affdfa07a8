"""Native stand-ins for foreign bootstraps: which host programs may run in
place of the target's, and the loader patch that lets them run there."""

import os
import shutil
import struct
import subprocess

import pytest

from debostree import native

X86_64, AARCH64 = 62, 183


def elf(machine):
    """The start of an ELF64 file for ``machine`` (enough for the checks)."""
    return (b"\x7fELF\x02\x01\x01" + b"\0" * 9
            + struct.pack("<HH", 2, machine) + b"\0" * 44)


def stanza(name, version, status="install ok installed", source=None,
           arch="amd64"):
    text = f"Package: {name}\nStatus: {status}\nArchitecture: {arch}\n"
    if source:
        text += f"Source: {source}\n"
    return text + f"Version: {version}\n"


def write(path, data, mode=0o755):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, mode)


@pytest.fixture
def roots(tmp_path):
    """A host with dash, coreutils and perl-base, and an arm64 target tree
    (merged /usr, packages unpacked as a bootstrap leaves them)."""
    host, target = str(tmp_path / "host"), str(tmp_path / "target")
    os.makedirs(host + "/usr/lib/x86_64-linux-gnu")
    os.symlink("usr/lib", host + "/lib")
    write(host + "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", elf(X86_64))
    os.makedirs(host + "/lib64")
    os.symlink("../usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
               host + "/lib64/ld-linux-x86-64.so.2")
    write(host + "/var/lib/dpkg/status", "\n".join([
        stanza("dash", "0.5.12-2"),
        stanza("coreutils", "9.1-1"),
        stanza("sed", "4.9-1"),
        stanza("perl-base", "5.36.0-7+deb12u4", source="perl"),
        stanza("libc6", "2.36-9+deb12u13", source="glibc")]), 0o644)
    os.makedirs(host + "/usr/lib/x86_64-linux-gnu/perl5/5.36")
    for program in ("dash", "cp", "basename", "uname", "stdbuf", "sed", "perl"):
        write(f"{host}/usr/bin/{program}", elf(X86_64))
    os.symlink("usr/bin", host + "/bin")

    os.makedirs(target + "/usr/lib/aarch64-linux-gnu")
    for link in ("bin", "lib", "sbin"):
        os.symlink(f"usr/{link}", f"{target}/{link}")
    os.makedirs(target + "/usr/sbin")
    os.makedirs(target + "/boot")
    status = "install ok unpacked"
    write(target + "/var/lib/dpkg/status", "\n".join([
        stanza("dash", "0.5.12-2", status, arch="arm64"),
        stanza("coreutils", "9.1-1", status, arch="arm64"),
        stanza("sed", "4.9-1+deb12u1", status, arch="arm64"),
        stanza("perl-base", "5.36.0-7+deb12u4", status, source="perl",
               arch="arm64"),
        stanza("libc6", "2.36-9+deb12u13", status, source="glibc",
               arch="arm64")]), 0o644)
    lists = {"dash": ["/bin/dash"],
             "coreutils": ["/bin", "/bin/cp", "/bin/uname", "/usr/bin/stdbuf",
                           "/usr/bin/basename"],
             "sed": ["/bin/sed"],
             "perl-base": ["/usr/bin/perl"]}
    for name, paths in lists.items():
        write(f"{target}/var/lib/dpkg/info/{name}.list", "\n".join(paths) + "\n",
              0o644)
        for path in paths[1:] if name == "coreutils" else paths:
            write(target + path.replace("/bin/", "/usr/bin/", 1)
                  if path.startswith("/bin/") else target + path, elf(AARCH64))
    return host, target


def stand_ins(roots, **kwargs):
    host, target = roots
    return native.stand_ins(target, "amd64", "aarch64-linux-gnu",
                            host_root=host, **kwargs)


def test_same_versions_stand_in(roots):
    host, _ = roots
    found = stand_ins(roots)
    programs = dict((inside, source) for source, inside, _ in found.programs)
    assert programs == {"/usr/bin/dash": host + "/usr/bin/dash",
                        "/usr/bin/cp": host + "/usr/bin/cp",
                        "/usr/bin/basename": host + "/usr/bin/basename",
                        "/usr/bin/perl": host + "/usr/bin/perl"}
    assert found.host_lib == (host + "/usr/lib/x86_64-linux-gnu",
                              "/usr/lib/x86_64-linux-gnu")
    assert found.loader == host + "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    text = found.describe()
    assert "dash 0.5.12-2 (1 program)" in text
    assert "coreutils 9.1-1 (2 programs)" in text
    assert "sed: host 4.9-1, target 4.9-1+deb12u1" in text
    # The host's compiled perl modules are shown to a native perl only
    # through links to the target's (perl_module_view).
    assert found.hidden == []
    assert found.perl_view == (host + "/usr/lib/x86_64-linux-gnu/perl5",
                               "/usr/lib/x86_64-linux-gnu/perl5",
                               "/usr/lib/aarch64-linux-gnu/perl5")


def test_a_different_c_library_turns_them_off(roots):
    host, _ = roots
    with open(host + "/var/lib/dpkg/status") as f:
        status = f.read()
    with open(host + "/var/lib/dpkg/status", "w") as f:
        f.write(status.replace("2.36-9+deb12u13", "2.36-9+deb12u10"))
    found = stand_ins(roots)
    assert not found
    assert "libc6: host 2.36-9+deb12u10, target 2.36-9+deb12u13" in found.describe()


def test_machine_reporters_stay_emulated(roots):
    found = stand_ins(roots)
    insides = [inside for _, inside, _ in found.programs]
    assert "/usr/bin/uname" not in insides
    assert "/usr/bin/stdbuf" not in insides
    # while the rest of the same package stands in
    assert "/usr/bin/cp" in insides and "coreutils 9.1-1 (2 programs)" \
        in found.describe()


def test_kernels_turn_them_off(roots):
    _, target = roots
    write(target + "/boot/vmlinuz-6.1.0-arm64", b"kernel", 0o644)
    found = stand_ins(roots)
    assert not found and "/boot" in found.describe()
    os.unlink(target + "/boot/vmlinuz-6.1.0-arm64")
    os.makedirs(target + "/usr/lib/modules/6.1.0-arm64")
    assert not stand_ins(roots)
    os.rmdir(target + "/usr/lib/modules/6.1.0-arm64")
    # An initramfs generator without a kernel has nothing to copy into.
    write(target + "/usr/sbin/mkinitramfs", "#!/bin/sh\n")
    assert stand_ins(roots)


def test_a_stage_that_keeps_the_initramfs_apart_may_have_a_kernel(roots, tmp_path):
    from debarchive import build_deb
    _, target = roots
    write(target + "/boot/vmlinuz-6.1.0-arm64", b"kernel", 0o644)
    found = stand_ins(roots, initramfs_kept_apart="the initramfs is deferred")
    assert found and "with a kernel: the initramfs is deferred" in found.describe()
    kernel = build_deb(str(tmp_path), "linux-image-test", files={
        "usr/lib/modules/6.1.0-test/kernel/m.ko": "x\n"})
    assert stand_ins(roots, incoming=native.deb_paths([kernel]),
                     initramfs_kept_apart="deferred")
    # The host runtime's paths still turn them off.
    amd64 = build_deb(str(tmp_path), "libfoo", files={
        "usr/lib/x86_64-linux-gnu/libfoo.so.1": "x\n"})
    assert not stand_ins(roots, incoming=native.deb_paths([amd64]),
                         initramfs_kept_apart="deferred")


def test_initramfs_images_show_what_a_command_made(tmp_path):
    target = str(tmp_path)
    os.makedirs(target + "/usr/lib/modules/6.1.0-arm64/kernel")
    write(target + "/usr/lib/modules/6.1.0-arm64/kernel/initrd-helper.ko", b"x")
    write(target + "/boot/vmlinuz-6.1.0-arm64", b"kernel", 0o644)
    os.symlink("boot/initrd.img-6.1.0-arm64", target + "/initrd.img")
    assert native.initramfs_images(target) == {}
    write(target + "/boot/initrd.img-6.1.0-arm64", b"image", 0o644)
    write(target + "/boot/0123/6.1.0-arm64/initrd", b"image", 0o644)
    write(target + "/usr/lib/modules/6.1.0-arm64/initramfs.img", b"image", 0o644)
    before = native.initramfs_images(target)
    assert sorted(before) == ["/boot/0123/6.1.0-arm64/initrd",
                              "/boot/initrd.img-6.1.0-arm64",
                              "/usr/lib/modules/6.1.0-arm64/initramfs.img"]
    write(target + "/boot/initrd.img-6.1.0-arm64", b"another image", 0o644)
    after = native.initramfs_images(target)
    changed = [p for p in after if before.get(p) != after[p]]
    assert changed == ["/boot/initrd.img-6.1.0-arm64"]


def test_host_runtime_paths_in_the_tree_turn_them_off(roots):
    _, target = roots
    os.makedirs(target + "/usr/lib/x86_64-linux-gnu")
    found = stand_ins(roots)
    assert not found and "/usr/lib/x86_64-linux-gnu" in found.describe()


def add_package(root, name, version, paths, data=b"x", arch="arm64"):
    with open(root + "/var/lib/dpkg/status", "a") as f:
        f.write("\n" + stanza(name, version, arch=arch))
    write(f"{root}/var/lib/dpkg/info/{name}.list", "\n".join(paths) + "\n", 0o644)
    for path in paths:
        write(root + path, data, 0o644)


XS_MODULE = ["/usr/lib/{}/perl5/5.36/Text/CharWidth.pm",
             "/usr/lib/{}/perl5/5.36/auto/Text/CharWidth/CharWidth.so"]


def test_compiled_perl_modules_need_their_host_builds(roots):
    host, target = roots
    add_package(target, "libtext-charwidth-perl", "0.04-11",
                [p.format("aarch64-linux-gnu") for p in XS_MODULE])
    found = stand_ins(roots)
    insides = [inside for _, inside, _ in found.programs]
    assert "/usr/bin/perl" not in insides and "/usr/bin/dash" in insides
    assert "perl-base: libtext-charwidth-perl 0.04-11 has compiled perl " \
        "modules with no host build" in found.describe()
    # The host build of another version does not do either.
    add_package(host, "libtext-charwidth-perl", "0.04-10",
                [p.format("x86_64-linux-gnu") for p in XS_MODULE], arch="amd64")
    assert "/usr/bin/perl" not in [i for _, i, _ in stand_ins(roots).programs]
    # Of the same source version (a binNMU apart), it does.
    with open(host + "/var/lib/dpkg/status") as f:
        text = f.read().replace("Version: 0.04-10\n",
                                "Source: libtext-charwidth-perl (0.04-11)\n"
                                "Version: 0.04-11+b1\n")
    write(host + "/var/lib/dpkg/status", text, 0o644)
    found = stand_ins(roots)
    assert "/usr/bin/perl" in [i for _, i, _ in found.programs]
    # perl's own compiled modules (its archlib) keep perl emulated.
    os.makedirs(target + "/usr/lib/aarch64-linux-gnu/perl/5.36")
    found = stand_ins(roots)
    assert "/usr/bin/perl" not in [i for _, i, _ in found.programs]
    assert "compiled perl modules of perl's own" in found.describe()


def test_incoming_compiled_perl_modules_need_their_host_builds(roots, tmp_path):
    from debarchive import build_deb
    host, _ = roots
    xs = build_deb(str(tmp_path), "libtext-charwidth-perl", version="0.04-11",
                   files={p.format("aarch64-linux-gnu").lstrip("/"): "x"
                          for p in XS_MODULE})
    found = stand_ins(roots, incoming=native.deb_paths([xs]))
    assert "/usr/bin/perl" not in [i for _, i, _ in found.programs]
    assert "libtext-charwidth-perl 0.04-11 has compiled" in found.describe()
    add_package(host, "libtext-charwidth-perl", "0.04-11",
                [p.format("x86_64-linux-gnu") for p in XS_MODULE], arch="amd64")
    found = stand_ins(roots, incoming=native.deb_paths([xs]))
    assert "/usr/bin/perl" in [i for _, i, _ in found.programs]


def test_the_perl_module_view_links_to_the_targets_modules(tmp_path):
    host_dir = tmp_path / "host" / "perl5"
    for path in XS_MODULE:
        write(str(host_dir) + path.format("")[len("/usr/lib//perl5"):], b"host")
    view = tmp_path / "view"
    native.perl_module_view(str(host_dir), "/usr/lib/aarch64-linux-gnu/perl5",
                            str(view))
    pm = view / "5.36" / "Text" / "CharWidth.pm"
    assert os.readlink(pm) == "/usr/lib/aarch64-linux-gnu/perl5/5.36/Text/CharWidth.pm"
    so = view / "5.36" / "auto" / "Text" / "CharWidth" / "CharWidth.so"
    assert not so.is_symlink() and so.read_bytes() == b"host"


def test_packages_the_stage_replaces_stay_emulated(roots):
    assert stand_ins(roots, keep_versions={"dash": "0.5.12-2"})
    found = stand_ins(roots, keep_versions={"dash": "0.5.12-3"})
    insides = [inside for _, inside, _ in found.programs]
    assert "/usr/bin/dash" not in insides and "/usr/bin/cp" in insides
    assert "dash: replaced by this stage" in found.describe()


def test_binary_versions_decide_what_a_stage_replaces(roots):
    """A binNMU has a binary version apart from its source's: the stage's
    binary version is compared with the installed binary version."""
    host, target = roots
    for root in (host, target):
        with open(root + "/var/lib/dpkg/status") as f:
            status = f.read()
        with open(root + "/var/lib/dpkg/status", "w") as f:
            f.write(status.replace("Package: dash\n", "Package: dash\n"
                                   "Source: dash (0.5.12-2)\n").replace(
                "Version: 0.5.12-2\n", "Version: 0.5.12-2+b1\n"))
    kept = stand_ins(roots, keep_versions={"dash": "0.5.12-2+b1"})
    assert "/usr/bin/dash" in [inside for _, inside, _ in kept.programs]
    assert "dash 0.5.12-2 (1 program)" in kept.describe()
    replaced = stand_ins(roots, keep_versions={"dash": "0.5.12-2+b2"})
    insides = [inside for _, inside, _ in replaced.programs]
    assert "/usr/bin/dash" not in insides and "/usr/bin/cp" in insides


def test_nothing_in_common(roots):
    host, _ = roots
    write(host + "/var/lib/dpkg/status", stanza("dash", "0.5.11-1") + "\n"
          + stanza("libc6", "2.36-9+deb12u13", source="glibc"), 0o644)
    found = stand_ins(roots)
    assert not found
    assert "no host program has the target's version" in found.describe()


def test_mounts_copy_and_patch(roots, tmp_path):
    if native._elf_machine("/usr/bin/true") != X86_64:
        pytest.skip("not an x86-64 host")
    host, _ = roots
    shutil.copyfile("/usr/bin/true", host + "/usr/bin/dash")
    found = stand_ins(roots)
    # The fake programs have no PT_INTERP: they are left out (and not counted
    # any more); the real one is copied and patched; the runtime comes along
    # with the host's compiled perl modules hidden.
    binds = found.mounts(str(tmp_path / "native"))
    native_dir = str(tmp_path / "native")
    # (perl did not stand in after all: its compiled modules are hidden.)
    assert binds[:3] == [found.host_lib, (native_dir + "/ld.so", native.LOADER),
                         (native_dir + "/empty", "/usr/lib/x86_64-linux-gnu/perl5")]
    assert os.listdir(native_dir + "/empty") == []
    [(copy, inside)] = binds[3:]
    assert inside == "/usr/bin/dash"
    with open(copy, "rb") as f:
        assert (native.LOADER.encode() + b"\0") in f.read()
    assert found.describe() == ("native stand-ins: dash 0.5.12-2 (1 program); "
                                "emulated: sed: host 4.9-1, target 4.9-1+deb12u1")
    # When none is left, nothing is mounted and the log says why.
    os.unlink(host + "/usr/bin/dash")
    write(host + "/usr/bin/dash", elf(X86_64))
    found = stand_ins(roots)
    assert found.mounts(native_dir) == [] and not found
    assert "none (no host program could be pointed at" in found.describe()


def test_set_interpreter_makes_a_runnable_program(tmp_path):
    """A host program pointed at a loader by a relative path (resolved from
    the working directory) still runs: the patch is all it needs."""
    program = str(tmp_path / "echo")
    shutil.copyfile("/usr/bin/echo", program)
    os.chmod(program, 0o755)
    loader = os.path.realpath("/lib64/ld-linux-x86-64.so.2") \
        if os.path.exists("/lib64/ld-linux-x86-64.so.2") else None
    if loader is None:
        pytest.skip("not an x86-64 host")
    shutil.copyfile(loader, str(tmp_path / "l.so"))
    os.chmod(str(tmp_path / "l.so"), 0o755)
    assert native.set_interpreter(program, "./l.so")
    out = subprocess.run([program, "patched"], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    assert out.stdout == "patched\n"
    with open(program, "rb") as f:
        assert b"./l.so\0" in f.read()
    # A longer path than the segment holds is refused, the file untouched.
    before = open(program, "rb").read()
    assert not native.set_interpreter(program, "/" + "x" * 200)
    assert open(program, "rb").read() == before


def test_set_interpreter_refuses_non_elf(tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert not native.set_interpreter(str(script), "/run/ld.so")


def test_what_install_stages_bring_is_checked(roots, tmp_path):
    from debarchive import build_deb
    tool = build_deb(str(tmp_path), "tool", files={"usr/bin/tool": "x\n"})
    kernel = build_deb(str(tmp_path), "linux-image-test", files={
        "boot/vmlinuz-6.1.0-test": "kernel\n"})
    modules = build_deb(str(tmp_path), "modules", files={
        "lib/modules/6.1.0-test/extra/m.ko": "x\n"})
    xs = build_deb(str(tmp_path), "libthing-perl", files={
        "usr/lib/aarch64-linux-gnu/perl5/5.36/Thing.pm": "1;\n"})
    amd64 = build_deb(str(tmp_path), "libfoo", files={
        "lib/x86_64-linux-gnu/libfoo.so.1": "x\n"})
    assert (tool, "/usr/bin/tool") in native.deb_paths([tool])

    assert stand_ins(roots, incoming=native.deb_paths([tool]))
    for deb, brought in ((kernel, "/boot/vmlinuz-6.1.0-test"),
                         (modules, "/lib/modules/6.1.0-test"),
                         (amd64, "/lib/x86_64-linux-gnu")):
        found = stand_ins(roots, incoming=native.deb_paths([tool, deb]))
        assert not found
        assert f"{os.path.basename(deb)} brings {brought}" in found.describe()
    found = stand_ins(roots, incoming=native.deb_paths([xs]))
    insides = [inside for _, inside, _ in found.programs]
    assert "/usr/bin/perl" not in insides and "/usr/bin/dash" in insides
    assert "perl-base: libthing-perl" in found.describe()
