"""A virtual machine for boot tests: QEMU with UEFI firmware (OVMF for
x86-64), the disk image as a virtio disk, the serial console on a pipe that
the test reads and types into.

KVM is used when /dev/kvm is usable by this user, TCG (slower, with longer
timeouts) otherwise.
"""

import os
import re
import shutil
import subprocess
import threading
import time

from debostree import vm as machines

OVMF_CODE = machines.MACHINES["amd64"]["code"]
OVMF_VARS = machines.MACHINES["amd64"]["vars"]


# Set when KVM turned out not to work here (a nested hypervisor may open
# /dev/kvm and then fail to run the firmware).
_kvm_failed = []


def kvm_usable():
    if os.environ.get("DEBOSTREE_TEST_ACCEL") in ("tcg", "kvm"):
        return os.environ["DEBOSTREE_TEST_ACCEL"] == "kvm"
    return not _kvm_failed and os.access("/dev/kvm", os.R_OK | os.W_OK)


def missing():
    """What boot tests need and this host lacks, with the package."""
    return machines.missing("amd64")


def timeout(seconds):
    """A timeout for a step that takes ``seconds`` under KVM."""
    return seconds if kvm_usable() else seconds * 8


class VM:
    def __init__(self, disk, workdir, memory="1536", log=None, arch="amd64",
                 drives=()):
        self.disk = str(disk)
        # More disks, read-only, after the system's (/dev/vdb, ...).
        self.drives = [str(d) for d in drives]
        self.arch = arch
        # KVM for the host's own architecture only (these hosts are x86-64).
        self.kvm = kvm_usable() and arch == "amd64"
        self.vars = os.path.join(str(workdir), f"{arch}_VARS.fd")
        if not os.path.exists(self.vars):
            shutil.copyfile(machines.firmware_vars_template(arch), self.vars)
        self.memory = memory
        self.log_path = log or os.path.join(str(workdir), "console.log")
        self.output = ""
        self.mark = 0
        self.process = None
        self.lock = threading.Lock()

    def start(self):
        self._start()
        if self.kvm:
            # Firmware output within seconds, or KVM does not work here.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with self.lock:
                    if "KVM internal error" in self.output or \
                            self.process.poll() is not None:
                        break
                    if "BdsDxe" in self.output or "GRUB" in self.output:
                        return self
                time.sleep(0.2)
            self.kill()
            _kvm_failed.append(True)
            self.kvm = False
            with open(self.log_path, "a") as log:
                log.write("\n[KVM failed; starting again with TCG]\n")
            self._start()
        return self

    def _start(self):
        argv = machines.qemu_argv(
            self.arch, self.disk, self.vars, kvm=self.kvm,
            memory=self.memory, name="debostree-test") + [
                *(arg for drive in self.drives for arg in (
                    "-drive", f"if=virtio,format=raw,readonly=on,file={drive}")),
                "-monitor", "none",
                # A guest reboot ends QEMU and reboot() starts a new one: a
                # warm reset of the firmware now and then hangs before GRUB
                # (seen under nested KVM), a cold start does not.
                "-no-reboot"]
        self.output = ""
        self.mark = 0
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        with open(self.log_path, "ab") as log:
            while True:
                chunk = self.process.stdout.read1(4096)
                if not chunk:
                    return
                log.write(chunk)
                log.flush()
                with self.lock:
                    self.output += chunk.decode("utf-8", "replace")

    def expect(self, pattern, seconds):
        """Wait for ``pattern`` (a regex) in the console output after the
        last match; return the match."""
        deadline = time.monotonic() + seconds
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            with self.lock:
                match = regex.search(self.output, self.mark)
                if match:
                    self.mark = match.end()
                    return match
            if self.process.poll() is not None:
                time.sleep(0.2)
                with self.lock:
                    match = regex.search(self.output, self.mark)
                    if match:
                        self.mark = match.end()
                        return match
                raise AssertionError(f"QEMU exited ({self.process.returncode}) "
                                     f"before {pattern!r}; console:\n"
                                     + self.tail())
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {seconds} s; console:\n"
                             + self.tail())

    def tail(self, chars=6000):
        with self.lock:
            return self.output[-chars:]

    def send(self, text):
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def run(self, command, seconds=60):
        """Type a shell command; return its output (between markers)."""
        tag = f"{time.monotonic_ns():x}"
        self.send(f"echo BEGIN-{tag}; {command}; echo END-{tag}-$?\n")
        # Only the output matches: the typed line has "BEGIN-tag;" and
        # "END-tag-$?".
        self.expect(rf"BEGIN-{tag}\r?\n", seconds)
        start = self.mark
        match = self.expect(rf"END-{tag}-(\d+)", seconds)
        with self.lock:
            text = self.output[start:match.start()]
        return int(match.group(1)), text.replace("\r", "")

    def wait_exit(self, seconds):
        try:
            self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the VM did not stop within {seconds} s; "
                                 "console:\n" + self.tail())

    def reboot(self, seconds):
        """After the guest was told to reboot: wait for QEMU to end (it
        runs with -no-reboot) and power the machine on again with the same
        disk and firmware variables."""
        self.wait_exit(seconds)
        with open(self.log_path, "a") as log:
            log.write("\n[guest rebooted; starting QEMU again]\n")
        return self.start()

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
