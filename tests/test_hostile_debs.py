"""Packages made to escape: a control file or data member whose names leave
the package, a package that is not the one the lockfile pins, a tampered
pool file.  Each is refused with one line before anything is written
outside the build's own temporary directory."""

import hashlib
import io
import os
import tarfile

import pytest

from debostree import debimport, ostree
from debostree.errors import UserError


def _tar(members):
    """A gzip tar of ``members``: (name, bytes or None for a directory,
    extra TarInfo attributes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, data, extra in members:
            info = tarfile.TarInfo(name)
            if data is None and not extra:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.size, info.mode = len(data or b""), 0o644
            for key, value in extra.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data or b"") if info.isfile() else None)
    return buf.getvalue()


def raw_deb(path, control, data_members=(("./", None, {}),)):
    """A .deb written by hand (ar, then the tars), so that it can hold what
    dpkg-deb --build would refuse to make."""
    members = [("debian-binary", b"2.0\n"),
               ("control.tar.gz", _tar([("./", None, {}),
                                        ("./control", control.encode(), {})])),
               ("data.tar.gz", _tar(list(data_members)))]
    with open(path, "wb") as f:
        f.write(b"!<arch>\n")
        for name, data in members:
            f.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n"
                    .encode())
            f.write(data)
            if len(data) % 2:
                f.write(b"\n")
    return str(path)


CONTROL = ("Package: {name}\nVersion: 1.0\nArchitecture: amd64\n"
           "Maintainer: Test <t@example.invalid>\nDescription: test\n")


@pytest.fixture
def repo(tmp_path):
    repo = ostree.Repo(str(tmp_path / "repo"))
    repo.ensure()
    return repo


def do_import(repo, tmp_path, deb, expect=None, sha256=None):
    with open(deb, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return debimport.import_deb(repo.path, deb, sha256 or digest,
                                str(tmp_path / "pkgs" / f"{digest}.json"),
                                str(tmp_path / "tmp"), expect)


def test_the_hand_made_package_imports_when_honest(repo, tmp_path):
    deb = raw_deb(tmp_path / "ok.deb", CONTROL.format(name="okay"),
                  [("./", None, {}), ("./usr/", None, {}),
                   ("./usr/share/", None, {}), ("./usr/share/okay", b"hi\n", {})])
    summary = do_import(repo, tmp_path, deb, expect=("okay", "1.0", "amd64"))
    assert summary["package"] == "okay"


@pytest.mark.parametrize("name", ["../" * 7 + "escaped", "a/b", ".hidden",
                                  "Upper", "x y"])
def test_control_names_that_leave_the_info_directory(repo, tmp_path, name):
    deb = raw_deb(tmp_path / "bad.deb", CONTROL.format(name=name))
    with pytest.raises(UserError) as error:
        do_import(repo, tmp_path, deb)
    assert "invalid Package" in error.value.message
    assert "\n" not in error.value.message
    assert not os.path.exists(tmp_path / "escaped.list")
    assert not [p for p in os.listdir(tmp_path) if "escaped" in p]


def test_a_package_that_is_not_the_locked_one(repo, tmp_path):
    deb = raw_deb(tmp_path / "other.deb", CONTROL.format(name="other"))
    with pytest.raises(UserError) as error:
        do_import(repo, tmp_path, deb, expect=("wanted", "1.0", "amd64"))
    assert "the lockfile pins wanted 1.0 amd64" in error.value.message


@pytest.mark.parametrize("member,words", [
    ("./../../outside", "member path './../../outside'"),
    ("/etc/passwd", "member path '/etc/passwd'"),
    ("./usr/a\nb", "member path"),
])
def test_data_paths_that_leave_the_tree(repo, tmp_path, member, words):
    deb = raw_deb(tmp_path / "bad.deb", CONTROL.format(name="bad"),
                  [("./", None, {}), (member, b"x", {})])
    with pytest.raises(UserError) as error:
        do_import(repo, tmp_path, deb)
    assert words in error.value.message
    assert not os.path.exists(tmp_path.parent / "outside")


def test_hard_links_that_leave_the_tree(repo, tmp_path):
    deb = raw_deb(tmp_path / "bad.deb", CONTROL.format(name="bad"),
                  [("./", None, {}), ("./link", b"",
                                      {"type": tarfile.LNKTYPE,
                                       "linkname": "../../etc/shadow"})])
    with pytest.raises(UserError) as error:
        do_import(repo, tmp_path, deb)
    assert "hard link target '../../etc/shadow'" in error.value.message


def test_a_tampered_pool_file_is_refused_and_removed(repo, tmp_path):
    deb = raw_deb(tmp_path / "ok.deb", CONTROL.format(name="okay"))
    with pytest.raises(UserError) as error:
        do_import(repo, tmp_path, deb, sha256="0" * 64)
    assert "does not match its SHA256" in error.value.message
    assert "run ninja again" in error.value.format()
    assert not os.path.exists(deb)
