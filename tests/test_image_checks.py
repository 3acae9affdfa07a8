"""Disk image input checks that need no build: the recipe's image key, a
size too small for the tree, missing host tools."""

import functools
import os
import subprocess
import sys

import pytest

from conftest import TOP

from debostree import image
from debostree.errors import UserError
from test_recipe import GOOD, error_of, write
from debostree import recipe

DEPLOYABLE = GOOD.replace("  - {name: slim, remove: [iproute2]}",
                          "  - {name: ostree, deployable: {}}")


def test_image_key(tmp_path):
    rec = recipe.load_recipe(write(tmp_path, DEPLOYABLE + "image:\n  size: 2G\n"
                                   "  kernel-arguments: [quiet]\n"))
    assert rec.image == recipe.ImageSpec(
        size=2 << 30, boot_size=512 << 20, esp_size=64 << 20,
        kernel_arguments={"amd64": ("quiet",)})
    rec = recipe.load_recipe(write(tmp_path, DEPLOYABLE + "image:\n  size: 2G\n"
                                   "  kernel-arguments: {amd64: [quiet]}\n"))
    assert rec.image.kernel_arguments == {"amd64": ("quiet",)}


@pytest.mark.parametrize("text,line,key,words", [
    ("image: {size: 2 gigs}", 15, "image.size", "invalid size"),
    ("image: {size: 2G, kernel-arguments: [root=/dev/sda]}", 15,
     "image.kernel-arguments[0]", "set by the image build"),
    ("image: {size: 2G, esp-size: 8M}", 15, "image.esp-size", "at least 33M"),
    ("image: {size: 2G, colour: red}", 15, "image.colour", "unknown key"),
    ("image: {size: 2G, kernel-arguments: {arm64: [quiet]}}", 15,
     "image.kernel-arguments.arm64", "not one of the recipe's architectures"),
])
def test_bad_image_key(tmp_path, text, line, key, words):
    error = error_of(tmp_path, DEPLOYABLE + text + "\n")
    assert (error.line, error.key) == (line, key), error.format()
    assert words in error.format()


def test_image_needs_a_deployable_tree(tmp_path):
    error = error_of(tmp_path, GOOD + "image: {size: 2G}\n")
    assert "needs a deployable tree" in error.format()


def test_image_that_does_not_fit_is_a_clear_error(tmp_path):
    sysroot = tmp_path / "sysroot"
    boot = tmp_path / "boot"
    for d in (sysroot, boot):
        d.mkdir()
    (sysroot / "big").write_bytes(os.urandom(1 << 20) * 1)
    with open(sysroot / "bigger", "wb") as f:
        f.write(os.urandom(1 << 20) * 300)
    opts = {"size": 256 << 20, "boot_size": 64 << 20, "esp_size": 64 << 20,
            "recipe_path": "/r/server.yaml"}
    with pytest.raises(UserError) as info:
        image._layout(opts, str(tmp_path), str(sysroot), str(boot))
    text = info.value.format()
    assert "does not fit in 256 MiB" in text and "image.size" in text
    assert "set image.size to at least 1G" in text
    opts["size"] = 1 << 30
    sizes = image._layout(opts, str(tmp_path), str(sysroot), str(boot))
    assert sizes["root"] == (1 << 30) - (2 << 20) - (128 << 20)


def test_missing_host_tools_name_their_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as info:
        image.check_tools(str(tmp_path / "ok"))
    text = info.value.format()
    for package in ("e2fsprogs", "dosfstools", "mtools", "fdisk", "grub-common"):
        assert package in text
    assert "apt-get install" in text
    assert not (tmp_path / "ok").exists()


@pytest.mark.parametrize("features, verifies", [
    (b"libcurl libsoup gpgme sign-ed25519 libarchive", True),
    (b"libcurl libsoup gpgme ex-fsverity libarchive", False),
    (b"--sign-type=sign-ed25519 is an option", False),
])
def test_devices_verify_ed25519_only_when_their_ostree_can(tmp_path, features,
                                                            verifies):
    """The image's remote checks ed25519 signatures only when the tree's
    ostree was built with that feature (``ostree --version`` lists it)."""
    import subprocess
    tree = tmp_path / "tree" / "usr" / "bin"
    tree.mkdir(parents=True)
    (tree / "ostree").write_bytes(b"\x7fELF\0ostree-sign-ed25519\0ed25519\0"
                                  + features + b"\0...")
    repo = str(tmp_path / "repo")
    subprocess.run(["ostree", "init", "--mode=archive", f"--repo={repo}"], check=True)
    commit = subprocess.run(["ostree", "commit", f"--repo={repo}", "-b", "t",
                             f"--tree=dir={tmp_path / 'tree'}"], check=True,
                            capture_output=True, text=True).stdout.strip()
    assert image.ostree_verifies_ed25519(repo, commit) is verifies


def test_booting_checks_qemu_and_firmware_before_the_image(tmp_path):
    """'ninja NAME/ARCH.boot': QEMU and the firmware are checked by an edge
    of their own, which the boot waits for and which needs no stage; a
    missing one is one line naming its package, and no check file."""
    run = functools.partial(subprocess.run, cwd=tmp_path, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL)
    result = run([sys.executable, os.path.join(TOP, "configure.py"),
                  "--recipes", os.path.join(TOP, "recipes"),
                  "--lockfiles", os.path.join(TOP, "lockfiles")])
    assert result.returncode == 0, result.stderr
    query = run(["ninja", "-t", "query", "server/arm64.boot"]).stdout
    assert "|| build/checks/boot-tools.arm64.ok" in query, query
    query = run(["ninja", "-t", "query", "build/checks/boot-tools.arm64.ok"]
                ).stdout
    assert "input: check_boot_tools\n" in query, query
    assert "outputs:" in query and query.split("input: check_boot_tools")[1] \
        .split("outputs:")[0].strip() == "", query  # no inputs at all
    (tmp_path / "bin").mkdir()
    result = run([sys.executable, os.path.join(TOP, "tools", "boot"),
                  "--check-tools", "arm64", "arm64.ok"],
                 env={**os.environ, "PATH": str(tmp_path / "bin")})
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert "missing host tools to boot arm64 images: qemu-system-aarch64 " \
        "(apt-get install qemu-system-arm)" in line, line
    assert not (tmp_path / "arm64.ok").exists()
    result = run([sys.executable, os.path.join(TOP, "tools", "boot"),
                  "--check-tools", "arm64", "arm64.ok"])
    assert result.returncode == 0 and (tmp_path / "arm64.ok").exists(), result
