"""Owners, groups, modes and capabilities that maintainer scripts and
commands set survive whatever they do to the same file next.

The fakeroot daemon knows files by inode, and the overlay a stage runs in
moves a file to a new inode when it copies it up (a chmod, a write, a
rename), while a hardlinked checkout gives identical files one inode.  A
tiny package from a throwaway archive does what dbus, cron, iputils-ping and
exim4 do in their postinst (dpkg-statoverride, chgrp then chmod g+s, setcap
then chmod, chown then chmod on one of two identical files), installed once
by a bootstrap and once by an install stage; a run stage does the same to
files of its parent.  Every result is checked inside a later stage (what
commands see) and in the commits (what devices get).
"""

import os
import shutil
import tarfile

import pytest

from conftest import TOP
from debarchive import Archive, Server
from debostree import oci
from test_build import ARCHIVES, configure, ostree, run
from treecompare import tree_from_commit

pytestmark = [pytest.mark.network, pytest.mark.sandbox, pytest.mark.slow]

POSTINST = """\
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  dpkg-statoverride --update --add root mail 4754 /usr/lib/{name}/launch-helper
  chgrp mail /usr/bin/{name}-tab
  chmod g+s /usr/bin/{name}-tab
  setcap cap_net_raw+ep /usr/bin/{name}-ping
  chmod 0755 /usr/bin/{name}-ping
  chown root:mail /etc/{name}/passwd.client
  chmod 0640 /etc/{name}/passwd.client
  chmod 0600 /etc/{name}/moved
  mv /etc/{name}/moved /etc/{name}/moved.tmp
  mv /etc/{name}/moved.tmp /etc/{name}/moved
fi
"""


def package_files(name):
    return {f"usr/lib/{name}/launch-helper": f"{name} helper\n",
            f"usr/bin/{name}-tab": f"{name} tab\n",
            f"usr/bin/{name}-ping": f"{name} ping\n",
            # Two identical files: one object, one inode in a checkout.
            f"etc/{name}/passwd.client": "",
            f"etc/{name}/other": "",
            f"etc/{name}/moved": f"{name} moved\n"}


RECIPE = f"""\
ref: test/owners
architecture: amd64
{ARCHIVES}  - {{name: local, suites: [stable], components: [main], keyring: local.gpg}}
stages:
  - {{name: base, bootstrap: {{variant: minbase, packages: [owners-boot]}}}}
  - {{name: more, install: [owners-inst]}}
  - name: perms
    run: |
      chown root:mail /usr/bin/tail && chmod 4754 /usr/bin/tail
      chgrp mail /usr/share/doc/libuuid1/copyright
      chown 5:5 /etc/debian_version && mv /etc/debian_version /etc/dv
      mv /etc/dv /etc/debian_version
      chown 7:7 /usr/bin/head && chmod 0700 /usr/bin/head && chmod 0750 /usr/bin/head
      setcap cap_net_admin+ep /usr/bin/sort && chmod 0700 /usr/bin/sort
  - name: check
    run: |
      for name in owners-boot owners-inst; do
        test "$(stat -c %U:%G:%a /usr/lib/$name/launch-helper)" = root:mail:4754
        test "$(stat -c %U:%G:%a /usr/bin/$name-tab)" = root:mail:2644
        getcap /usr/bin/$name-ping | grep -q cap_net_raw
        test "$(stat -c %U:%G:%a /etc/$name/passwd.client)" = root:mail:640
        test "$(stat -c %U:%G:%a /etc/$name/other)" = root:root:644
        test "$(stat -c %a /etc/$name/moved)" = 600
      done
      test "$(stat -c %U:%G:%a /usr/bin/tail)" = root:mail:4754
      test "$(stat -c %G /usr/share/doc/libuuid1/copyright)" = mail
      test "$(stat -c %G /usr/share/doc/libmount1/copyright)" = root
      test "$(stat -c %u:%g /etc/debian_version)" = 5:5
      test "$(stat -c %u:%g:%a /usr/bin/head)" = 7:7:750
      getcap /usr/bin/sort | grep -q cap_net_admin
      test "$(stat -c %a /usr/bin/sort)" = 700
      dpkg --audit
      test -z "$(dpkg --verify)"
"""


@pytest.fixture(scope="module")
def local_archive(tmp_path_factory, key):
    root = tmp_path_factory.mktemp("owners-archive")
    archive = Archive(root, key, architectures=("amd64",))
    for name in ("owners-boot", "owners-inst"):
        archive.add("stable", name, "1.0", "all", files=package_files(name),
                    scripts={"postinst": POSTINST.format(name=name)},
                    depends="libcap2-bin")
    archive.publish()
    server = Server(root)
    archive.url = server.url
    yield archive
    server.close()


def image_layers(layout):
    """``[(digest, [TarInfo])]`` of the layout's image."""
    manifest, _ = oci.read_image(str(layout))
    result = []
    for layer in manifest["layers"]:
        with tarfile.open(layout / "blobs" / "sha256" / layer["digest"][7:]) as tar:
            result.append((layer["digest"], tar.getmembers()))
    return result


def content_checksum(project, rev):
    return [line for line in ostree(project, "show", rev).splitlines()
            if line.startswith("ContentChecksum:")]


def test_scripts_keep_owners_modes_and_capabilities(tmp_path, pool, key,
                                                    local_archive):
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "recipes" / "owners.yaml").write_text(RECIPE)
    shutil.copyfile(key.keyring, project / "recipes" / "local.gpg")
    configure(project, pool, extra=["--mirror", f"local={local_archive.url}"])
    run(["ninja", "update-lockfiles"], project)
    result = run(["ninja", "owners"], project)
    assert "STAGE owners/check" in result.stdout

    repo = str(project / "build" / "repo")
    for stage, names in (("base", ["owners-boot"]),
                         ("check", ["owners-boot", "owners-inst"])):
        tree = tree_from_commit(repo, f"stage/owners/amd64/{stage}")
        mail = 8  # base-passwd's fixed group
        for name in names:
            # (type, mode, uid, gid, link target, digest)
            assert tree[f"/usr/lib/{name}/launch-helper"][1:4] == (0o4754, 0, mail)
            assert tree[f"/usr/bin/{name}-tab"][1:4] == (0o2644, 0, mail)
            assert tree[f"/etc/{name}/passwd.client"][1:4] == (0o640, 0, mail)
            assert tree[f"/etc/{name}/other"][1:4] == (0o644, 0, 0)
            assert tree[f"/etc/{name}/moved"][1:4] == (0o600, 0, 0)
            listing = ostree(project, "ls", "-X", f"stage/owners/amd64/{stage}",
                             f"/usr/bin/{name}-ping")
            assert "security.capability" in listing, listing
    tree = tree_from_commit(repo, "test/owners")
    assert tree["/usr/bin/tail"][1:4] == (0o4754, 0, 8)
    assert tree["/usr/share/doc/libuuid1/copyright"][3] == 8
    assert tree["/usr/share/doc/libmount1/copyright"][3] == 0
    assert tree["/etc/debian_version"][2:4] == (5, 5)
    assert tree["/usr/bin/head"][1:4] == (0o750, 7, 7)
    assert "security.capability" in ostree(project, "ls", "-X", "test/owners",
                                           "/usr/bin/sort")
    # dpkg's own record of the override is there too.
    overrides = ostree(project, "cat", "test/owners", "/var/lib/dpkg/statoverride")
    assert "root mail 4754 /usr/lib/owners-boot/launch-helper" in overrides

    # The tree as an OCI image: the capability is in the layer's tar
    # header, and the layers give the same tree back.
    run(["ninja", "owners.oci"], project)
    layout = project / "build" / "oci" / "owners"
    layers = image_layers(layout)
    ping = [m for _, members in layers for m in members
            if m.name == "usr/bin/owners-inst-ping"]
    assert len(ping) == 1
    assert "SCHILY.xattr.security.capability" in ping[0].pax_headers
    imported = run([os.path.join(TOP, "tools", "import-oci"), str(layout),
                    "--repo", repo, "--branch", "test/imported"],
                   project).stdout.strip()
    assert content_checksum(project, imported) == \
        content_checksum(project, "test/owners")

    # A lockfile update changing one package: the new image shares all
    # its layers but that package's and the stages' one.
    local_archive.add("stable", "owners-inst", "1.1", "all",
                      files={**package_files("owners-inst"),
                             "usr/share/doc/owners-inst/NEWS": "1.1\n"},
                      scripts={"postinst": POSTINST.format(name="owners-inst")},
                      depends="libcap2-bin")
    local_archive.publish()
    run(["ninja", "update-lockfiles"], project)
    lock = (project / "lockfiles" / "owners.amd64.lock").read_text()
    assert "Version: 1.1" in lock
    run(["ninja", "owners.oci"], project)
    new_layers = image_layers(layout)
    old_digests = {digest for digest, _ in layers}
    changed = [digest for digest, _ in new_layers if digest not in old_digests]
    print(f"{len(new_layers)} layers, {len(changed)} changed by the update")
    assert len(new_layers) == len(layers) and len(changed) == 2
    assert any(m.name == "var/lib/dpkg/info/owners-inst.list"
               for digest, members in new_layers if digest in changed
               for m in members)
