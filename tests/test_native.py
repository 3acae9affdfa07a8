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
        stanza("perl-base", "5.36.0-7+deb12u4", source="perl")]), 0o644)
    for program in ("dash", "cp", "basename", "uname", "sed", "perl"):
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
               arch="arm64")]), 0o644)
    lists = {"dash": ["/bin/dash"],
             "coreutils": ["/bin", "/bin/cp", "/bin/uname", "/usr/bin/basename"],
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
    programs = dict((inside, source) for source, inside in found.programs)
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


def test_machine_reporters_stay_emulated(roots):
    insides = [inside for _, inside in stand_ins(roots).programs]
    assert "/usr/bin/uname" not in insides


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


def test_host_runtime_paths_in_the_tree_turn_them_off(roots):
    _, target = roots
    os.makedirs(target + "/usr/lib/x86_64-linux-gnu")
    found = stand_ins(roots)
    assert not found and "/usr/lib/x86_64-linux-gnu" in found.describe()


def test_compiled_perl_modules_keep_perl_emulated(roots):
    _, target = roots
    os.makedirs(target + "/usr/lib/aarch64-linux-gnu/perl5/5.36")
    found = stand_ins(roots)
    assert "/usr/bin/perl" not in [inside for _, inside in found.programs]
    assert "perl-base: the tree has compiled perl modules" in found.describe()


def test_packages_the_stage_replaces_stay_emulated(roots):
    assert stand_ins(roots, keep_versions={"dash": "0.5.12-2"})
    found = stand_ins(roots, keep_versions={"dash": "0.5.12-3"})
    assert "/usr/bin/dash" not in [inside for _, inside in found.programs]
    assert "dash: replaced by this stage" in found.describe()


def test_nothing_in_common(roots):
    host, _ = roots
    write(host + "/var/lib/dpkg/status", stanza("dash", "0.5.11-1"), 0o644)
    found = stand_ins(roots)
    assert not found
    assert "no host program has the target's version" in found.describe()


def test_mounts_copy_and_patch(roots, tmp_path):
    found = stand_ins(roots)
    # The fake programs have no PT_INTERP: they are left out, the runtime stays.
    binds = found.mounts(str(tmp_path / "native"))
    assert binds[0] == found.host_lib
    assert binds[1] == (str(tmp_path / "native" / "ld.so"), native.LOADER)
    assert len(binds) == 2


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


def test_install_stages_that_bring_kernels_are_found(tmp_path):
    from debarchive import build_deb
    tool = build_deb(str(tmp_path), "tool", files={"usr/bin/tool": "x\n"})
    kernel = build_deb(str(tmp_path), "linux-image-test", files={
        "boot/vmlinuz-6.1.0-test": "kernel\n"})
    modules = build_deb(str(tmp_path), "modules", files={
        "usr/lib/modules/6.1.0-test/extra/m.ko": "x\n"})
    assert native.kernel_in([tool]) is None
    assert native.kernel_in([tool, kernel]) == (kernel, "/boot/vmlinuz-6.1.0-test")
    assert native.kernel_in([modules])[1] == "/usr/lib/modules/6.1.0-test"
