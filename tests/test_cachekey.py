"""Stage input keys and the stage cache's settings and checks, without a
sandbox: configure against a local signed archive, in two places that
stand for two machines."""

import json
import os
import shutil
import stat
import subprocess

import pytest

from conftest import TOP, populate, run_tool
from debarchive import Archive, Server
from debostree import manifest, stagecache
from debostree.errors import UserError
from helpers import write_recipe

STAGES = [
    {"name": "base", "bootstrap": {"variant": "custom",
                                   "packages": ["coreutils"]}},
    {"name": "a", "run": "echo a > /etc/a"},
    {"name": "files", "copy": [{"src": "files/motd", "dest": "/etc/motd"}]},
    {"name": "apps", "install": ["app"]},
    {"name": "b", "run": "echo b > /etc/b"},
]


def configure(work, *extra):
    result = run_tool([os.path.join(TOP, "configure.py"), "--recipes",
                       "recipes", "--lockfiles", "lockfiles", *extra],
                      cwd=work)
    assert result.returncode == 0, result.stderr
    return result


def keys(work, recipe="keyed"):
    found = {}
    for stage in STAGES:
        path = work / "build" / "stages" / recipe / "amd64" / \
            f"{stage['name']}.key.json"
        found[stage["name"]] = json.loads(path.read_text())["key"]
    return found


@pytest.fixture
def two_machines(tmp_path, key, no_user_config):
    arc = populate(Archive(tmp_path / "archive", key)).publish()
    server = Server(arc.root)
    arc.url = server.url
    first = tmp_path / "first"
    write_recipe(first / "recipes", "keyed", STAGES, arc)
    (first / "recipes" / "files").mkdir()
    (first / "recipes" / "files" / "motd").write_text("hello\n")
    configure(first, "--mirror", f"test={arc.url}")
    result = run_tool(["-c", "import subprocess, sys; sys.exit(subprocess.run("
                       "['ninja', 'update-lockfiles'], stdin=subprocess."
                       "DEVNULL).returncode)"], cwd=first)
    assert result.returncode == 0, result.stdout + result.stderr
    configure(first, "--mirror", f"test={arc.url}")  # with the lockfile
    second = tmp_path / "elsewhere" / "second"
    shutil.copytree(first, second, ignore=shutil.ignore_patterns(
        "build", "build.ninja", ".ninja_*"))
    yield first, second, arc
    server.close()


def test_keys_are_the_same_elsewhere_and_follow_every_input(two_machines,
                                                            tmp_path):
    first, second, arc = two_machines
    # Another checkout place, build directory name and pool: the same keys.
    configure(second, "--mirror", f"test={arc.url}", "--builddir", "build",
              "--pool", str(tmp_path / "other-pool"))
    mine = keys(first)
    assert keys(second) == mine
    assert len(set(mine.values())) == len(STAGES)
    recorded = json.loads((first / "build/stages/keyed/amd64/a.key.json")
                          .read_text())
    assert recorded["inputs"]["parent"] == mine["base"]
    assert set(recorded["inputs"]) == {"format", "options", "parent", "code",
                                       "tools"}
    # No path of this machine is in what the key covers.
    text = (first / "build/stages/keyed/amd64/apps.key.json").read_text()
    assert str(first) not in text and "pool" not in json.loads(text)[
        "inputs"]["options"]["packages"][0]

    def changed(before, after):
        return sorted(n for n in before if before[n] != after[n])

    # A stage's script: that stage and every later one.
    recipe = second / "recipes" / "keyed.yaml"
    recipe.write_text(recipe.read_text().replace("echo a >", "echo A >"))
    configure(second, "--mirror", f"test={arc.url}")
    edited = keys(second)
    assert changed(mine, edited) == ["a", "apps", "b", "files"]
    # A copied file's content: the copy stage and what follows it, and
    # ninja reconfigures by itself for it (a key computed before the edit
    # would name the new tree in the cache).
    (second / "recipes" / "files" / "motd").write_text("hello again\n")
    result = subprocess.run(["ninja", "build.ninja"], cwd=second,
                            capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and "CONFIGURE" in result.stdout, \
        result.stdout + result.stderr
    assert changed(edited, keys(second)) == ["apps", "b", "files"]
    # The stage kinds' scripts are in every key: configure's inputs too.
    regenerate = next(line for line in (second / "build.ninja").read_text()
                      .splitlines() if line.startswith("build build.ninja:"))
    assert os.path.join(TOP, "stages", "run") in regenerate.split()
    # Its mode too.
    before = keys(second)
    os.chmod(second / "recipes" / "files" / "motd", 0o600)
    configure(second, "--mirror", f"test={arc.url}")
    assert changed(before, keys(second)) == ["apps", "b", "files"]
    # SOURCE_DATE_EPOCH: every stage.
    before = keys(second)
    result = run_tool([os.path.join(TOP, "configure.py"), "--recipes",
                       "recipes", "--lockfiles", "lockfiles", "--mirror",
                       f"test={arc.url}"], cwd=second,
                      env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert result.returncode == 0, result.stderr
    assert changed(before, keys(second)) == sorted(before)


def test_a_cache_without_a_key_to_check_it_is_refused_at_configure(
        two_machines, tmp_path):
    first, _, arc = two_machines
    result = run_tool([os.path.join(TOP, "configure.py"), "--recipes",
                       "recipes", "--lockfiles", "lockfiles", "--mirror",
                       f"test={arc.url}", "--cache", str(tmp_path / "cache")],
                      cwd=first)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "needs a key to check its entries' signatures" in lines[0]


def write(path, text):
    path.write_text(text)
    return str(path)


def test_cache_settings(tmp_path):
    public = tmp_path / "public.key"
    public.write_text("A" * 43 + "=\n")  # 32 bytes
    config = write(tmp_path / "cache.yaml",
                   "url: ../shared/cache\ned25519-public-key: public.key\n")
    settings = stagecache.read_settings(path=config, environ={})
    assert settings["url"] == "file://" + str(tmp_path.parent / "shared" /
                                              "cache")
    assert settings["ed25519_public_key"] == str(public)
    # The environment, then the command line, win over the file.
    settings = stagecache.read_settings(
        path=config, environ={"DEBOSTREE_CACHE": "https://cache.example/c/"})
    assert settings["url"] == "https://cache.example/c"
    settings = stagecache.read_settings(
        "relative/dir", path=config,
        environ={"DEBOSTREE_CACHE": "https://cache.example/c"})
    assert settings["url"] == "file://" + os.path.abspath("relative/dir")
    # Nothing configured: no cache.
    assert stagecache.read_settings(path=str(tmp_path / "none.yaml"),
                                    environ={}) == {}

    def problem(text, **kwargs):
        path = write(tmp_path / "bad.yaml", text)
        with pytest.raises(UserError) as error:
            stagecache.read_settings(path=path, environ={}, **kwargs)
        return error.value.format()

    assert "needs a key to check" in problem("url: /srv/cache\n")
    assert "bad.yaml" in problem("url: /srv/cache\n")
    assert "needs a key to sign" in problem(
        "push: /srv/cache\ned25519-public-key: public.key\n")
    message = problem("url: /srv/cache\nkeep-days: soon\n")
    assert "bad.yaml:2" in message and "keep-days" in message
    message = problem("ed25519-key: public.key\n")
    assert "bad.yaml:1" in message and "not an ed25519 secret key" in message
    assert "unknown key 'mirror'" in problem("mirror: x\n")
    assert "invalid cache URL" in problem("url: 'ftp://x/y'\n"
                                          "ed25519-public-key: public.key\n")
    with pytest.raises(UserError, match="invalid cache URL"):
        stagecache.read_settings("gopher://x", path=str(tmp_path / "none"),
                                 environ={})


def test_a_tree_and_its_manifest_must_agree():
    E = manifest.Entry
    entries = [E("/", stat.S_IFDIR | 0o755), E("/etc", stat.S_IFDIR | 0o755),
               E("/etc/shadow", stat.S_IFREG | 0o640, 0, 42),
               E("/srv", stat.S_IFDIR | 0o750, 1000, 1000)]
    text = "".join(e.to_json() + "\n" for e in entries)
    outline = {"/": (True, 0, 0, stat.S_IFDIR | 0o755),
               "/etc": (True, 0, 0, stat.S_IFDIR | 0o755),
               "/etc/shadow": (False, None, None, None),
               "/srv": (True, 1000, 1000, stat.S_IFDIR | 0o750)}
    assert stagecache.outline_problem(outline, text) is None
    assert "/srv: owner or mode differ" == stagecache.outline_problem(
        {**outline, "/srv": (True, 0, 0, stat.S_IFDIR | 0o750)}, text)
    assert "/etc/gshadow not in the manifest" in stagecache.outline_problem(
        {**outline, "/etc/gshadow": (False, None, None, None)}, text)
    missing = dict(outline)
    del missing["/etc/shadow"]
    assert "/etc/shadow not in the tree" in stagecache.outline_problem(
        missing, text)
    assert "is a directory" in stagecache.outline_problem(
        {**outline, "/etc/shadow": (True, 0, 0, stat.S_IFDIR | 0o755)}, text)


def test_a_commit_holds_for_the_plain_key_when_its_ids_moved_nothing():
    from debostree import cachekey
    key = "k" * 64
    assert cachekey.run_keys(key, None, False) == [key]
    with_reference = cachekey.run_key(key, "ids")
    assert with_reference not in (key, cachekey.run_key(key, "other ids"))
    assert cachekey.run_keys(key, "ids", False) == [with_reference, key]
    assert cachekey.run_keys(key, "ids", True) == [with_reference]


def stage_tree(tmp_path):
    """A small stage commit in a build repository, and its manifest."""
    import subprocess
    from debostree.project import BuildConfig
    config = BuildConfig(top=TOP, builddir=str(tmp_path / "build"), pool="",
                         recipes="", lockfiles="", mirrors={})
    os.makedirs(config.repo)
    subprocess.run(["ostree", "init", "--mode=bare-user",
                    f"--repo={config.repo}"], check=True)
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tree / "srv").mkdir()
    for path in (tree, tree / "etc", tree / "srv"):
        os.chmod(path, 0o755)
    commit = subprocess.run(
        ["ostree", "commit", f"--repo={config.repo}", "--branch=stage/r/s",
         f"--tree=dir={tree}", "--owner-uid=0", "--owner-gid=0"],
        check=True, capture_output=True, text=True).stdout.strip()
    E = manifest.Entry
    entries = {p: E(p, stat.S_IFDIR | 0o755) for p in ("/", "/etc", "/srv")}
    entries["/etc/passwd"] = E("/etc/passwd", stat.S_IFREG | 0o644)
    manifest_path = str(tmp_path / "s.manifest")
    manifest.write(manifest_path, entries)
    return config, commit, manifest_path


@pytest.mark.parametrize("signer", ["ed25519", "gpg"])
def test_pushed_entries_are_taken_only_with_the_right_signature(
        tmp_path, signer, key, other_key):
    """Push a stage's commit and look it up through a remote, as a probe
    does: signed by the configured key it is taken, with its manifest;
    signed by another key, or under another key's ref, it is refused."""
    import subprocess
    from test_publish import ed25519_keys, gpg_settings
    config, commit, manifest_path = stage_tree(tmp_path)
    if signer == "ed25519":
        (tmp_path / "k").mkdir()
        (tmp_path / "o").mkdir()
        good = {"ed25519_key": ed25519_keys(str(tmp_path / "k"))[0]}
        bad = {"ed25519_key": ed25519_keys(str(tmp_path / "o"))[0]}
    else:
        good, bad = gpg_settings(key), gpg_settings(other_key)
    cache = str(tmp_path / "cache")
    stage_key, other = "1" * 64, "2" * 64
    config.stage_cache = {**good, "push": cache}
    entry = [("r/s", "amd64", commit, stage_key, manifest_path)]
    assert stagecache.push(config, entry, say=lambda line: None) == 1
    assert stagecache.push(config, entry, say=lambda line: None) == 0
    # Another commit (another time) for the same key, signed by another key.
    config.stage_cache = {**bad, "push": str(tmp_path / "foreign")}
    stagecache.push(config, entry, say=lambda line: None, now=lambda: 1)

    def reader(url):
        config.stage_cache = {**good, "url": url}
        stagecache.setup_remote(config)
        return config

    found, text = stagecache.lookup(reader("file://" + cache), "amd64",
                                    stage_key)
    assert text == open(manifest_path).read()
    assert subprocess.run(["ostree", "ls", f"--repo={config.repo}", found,
                           "/etc/passwd"], capture_output=True).returncode == 0
    assert stagecache.lookup(config, "amd64", other) is None  # a miss
    for _ in range(2):  # a refused commit stays refused
        with pytest.raises(stagecache.Refused, match="signature|GPG|gpg"):
            stagecache.lookup(reader("file://" + str(tmp_path / "foreign")),
                              "amd64", stage_key)
    # A ref moved to the entry of another key.
    os.makedirs(os.path.join(cache, "refs/heads/cache/v1/amd64"), exist_ok=True)
    with open(os.path.join(cache, "refs/heads/cache/v1/amd64", other), "w") as f:
        f.write(found + "\n")
    with pytest.raises(stagecache.Refused, match="entry of another key"):
        stagecache.lookup(reader("file://" + cache), "amd64", other)
    # Nothing is there: the cache cannot be read.
    with pytest.raises(UserError, match="cannot read the stage cache"):
        stagecache.lookup(reader("file://" + str(tmp_path / "nothing")),
                          "amd64", stage_key)


def test_concurrent_pushers_leave_a_whole_cache(tmp_path):
    """Four processes push into one cache directory at once, two of them
    the same keys: every entry is whole, signed and readable, and ostree
    finds every object as its checksum says."""
    import subprocess
    import sys
    from test_publish import ed25519_keys
    config, commit, manifest_path = stage_tree(tmp_path)
    (tmp_path / "k").mkdir()
    secret = ed25519_keys(str(tmp_path / "k"))[0]
    cache = str(tmp_path / "cache")
    config.stage_cache = {"ed25519_key": secret, "push": cache}
    config.save()
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from debostree import project, stagecache\n"
        "config = project.load_config(sys.argv[2])\n"
        "keys = sys.argv[5:]\n"
        "stagecache.push(config, [('r/s', 'amd64', sys.argv[3], k, sys.argv[4])"
        " for k in keys], say=lambda line: None)\n")
    key_sets = [[f"{i:064x}" for i in range(n, n + 6)] for n in (0, 0, 3, 6)]
    pushers = [subprocess.Popen([sys.executable, "-c", script, TOP,
                                 config.config_path, commit, manifest_path,
                                 *keys], stderr=subprocess.PIPE, text=True)
               for keys in key_sets]
    for pusher in pushers:
        assert pusher.wait() == 0, pusher.stderr.read()
    fsck = subprocess.run(["ostree", "fsck", f"--repo={cache}"],
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    config.stage_cache = {"ed25519_key": secret, "url": "file://" + cache}
    stagecache.setup_remote(config)
    for key in sorted({k for keys in key_sets for k in keys}):
        found, text = stagecache.lookup(config, "amd64", key)
        assert text == open(manifest_path).read()
