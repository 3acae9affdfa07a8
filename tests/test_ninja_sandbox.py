"""Pure functions: ninja escaping, the graph's text, sandbox command lines."""

import os
import subprocess

import pytest

from debostree import ninja, sandbox
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
    graph = ninja.Graph(variables={"greeting": "it costs $5"})
    graph.rules.append(ninja.Rule("write", "printf '%s' $msg > $out", "WRITE $out"))
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
        assert (tmp_path / "out" / name).read_text() == f"{name} and $HOME"


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
