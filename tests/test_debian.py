"""Against Debian's real archive (bookworm), through the host's apt sources:
the resolver locks what apt-get would install, for amd64 and arm64."""

import os

import pytest

from debostree import lockfile, mirrors, recipe, update
from debostree.resolve import source_version
from helpers import (DEFAULT_APT, apt_simulate, mmdebstrap_like,
                     status_of)

pytestmark = pytest.mark.network

ARCHIVES = """\
archives:
  - {name: debian, suites: [bookworm, bookworm-updates], components: [main]}
  - {name: debian-security, suites: [bookworm-security], components: [main]}
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("debian-cache"))


def resolve(tmp_path, cache, arch, stages):
    path = tmp_path / "r.yaml"
    path.write_text(f"ref: test/r\narchitecture: {arch}\n{ARCHIVES}stages:\n"
                    + "".join(f"  - {s}\n" for s in stages))
    rec = recipe.load_recipe(str(path))
    texts = update.resolve_all([rec], mirrors.Mirrors(environ={},
                                                      config_file="/nonexistent"),
                               cache)
    return texts[("r", arch)], os.path.join(cache, "apt", f"r.{arch}")


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_minbase_matches_apt(tmp_path, cache, arch):
    text, root = resolve(tmp_path, cache, arch,
                         ["{name: base, bootstrap: {variant: minbase}}"])
    entries = lockfile.parse(text)
    got = {(e.name, e.arch): e.version for e in entries if e.stage == "base"}
    assert len(got) > 80
    assert got == mmdebstrap_like(root, arch, "?priority(required)",
                                  extra_merged_usr=True)
    assert ("usr-is-merged", "all") in got and ("usrmerge", "all") not in got
    assert all(e.sha256 and e.filename.startswith("pool/") for e in entries)
    # The build's own fakeroot library is never locked with the recipe
    # (sandboxlib.py matches it to the host); a foreign recipe's lockfile
    # also pins the amd64 builds of its helper programs, at its versions.
    stand_ins = {e.name: e for e in entries
                 if e.stage == lockfile.STAND_INS_STAGE}
    assert {e.stage for e in entries} == \
        ({"base"} if arch == "amd64" else {"base", lockfile.STAND_INS_STAGE})
    if arch != "amd64":
        assert {e.arch for e in stand_ins.values()} == {"amd64"}
        target = {e.name: e for e in entries if e.arch == arch}

        def source_of(entry):
            return source_version({"Source": entry.get("Source") or ""},
                                  entry.version)
        for name in ("libc6", "coreutils", "dash", "sed", "perl-base"):
            assert source_of(stand_ins[name]) == source_of(target[name]), name


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_install_stage_matches_apt(tmp_path, cache, arch):
    text, root = resolve(tmp_path, cache, arch, [
        "{name: base, bootstrap: {variant: minbase}}",
        "{name: tools, install: [openssh-server, iproute2, systemd-sysv]}"])
    entries = lockfile.parse(text)
    base = "\n".join(lockfile.stanza_text(e.fields) for e in entries
                     if e.stage == "base")
    expected = apt_simulate(root, ["install", "openssh-server", "iproute2",
                                   "systemd-sysv"], status_of(base),
                            options=DEFAULT_APT)  # apt as it runs in the image
    assert {(e.name, e.arch): e.version for e in entries
            if e.stage == "tools"} == expected
    assert ("openssh-server", arch) in expected
