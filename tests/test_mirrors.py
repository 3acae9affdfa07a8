"""Mirror configuration: command line > environment > user file > host apt."""

import pytest

from debostree import mirrors, recipe
from debostree.errors import UserError

DEBIAN = recipe.Archive("debian", ("bookworm", "bookworm-updates"), ("main",))
SECURITY = recipe.Archive("debian-security", ("bookworm-security",), ("main",))
UBUNTU = recipe.Archive("ubuntu", ("jammy",), ("main",))


@pytest.fixture
def etc(tmp_path):
    d = tmp_path / "apt"
    (d / "sources.list.d").mkdir(parents=True)
    (d / "sources.list.d" / "debian.sources").write_text("""\
Types: deb deb-src
URIs: http://mirror.example.invalid/debian/
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.invalid/debian-security
Suites: bookworm-security
Components: main
Enabled: yes

Types: deb
URIs: http://disabled.example.invalid/debian
Suites: bookworm
Enabled: no
""")
    (d / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://ubuntu.example.invalid/ubuntu jammy main\n")
    return str(d)


def test_host_sources(etc):
    sources = mirrors.read_host_sources(etc)
    assert [s.uri for s in sources] == [
        "http://ubuntu.example.invalid/ubuntu",
        "http://mirror.example.invalid/debian",
        "http://mirror.example.invalid/debian-security"]
    assert sources[0].signed_by == "/k.gpg"
    m = mirrors.Mirrors(environ={}, config_file="/nonexistent",
                        host_sources=sources)
    assert m.url(DEBIAN) == "http://mirror.example.invalid/debian"
    assert m.url(SECURITY) == "http://mirror.example.invalid/debian-security"
    assert m.url(UBUNTU) == "http://ubuntu.example.invalid/ubuntu"
    # A name matching no URI falls back to the source carrying its suites.
    other = recipe.Archive("mymirror", ("bookworm-security",), ("main",))
    assert m.url(other) == "http://mirror.example.invalid/debian-security"


def test_precedence(etc, tmp_path):
    config = tmp_path / "mirrors.yaml"
    config.write_text("debian: http://file.example.invalid/debian\n"
                      "debian-security: http://file.example.invalid/sec\n"
                      "ubuntu: http://file.example.invalid/ubuntu\n")
    m = mirrors.Mirrors(
        cli=["debian=http://cli.example.invalid/debian/"],
        environ={"DEBOSTREE_MIRRORS": "debian=http://env.example.invalid/d "
                 "debian-security=http://env.example.invalid/s"},
        config_file=str(config), host_sources=mirrors.read_host_sources(etc))
    assert m.url(DEBIAN) == "http://cli.example.invalid/debian"
    assert m.url(SECURITY) == "http://env.example.invalid/s"
    assert m.url(UBUNTU) == "http://file.example.invalid/ubuntu"


def test_unknown_archive():
    m = mirrors.Mirrors(environ={}, config_file="/nonexistent", host_sources=[])
    with pytest.raises(UserError) as info:
        m.url(UBUNTU)
    assert "no mirror is configured for archive 'ubuntu'" in info.value.format()
    assert "--mirror ubuntu=URL" in info.value.format()


@pytest.mark.parametrize("bad", ["debian", "debian=ftp://x", "=http://x"])
def test_bad_mirror_option(bad):
    with pytest.raises(UserError):
        mirrors.Mirrors(cli=[bad], environ={}, config_file="/nonexistent",
                        host_sources=[])


def test_bad_config_file(tmp_path):
    config = tmp_path / "mirrors.yaml"
    config.write_text("debian: [not, a, url]\n")
    with pytest.raises(UserError) as info:
        mirrors.Mirrors(environ={}, config_file=str(config), host_sources=[])
    assert info.value.line == 1 and "invalid URL" in info.value.format()
