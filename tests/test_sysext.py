"""System extensions without a build: the recipe's ``sysexts`` key, what an
extension's stages may change (read from two commits), and the image made
from them (owners and modes from the manifest, extension-release from the
base's os-release, the same bytes from any build directory and user).  A
booted server merging one and refusing it after an upgrade is in
test_image.py."""

import hashlib
import os
import subprocess

import pytest

from conftest import TOP
from debostree import manifest, ostree, recipe, sysext
from debostree.errors import UserError
from debostree.project import BuildConfig
from test_recipe import error_of

DEPLOYABLE = """\
ref: test/sx
architecture: amd64
archives:
  - {name: debian, suites: [trixie], components: [main]}
stages:
  - {name: base, bootstrap: {variant: minbase}}
  - {name: deployable, deployable: {}}
"""


def load(tmp_path, text):
    path = tmp_path / "sx.yaml"
    path.write_text(text)
    return recipe.load_recipe(str(path))


def test_sysexts_become_stages_on_the_tree_below_deployable(tmp_path):
    rec = load(tmp_path, DEPLOYABLE + """\
sysexts:
  - {name: tools, packages: [tree]}
  - name: notes
    stages:
      - {name: write, run: "echo hi > /usr/share/note"}
      - {name: more, run: "echo more >> /usr/share/note"}
""")
    tools, notes = rec.sysexts
    assert [(s.name, s.kind, s.parent) for s in tools.stages] == [
        ("sysext.tools", "install", "sx/base")]
    assert [(s.name, s.parent) for s in notes.stages] == [
        ("sysext.notes.write", "sx/base"),
        ("sysext.notes.more", "sx/sysext.notes.write")]
    assert rec.stage("sysext.notes.more") is notes.stages[1]
    assert [s.name for s in rec.stages] == ["base", "deployable"]


@pytest.mark.parametrize("text,key,words", [
    ("sysexts: [{name: t, packages: [tree]}]\n", None, None),
    ("sysexts: [{name: t}]\n", "sysexts[0]", "adds nothing"),
    ("sysexts: [{name: t, packages: [aa]}, {name: t, packages: [bb]}]\n",
     "sysexts[1].name", "listed twice"),
    ("sysexts: [{name: t, stages: [{name: b, bootstrap: {}}]}]\n",
     "sysexts[0].stages[0]", "no 'bootstrap', 'deployable' or 'from'"),
    ("sysexts: [{name: 'a b', packages: [tree]}]\n", "sysexts[0].name",
     "extension name"),
    ("sysexts: {name: t}\n", "sysexts", "expected a list"),
])
def test_bad_sysexts_are_one_line(tmp_path, text, key, words):
    if key is None:
        assert load(tmp_path, DEPLOYABLE + text).sysexts[0].name == "t"
        return
    error = error_of(tmp_path, DEPLOYABLE + text)
    assert error.key == key, error.format()
    assert words in error.format()


def test_sysexts_need_a_deployable_recipe(tmp_path):
    text = DEPLOYABLE.replace("  - {name: deployable, deployable: {}}\n", "")
    error = error_of(tmp_path, text + "sysexts: [{name: t, packages: [x]}]\n")
    assert error.key == "sysexts" and "need a deployable recipe" in \
        error.format()
    error = error_of(tmp_path, DEPLOYABLE.replace("name: base,",
                                                  "name: sysext.base,"))
    assert "may not start with 'sysext.'" in error.format()


def commit(repo, tree, files, branch):
    """Commit ``files`` ({path: text, or None for a directory}) as root's."""
    for path, text in files.items():
        full = tree / path.lstrip("/")
        if text is None:
            full.mkdir(parents=True, exist_ok=True)
        else:
            full.parent.mkdir(parents=True, exist_ok=True)
            full.write_text(text)
    return subprocess.run(
        ["ostree", "commit", f"--repo={repo}", f"--branch={branch}",
         f"--tree=dir={tree}", "--owner-uid=0", "--owner-gid=0",
         "--no-bindings"], check=True, capture_output=True,
        text=True).stdout.strip()


BASE_FILES = {
    "/usr/bin/old": "old\n",
    "/usr/share/gone/file": "gone\n",
    "/usr/lib/os-release": 'ID=debian\nVERSION_ID="13"\nSYSEXT_LEVEL=abc123\n',
    "/var/lib/dpkg/status": "Package: base-files\nStatus: install ok "
                            "installed\nVersion: 13\nArchitecture: amd64\n",
    "/etc/hostname": "base\n",
}


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    ostree.Repo(str(path)).ensure()
    base = commit(path, tmp_path / "base", BASE_FILES, "stage/base")
    return path, base


def test_only_additions_under_usr_and_opt_are_taken(tmp_path, repo):
    path, base = repo
    tree = tmp_path / "ext"
    files = {**BASE_FILES,
             "/usr/bin/new": "new\n", "/opt/vendor/tool": "tool\n",
             "/var/lib/dpkg/status": BASE_FILES["/var/lib/dpkg/status"]
             + "\nPackage: new\nStatus: install ok installed\nVersion: 1\n"
             "Architecture: amd64\n",
             "/var/log/dpkg.log": "log\n", "/etc/ld.so.cache": "cache\n"}
    good = commit(path, tree, files, "stage/good")
    gi_repo = ostree.Repo(str(path)).open_gi()
    added, refused = sysext.changes(gi_repo, base, good)
    assert added == ["/opt", "/opt/vendor", "/opt/vendor/tool", "/usr/bin/new"]
    assert refused == {}
    # A write to /etc, a changed file of the base, a removed one.
    (tree / "etc" / "extra").write_text("x\n")
    (tree / "usr" / "bin" / "old").write_text("changed\n")
    os.unlink(tree / "usr" / "share" / "gone" / "file")
    bad = commit(path, tree, {}, "stage/bad")
    _, refused = sysext.changes(gi_repo, base, bad)
    assert refused == {"writes outside /usr and /opt": ["/etc/extra"],
                       "changes what the base has": ["/usr/bin/old"],
                       "removes what the base has": ["/usr/share/gone/file"]}


def options_for(tmp_path, path, base, extension, entries, name="tools"):
    files = {}
    for label, value in (("base", base), ("ext", extension)):
        files[label] = tmp_path / f"{label}.commit"
        files[label].write_text(value + "\n")
    manifest_path = tmp_path / "ext.manifest"
    manifest.write(str(manifest_path), entries)
    return {"recipe": "sx", "recipe_path": str(tmp_path / "sx.yaml"),
            "arch": "amd64", "name": name, "line": 9,
            "base": str(files["base"]), "extension": str(files["ext"]),
            "manifest": str(manifest_path),
            "os_release_from": str(files["base"]),
            "source_date_epoch": 1704067200}


def test_the_image_is_a_sysext_of_exactly_this_base(tmp_path, repo):
    path, base = repo
    files = {**BASE_FILES, "/usr/bin/new": "new\n",
             "/usr/share/doc/new/copyright": "free\n"}
    extension = commit(path, tmp_path / "ext", files, "stage/ext")
    # Owners and modes from the stage's manifest: what the checkout of a
    # user-mode repository cannot show (a setuid program, a group).
    entries = {p: manifest.Entry(p, 0o40755) for p in
               ("/", "/usr", "/usr/bin", "/usr/share", "/usr/share/doc",
                "/usr/share/doc/new")}
    entries["/usr/bin/new"] = manifest.Entry("/usr/bin/new", 0o104750, 0, 42)
    entries["/usr/share/doc/new/copyright"] = manifest.Entry(
        "/usr/share/doc/new/copyright", 0o100644)
    config = BuildConfig(top=TOP, builddir=str(tmp_path), pool="",
                         recipes="", lockfiles="", mirrors={})
    assert config.repo == str(path)
    out = tmp_path / "build" / "tools.raw"
    out.parent.mkdir(parents=True)
    opts = options_for(tmp_path, path, base, extension, entries)
    sysext.build(config, opts, str(out), say=lambda *a: None)
    listing = subprocess.run(["unsquashfs", "-lln", str(out)], check=True,
                             capture_output=True, text=True).stdout
    assert "-rwsr-x--- 0/42 " in listing and "squashfs-root/usr/bin/new" \
        in listing, listing
    assert "/etc" not in listing and "/var" not in listing
    release = subprocess.run(
        ["unsquashfs", "-cat", str(out),
         "usr/lib/extension-release.d/extension-release.tools"],
        check=True, capture_output=True, text=True).stdout
    assert release.splitlines() == ["ID=debian", "VERSION_ID=13",
                                    "SYSEXT_LEVEL=abc123",
                                    "ARCHITECTURE=x86-64", "SYSEXT_ID=tools"]
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert (tmp_path / "build" / "tools.raw.sha256").read_text() == \
        f"{digest}  tools.raw\n"
    # The same bytes again, from another build directory.
    other = tmp_path / "other" / "tools.raw"
    other.parent.mkdir()
    sysext.build(config, opts, str(other), say=lambda *a: None)
    assert hashlib.sha256(other.read_bytes()).hexdigest() == digest

    # An extension that writes to /etc: one line naming the path.
    files["/etc/extra"] = "x\n"
    bad = commit(path, tmp_path / "ext", files, "stage/bad")
    with pytest.raises(UserError) as info:
        sysext.build(config, options_for(tmp_path, path, base, bad, entries),
                     str(tmp_path / "build" / "bad.raw"))
    text = info.value.format()
    assert "sx.yaml:9: sysexts: sx/amd64: sysext tools: writes outside /usr " \
        "and /opt: /etc/extra" in text, text
    assert not (tmp_path / "build" / "bad.raw").exists()


def test_published_beside_the_commits_with_signed_checksums(tmp_path, repo,
                                                             key):
    """``ninja publish``'s part: the image named by the level of the base
    it is for, listed in SHA256SUMS, signed as systemd-sysupdate reads it
    (SHA256SUMS.gpg), or with ed25519."""
    from debostree import ed25519, publish
    from test_publish import ed25519_keys, gpg_settings
    path, base = repo
    files = {**BASE_FILES, "/usr/bin/new": "new\n"}
    extension = commit(path, tmp_path / "ext", files, "stage/ext")
    entries = {p: manifest.Entry(p, 0o40755) for p in ("/", "/usr", "/usr/bin")}
    entries["/usr/bin/new"] = manifest.Entry("/usr/bin/new", 0o100755)
    out = tmp_path / "build" / "tools.raw"
    out.parent.mkdir(parents=True)
    for settings in (gpg_settings(key), None):
        if settings is None:
            secret, public = ed25519_keys(str(tmp_path))
            settings = {"ed25519_key": secret}
        config = BuildConfig(top=TOP, builddir=str(tmp_path), pool="",
                             recipes="", lockfiles="", mirrors={},
                             publish=settings)
        sysext.build(config, options_for(tmp_path, path, base, extension,
                                         entries), str(out),
                     say=lambda *a: None)
        published = publish.publish_sysext(config, settings, "sx", "amd64",
                                           str(out))
        directory = tmp_path / "publish" / "sysexts" / "sx" / "amd64"
        assert published == str(directory / "tools_abc123.raw")
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        sums = directory / "SHA256SUMS"
        assert sums.read_text() == f"{digest}  tools_abc123.raw\n"
    # The last was signed with ed25519, the first with GPG.
    signature = (directory / "SHA256SUMS.ed25519").read_text()
    import base64
    assert ed25519.verify(public, sums.read_bytes(),
                          base64.b64decode(signature))
    subprocess.run(["gpgv", "--keyring", key.keyring,
                    str(directory / "SHA256SUMS.gpg"), str(sums)],
                   check=True, capture_output=True)
