"""Recipes built on a published commit (``from: {remote, ref}``), without
the network: a base branch (a small tree whose packages come from the test
archive) is committed through the branch code, published signed and served
on 127.0.0.1; a derived project pins it with update-lockfiles, resolves its
own packages on top of the base's, builds on exactly the pinned commit, and
refuses a base signed by another key, a tampered object, and a stage that
would move a base package.
"""

import base64
import json
import os
import subprocess
import sys

import pytest

import helpers
from conftest import TOP, run_tool
from debarchive import Server
from debostree import bases, branch, lockfile, ostree, update
from debostree.errors import UserError
from debostree.project import BuildConfig
from test_publish import ed25519_keys, gpg_settings, sh, status_text

pytestmark = [pytest.mark.sandbox]

BASE_BRANCH = "exampleos/test/amd64/base"


class Publisher:
    """Another team's build directory: the base branch, published signed."""

    def __init__(self, path, settings):
        self.path = path
        self.config = BuildConfig(top=TOP, builddir=str(path / "build"),
                                  pool=str(path / "pool"), recipes="",
                                  lockfiles="", mirrors={},
                                  publish=settings)
        os.makedirs(self.config.builddir, exist_ok=True)
        self.config.save()
        ostree.Repo(self.config.repo).ensure()
        self.builds = 0

    def build(self, lock_text, marker):
        """A tree with the lockfile's packages installed, committed through
        the branch code with that lockfile, and published."""
        self.builds += 1
        entries = lockfile.parse(lock_text)
        tree = self.path / f"tree{self.builds}"
        files = {
            "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
            "etc/group": "root:x:0:\n",
            "var/lib/dpkg/status": status_text(
                {e.name: e.version for e in entries}),
            "usr/share/base/marker": marker + "\n",
        }
        for path, text in files.items():
            (tree / path).parent.mkdir(parents=True, exist_ok=True)
            (tree / path).write_text(text)
        os.chmod(tree / "usr/share/base/marker", 0o640)
        stage = sh(["ostree", "commit", f"--repo={self.config.repo}",
                    "--branch=stage/base", f"--tree=dir={tree}",
                    "--owner-uid=0", "--owner-gid=0", "--no-bindings"]
                   ).stdout.strip()
        (self.path / "stage.commit").write_text(stage + "\n")
        (self.path / "base.lock").write_text(lock_text)
        options = self.path / "branch.options.json"
        options.write_text(json.dumps({
            "recipe": "base", "arch": "amd64", "branch": BASE_BRANCH,
            "lockfile": str(self.path / "base.lock"), "version": None,
            "commit_timestamp": 1767225600 + self.builds}))
        out = self.path / "build" / "branches" / "base" / "amd64.commit"
        os.makedirs(out.parent, exist_ok=True)
        (out.parent / "amd64.options.json").write_text(options.read_text())
        commit = branch.commit_branch(self.config.config_path, str(options),
                                      str(self.path / "stage.commit"), str(out))
        run_tool([os.path.join(TOP, "tools", "publish"), "--config",
                  self.config.config_path, "--summary", "--out",
                  os.path.join(self.config.builddir, "publish", "summary"),
                  str(out)], check=True)
        return commit

    def object_path(self, commit, path):
        """The published repository's file object of ``path`` in ``commit``."""
        checksum = sh(["ostree", "ls", f"--repo={self.config.builddir}/publish",
                       "-C", commit, path]).stdout.split()[4]
        return os.path.join(self.config.builddir, "publish", "objects",
                            checksum[:2], checksum[2:] + ".filez")


def base_lock(tmp_path, archive, packages):
    """The base's lockfile: a bootstrap of the test archive's Essential
    set and ``packages``."""
    text, _ = helpers.resolve_recipe(
        tmp_path / f"base-{len(packages)}", archive,
        [{"name": "base", "bootstrap": {"variant": "essential",
                                        "packages": packages}}])
    return text


def layer_recipe(directory, name, archive, stages):
    return helpers.write_recipe(
        directory, name, stages, archive,
        **{"from": {"remote": "upstream", "ref": BASE_BRANCH}})


def remotes_file(path, url, key):
    """The remotes file: ``key`` a GPG keyring (.gpg) or an ed25519 public
    key file."""
    kind = "gpg-keyring" if str(key).endswith(".gpg") else "ed25519-public-key"
    path.write_text(f"upstream:\n  url: {url}\n  {kind}: {key}\n")
    return str(path)


@pytest.fixture(params=["gpg", "ed25519"])
def signer(request, tmp_path, key, other_key):
    """How the base is signed: ``(publish settings, the public key file,
    another key's file, the signer as the lockfile names it)``."""
    if request.param == "gpg":
        return (gpg_settings(key), key.keyring, other_key.keyring,
                "gpg:" + gpg_settings(key)["gpg_key"])
    keys = {}
    for name in ("mine", "other"):
        (tmp_path / name).mkdir()
        secret, public = ed25519_keys(str(tmp_path / name))
        keys[name] = (secret, tmp_path / name / "public.key")
        keys[name][1].write_text(base64.b64encode(public).decode() + "\n")
    return ({"ed25519_key": keys["mine"][0]}, str(keys["mine"][1]),
            str(keys["other"][1]), "ed25519:" +
            keys["mine"][1].read_text().strip())


@pytest.fixture
def published(tmp_path, test_archive, signer):
    publisher = Publisher(tmp_path / "upstream", signer[0])
    lock = base_lock(tmp_path, test_archive, ["libfoo=1.0"])
    first = publisher.build(lock, "one")
    server = Server(publisher.config.builddir + "/publish")
    yield publisher, server, first, lock
    server.close()


def test_a_layer_pins_its_base_and_resolves_on_it(tmp_path, test_archive,
                                                  signer, published):
    publisher, server, first, base_text = published
    _, public, other_public, signed_by = signer
    recipes = tmp_path / "project" / "recipes"
    layer_recipe(recipes, "layer", test_archive,
                 [{"name": "extra", "install": ["nano", "uses-helper"]}])
    rec = recipe_of(recipes / "layer.yaml")
    remotes = bases.read_settings(remotes_file(tmp_path / "remotes.yaml",
                                               server.url, public))
    pins = {}
    texts = update.resolve_all([rec], helpers.mirrors_for(test_archive),
                               str(tmp_path / "cache"), remotes=remotes,
                               pins=pins)
    text = texts[("layer", "amd64")]
    pin = lockfile.parse_pin(text)
    assert pin == pins[("layer", "amd64")]
    assert (pin.remote, pin.ref, pin.commit) == ("upstream", BASE_BRANCH, first)
    assert pin.signed_by == signed_by
    assert pin.version == "20260101.0"
    assert text.startswith("Lock-Base-Remote: upstream\n")
    entries = lockfile.parse(text)
    base_entries = {(e.name, e.version) for e in lockfile.parse(base_text)}
    # The base's packages, as its lockfile pins them, and the layer's own,
    # resolved on top of them: libc is the base's, not installed again.
    assert {(e.name, e.version) for e in entries if e.stage == "from"} == \
        base_entries
    assert ("libfoo", "1.0") in base_entries
    assert sorted(e.name for e in entries if e.stage == "extra") == \
        ["helper", "nano", "uses-helper"]

    # A stage that needs a newer version of a base package is refused:
    # app depends on libfoo (>= 2.0), the base pins 1.0.
    layer_recipe(tmp_path / "mover", "mover", test_archive,
                 [{"name": "app", "install": ["app"]}])
    with pytest.raises(UserError) as info:
        update.resolve_all([recipe_of(tmp_path / "mover" / "mover.yaml")],
                           helpers.mirrors_for(test_archive),
                           str(tmp_path / "cache"), remotes=remotes)
    assert "would change packages of the base: libfoo:amd64 1.0 -> 2.0" in \
        info.value.format()

    # Signed by another key than the one configured: not pinned.
    others = bases.read_settings(remotes_file(tmp_path / "others.yaml",
                                              server.url, other_public))
    with pytest.raises(UserError) as info:
        update.resolve_all([rec], helpers.mirrors_for(test_archive),
                           str(tmp_path / "cache2"), remotes=others)
    assert "upstream:" + BASE_BRANCH in info.value.format()
    assert "signature" in info.value.format().lower()


def recipe_of(path):
    from debostree import recipe
    return recipe.load_recipe(str(path))


def tool(argv, cwd, env, check=True):
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL,
                            env={**os.environ, **env})
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.mark.parametrize("signer", ["gpg"], indirect=True)
def test_a_layer_builds_on_exactly_the_pinned_commit(tmp_path, test_archive,
                                                     signer, published):
    """configure, update-lockfiles and ninja: the base pulled and checked,
    a copy stage on top, the branch's changelog telling base changes from
    the layer's; a tampered base object stops the build."""
    publisher, server, first, base_text = published
    project = tmp_path / "project"
    (project / "recipes" / "files").mkdir(parents=True)
    (project / "recipes" / "files" / "motd").write_text("layered\n")
    layer_recipe(project / "recipes", "product", test_archive, [
        {"name": "files", "copy": [{"src": "files/motd", "dest": "/etc/motd",
                                    "mode": "0644"}]}])
    env = {"DEBOSTREE_REMOTES": remotes_file(tmp_path / "remotes.yaml",
                                             server.url, signer[1]),
           "SOURCE_DATE_EPOCH": "1767225600"}
    configure = [sys.executable, os.path.join(TOP, "configure.py"),
                 "--recipes", "recipes", "--lockfiles", "lockfiles",
                 "--mirror", f"test={test_archive.url}"]
    tool(configure, project, env)
    updated = tool(["ninja", "update-lockfiles"], project, env).stdout
    assert "product.amd64.lock: created" in updated, updated
    built = tool(["ninja", "product"], project, env).stdout
    assert "signature checked (gpg)" in built, built
    repo = f"--repo={project}/build/repo"
    head = sh(["ostree", "rev-parse", repo, "test/product"]).stdout.strip()
    assert sh(["ostree", "cat", repo, head, "/usr/share/base/marker"]).stdout \
        == "one\n"
    assert sh(["ostree", "cat", repo, head, "/etc/motd"]).stdout == "layered\n"
    # Owners and modes as the base committed them.
    listing = sh(["ostree", "ls", repo, head, "/usr/share/base/marker"]).stdout
    assert listing.split()[:3] == ["-00640", "0", "0"], listing
    meta = sh(["ostree", "show", repo, "--print-metadata-key=debostree.base",
               head]).stdout
    assert f"upstream {BASE_BRANCH} {first} 20260101.0" in meta
    lock_text = (project / "lockfiles" / "product.amd64.lock").read_text()
    meta = sh(["ostree", "show", repo, "--print-metadata-key="
               + bases.LOCKFILE_META, head]).stdout
    assert "Lock-Base-Commit: " + first in meta

    # A new base is published: nothing moves until the lockfile does.
    second = publisher.build(base_lock(tmp_path, test_archive,
                                       ["libfoo=1.0", "gpgv2"]), "two")
    assert "no work to do" in tool(["ninja", "product"], project, env).stdout
    updated = tool(["ninja", "update-lockfiles"], project, env).stdout
    assert "base: upstream:" + BASE_BRANCH + " 20260101.0" in updated, updated
    assert "-> upstream:" + BASE_BRANCH + " 20260101.1" in updated
    assert "base packages: 1 added, 0 removed, 0 changed" in updated
    assert "+ gpgv2:amd64 2.2" in updated
    assert "layer packages: 0 added, 0 removed, 0 changed" in updated
    assert (project / "lockfiles" / "product.amd64.lock").read_text() != lock_text

    # Its objects are checked as they arrive: a tampered one (the file's
    # object, and the static delta's parts that carry it too) stops the
    # build before any stage runs on it.
    tampered = [publisher.object_path(second, "/usr/share/base/marker")]
    for top, _, names in os.walk(os.path.join(publisher.config.builddir,
                                              "publish", "deltas")):
        tampered += [os.path.join(top, n) for n in names if n.isdigit()]
    assert len(tampered) > 1
    originals = {}
    for path in tampered:
        with open(path, "rb") as f:
            originals[path] = f.read()
        with open(path, "wb") as f:
            f.write(originals[path][:-4] + b"XXXX")
    failed = tool(["ninja", "product"], project, env, check=False)
    assert failed.returncode != 0
    assert "PULL base product/amd64" in failed.stdout
    [error] = [line for line in failed.stdout.splitlines()
               if line.startswith("pull-base: error:")]
    assert f"base upstream:{second}" in error, failed.stdout
    assert "Data is corrupt" in error
    assert "Traceback" not in failed.stdout + failed.stderr
    assert sh(["ostree", "rev-parse", repo, "test/product"]).stdout.strip() \
        == head
    for path, data in originals.items():
        with open(path, "wb") as f:
            f.write(data)

    tool(["ninja", "product"], project, env)
    new_head = sh(["ostree", "rev-parse", repo, "test/product"]).stdout.strip()
    assert new_head != head
    assert sh(["ostree", "cat", repo, new_head, "/usr/share/base/marker"]
              ).stdout == "two\n"
    log = sh(["ostree", "log", repo, "test/product"]).stdout
    assert f"Base: {BASE_BRANCH} 20260101.0 -> 20260101.1 ({second[:12]})" \
        in log, log
    assert "Base packages: 1 added, 0 removed, 0 changed" in log
    assert "+ gpgv2 2.2" in log
    assert "Layer packages" not in log.split("Base:")[1].split("Version")[0] \
        if "Version" in log.split("Base:")[1] else True


def test_recipe_and_remote_errors_are_one_line(tmp_path, test_archive):
    """A bad 'from' mapping, a remote nobody configured, a remotes file
    without a key: one line naming the file, line and key."""
    recipes = tmp_path / "recipes"
    path = helpers.write_recipe(recipes, "r", [{"name": "x", "run": "true"}],
                                test_archive, **{"from": {"remote": "up"}})
    with pytest.raises(UserError) as info:
        recipe_of(path)
    assert "missing required key 'ref'" in info.value.format()
    assert info.value.key == "from"
    helpers.write_recipe(recipes, "r", [{"name": "x", "run": "true"}],
                         test_archive, **{"from": {"remote": "up",
                                                   "ref": "a/b"}})
    env = {"DEBOSTREE_REMOTES": str(tmp_path / "none.yaml")}
    result = tool([sys.executable, os.path.join(TOP, "configure.py"),
                   "--recipes", str(recipes), "--lockfiles",
                   str(tmp_path / "lockfiles"), "--mirror",
                   f"test={test_archive.url}"], tmp_path, env, check=False)
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert "r.yaml" in line and "from.remote" in line
    assert "no remote named 'up' is configured" in line
    assert not (tmp_path / "build.ninja").exists()
    (tmp_path / "bad.yaml").write_text("up:\n  url: http://127.0.0.1:1\n")
    with pytest.raises(UserError) as info:
        bases.read_settings(str(tmp_path / "bad.yaml"))
    assert "set one of 'gpg-keyring' and 'ed25519-public-key'" in \
        info.value.format()
    assert "bad.yaml:2: up: " in info.value.format()


REAL_BASE = """\
ref: test/base
architecture: amd64
archives:
  - {name: debian, suites: [trixie, trixie-updates], components: [main]}
  - {name: debian-security, suites: [trixie-security], components: [main]}
stages:
  - {name: base, bootstrap: {variant: minbase}}
  - {name: users, run: "useradd --create-home --shell /bin/bash demo"}
"""

REAL_LAYER = """\
ref: test/product
architecture: amd64
from: {remote: upstream, ref: test/base}
archives:
  - {name: debian, suites: [trixie, trixie-updates], components: [main]}
  - {name: debian-security, suites: [trixie-security], components: [main]}
stages:
  - {name: tools, install: [hello]}
  - name: check
    run: |
      test "$(stat -c %U /home/demo)" = demo
      hello | grep -q "Hello, world"
      dpkg --audit
      test -z "$(dpkg --verify)"
"""


@pytest.mark.network
@pytest.mark.slow
def test_a_layer_on_a_published_debian_base(tmp_path, key):
    """A real one: a Debian 13 minbase with a user, published signed by
    one project; another pins it, installs a package on top with dpkg in
    the base's tree, and ends with what the base had plus that package.
    A pool of its own: other modules count what the session's imports."""
    pool = str(tmp_path / "pool")
    upstream = tmp_path / "upstream"
    (upstream / "recipes").mkdir(parents=True)
    (upstream / "recipes" / "base.yaml").write_text(REAL_BASE)
    settings = gpg_settings(key)
    (tmp_path / "publish.yaml").write_text(
        f"gpg-key: {settings['gpg_key']}\ngpg-homedir: {settings['gpg_homedir']}\n")
    env = {"DEBOSTREE_PUBLISH_CONFIG": str(tmp_path / "publish.yaml"),
           "SOURCE_DATE_EPOCH": "1767225600"}
    configure = [sys.executable, os.path.join(TOP, "configure.py"),
                 "--recipes", "recipes", "--lockfiles", "lockfiles",
                 "--pool", pool]
    tool(configure, upstream, env)
    tool(["ninja", "update-lockfiles"], upstream, env)
    tool(["ninja", "base", "publish"], upstream, env)
    server = Server(upstream / "build" / "publish")
    try:
        product = tmp_path / "product"
        (product / "recipes").mkdir(parents=True)
        (product / "recipes" / "product.yaml").write_text(REAL_LAYER)
        env = {"DEBOSTREE_REMOTES": remotes_file(
            tmp_path / "remotes.yaml", server.url, key.keyring),
            "SOURCE_DATE_EPOCH": "1767225600"}
        tool(configure, product, env)
        tool(["ninja", "update-lockfiles"], product, env)
        entries = lockfile.read(str(product / "lockfiles" /
                                    "product.amd64.lock"))
        base_entries = lockfile.read(str(upstream / "lockfiles" /
                                         "base.amd64.lock"))
        assert {(e.name, e.version) for e in entries if e.stage == "from"} \
            == {(e.name, e.version) for e in base_entries}
        layer = {e.name for e in entries if e.stage == "tools"}
        assert "hello" in layer and not layer & {e.name for e in base_entries}
        tool(["ninja", "product"], product, env)
        repo = f"--repo={product}/build/repo"
        status = sh(["ostree", "cat", repo, "test/product",
                     "/var/lib/dpkg/status"]).stdout
        from debostree import history
        installed = {name.split(":")[0]
                     for name in history.installed_packages(status)}
        assert installed == {e.name for e in base_entries} | layer
    finally:
        server.close()
