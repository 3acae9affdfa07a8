"""Lockfiles: format, validation, comparison, and apt using one offline."""

import os
import subprocess

import pytest

from debostree import fetch, files, lockfile
from debostree.errors import UserError
from helpers import resolve_recipe

STANZA = """\
Package: {name}
Version: {version}
Architecture: amd64
Depends: {depends}
Filename: pool/main/{name}_{version}_amd64.deb
Size: 100
SHA256: {sha}
Lock-Archive: debian
Lock-Suite: bookworm
Lock-Stage: base
"""


def stanza(name, version="1.0", depends="libc", sha="a" * 64):
    return STANZA.format(name=name, version=version, depends=depends, sha=sha)


def test_parse_and_install_order():
    text = "\n".join([stanza("app", depends="libfoo"),
                      stanza("libc", depends="base"),
                      stanza("libfoo", depends="libc | libc-alt"),
                      stanza("base", depends="")])
    entries = lockfile.parse(text.replace("Depends: \n", ""))
    assert [e.name for e in entries] == ["app", "libc", "libfoo", "base"]
    order = [e.name for e in lockfile.install_order(entries)]
    assert order.index("base") < order.index("libc") < order.index("libfoo") \
        < order.index("app")


def test_a_base_pin_comes_first_and_round_trips():
    from debostree.bases import Pin
    pin = Pin("upstream", "exampleos/trixie/amd64/minimal", "c" * 64,
              "20261204.0", "gpg:" + "F" * 40)
    text = stanza_text_of(pin) + "\n" + stanza("app")
    assert lockfile.parse_pin(text) == pin
    assert lockfile.parse_pin(text).line == 1
    assert [e.name for e in lockfile.parse(text)] == ["app"]
    assert lockfile.parse_pin(stanza("app")) is None
    with pytest.raises(UserError, match=r"<lockfile>:12: the base stanza "
                       "must come first"):
        lockfile.parse_pin(stanza("app") + "\n" + stanza_text_of(pin))
    with pytest.raises(UserError, match="invalid Lock-Base-Commit"):
        lockfile.parse_pin(text.replace("c" * 64, "c" * 12))
    with pytest.raises(UserError, match="lacks the 'Lock-Base-Signed-By'"):
        lockfile.parse_pin(text.replace("Lock-Base-Signed-By", "Signed-By"))


def stanza_text_of(pin):
    return lockfile.stanza_text(pin.fields())


@pytest.mark.parametrize("old,new,words", [
    ("SHA256: " + "a" * 64, "SHA256: xyz", "invalid SHA256"),
    ("Size: 100", "Size: big", "invalid Size"),
    ("Lock-Archive: debian\n", "", "lacks the 'Lock-Archive' field"),
    ("Filename: pool/main/app_1.0_amd64.deb", "Filename: ../etc/passwd.deb",
     "invalid Filename"),
    ("Size: 100", "Size: -5", "invalid Size"),
    ("Size: 100", "Size: 0", "invalid Size"),
    ("Package: app", "Package: a;rm -rf $HOME", "invalid Package"),
    ("Package: app", "Package: ../../x", "invalid Package"),
    ("Version: 1.0", "Version: 1.0 `id`", "invalid Version"),
    ("Architecture: amd64", "Architecture: amd64/../x", "invalid Architecture"),
    ("Lock-Stage: base", "Lock-Stage: base;x", "invalid Lock-Stage"),
])
def test_bad_stanzas_name_the_line(old, new, words):
    text = stanza("libc") + "\n" + stanza("app").replace(old, new)
    with pytest.raises(UserError) as info:
        lockfile.parse(text, "x.lock")
    assert words in info.value.format()
    assert info.value.line == 12
    assert info.value.format().startswith("x.lock:12:")


def test_non_utf8_and_nul_name_the_line(tmp_path):
    path = tmp_path / "x.lock"
    path.write_bytes(stanza("libc").encode() + b"\n" +
                     stanza("app").encode().replace(b"Lock-Suite: bookworm",
                                                    b"Lock-Suite: b\xffw"))
    with pytest.raises(UserError) as info:
        lockfile.read(str(path))
    assert "not UTF-8" in info.value.message and info.value.line == 20
    path.write_bytes(stanza("libc").encode().replace(b"libc\n", b"li\0bc\n", 1))
    with pytest.raises(UserError) as info:
        lockfile.read(str(path))
    assert "NUL" in info.value.message and info.value.line == 1


def test_compare():
    old = lockfile.parse("\n".join([stanza("a", "1"), stanza("b", "1"),
                                    stanza("c", "1")]))
    new = lockfile.parse("\n".join([stanza("a", "2"), stanza("c", "1", sha="b" * 64),
                                    stanza("d", "1")]))
    changes = lockfile.compare(old, new)
    assert changes.added == [("d:amd64", "1")]
    assert changes.removed == [("b:amd64", "1")]
    assert changes.changed == [("a:amd64", "1", "2")]
    assert changes.rebuilt == [("c:amd64", "1")]
    assert changes.summary() == "1 added, 1 removed, 1 changed, 1 rebuilt"
    assert "  ~ a:amd64 1 -> 2" in changes.lines()
    assert not lockfile.compare(old, old)


def test_write_if_changed_keeps_mtime(tmp_path):
    path = str(tmp_path / "x.lock")
    assert files.write_if_changed(path, "a\n")
    os.utime(path, (1, 1))
    assert not files.write_if_changed(path, "a\n")
    assert os.stat(path).st_mtime == 1
    assert files.write_if_changed(path, "b\n")


def test_apt_installs_from_lockfile_and_pool_offline(tmp_path, test_archive):
    text, _ = resolve_recipe(tmp_path, test_archive, [
        {"name": "base", "bootstrap": {"variant": "custom",
                                       "packages": ["app", "exim"]}}])
    lock = tmp_path / "r.amd64.lock"
    lock.write_text(text)
    entries = lockfile.read(str(lock))
    pool = str(tmp_path / "pool")
    fetch.fetch_entries(entries, {"test": test_archive.url}, pool)
    source = fetch.make_apt_source(entries, str(lock), pool,
                                   str(tmp_path / "source"))
    # apt and dpkg on a private root, with a file: source and no network.
    target = tmp_path / "target"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "etc/apt",
              "var/cache/apt/archives/partial", "var/lib/apt/lists/partial",
              "etc/apt/none", "etc/apt/preferences.d", "var/log/apt"):
        (target / d).mkdir(parents=True)
    (target / "var/lib/dpkg/status").write_text("")
    (target / "etc/apt/sources.list").write_text(
        f"deb [trusted=yes] file:{source} ./\n")
    conf = tmp_path / "apt.conf"
    conf.write_text(f"""
Dir "{target}/";
Dir::Etc::main "/dev/null";
Dir::Etc::parts "{target}/etc/apt/none";
Dir::State::status "{target}/var/lib/dpkg/status";
APT::Architecture "amd64";
APT::Architectures {{ "amd64"; }};
Acquire::Languages "none";
Debug::NoLocking "true";
DPkg::Options {{ "--root={target}"; "--force-not-root";
                 "--force-script-chrootless"; "--log={target}/dpkg.log"; }};
DPkg::Chroot-Directory "/";
""")
    env = {**os.environ, "APT_CONFIG": str(conf), "LC_ALL": "C",
           "http_proxy": "http://127.0.0.1:9/", "no_proxy": ""}
    subprocess.run(["fakeroot", "apt-get", "update"], env=env, check=True,
                   capture_output=True)
    result = subprocess.run(["fakeroot", "apt-get", "install", "--yes", "app"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    status = (target / "var/lib/dpkg/status").read_text()
    assert "Package: app\nStatus: install ok installed" in status
    assert (target / "usr/share/doc/libfoo/README").read_text() == "libfoo 2.0\n"
