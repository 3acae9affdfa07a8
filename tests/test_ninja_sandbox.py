"""Pure functions: ninja escaping, the graph's text, sandbox command lines."""

import os
import shlex
import subprocess

import pytest

from debostree import manifest, ninja, sandbox
from debostree.errors import UserError


@pytest.mark.parametrize("raw,escaped", [
    ("plain/path", "plain/path"),
    ("my image/base", "my$ image/base"),
    ("cost $5", "cost$ $$5"),
    ("c:/x", "c$:/x"),
])
def test_escape_path(raw, escaped):
    assert ninja.escape_path(raw) == escaped


def test_newlines_are_refused():
    with pytest.raises(UserError):
        ninja.escape_path("a\nb")
    with pytest.raises(UserError):
        ninja.escape_value("a\rb")


def test_escaped_graph_runs_in_ninja(tmp_path):
    """Paths with spaces, dollars and colons survive a real ninja run."""
    # A top-level variable with a dollar, escaped for ninja by the graph (the
    # shell quoting is the value's own).
    graph = ninja.Graph(variables={"greeting": shlex.quote("it costs $5")})
    graph.rules.append(ninja.Rule("write", "printf '%s: %s' $greeting $msg > $out",
                                  "WRITE $out"))
    names = ["plain", "with space", "dollar $x", "colon:y"]
    for name in names:
        graph.builds.append(ninja.Build(
            [f"out/{name}"], "write",
            variables={"msg": ninja.Raw(ninja.shell_args([f"{name} and $HOME"]))}))
    graph.defaults = [f"out/{n}" for n in names]
    template = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                            "build.ninja.in")
    (tmp_path / "out").mkdir()
    (tmp_path / "build.ninja").write_text(ninja.render(graph, template))
    subprocess.run(["ninja"], cwd=tmp_path, check=True, capture_output=True)
    for name in names:
        assert (tmp_path / "out" / name).read_text() == \
            f"it costs $5: {name} and $HOME"


def test_bwrap_argv_isolates():
    argv = sandbox.bwrap_argv("/t", ["/bin/sh", "-c", "true"], {"A": "1"},
                              ro_binds=[("/host/lib", "/usr/lib/x")])
    assert argv[:4] == ["bwrap", "--bind", "/t", "/"]
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent",
                 "--clearenv"):
        assert flag in argv
    assert "--unshare-ipc" not in argv  # fakeroot talks over SysV IPC
    assert ["--tmpfs", "/tmp"] == argv[argv.index("/tmp") - 1:argv.index("/tmp") + 1]
    assert argv[argv.index("--ro-bind") + 1:argv.index("--ro-bind") + 3] == \
        ["/host/lib", "/usr/lib/x"]
    assert argv[-4:] == ["--", "/bin/sh", "-c", "true"]
    assert ["--setenv", "A", "1"] == argv[argv.index("A") - 1:argv.index("A") + 2]


def test_fakeroot_env():
    env = sandbox.chroot_env({"LANG": "C.UTF-8"}, "123", "/usr/lib/x/libfakeroot",
                             42)
    assert env["FAKEROOTKEY"] == "123"
    assert env["LD_PRELOAD"] == "/usr/lib/x/libfakeroot/libfakeroot-sysv.so"
    assert env["SOURCE_DATE_EPOCH"] == "42"
    assert env["DEBIAN_FRONTEND"] == "noninteractive"
    assert env["LANG"] == "C.UTF-8"


def test_unshare_and_overlay_argv():
    assert sandbox.unshare_argv(["x"])[:3] == ["unshare", "--user", "--map-root-user"]
    argv = sandbox.overlay_mount_argv("/l", "/u", "/w", "/t")
    assert argv[-1] == "/t" and "userxattr,lowerdir=/l,upperdir=/u,workdir=/w" in argv


def test_missing_binfmt_says_how_to_fix(tmp_path):
    (tmp_path / "register").write_text("")
    problem = sandbox.binfmt_problem("arm64", "amd64", str(tmp_path))
    assert "update-binfmts --enable qemu-aarch64" in problem
    entry = tmp_path / "qemu-aarch64"
    entry.write_text("disabled\ninterpreter /x\nflags: PF\n")
    assert "--enable qemu-aarch64" in sandbox.binfmt_problem("arm64", "amd64",
                                                               str(tmp_path))
    entry.write_text("enabled\ninterpreter /x\nflags: P\n")
    assert "F flag" in sandbox.binfmt_problem("arm64", "amd64", str(tmp_path))
    entry.write_text("enabled\ninterpreter /x\nflags: PF\n")
    assert sandbox.binfmt_problem("arm64", "amd64", str(tmp_path)) is None
    assert sandbox.binfmt_problem("i386", "amd64", str(tmp_path)) is None
    unmounted = tmp_path / "none"
    unmounted.mkdir()
    assert "mount -t binfmt_misc" in sandbox.binfmt_problem("arm64", "amd64",
                                                            str(unmounted))


def _stat(ino, mode=0o100644):
    return os.stat_result((mode, ino, 1, 1, 0, 0, 0, 0, 0, 0))


def test_shared_inodes_are_split_but_one():
    inodes = {10: ["/a", "/b", "/c"], 11: ["/d"]}
    assert manifest.shared_inode_paths(inodes) == ["/b", "/c"]


def test_state_left_on_an_old_inode_is_found():
    dev = 99
    inodes = {10: ["/usr/bin/tab"], 11: ["/etc/a", "/etc/b"], 12: ["/usr/bin/x"],
              13: ["/etc/gone"]}
    stats = {"/usr/bin/tab": _stat(500), "/etc/a": _stat(11), "/etc/b": _stat(11),
             "/usr/bin/x": _stat(12)}
    saved = {
        (dev, 10): (0o102755, 0, 8),   # chgrp, then chmod copied it up
        (dev, 11): (0o100640, 0, 8),   # one inode for two paths
        (dev, 12): (0o100644, 0, 0),   # as loaded: nothing happened
        (dev, 13): (0o100600, 5, 5),   # renamed or removed since
        (dev, 500): (0o102755, 0, 0),  # the new inode's own entry
        (7, 10): (0o100644, 1, 1),     # another device
    }
    loaded = {(dev, 12): (0o100644, 0, 0)}
    assert manifest.moved_state(inodes, saved, loaded, stats, dev) == [
        "/etc/a", "/etc/b", "/etc/gone", "/usr/bin/tab"]
    # A chown that stays on the file's own inode needs nothing more.
    stats["/usr/bin/tab"] = _stat(10)
    assert "/usr/bin/tab" not in manifest.moved_state(inodes, saved, loaded,
                                                      stats, dev)


def test_fakeroot_daemon_and_library_must_match():
    assert sandbox.fakeroot_mismatch("arm64", "1.31-1.2", "1.31-1.2") is None
    assert sandbox.fakeroot_mismatch("arm64", "1.31-1.2", "1.31-1.2+b1") is None
    problem = sandbox.fakeroot_mismatch("arm64", "1.31-1.2", "1.37.1.1-1")
    assert "1.37.1.1-1" in problem and "1.31-1.2" in problem
