"""Disk images of the server recipe, booted under QEMU (OVMF), upgraded from
the published repository served on 127.0.0.1, and rolled back.

The guest reaches the host's 127.0.0.1 as 10.0.2.2 (QEMU's user network), so
the image's remote URL is set to that in the publish configuration.  Under
KVM a boot takes seconds; under TCG (no usable /dev/kvm) about a minute.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

import vm as vmlib
from conftest import TOP, remove_tree
from debarchive import Server

pytestmark = [pytest.mark.network, pytest.mark.sandbox, pytest.mark.slow,
              pytest.mark.vm]

BRANCH = "exampleos/trixie/amd64/server"
# SSH host key fingerprints of each first boot of a copy of the image.
HOST_KEYS = []
PASSWORD = "Ex4mple-OS-t3st"
# The kernel's machine name and the serial console the recipe sets.
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}
SERIAL = {"amd64": "ttyS0", "arm64": "ttyAMA0"}


def run(argv, cwd, env=None):
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def fingerprint(key):
    listing = run(["gpg", "--homedir", key.home, "--with-colons",
                   "--list-secret-keys"], cwd=key.home).stdout
    return [line.split(":")[9] for line in listing.splitlines()
            if line.startswith("fpr:")][0]


@pytest.fixture(scope="module")
def project(tmp_path_factory, pool, key):
    """The server recipe with its lockfile in a project of its own, its
    image built and its branch published (signed) and served."""
    if vmlib.missing():
        pytest.fail("missing for boot tests: " + ", ".join(vmlib.missing()))
    work = tmp_path_factory.mktemp("image")
    (work / "recipes" / "files").mkdir(parents=True)
    (work / "lockfiles").mkdir()
    shutil.copy(os.path.join(TOP, "recipes", "server.yaml"), work / "recipes")
    shutil.copytree(os.path.join(TOP, "recipes", "files", "server"),
                    work / "recipes" / "files" / "server")
    for arch in ("amd64", "arm64"):
        shutil.copy(os.path.join(TOP, "lockfiles", f"server.{arch}.lock"),
                    work / "lockfiles")
    server = Server(work / "build" / "publish")
    port = server.url.rsplit(":", 1)[1]
    settings = work / "publish.yaml"
    settings.write_text(f"url: http://10.0.2.2:{port}\n"
                        f"gpg-key: {fingerprint(key)}\n"
                        f"gpg-homedir: {key.home}\n")
    env = {"DEBOSTREE_PUBLISH_CONFIG": str(settings)}
    run([sys.executable, os.path.join(TOP, "configure.py"), "--recipes",
         "recipes", "--lockfiles", "lockfiles", "--pool", pool], work, env)
    result = run(["ninja", "server/amd64.img"], work, env)
    assert "signed (gpg)" in result.stdout
    yield work, env, server
    server.close()
    remove_tree(work)


def branch_commit(work, arch="amd64"):
    return (work / "build" / "branches" / "server" / f"{arch}.commit"
            ).read_text().strip()


def partitions(disk):
    """{name: (start byte, size in bytes, type)} of a GPT disk image."""
    table = json.loads(run(["sfdisk", "--json", str(disk)], "/").stdout)
    return {p["name"]: (p["start"] * 512, p["size"] * 512, p["type"])
            for p in table["partitiontable"]["partitions"]}


def extract(disk, part, dest):
    start, size, _ = part
    run(["dd", f"if={disk}", f"of={dest}", "bs=1M", f"skip={start >> 20}",
         f"count={size >> 20}", "conv=sparse", "status=none"], "/")
    return dest


def check_layout(disk, tmp_path, commit, efi_binary):
    """The partitions, the GRUB binary on the ESP, the deployed commit on
    the root filesystem and ostree's boot entry on the boot filesystem,
    read without mounting anything (mtools, debugfs)."""
    parts = partitions(disk)
    assert list(parts) == ["ESP", "boot", "root"]
    assert parts["ESP"][2] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    esp = extract(disk, parts["ESP"], tmp_path / "esp.img")
    listing = run(["mdir", "-i", str(esp), "-b", "::/EFI/BOOT"], "/").stdout
    assert efi_binary in listing
    root = extract(disk, parts["root"], tmp_path / "root.img")
    deployed = run(["debugfs", "-R", "ls -p /ostree/deploy/exampleos/deploy",
                    str(root)], "/").stdout
    assert f"/{commit}.0/" in deployed
    origin = run(["debugfs", "-R", f"cat /ostree/deploy/exampleos/deploy/"
                  f"{commit}.0.origin", str(root)], "/").stdout
    assert "refspec=exampleos:exampleos/trixie/" in origin
    boot = extract(disk, parts["boot"], tmp_path / "boot.img")
    grub_cfg = run(["debugfs", "-R", "cat /loader/grub.cfg", str(boot)], "/").stdout
    assert "ostree=/ostree/boot." in grub_cfg and "console=tty0" in grub_cfg
    # GRUB's modules beside grub.cfg, as grub-install leaves them: the
    # device's grub-mkconfig menu loads some, and fwsetup is in command.lst.
    platform = "x86_64-efi" if efi_binary == "BOOTX64.EFI" else "arm64-efi"
    modules = run(["debugfs", "-R", f"ls -p /grub/{platform}", str(boot)], "/").stdout
    for name in ("command.lst", "efifwsetup.mod", "gfxterm.mod", "normal.mod"):
        assert f"/{name}/" in modules, modules


def seconds(machine_or_arch, kvm_seconds):
    """A timeout for a step that takes ``kvm_seconds`` under KVM: an arm64
    guest is always emulated here (TCG)."""
    arch = getattr(machine_or_arch, "arch", machine_or_arch)
    return vmlib.timeout(kvm_seconds) if arch == "amd64" else kvm_seconds * 8


def boot(disk, workdir, arch="amd64", drives=()):
    machine = vmlib.VM(disk, workdir, arch=arch, drives=drives).start()
    # The login prompt, not systemd's "Reached target ... Multi-User
    # System": with show_status=auto systemd may stop printing status lines
    # once the serial getty runs (a CI run under TCG booted, started ssh,
    # showed the prompt and never printed that line).
    machine.expect(r"login: ", seconds(arch, 180))
    assert_no_grub_errors(machine)
    return machine


def assert_no_grub_errors(machine):
    """GRUB's messages before the kernel's (this QEMU run's output) have no
    "error: ..." line: a missing module or command shows there even when
    the machine boots."""
    output = machine.tail(chars=10 ** 7)
    kernel = re.search(r"EFI stub|Linux version|\[\s+0\.0+\]", output)
    grub = output[:kernel.start()] if kernel else output
    errors = re.findall(r"error: [^\r\n]*", grub)
    assert not errors, f"GRUB reported {errors}; console:\n{grub[-3000:]}"


def login(machine, first=False):
    machine.send("admin\n")
    machine.expect("Password: ", seconds(machine, 60))
    machine.send("admin\n" if first else PASSWORD + "\n")
    if first:  # the recipe expires the demonstration password
        machine.expect("Current password: ", seconds(machine, 30))
        machine.send("admin\n")
        machine.expect("New password: ", seconds(machine, 60))
        machine.send(PASSWORD + "\n")
        machine.expect("Retype new password: ", seconds(machine, 60))
        machine.send(PASSWORD + "\n")
    machine.expect(r"admin@exampleos\S*:~\$ ", seconds(machine, 60))
    machine.send("stty -echo; bind 'set enable-bracketed-paste off'; "
                 "export PS1='$ ' SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat\n")
    assert machine.run("true", seconds(machine, 60))[0] == 0


def choose_second_boot_entry(machine):
    """Select GRUB's second menu entry and boot it.  'v' is GRUB's one-byte
    key for "down" (an arrow key's escape sequence can be taken apart by
    GRUB's serial console under emulation); the serial menu marks the
    selected entry with '*', which is checked before Enter."""
    machine.expect(r"executed automatically", seconds(machine, 60))
    selected = r"\*Debian[^\r\n]*\(ostree:1\)"
    for attempt in range(2):
        machine.send("v")
        try:
            machine.expect(selected, seconds(machine, 30))
            break
        except AssertionError:
            if attempt:
                raise
    machine.send("\r")


def sudo(machine, command, kvm_seconds=60):
    return machine.run(f"echo '{PASSWORD}' | sudo -S -p '' sh -c '{command}'",
                       seconds(machine, kvm_seconds))


def host_key(machine):
    """The fingerprint of the machine's SSH host key, made at its first
    boot (the image has none), with the SSH server running on it."""
    code, out = machine.run("systemctl is-active ssh", seconds(machine, 60))
    assert code == 0 and out.strip() == "active", out
    code, out = machine.run("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub",
                            seconds(machine, 60))
    assert code == 0, out
    return out.split()[1]


def booted_commit(machine):
    status, text = machine.run("ostree admin status", seconds(machine, 60))
    assert status == 0, text
    match = re.search(r"^\* \S+ ([0-9a-f]{64})\.\d", text, re.M)
    assert match, text
    return match.group(1), text


def test_tools_boot_boots_a_copy_with_ssh_forwarded(project, tmp_path):
    """tools/boot (what 'ninja server/amd64.boot' runs): the image boots to
    a login on the serial console, the guest's SSH answers on the host's
    port, and the image is left as it was."""
    work, env, _ = project
    image = work / "build" / "images" / "server.amd64.img"
    before = os.stat(image).st_mtime_ns
    port = str(vmlib.machines.free_port())
    accel = {} if vmlib.kvm_usable() else {"DEBOSTREE_ACCEL": "tcg"}
    process = subprocess.Popen(
        [sys.executable, os.path.join(TOP, "tools", "boot"), "--ssh-port",
         port, "server/amd64"], cwd=work, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, **env, **accel})
    console = []
    reader = threading.Thread(target=lambda: console.extend(
        iter(lambda: process.stdout.read1(4096), b"")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + vmlib.timeout(180)
        while b"login: " not in b"".join(console):
            assert process.poll() is None and time.monotonic() < deadline, \
                b"".join(console)[-3000:].decode(errors="replace")
            time.sleep(1)
        text = b"".join(console).decode(errors="replace")
        assert f"ssh -p {port} USER@127.0.0.1" in text
        with socket.create_connection(("127.0.0.1", int(port)),
                                      timeout=60) as sock:
            assert sock.recv(64).startswith(b"SSH-2.0-")
    finally:
        process.terminate()
        process.wait(60)
    assert os.stat(image).st_mtime_ns == before
    assert not [p for p in os.listdir(image.parent) if p.startswith("boot-")]


def test_image_boots_the_published_commit(project, tmp_path):
    work, env, server = project
    commit = branch_commit(work)
    disk = tmp_path / "disk.img"
    run(["cp", "--sparse=always", str(work / "build" / "images" /
                                      "server.amd64.img"), str(disk)], tmp_path)
    assert os.path.getsize(disk) == 3 * 1024 ** 3  # image.size in the recipe
    check_layout(disk, tmp_path, commit, "BOOTX64.EFI")
    machine = boot(disk, tmp_path)
    try:
        login(machine, first=True)
        booted, status = booted_commit(machine)
        assert booted == commit, status
        code, url = machine.run("ostree remote show-url exampleos")
        assert code == 0 and url.strip().endswith(server.url.rsplit(":", 1)[1])
        code, cmdline = machine.run("cat /proc/cmdline")
        assert "console=tty0" in cmdline and "console=ttyS0,115200" in cmdline
        # One command each: every status counts.
        code, out = machine.run("readlink /var/lib/dpkg")
        assert code == 0 and out.strip() == "../../usr/lib/sysimage/dpkg", out
        code, out = machine.run("stat -c %F /home/admin")
        assert code == 0 and out.strip() == "directory", out
        code, out = machine.run("dpkg-query -W -f='${Status}' openssh-server")
        assert code == 0 and out.strip() == "install ok installed", out
        HOST_KEYS.append(host_key(machine))
    finally:
        machine.kill()


def reboot(machine):
    machine.send(f"echo '{PASSWORD}' | sudo -S -p '' systemctl reboot\n")
    machine.reboot(seconds(machine, 90))


def next_hostname(name):
    """exampleos, exampleos2, exampleos3, ..."""
    match = re.fullmatch(r"(.*?)(\d*)", name)
    return f"{match.group(1)}{int(match.group(2) or 1) + 1}"


def upgrade_and_rollback(project, tmp_path, arch, sysext=None):
    """A copy of the image boots its branch's commit and gets local state
    (and, given ``sysext``, merges that system extension image of this
    build and uses its tool); a second version of the recipe (another
    hostname) is published; the machine upgrades to it with the static
    delta, keeps its /etc and /var changes (and refuses the extension,
    made for the other base), boots the previous deployment from GRUB's
    menu and drops the newer one."""
    work, env, server = project
    hostname_file = work / "recipes" / "files" / "server" / "hostname"
    old_name = hostname_file.read_text().strip()
    first = branch_commit(work, arch)
    disk = tmp_path / "disk.img"
    run(["cp", "--sparse=always", str(work / "build" / "images" /
                                      f"server.{arch}.img"), str(disk)], tmp_path)
    machine = boot(disk, tmp_path, arch, drives=[sysext] if sysext else [])
    try:
        login(machine, first=True)
        assert booted_commit(machine)[0] == first
        if sysext:
            code, out = sudo(machine, "mkdir -p /var/lib/extensions && "
                             "cp /dev/vdb /var/lib/extensions/tools.raw && "
                             "SYSTEMD_LOG_LEVEL=debug systemd-sysext merge "
                             "2>&1 | grep -i -e tools -e merg -e level")
            assert code == 0, out
            code, out = machine.run("tree --version; systemd-sysext status "
                                    "--no-pager", seconds(machine, 60))
            assert code == 0 and out.startswith("tree v"), out
            assert "tools" in out, out
        code, out = machine.run("uname -m; cat /proc/cmdline",
                                seconds(machine, 60))
        assert code == 0 and out.split()[0] == UNAME[arch], out
        assert f"console={SERIAL[arch]}," in out, out
        # Another copy of the image, another machine: its own host keys.
        key = host_key(machine)
        assert key not in HOST_KEYS
        HOST_KEYS.append(key)
        # Local state that an upgrade must keep.
        code, out = sudo(machine, "echo local-change > /etc/debostree-test && "
                         "mkdir -p /var/lib/debostree-test && "
                         "echo kept > /var/lib/debostree-test/data")
        assert code == 0, out
        machine.send(f"echo '{PASSWORD}' | sudo -S -p '' systemctl poweroff\n")
        machine.wait_exit(seconds(machine, 60))
    finally:
        machine.kill()

    # A second version of the recipe, published (this architecture's
    # branch only).
    new_name = next_hostname(old_name)
    hostname_file.write_text(new_name + "\n")
    result = run(["ninja", f"server/{arch}/publish"], work, env)
    second = branch_commit(work, arch)
    assert second != first
    assert f"delta from {first[:12]}" in result.stdout

    machine = boot(disk, tmp_path, arch)
    try:
        login(machine)
        served_before = len(server.requests)
        code, out = sudo(machine, "ostree admin upgrade", 300)
        assert code == 0, out
        served = [r for r in server.requests[served_before:] if "/deltas/" in r]
        assert served, server.requests[-20:]  # the static delta was used
        reboot(machine)
        machine.expect(rf"{new_name} login: ", seconds(machine, 180))
        # This boot's menu was written by the device's grub-mkconfig.
        assert_no_grub_errors(machine)
        login(machine)
        booted, status = booted_commit(machine)
        assert booted == second, status
        assert first in status  # kept as the rollback deployment
        code, out = machine.run("cat /etc/debostree-test "
                                "/var/lib/debostree-test/data /etc/hostname",
                                seconds(machine, 60))
        assert out.split() == ["local-change", "kept", new_name], out
        if sysext:
            # Made for the first build (its SYSEXT_LEVEL): refused here.
            code, out = sudo(machine, "systemd-sysext refresh 2>&1; "
                             "command -v tree || echo no-tree")
            assert "1 ignored due to incompatible image" in out, out
            assert "no-tree" in out, out

        # Roll back: the boot menu's second entry is the previous
        # deployment; booted there, drop the newer one so that the previous
        # one is the default again.
        reboot(machine)
        machine.expect(r"GNU GRUB", seconds(machine, 120))
        choose_second_boot_entry(machine)
        machine.expect(rf"{old_name} login: ", seconds(machine, 180))
        login(machine)
        assert booted_commit(machine)[0] == first
        code, out = sudo(machine, "ostree admin undeploy 0")
        assert code == 0, out
        reboot(machine)
        machine.expect(rf"{old_name} login: ", seconds(machine, 180))
        login(machine)
        booted, status = booted_commit(machine)
        assert booted == first and second not in status, status
    finally:
        machine.kill()


def test_upgrade_and_rollback(project, tmp_path):
    work, env, _ = project
    result = run(["ninja", "server/amd64/sysext/tools"], work, env)
    assert "SYSEXT server/amd64/tools" in result.stdout
    sysext = work / "build" / "sysexts" / "server" / "amd64" / "tools.raw"
    upgrade_and_rollback(project, tmp_path, "amd64", sysext=sysext)


@pytest.mark.qemu
def test_arm64_image_builds(project, tmp_path):
    """The same recipe for arm64 (maintainer scripts and dracut under
    qemu-user): an image with GRUB for arm64 EFI."""
    work, env, server = project
    run(["ninja", "server/arm64.img"], work, env)
    disk = work / "build" / "images" / "server.arm64.img"
    check_layout(disk, tmp_path, branch_commit(work, "arm64"), "BOOTAA64.EFI")
    assert partitions(disk)["root"][2] == "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
    # The kernel's stages ran with native stand-ins, and the initramfs has
    # the target's programs all the same, those that stood in (dash, cp,
    # sed) too: every ELF file in it is an arm64 one.  Nor does it hold the
    # build's fakeroot library.
    logs = work / "build" / "logs" / "server" / "arm64"
    stand_ins = {}
    for stage in ("base", "boot", "deployable"):
        log = (logs / f"{stage}.log").read_text()
        stand_ins[stage] = re.findall(r"^native stand-ins: (.*)$", log, re.M)[-1]
    # perl with the host build of a compiled module the stage brings,
    # dpkg-deb unpacking the kernel, systemd-hwdb, dracut's installer.
    assert "perl-base" in stand_ins["boot"] and "dpkg" in stand_ins["boot"]
    assert "udev" in stand_ins["base"]
    assert "dracut-install" in stand_ins["deployable"]
    assert "the tree's own programs replace their copies" in \
        (logs / "deployable.log").read_text()
    image = run(["ostree", f"--repo={work}/build/repo", "ls", "-R",
                 "exampleos/trixie/arm64/server", "/usr/lib/modules"],
                work).stdout
    path = [line.split()[-1] for line in image.splitlines()
            if line.endswith("/initramfs.img")][0]
    data = subprocess.run(["ostree", f"--repo={work}/build/repo", "cat",
                           "exampleos/trixie/arm64/server", path],
                          capture_output=True, check=True).stdout
    (tmp_path / "initramfs.img").write_bytes(data)
    from debostree import initramfs
    machines = initramfs.elf_files(str(tmp_path / "initramfs.img"))
    assert {"usr/bin/dash", "usr/bin/cp", "usr/bin/sed", "usr/bin/kmod",
            "usr/lib/systemd/systemd"} <= set(machines)
    assert {m for m in machines.values()} == {183}, \
        sorted(n for n, m in machines.items() if m != 183)[:20]
    assert not [n for n in machines if "libfakeroot" in n]


@pytest.mark.qemu
def test_arm64_upgrade_and_rollback(project, tmp_path):
    """The arm64 image boots under qemu-system-aarch64 (TCG, the virt
    machine, AAVMF) to a login on the serial console, and upgrades and
    rolls back as the amd64 one does."""
    work, _, _ = project
    if not (work / "build" / "images" / "server.arm64.img").exists():
        run(["ninja", "server/arm64.img"], work, project[1])
    upgrade_and_rollback(project, tmp_path, "arm64")
