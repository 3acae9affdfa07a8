"""Importing a .deb: its files as dpkg leaves them on a merged-/usr system,
and dpkg's file list as dpkg writes it.  Tiny packages are built with
dpkg-deb on the fly; nothing needs the network or root."""

import hashlib
import os
import stat
import subprocess
from types import SimpleNamespace

import pytest

from debarchive import build_deb
from debostree import debimport, ostree
from debostree.errors import CommandFailed
from debostree.kinds import bootstrap
from debostree.kinds.bootstrap import BootstrapOptions
from debostree.stagefiles import WorkFiles

LINKS = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64",
         "sbin": "usr/sbin"}
# What graph.py chooses for amd64 (mmdebstrap's merged-usr hook's links).
AMD64_SKELETON = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"]


def base_files_like(workdir):
    """Like Debian 13's base-files: the merged-/usr links are its own."""
    return build_deb(workdir, "base-files", "13.8", "amd64",
                     files={"usr/lib/os-release": "ID=debian\n",
                            "etc/issue": "Debian 13\n"},
                     dirs=["usr/bin", "usr/sbin", "usr/lib64", "usr/games"],
                     links={**LINKS, "etc/os-release": "../usr/lib/os-release"},
                     essential="yes")


def old_layout(workdir):
    """Like a Debian 12 package: files under /bin, /sbin, /lib, /lib64."""
    return build_deb(workdir, "oldutils", "1.0", "amd64",
                     files={"bin/tool": "#!/bin/sh\n",
                            "sbin/admin": "#!/bin/sh\n",
                            "lib/x86_64-linux-gnu/libold.so.1": "ELF\n",
                            "lib64/ld-old.so.2": "ELF\n",
                            "usr/bin/other": "#!/bin/sh\n"},
                     links={"lib/x86_64-linux-gnu/libold.so":
                            "libold.so.1"})


@pytest.fixture
def repo(tmp_path):
    repo = ostree.Repo(str(tmp_path / "repo"))
    repo.ensure()
    return repo


def import_deb(repo, tmp_path, deb):
    with open(deb, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return debimport.import_deb(repo.path, deb, digest,
                                str(tmp_path / "pkgs" / f"{digest}.json"),
                                str(tmp_path / "tmp"))


def tree(repo, rev):
    """{path: (type letter, target)} of a commit, from ``ostree ls -R``."""
    out = subprocess.run(["ostree", "ls", f"--repo={repo.path}", "-R", rev],
                         check=True, capture_output=True, text=True).stdout
    result = {}
    for line in out.splitlines():
        fields = line.split(None, 4)
        path, _, target = fields[4].partition(" -> ")
        result[path] = (fields[0][0], target or None)
    return result


def cat(repo, rev, path):
    return subprocess.run(["ostree", "cat", f"--repo={repo.path}", rev, path],
                          check=True, capture_output=True, text=True).stdout


def dpkg_list(tmp_path, deb, name):
    """The .list dpkg itself writes when it unpacks ``deb`` (into an empty
    root of its own)."""
    root = tmp_path / f"dpkg-{name}"
    for sub in ("var/lib/dpkg/info", "var/lib/dpkg/updates"):
        os.makedirs(root / sub)
    (root / "var/lib/dpkg/status").write_text("")
    subprocess.run(["dpkg", f"--root={root}", "--log=/dev/null",
                    "--force-not-root", "--unpack", deb], check=True,
                   capture_output=True,
                   env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    return (root / "var/lib/dpkg/info" / f"{name}.list").read_text()


def test_shipped_merged_usr_links_stay_links(tmp_path, repo):
    deb = base_files_like(tmp_path)
    summary = import_deb(repo, tmp_path, deb)
    assert summary["merged_usr_links"] == ["bin", "lib", "lib64", "sbin"]
    data = tree(repo, summary["data_commit"])
    for name, target in LINKS.items():
        assert data["/" + name] == ("l", target)
        assert data["/" + target] == ("d", None)
    assert data["/etc/os-release"] == ("l", "../usr/lib/os-release")
    assert data["/usr/lib/os-release"][0] == "-"
    assert not any(path.startswith("/usr/usr") for path in data)
    # The summary's manifest describes the same tree.
    entries = {e[0]: e for e in map(_manifest_entry, summary["manifest"])}
    assert set(entries) == set(data) - {"/"}
    for name, target in LINKS.items():
        assert stat.S_ISLNK(entries["/" + name][1])
        assert entries["/" + name][4] == target
    # dpkg's file list names the links as the package does, byte for byte
    # what dpkg writes (glibc's preinst looks for /lib64 in it).
    listing = cat(repo, summary["info_commit"],
                  "/var/lib/dpkg/info/base-files.list")
    assert listing == dpkg_list(tmp_path, deb, "base-files")
    assert {"/bin", "/lib", "/lib64", "/sbin"} <= set(listing.splitlines())


def test_old_layout_moves_under_usr(tmp_path, repo):
    deb = old_layout(tmp_path)
    summary = import_deb(repo, tmp_path, deb)
    assert summary["merged_usr_links"] == []
    data = tree(repo, summary["data_commit"])
    assert {p for p in data if p.count("/") == 1} == {"/", "/usr"}
    for path in ("/usr/bin/tool", "/usr/sbin/admin", "/usr/bin/other",
                 "/usr/lib/x86_64-linux-gnu/libold.so.1", "/usr/lib64/ld-old.so.2"):
        assert data[path] == ("-", None)
    assert data["/usr/lib/x86_64-linux-gnu/libold.so"] == ("l", "libold.so.1")
    entries = {e[0] for e in map(_manifest_entry, summary["manifest"])}
    assert entries == set(data) - {"/"}
    listing = cat(repo, summary["info_commit"], "/var/lib/dpkg/info/oldutils.list")
    assert listing == dpkg_list(tmp_path, deb, "oldutils")
    assert "/bin/tool" in listing.splitlines()


def compose(tmp_path, repo, summaries):
    work = WorkFiles(str(tmp_path / "work"))
    os.makedirs(work.path, exist_ok=True)
    with open(work.plan, "w") as f:
        f.write("[]")  # no steps: the packages stay in the given order
    opts = BootstrapOptions(
        recipe="r", stage="base", arch="amd64", kind="bootstrap",
        ref="stage/r/amd64/base", environment={}, source_date_epoch=0,
        variant="custom", requests=[], packages=[],
        summaries=[str(s) for s in summaries],
        merged_usr_dirs=list(AMD64_SKELETON))
    run = SimpleNamespace(opts=opts, files=work, repo=repo,
                          log=str(tmp_path / "compose.log"), note=print)
    commit, entries = bootstrap.compose(run)
    return tree(repo, commit), entries


def summary_paths(tmp_path):
    return sorted(str(p) for p in (tmp_path / "pkgs").iterdir())


def test_compose_takes_the_packages_links(tmp_path, repo):
    """With a package that ships the links (Debian 13), the tree has exactly
    those, as dpkg leaves it; without one (Debian 12), the skeleton's."""
    import_deb(repo, tmp_path / "old", old_layout(tmp_path))
    data, entries = compose(tmp_path / "old", repo, summary_paths(tmp_path / "old"))
    top = {p: v for p, v in data.items() if p.count("/") == 1 and v[0] == "l"}
    assert top == {f"/{name}": ("l", f"usr/{name}") for name in AMD64_SKELETON}
    assert data["/usr/bin/tool"] == ("-", None)

    import_deb(repo, tmp_path / "new", base_files_like(tmp_path))
    import_deb(repo, tmp_path / "new", old_layout(tmp_path))
    data, entries = compose(tmp_path / "new", repo, summary_paths(tmp_path / "new"))
    top = {p: v for p, v in data.items() if p.count("/") == 1 and v[0] == "l"}
    assert top == {f"/{name}": ("l", target) for name, target in LINKS.items()}
    assert "/usr/lib32" not in data and "/usr/libx32" not in data
    assert data["/usr/bin/tool"] == ("-", None)
    assert data["/usr/lib64/ld-old.so.2"] == ("-", None)
    # The manifest the stage starts from agrees with the tree.
    for path, (kind, target) in data.items():
        if path.startswith("/var/lib/dpkg") or path == "/":
            continue
        assert path in entries, path
        assert stat.S_ISLNK(entries[path].mode) == (kind == "l"), path
        assert entries[path].target == target, path
    assert set(p for p in entries if p.count("/") == 1) == \
        set(p for p in data if p.count("/") == 1)


def _manifest_entry(line):
    import json
    return json.loads(line)


def test_status_keeps_conffile_flags_and_the_control_as_written(repo, tmp_path):
    """dpkg's status keeps "remove-on-upgrade" (written before the path in
    the conffiles member, after the path and hash in the status) and the
    control's values verbatim, trailing spaces included."""
    deb = build_deb(str(tmp_path), "confy", "1.0", "amd64",
                    files={"etc/confy/new.conf": "x\n"},
                    scripts={"conffiles": "remove-on-upgrade /etc/confy/old.conf\n"
                             "/etc/confy/new.conf\n"},
                    description="a test package \n with a long description")
    summary = import_deb(repo, tmp_path, deb)
    assert [path for path, _ in summary["conffiles"]] == [
        "/etc/confy/old.conf", "/etc/confy/new.conf"]
    assert summary["conffile_flags"] == {"/etc/confy/old.conf": "remove-on-upgrade"}
    assert "Description: a test package \n" in summary["control_text"]


def root_checksums(repo, commit):
    """(contents, metadata) checksums of a commit's root directory."""
    import gi
    gi.require_version("OSTree", "1.0")
    from gi.repository import Gio, OSTree
    r = OSTree.Repo.new(Gio.File.new_for_path(repo.path))
    r.open(None)
    _, root, _ = r.read_commit(commit, None)
    return root.tree_get_contents_checksum(), root.tree_get_metadata_checksum()


def test_merging_commits_makes_the_tree_ostree_commit_makes(tmp_path, repo):
    """ostree.merge_commits reads directory listings only, lazily; its tree
    must be the one ``ostree commit --tree=ref=...`` makes from the same
    commits: later commits win a path, directories shared by several take
    the last one's owner and mode, one commit's directories are whole."""
    debs = [base_files_like(tmp_path), old_layout(tmp_path),
            build_deb(str(tmp_path), "first", "1.0", "amd64",
                      files={"usr/share/shared/same": "first\n",
                             "usr/share/first/only": "1\n",
                             "etc/shared.conf": "a\n"},
                      dirs=["usr/share/empty"]),
            build_deb(str(tmp_path), "second", "1.0", "amd64",
                      files={"usr/share/shared/same": "second\n",
                             "usr/share/second/deep/er/file": "2\n",
                             "etc/shared.conf": "b\n"},
                      links={"usr/share/shared/link": "same"})]
    commits = []
    for deb in debs:
        summary = import_deb(repo, tmp_path, deb)
        commits += [summary["data_commit"], summary["info_commit"]]
    # A directory of the second with another mode than the first's.
    odd = tmp_path / "odd"
    (odd / "usr/share/shared").mkdir(parents=True)
    os.chmod(odd / "usr/share/shared", 0o700)
    (odd / "usr/share/shared/extra").write_text("x\n")
    commits.append(repo.commit_trees("test/odd", [f"dir={odd}"], "odd"))
    for order in (commits, list(reversed(commits))):
        cli = repo.commit_trees("test/cli", [f"ref={c}" for c in order], "cli")
        mine = ostree.merge_commits(repo.path, "test/mine", order, "mine")
        assert root_checksums(repo, mine) == root_checksums(repo, cli)
    assert cat(repo, mine, "/usr/share/shared/same") == "first\n"
    # Refs name commits as well as checksums do.
    by_ref = ostree.merge_commits(repo.path, "test/refs",
                                  ["test/odd", commits[0]], "refs")
    cli = repo.commit_trees("test/cli", ["ref=test/odd", f"ref={commits[0]}"],
                            "cli")
    assert root_checksums(repo, by_ref) == root_checksums(repo, cli)


def test_merging_a_file_over_a_directory_fails_as_ostree_does(tmp_path, repo):
    one = tmp_path / "one"
    (one / "usr/thing").mkdir(parents=True)
    (one / "usr/thing/inside").write_text("x")
    two = tmp_path / "two"
    (two / "usr").mkdir(parents=True)
    (two / "usr/thing").write_text("a file")
    commits = [repo.commit_trees("test/one", [f"dir={one}"], "one"),
               repo.commit_trees("test/two", [f"dir={two}"], "two")]
    with pytest.raises(CommandFailed):
        repo.commit_trees("test/cli", [f"ref={c}" for c in commits], "cli")
    with pytest.raises(ostree.CommitFailed) as error:
        ostree.merge_commits(repo.path, "test/merged", commits, "merged")
    assert "thing" in str(error.value)
    assert repo.rev_parse("test/merged") is None
