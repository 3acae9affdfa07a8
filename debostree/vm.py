"""Booting a disk image in QEMU: the machine, UEFI firmware and
accelerator for an architecture (OVMF for amd64, AAVMF for arm64; KVM when
this host can use it for that architecture, TCG otherwise), as
``tools/boot`` and the boot tests start it.
"""

import os
import shutil
import socket
import subprocess
import time

# Per architecture: QEMU, its machine, the firmware code and the variables'
# template, and the Debian packages that have them.
MACHINES = {
    "amd64": {"qemu": "qemu-system-x86_64", "machine": ["-machine", "q35"],
              "code": "/usr/share/OVMF/OVMF_CODE_4M.fd",
              "vars": "/usr/share/OVMF/OVMF_VARS_4M.fd",
              "packages": ("qemu-system-x86", "ovmf")},
    "arm64": {"qemu": "qemu-system-aarch64",
              "machine": ["-machine", "virt"],
              "code": "/usr/share/AAVMF/AAVMF_CODE.fd",
              "vars": "/usr/share/AAVMF/AAVMF_VARS.fd",
              "packages": ("qemu-system-arm", "qemu-efi-aarch64")},
}
ACCEL_ENV = "DEBOSTREE_ACCEL"  # "kvm" or "tcg": no guessing


def missing(arch):
    """What booting ``arch`` needs and this host lacks, with the package."""
    spec = MACHINES[arch]
    qemu_package, firmware_package = spec["packages"]
    needs = {spec["qemu"]: qemu_package, spec["code"]: firmware_package,
             spec["vars"]: firmware_package}
    return [f"{what} (apt-get install {package})" for what, package in
            needs.items() if not (os.path.exists(what) if what.startswith("/")
                                  else shutil.which(what))]


def kvm_usable(arch, host_arch):
    """Whether to ask for KVM: ``$DEBOSTREE_ACCEL`` when set, else a guest
    of the host's architecture and a /dev/kvm this user may open."""
    wanted = os.environ.get(ACCEL_ENV)
    if wanted in ("kvm", "tcg"):
        return wanted == "kvm"
    return arch == host_arch and os.access("/dev/kvm", os.R_OK | os.W_OK)


def qemu_argv(arch, disk, firmware_vars, *, kvm, memory="1536", cpus=2,
              ssh_port=None, serial="stdio", name="debostree"):
    """The QEMU command that boots ``disk`` (raw, a virtio disk) with
    ``firmware_vars`` (a writable copy of the variables' template), the
    serial console on ``serial`` and the guest's SSH port on the host's
    127.0.0.1:``ssh_port``."""
    spec = MACHINES[arch]
    accel = _accel(arch, kvm)
    nic = "user,model=virtio-net-pci"
    if ssh_port:
        nic += f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
    return [spec["qemu"], *spec["machine"], *accel, "-m", str(memory),
            "-smp", str(cpus),
            "-drive", f"if=pflash,format=raw,readonly=on,file={spec['code']}",
            "-drive", f"if=pflash,format=raw,file={firmware_vars}",
            "-drive", f"if=virtio,format=raw,file={disk}",
            "-nic", nic, "-display", "none", "-serial", serial,
            "-name", name]


def _accel(arch, kvm):
    if arch == "arm64":  # the virt machine has no default CPU for either
        return ["-accel", "kvm", "-cpu", "host"] if kvm else \
            ["-accel", "tcg", "-cpu", "max"]
    return ["-accel", "kvm"] if kvm else ["-accel", "tcg"]


def kvm_works(arch, host_arch, workdir, seconds=20):
    """Whether KVM is to be used for ``arch`` here: ``kvm_usable``, and the
    firmware runs under it (a nested hypervisor may open /dev/kvm and then
    fail to run it): a short boot without a disk, until the firmware
    writes to the serial console."""
    if os.environ.get(ACCEL_ENV) in ("kvm", "tcg"):
        return os.environ[ACCEL_ENV] == "kvm"
    if not kvm_usable(arch, host_arch):
        return False
    spec = MACHINES[arch]
    firmware_vars = os.path.join(workdir, "kvm-probe-vars.fd")
    console = os.path.join(workdir, "kvm-probe.log")
    shutil.copyfile(spec["vars"], firmware_vars)
    argv = [spec["qemu"], *spec["machine"], *_accel(arch, True), "-m", "256",
            "-drive", f"if=pflash,format=raw,readonly=on,file={spec['code']}",
            "-drive", f"if=pflash,format=raw,file={firmware_vars}",
            "-display", "none", "-nodefaults", "-serial", f"file:{console}"]
    # Not proc.run: it runs until it has shown it works, then is killed.
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and process.poll() is None:
            if os.path.exists(console) and os.path.getsize(console) > 0:
                return True
            time.sleep(0.2)
        return False
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for path in (firmware_vars, console):
            if os.path.exists(path):
                os.unlink(path)


def firmware_vars_template(arch):
    return MACHINES[arch]["vars"]


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
