"""The order of a bootstrap's maintainer scripts, as apt and dpkg run them
under mmdebstrap: planned by the host's apt-get on tiny packages made on
the fly (no network, nothing run)."""

import os
import subprocess

from debian import deb822

from debarchive import build_deb
from debostree import dpkgorder
from debostree.kinds.base import PackageFile


def packages(tmp_path):
    """Tiny packages: an Essential set with a Pre-Depends, and a rest whose
    members depend on each other."""
    made = [
        build_deb(str(tmp_path), "libc", "2.0", "amd64", priority="required",
                  multi_arch="same"),
        build_deb(str(tmp_path), "coreutils", "9.0", "amd64", essential="yes",
                  priority="required", pre_depends="libc"),
        build_deb(str(tmp_path), "base-files", "1.0", "amd64", essential="yes",
                  priority="required"),
        build_deb(str(tmp_path), "apt", "2.6", "amd64", priority="required",
                  depends="libc, adduser"),
        build_deb(str(tmp_path), "adduser", "3.0", "all", priority="required",
                  depends="coreutils"),
        build_deb(str(tmp_path), "daemon", "1.0", "amd64", depends="adduser"),
    ]
    text = subprocess.run(["apt-ftparchive", "packages", "."], cwd=tmp_path,
                          capture_output=True, text=True, check=True).stdout
    result = []
    for para in deb822.Packages.iter_paragraphs(text, use_apt_pkg=False):
        result.append(PackageFile(
            name=para["Package"], arch=para["Architecture"],
            version=para["Version"], filename=para["Filename"],
            sha256=para["SHA256"],
            pool_path=os.path.join(str(tmp_path), para["Filename"]),
            dpkg_name=(f"{para['Package']}:{para['Architecture']}"
                       if para.get("Multi-Arch") == "same" else para["Package"]),
            stanza=str(para)))
    return result


def unpacked(steps):
    return [name for kind, args in steps if kind == "preinst" for name in args]


def test_essential_first_as_one_dpkg_install_then_apts_sequence(tmp_path):
    pkgs = packages(tmp_path / "debs")
    steps = dpkgorder.plan(pkgs, "amd64", "required", ["daemon"],
                           str(tmp_path / "apt"))
    # 1. The Essential set and what it needs, unpacked in apt's order (a
    #    Pre-Depends first), configured by one forced dpkg call.
    kind, first = steps[0]
    assert kind == "preinst" and set(first) == {"libc:amd64", "coreutils",
                                                "base-files"}
    assert first.index("libc:amd64") < first.index("coreutils")
    assert steps[1] == ["dpkg", ["--configure", "--force-depends"] +
                        [f"{n.split(':')[0]}:amd64" for n in first]]
    # 2. The rest as apt runs it: every package unpacked once, each
    #    configured after what it depends on, and the pending ones at the end.
    rest = steps[2:]
    assert sorted(unpacked(rest)) == ["adduser", "apt", "daemon"]
    configured = [a for kind, args in rest if kind == "dpkg"
                  and "--configure" in args for a in args if ":" in a]
    calls = [args for kind, args in rest if kind == "dpkg"]
    assert calls[-1][-2:] == ["--configure", "--pending"]
    if "adduser:all" in configured and "daemon:amd64" in configured:
        assert configured.index("adduser:all") < configured.index("daemon:amd64")
    # Nothing is left for the final "dpkg --configure -a" to find.
    assert sorted(unpacked(steps)) == sorted(p.dpkg_name for p in pkgs)


def test_custom_is_one_dpkg_install_of_everything(tmp_path):
    # A custom bootstrap locks exactly what its packages need.
    pkgs = [p for p in packages(tmp_path / "debs")
            if p.name in ("daemon", "adduser", "coreutils", "libc")]
    steps = dpkgorder.plan(pkgs, "amd64", "custom", ["daemon"],
                           str(tmp_path / "apt"))
    assert [kind for kind, _ in steps] == ["preinst", "dpkg"]
    assert set(steps[0][1]) == {"libc:amd64", "coreutils", "adduser", "daemon"}
    assert steps[0][1].index("coreutils") < steps[0][1].index("adduser") < \
        steps[0][1].index("daemon")
