"""Manifests and the fakeroot state made from them (no sandbox needed)."""

import os
import shutil
import stat

import pytest

from debostree import manifest


def test_fakeroot_state_is_the_same_with_the_lower_layers_stats(tmp_path):
    """The state skips, without looking them up, the paths whose mode in
    the lower layer is the manifest's and whose owner is root; the lines
    are those a look-up of every path gives."""
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc/shadow").write_text("x")
    (root / "etc/plain").write_text("x")
    (root / "usr/bin/su").write_text("x")
    os.symlink("plain", root / "etc/link")
    os.chmod(root / "etc/shadow", 0o640)
    os.chmod(root / "usr/bin/su", 0o755)
    os.chmod(root, 0o755)
    E = manifest.Entry
    entries = {
        "/": E("/", stat.S_IFDIR | 0o700),           # differs: root's mode
        "/etc": E("/etc", stat.S_IFDIR | 0o755),
        "/etc/shadow": E("/etc/shadow", stat.S_IFREG | 0o640, 0, 42),
        "/etc/plain": E("/etc/plain", stat.S_IFREG | 0o644),
        "/etc/link": E("/etc/link", stat.S_IFLNK | 0o777, target="plain"),
        "/usr": E("/usr", stat.S_IFDIR | 0o755),
        "/usr/bin": E("/usr/bin", stat.S_IFDIR | 0o755),
        "/usr/bin/su": E("/usr/bin/su", stat.S_IFREG | 0o4755),  # setuid
        "/gone": E("/gone", stat.S_IFREG | 0o644, 1, 1),
    }
    lower_stats = manifest.walk(str(root))
    plain = manifest.fakeroot_state(str(root), entries)
    fast = manifest.fakeroot_state(str(root), entries, lower_stats)
    assert fast == plain
    state = manifest.parse_fakeroot_state(fast)
    modes = sorted((mode, uid, gid) for mode, uid, gid in state.values())
    assert modes == sorted([(stat.S_IFDIR | 0o700, 0, 0),
                            (stat.S_IFREG | 0o640, 0, 42),
                            (stat.S_IFREG | 0o4755, 0, 0)])
    # The root's line even when the lower layer's root has the mode: the
    # overlay's root is the upper layer's directory.
    os.chmod(root, 0o700)
    lower_stats = manifest.walk(str(root))
    os.chmod(root, 0o755)
    assert "mode=40700" in manifest.fakeroot_state(str(root), entries,
                                                   lower_stats)


def test_a_lower_layer_gets_an_inode_per_file_and_keeps_its_walk(tmp_path):
    """A fresh checkout's identical files (one inode, hardlinked) become
    copies with the same content, mode and times; the walk kept beside it
    is what a walk finds, and it is read back, not walked again, until the
    checkout at that path is another directory."""
    root = tmp_path / "checkout"
    (root / "doc").mkdir(parents=True)
    (root / "doc/a").write_text("same")
    os.chmod(root / "doc/a", 0o640)
    os.utime(root / "doc/a", (0, 0))
    os.link(root / "doc/a", root / "doc/b")
    os.link(root / "doc/a", root / "c")
    (root / "d").write_text("other")
    os.symlink("d", root / "link")
    cache = str(tmp_path / "checkout.walk.json")

    assert manifest.prepare_lower(str(root), cache) == 2
    inodes = {os.lstat(root / p).st_ino for p in ("doc/a", "doc/b", "c")}
    assert len(inodes) == 3
    for path in ("doc/a", "doc/b", "c"):
        st = os.lstat(root / path)
        assert (root / path).read_text() == "same"
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime == 0
        assert st.st_nlink == 1
    assert sorted(os.listdir(root / "doc")) == ["a", "b"]  # no leftovers
    assert manifest.shared_inode_paths(
        manifest.lower_inodes(manifest.walk(str(root)))) == []

    def seen(walked):
        return {p: (s.st_mode, s.st_ino) for p, s in walked.items()}

    walked = manifest.lower_walk(str(root), cache)
    assert seen(walked) == seen(manifest.walk(str(root)))
    # Read back: a file added since is not in it (nothing adds files to a
    # lower layer; this shows the walk is not made again).
    (root / "later").write_text("x")
    assert "/later" not in manifest.lower_walk(str(root), cache)
    # Another directory at the same path: walked again, and kept.
    os.rename(root, tmp_path / "old")
    shutil.copytree(tmp_path / "old", root, symlinks=True)
    walked = manifest.lower_walk(str(root), cache)
    assert seen(walked) == seen(manifest.walk(str(root)))
    assert "/later" in manifest.lower_walk(str(root), cache)
    # A damaged cache is walked again.
    with open(cache, "w") as f:
        f.write("{")
    assert seen(manifest.lower_walk(str(root), cache)) == \
        seen(manifest.walk(str(root)))


@pytest.mark.sandbox
def test_stages_on_one_checkout_walk_it_at_once(tmp_path):
    """Stages that start from one checkout run at once, each in a PID
    namespace of its own where its PID is 1: walking the checkout and
    keeping the walk must not trip over each other."""
    import subprocess
    import sys
    from conftest import TOP
    root = tmp_path / "checkout"
    for i in range(40):
        (root / f"d{i}").mkdir(parents=True)
        for j in range(50):
            (root / f"d{i}" / f"f{j}").write_text(f"{i} {j}")
    cache = str(tmp_path / "checkout.walk.json")
    script = ("import sys; sys.path.insert(0, sys.argv[1])\n"
              "from debostree import manifest\n"
              "assert len(manifest.lower_walk(sys.argv[2], sys.argv[3])) "
              "== 2041\n")
    for _ in range(3):
        with open(cache, "w") as f:
            f.write('{"identity": [0, 0, 0], "paths": {}}')  # another's
        walkers = [subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--pid", "--fork",
             sys.executable, "-c", script, TOP, str(root), cache],
            stderr=subprocess.PIPE, text=True) for _ in range(10)]
        for walker in walkers:
            assert walker.wait() == 0, walker.stderr.read()
    assert len(manifest.lower_walk(str(root), cache)) == 2041
    assert [n for n in os.listdir(tmp_path) if "walk" in n] == \
        ["checkout.walk.json"]
