"""The resolver gives what apt-get would install, for many kinds of request."""

import pytest

from debostree import lockfile
from debostree.errors import UserError
from helpers import (DEFAULT_APT, MMDEBSTRAP_APT, apt_simulate, locked_set,
                     mmdebstrap_like, resolve_recipe, status_of)


CUSTOM_REQUESTS = [
    ["app"],                      # versioned dep from the newer suite; alternatives
    ["app", "postfix"],           # an explicit choice for a virtual dependency
    ["editor"],                   # virtual package with one provider
    ["script-tool"],              # perl:any on Multi-Arch: allowed
    ["uses-helper"],              # Multi-Arch: foreign
    ["new-tool"],                 # Conflicts/Replaces/Provides
    ["needs-setup"],              # Pre-Depends
    ["data-all", "libc:ARCH"],    # arch: all and an arch-qualified request
    ["libfoo=1.0"],               # a pinned older version
]


@pytest.mark.parametrize("requests", CUSTOM_REQUESTS, ids=lambda r: "+".join(r))
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_custom_bootstrap_matches_apt(tmp_path, test_archive, requests, arch):
    requests = [r.replace("ARCH", arch) for r in requests]
    text, root = resolve_recipe(tmp_path, test_archive, [
        {"name": "base", "bootstrap": {"variant": "custom",
                                       "packages": requests}}], arch=arch)
    expected = apt_simulate(root, ["install"] + requests)
    assert locked_set(text) == expected
    assert expected  # the comparison is not vacuous


def test_newest_suite_wins(tmp_path, test_archive):
    text, _ = resolve_recipe(tmp_path, test_archive, [
        {"name": "base", "bootstrap": {"variant": "custom", "packages": ["app"]}}])
    entries = {e.name: e for e in lockfile.parse(text)}
    assert entries["libfoo"].version == "2.0"
    assert entries["libfoo"].suite == "stable-updates"
    assert entries["app"].suite == "stable"
    assert entries["libfoo"].filename.startswith("pool/main/l/libfoo/")
    assert entries["libfoo"].archive == "test"
    assert "app-docs" not in entries  # Recommends are off by default


def test_recommends_switch(tmp_path, test_archive):
    text, root = resolve_recipe(tmp_path, test_archive, [
        {"name": "base", "bootstrap": {"variant": "custom", "packages": ["app"]}}],
        recommends=True)
    assert "app-docs" in {e.name for e in lockfile.parse(text)}
    assert locked_set(text) == apt_simulate(root, ["install", "app"])


@pytest.mark.parametrize("variant", ["essential", "apt", "required",
                                     "important"])
def test_variants_follow_mmdebstrap(tmp_path, test_archive, variant):
    text, root = resolve_recipe(tmp_path, test_archive, [
        {"name": "base", "bootstrap": {"variant": variant}}])
    got = locked_set(text)
    if variant == "apt":
        # mmdebstrap's 'apt' variant: "apt-get dist-upgrade" on an empty
        # status, with apt's default configuration (apt forced Essential).
        assert got == apt_simulate(root, ["dist-upgrade"], options=DEFAULT_APT)
        assert ("apt", "amd64") in got
        return
    # mmdebstrap (with pkgCacheGen::ForceEssential ","): apt installs the
    # Essential set, then (for priority based variants) the priority set
    # plus apt on top of it.
    essential = apt_simulate(root, ["install", "?narrow(?architecture(amd64),"
                                    "?essential)"], options=MMDEBSTRAP_APT)
    assert set(essential) <= set(got)
    assert ("base-files", "amd64") in got and ("coreutils", "amd64") in got
    assert ("apt", "amd64") not in essential
    if variant == "essential":
        assert got == essential
        return
    installed = {k: v for k, v in got.items() if k in essential}
    stanzas = [s for s in text.split("\n\n")
               if any(f"Package: {name}\n" in s for name, _ in installed)]
    pattern = "?priority(required)" if variant == "required" else \
        "?or(?priority(required),?priority(important))"
    rest = apt_simulate(root, ["install", "apt", f"?narrow(?architecture(amd64),"
                               f"?and({pattern},?not(?essential)))"],
                        status_of("\n\n".join(stanzas)), options=MMDEBSTRAP_APT)
    assert got == {**essential, **rest}
    assert ("apt", "amd64") in got
    assert (("important-tool", "all") in got) == (variant == "important")


def test_essential_variant_is_essential_only(tmp_path, test_archive):
    # apt is Priority: required but not Essential: yes in the archive; apt's
    # cache would flag it Essential unless told not to.
    sets = {}
    for variant in ("essential", "apt", "required"):
        text, _ = resolve_recipe(tmp_path / variant, test_archive, [
            {"name": "base", "bootstrap": {"variant": variant}}])
        sets[variant] = {name for name, arch in locked_set(text)}
    assert sets["essential"] == {"base-files", "coreutils", "libc"}
    assert sets["apt"] == sets["essential"] | {"apt", "gpgv2"}
    assert sets["required"] == sets["apt"]
    # The lockfile says which step installed what: apt comes with the rest
    # in the priority variants, as mmdebstrap installs it.
    text, root = resolve_recipe(tmp_path / "again", test_archive, [
        {"name": "base", "bootstrap": {"variant": "essential",
                                       "packages": ["nano"]}}])
    assert {name for name, _ in locked_set(text)} == \
        sets["essential"] | {"nano"}


def test_remove_stage_keeps_apt_essential(tmp_path, test_archive):
    # apt-get in the image (which runs remove stages) treats apt as
    # Essential and refuses to purge it; so does the resolver.
    with pytest.raises(UserError) as info:
        resolve_recipe(tmp_path, test_archive, [
            {"name": "base", "bootstrap": {"variant": "apt"}},
            {"name": "slim", "remove": ["apt"]}])
    assert "essential packages: apt" in info.value.format()


def test_install_stage_resolves_on_top_of_parent(tmp_path, test_archive):
    text, root = resolve_recipe(tmp_path, test_archive, [
        {"name": "base", "bootstrap": {"variant": "custom",
                                       "packages": ["coreutils"]}},
        {"name": "more", "install": ["app", "exim"]}])
    entries = lockfile.parse(text)
    stages = {e.name: e.stage for e in entries}
    assert stages["coreutils"] == "base" and stages["libc"] == "base"
    assert stages["app"] == "more" and stages["libfoo"] == "more"
    # On top of the base stage, apt installs exactly the 'more' packages.
    base_text = "\n".join(lockfile.stanza_text(e.fields) for e in entries
                          if e.stage == "base")
    more = apt_simulate(root, ["install", "app", "exim"], status_of(base_text),
                        options=DEFAULT_APT)  # apt as it runs in the image
    assert more == {(e.name, e.arch): e.version for e in entries
                    if e.stage == "more"}


def test_remove_stage_takes_out_dependents(tmp_path, test_archive):
    text, _ = resolve_recipe(tmp_path, test_archive, [
        {"name": "base", "bootstrap": {"variant": "custom",
                                       "packages": ["uses-helper", "nano"]}},
        {"name": "slim", "remove": ["helper"]},
        {"name": "again", "install": ["helper"]}])
    entries = lockfile.parse(text)
    # helper was removed (and uses-helper with it), so 'again' installs it anew
    assert [(e.name, e.stage) for e in entries if e.name == "helper"] == \
        [("helper", "again"), ("helper", "base")]


def test_unknown_package(tmp_path, test_archive):
    with pytest.raises(UserError) as info:
        resolve_recipe(tmp_path, test_archive, [
            {"name": "base", "bootstrap": {"variant": "custom",
                                           "packages": ["no-such-package"]}}])
    message = info.value.format()
    assert "unknown package 'no-such-package'" in message
    assert "r.yaml" in message and "stage 'base'" in message


def test_unsatisfiable_names_the_chain(tmp_path, test_archive):
    with pytest.raises(UserError) as info:
        resolve_recipe(tmp_path, test_archive, [
            {"name": "base", "bootstrap": {"variant": "custom",
                                           "packages": ["broken-app"]}}])
    message = info.value.format()
    assert "broken-app -> middle" in message
    assert "missing-lib (>= 5)" in message
    assert "missing-lib 1.0" in message


def test_virtual_with_several_providers(tmp_path, test_archive):
    with pytest.raises(UserError) as info:
        resolve_recipe(tmp_path, test_archive, [
            {"name": "base", "bootstrap": {"variant": "custom",
                                           "packages": ["www-browser"]}}])
    assert "provided by lynx, w3m" in info.value.format()


def test_breaks_is_respected(tmp_path, test_archive):
    with pytest.raises(UserError) as info:
        resolve_recipe(tmp_path, test_archive, [
            {"name": "base", "bootstrap": {"variant": "custom",
                                           "packages": ["app", "plugin"]}}])
    assert "unsatisfiable" in info.value.format()


def test_same_inputs_same_bytes(tmp_path, test_archive):
    stages = [{"name": "base", "bootstrap": {"variant": "required",
                                             "packages": ["app"]}}]
    first, _ = resolve_recipe(tmp_path / "one", test_archive, stages)
    second, _ = resolve_recipe(tmp_path / "two", test_archive, stages)
    assert first == second
    names = [e.name for e in lockfile.parse(first)]
    assert names == sorted(names)


@pytest.fixture(scope="module")
def usrmerge_archive(tmp_path_factory, key):
    """Debian 12 and 13 as far as merged /usr goes: in 'old', an Essential
    package depends on "usrmerge | usr-is-merged" and base-files ships no
    links; in 'new', base-files ships them and Provides usr-is-merged."""
    from debarchive import Archive, Server
    root = tmp_path_factory.mktemp("usrmerge-archive")
    archive = Archive(root, key, architectures=("amd64",))
    for suite in ("old", "new"):
        archive.add(suite, "libc", "2.0", "amd64", priority="required")
        archive.add(suite, "coreutils", "9.0", "amd64", essential="yes",
                    priority="required", pre_depends="libc")
        archive.add(suite, "apt", "2.6", "amd64", priority="required",
                    depends="libc")
        archive.add(suite, "perl", "5.36", "amd64", depends="libc")
        archive.add(suite, "usrmerge", "39", "all", depends="perl")
        archive.add(suite, "usr-is-merged", "39", "all")
    archive.add("old", "base-files", "12.4", "amd64", essential="yes",
                priority="required")
    archive.add("old", "init-system-helpers", "1.65", "all", essential="yes",
                priority="required", depends="usrmerge | usr-is-merged")
    archive.add("new", "base-files", "13.8", "amd64", essential="yes",
                priority="required", provides="base, usr-is-merged")
    archive.add("new", "init-system-helpers", "1.69", "all", essential="yes",
                priority="required")
    archive.publish()
    server = Server(root)
    archive.url = server.url
    yield archive
    server.close()


@pytest.mark.parametrize("suite", ["old", "new"])
def test_usr_is_merged_only_where_packages_do_not_merge(tmp_path, usrmerge_archive,
                                                        suite):
    text, root = resolve_recipe(tmp_path, usrmerge_archive, [
        {"name": "base", "bootstrap": {"variant": "minbase"}}], suites=[suite])
    got = locked_set(text)
    names = {name for name, _ in got}
    assert "usrmerge" not in names and "perl" not in names
    # 'old': as mmdebstrap with its merged-usr hook (a stand-in usr-is-merged
    # while the Essential set resolves, the real one with the rest); 'new':
    # as plain mmdebstrap, whose base-files lays out merged /usr itself.
    assert ("usr-is-merged" in names) == (suite == "old")
    assert got == mmdebstrap_like(root, "amd64", "?priority(required)",
                                  extra_merged_usr=(suite == "old"))
