"""Host-side steps never follow a link out of the image tree: the cleanup
after a stage, a copy stage's destinations and sources, the deployable
rearrangement.  Each tree here has links a hostile stage could leave,
pointing at a directory standing for the host's."""

import os
import shutil

import pytest

from debostree import deployable, recipe, stagerun, treepath
from debostree.errors import UserError
from debostree.kinds.copy import CopyItemOptions, copy_items
from debostree.stagefiles import WorkFiles


@pytest.fixture
def host(tmp_path):
    """A directory standing for the host's files, which must survive."""
    host = tmp_path / "host"
    (host / "apt").mkdir(parents=True)
    for name in ("dpkg.log", "alternatives.log", "apt/history.log",
                 "machine-id", "policy-rc.d", "aux-cache"):
        (host / name).write_text("host's own\n")
    return host


def host_intact(host):
    return sorted(str(p.relative_to(host)) for p in host.rglob("*")) == \
        ["alternatives.log", "apt", "apt/history.log", "aux-cache",
         "dpkg.log", "machine-id", "policy-rc.d"] and \
        all(p.read_text() == "host's own\n" for p in host.rglob("*")
            if p.is_file())


def tree_with_links(tmp_path, links):
    tree = tmp_path / "tree"
    for path, target in links.items():
        full = tree / path.lstrip("/")
        full.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, full)
    return tree


@pytest.mark.parametrize("links", [
    {"/var/log": "HOST", "/etc": "HOST", "/usr/sbin": "HOST",
     "/var/cache/ldconfig": "HOST"},
    {"/var/log": "../../../host", "/etc": "../host", "/usr/sbin": "../../host"},
    {"/var": "HOST/.."},
])
def test_cleanup_stays_inside(tmp_path, host, links):
    links = {p: t.replace("HOST", str(host)) for p, t in links.items()}
    tree = tree_with_links(tmp_path, links)
    work = tmp_path / "work"
    work.mkdir()
    (work / "policy-rc.d-created").write_text("")
    stagerun.cleanup(WorkFiles(str(work)), str(tree))
    assert host_intact(host)
    for path, target in links.items():
        assert os.readlink(tree / path.lstrip("/")) == target


def test_cleanup_still_cleans_a_plain_tree(tmp_path):
    tree = tmp_path / "tree"
    (tree / "var" / "log" / "apt").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "var" / "log" / "dpkg.log").write_text("log\n")
    (tree / "etc" / "machine-id").write_text("0123\n")
    stagerun.cleanup(WorkFiles(str(tmp_path)), str(tree))
    assert not (tree / "var" / "log" / "dpkg.log").exists()
    assert (tree / "etc" / "machine-id").read_text() == ""


def copy_opts(src, dest, src_root, mode=None):
    return [CopyItemOptions(src_abs=str(src), dest=dest, src_root=str(src_root),
                            owner=str(os.getuid()), group=str(os.getgid()),
                            mode=mode)]


def test_copy_destination_resolved_inside(tmp_path, host):
    tree = tree_with_links(tmp_path, {"/srv/x": str(host),
                                      "/var/lock": "/run/lock",
                                      "/opt/up": "../../../.."})
    (tree / "run").mkdir()
    (tree / host.relative_to("/")).mkdir(parents=True)
    files = tmp_path / "recipes"
    files.mkdir()
    (files / "motd").write_text("hello\n")
    with treepath.Tree(str(tree)) as t:
        copy_items(copy_opts(files / "motd", "/srv/x/motd", files), t)
        copy_items(copy_opts(files / "motd", "/opt/up/motd", files,
                                      "0600"), t)
        # /var/lock -> /run/lock: missing inside the tree, never the host's.
        with pytest.raises(UserError) as error:
            copy_items(copy_opts(files / "motd", "/var/lock/motd",
                                          files), t)
        assert "cannot write /var/lock/motd in the image" in error.value.message
    assert host_intact(host)
    assert (tree / host.relative_to("/") / "motd").read_text() == "hello\n"
    assert oct((tree / "motd").stat().st_mode & 0o7777) == "0o600"
    assert not (tmp_path / "motd").exists()


def test_copy_of_a_directory_keeps_links_as_links(tmp_path, host):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    files = tmp_path / "recipes" / "files"
    (files / "conf" / "sub").mkdir(parents=True)
    (files / "conf" / "sub" / "a").write_text("a\n")
    os.symlink(str(host), files / "conf" / "hostlink")
    os.chmod(files / "conf" / "sub", 0o750)
    with treepath.Tree(str(tree)) as t:
        copy_items(copy_opts(files / "conf", "/etc/conf", files.parent), t)
    assert (tree / "etc/conf/sub/a").read_text() == "a\n"
    assert os.readlink(tree / "etc/conf/hostlink") == str(host)
    assert (tree / "etc/conf/sub").stat().st_mode & 0o777 == 0o750
    assert not (tree / "etc/conf/hostlink/dpkg.log").is_symlink()
    assert host_intact(host)


def test_copy_sources_must_stay_in_the_recipe_directory(tmp_path, host):
    recipes = tmp_path / "recipes"
    (recipes / "files").mkdir(parents=True)
    os.symlink(str(host), recipes / "files" / "x")
    os.symlink("/etc/hostname", recipes / "files" / "link")
    assert recipe.source_escape(str(recipes), str(recipes / "files/x/machine-id")) \
        == str(host / "machine-id")
    assert recipe.source_escape(str(recipes), str(recipes / "files/x")) is None
    assert recipe.source_escape(str(recipes), str(recipes / "files/link")) is None
    tree = tmp_path / "tree"
    tree.mkdir()
    with treepath.Tree(str(tree)) as t, pytest.raises(UserError) as error:
        copy_items(copy_opts(recipes / "files/x/machine-id",
                                      "/etc/machine-id", recipes), t)
    assert "leads out of the recipe's directory" in error.value.message
    assert not (tree / "etc").exists()


def test_configure_refuses_a_source_through_a_link(tmp_path, host):
    recipes = tmp_path / "recipes"
    (recipes / "files").mkdir(parents=True)
    os.symlink(str(host), recipes / "files" / "x")
    path = recipes / "r.yaml"
    path.write_text("ref: test/r\narchitecture: amd64\narchives:\n"
                    "  - {name: debian, suites: [trixie]}\nstages:\n"
                    "  - {name: base, bootstrap: {variant: minbase}}\n"
                    "  - name: files\n    copy:\n"
                    "      - {src: files/x/machine-id, dest: /etc/machine-id}\n")
    with pytest.raises(UserError) as error:
        recipe.load_recipe(str(path))
    assert error.value.line == 9
    assert "leads out of the recipe's directory" in error.value.message


def deployable_tree(tmp_path):
    tree = tmp_path / "tree"
    for d in ("etc/tmpfiles.d", "usr/lib/tmpfiles.d", "var/lib/dpkg", "boot",
              "home", "root", "srv", "opt", "usr/local", "mnt"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return tree


def test_deployable_moves_links_never_their_targets(tmp_path, host):
    tree = deployable_tree(tmp_path)
    os.symlink(str(host), tree / "var" / "mail")
    os.symlink(str(host), tree / "home" / "user")
    (tree / "var" / "home").mkdir()
    deployable.rearrange(str(tree))
    assert host_intact(host)
    conf = (tree / "usr/lib/tmpfiles.d/debostree-var.conf").read_text()
    assert f"L /var/mail - - - - {host}" in conf
    assert f"L /var/home/user - - - - {host}" in conf
    assert (tree / "usr/etc/passwd").exists()


@pytest.mark.parametrize("path", ["var", "var/cache", "var/lib",
                                  "etc/tmpfiles.d", "usr/lib/tmpfiles.d"])
def test_deployable_refuses_what_leads_out(tmp_path, host, path):
    tree = deployable_tree(tmp_path)
    (tree / "var" / "cache").mkdir(exist_ok=True)
    shutil.rmtree(tree / path)
    os.symlink(str(host), tree / path)
    with pytest.raises(UserError) as error:
        deployable.rearrange(str(tree))
    assert "symbolic link" in error.value.message
    assert host_intact(host)


def test_deployable_removes_per_machine_secrets(tmp_path, capsys):
    tree = deployable_tree(tmp_path)
    (tree / "etc" / "ssh").mkdir()
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub",
                 "ssh_host_rsa_key", "sshd_config"):
        (tree / "etc" / "ssh" / name).write_text("x\n")
    (tree / "var" / "lib" / "systemd").mkdir(parents=True)
    (tree / "var" / "lib" / "systemd" / "random-seed").write_text("x\n")
    (tree / "usr" / "sbin").mkdir(parents=True)
    (tree / "usr" / "sbin" / "sshd").write_text("")
    deployable.rearrange(str(tree))
    assert sorted(os.listdir(tree / "usr/etc/ssh")) == ["sshd_config"]
    assert "random-seed" not in (tree / "usr/lib/tmpfiles.d/debostree-var.conf"
                                 ).read_text()
    wants = tree / "usr/lib/systemd/system/multi-user.target.wants"
    assert os.readlink(wants / deployable.SSH_KEYGEN_UNIT) == \
        "../" + deployable.SSH_KEYGEN_UNIT
    assert "ssh-keygen -A" in (tree / "usr/lib/systemd/system" /
                               deployable.SSH_KEYGEN_UNIT).read_text()
    out = capsys.readouterr().out
    for path in ("/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key",
                 "/var/lib/systemd/random-seed"):
        assert f"deployable: removed {path}," in out
