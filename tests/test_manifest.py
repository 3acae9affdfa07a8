"""Manifests and the fakeroot state made from them (no sandbox needed)."""

import os
import stat

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
