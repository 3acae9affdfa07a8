"""The shared stage cache, end to end: one build directory builds and
pushes its stages, signed, to a cache directory; others, standing for other
machines, read it over HTTP on 127.0.0.1 (or as a directory) and build
only what the cache does not have, or has wrong.

Like test_build.py these bootstrap a real Debian 13 system, once; every
other build takes that bootstrap from the cache.
"""

import base64
import os
import re
import shutil
import sys

import pytest

from conftest import TOP
from debarchive import Server
from test_build import TRIXIE_ARCHIVES, ostree, run, stages_run
from test_build import configure as configure_in
from test_publish import ed25519_keys

pytestmark = [pytest.mark.network, pytest.mark.sandbox, pytest.mark.slow]

RECIPE = f"""\
ref: test/cached
architecture: amd64
{TRIXIE_ARCHIVES}stages:
  - {{name: base, bootstrap: {{variant: minbase}}}}
  - {{name: a, run: "useradd --system cached-a && echo a > /etc/a"}}
  - {{name: b, run: "echo b > /etc/b"}}
  - {{name: c, run: "echo c > /etc/c"}}
"""

# Builds again to a different tree every time: what cache-verify is for.
NOISY = """\
ref: test/noisy
architecture: amd64
from: cached/a
stages:
  - {name: d, run: "cat /proc/sys/kernel/random/uuid > /etc/d"}
"""

STAGES = ("base", "a", "b", "c")
EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}


def configure(project, pool, env, extra=()):
    return configure_in(project, pool, extra=extra, env=env)


def stage_log(project, stage):
    return (project / "build" / "logs" / "cached" / "amd64"
            / f"{stage}.log").read_text()


def built(project, stage):
    """Whether the stage's last run built it (rather than taking it)."""
    return "$ unshare" in stage_log(project, stage)


def root_of(project, ref):
    return ostree(project, "ls", "-d", "-C", ref, "/").split()[-2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory, pool):
    """The first machine: builds everything, pushes it (ed25519-signed)."""
    root = tmp_path_factory.mktemp("stagecache")
    keys = root / "keys"
    keys.mkdir()
    secret, public = ed25519_keys(str(keys))
    (keys / "public.key").write_text(base64.b64encode(public).decode() + "\n")
    (root / "other-keys").mkdir()
    other_secret, _ = ed25519_keys(str(root / "other-keys"))
    (root / "push.yaml").write_text(
        f"push: {root / 'cache'}\ned25519-key: {secret}\n")
    (root / "read.yaml").write_text(
        f"ed25519-public-key: {keys / 'public.key'}\n")
    first = root / "first"
    (first / "recipes").mkdir(parents=True)
    (first / "recipes" / "cached.yaml").write_text(RECIPE)
    (first / "recipes" / "noisy.yaml").write_text(NOISY)
    env = {**EPOCH, "DEBOSTREE_CACHE_CONFIG": str(root / "push.yaml")}
    configure(first, pool, env)
    run(["ninja", "update-lockfiles"], first, env=env)
    run(["ninja"], first, env=env)
    pushed = run(["ninja", "cache-push"], first, env=env).stdout
    # cached/base, a, b, c and noisy/d (noisy starts from cached/a).
    assert "5 new entries" in pushed, pushed
    return {"root": root, "first": first, "dir": root / "cache",
            "read": str(root / "read.yaml"), "other_secret": other_secret}


def machine(cache, name, url, pool):
    """Another build directory with the same recipes and lockfiles."""
    project = cache["root"] / name
    shutil.copytree(cache["first"] / "recipes", project / "recipes")
    shutil.copytree(cache["first"] / "lockfiles", project / "lockfiles")
    env = {**EPOCH, "DEBOSTREE_CACHE_CONFIG": cache["read"]}
    configure(project, pool, env, extra=["--cache", url])
    return project, env


def test_another_machine_takes_every_stage_from_the_cache(cache, tmp_path):
    server = Server(cache["dir"])
    try:
        # Its own, empty pool: nothing is fetched for stages the cache has.
        project, env = machine(cache, "second", server.url,
                               str(tmp_path / "pool"))
        output = run(["ninja", "cached"], project, env=env).stdout
    finally:
        server.close()
    assert "FETCH " not in output and "IMPORT " not in output, output
    for stage in STAGES:
        assert f"cached/{stage}: from the stage cache" in output
        log = stage_log(project, stage)
        assert "from the stage cache" in log and not built(project, stage)
    first = cache["first"]
    for stage in STAGES:
        ref = f"stage/cached/amd64/{stage}"
        assert root_of(project, ref) == root_of(first, ref)
        assert (project / "build/stages/cached/amd64" / f"{stage}.manifest") \
            .read_text() == (first / "build/stages/cached/amd64"
                             / f"{stage}.manifest").read_text()
    # The same tree, the same time, the same history: the same commit.
    assert (project / "build/branches/cached/amd64.commit").read_text() == \
        (first / "build/branches/cached/amd64.commit").read_text()
    assert not os.path.exists(tmp_path / "pool") or not os.listdir(
        tmp_path / "pool")

    # Nothing changed: nothing to do.
    assert "no work to do" in run(["ninja", "cached"], project, env=env).stdout
    # An edited stage builds, and so does what follows it (new keys); what
    # comes before it is not run again.
    recipe = project / "recipes" / "cached.yaml"
    recipe.write_text(recipe.read_text().replace("echo b >", "echo B >"))
    output = run(["ninja", "cached"], project, env=env).stdout
    assert stages_run(output) == {"cached/b", "cached/c"}, output
    assert built(project, "b") and built(project, "c")
    assert ostree(project, "cat", "test/cached", "/etc/b") == "B\n"
    # Another script with the same result: b runs (a new key), makes the
    # same tree, and what follows it is not run again (restat).
    recipe.write_text(recipe.read_text().replace("echo B > /etc/b",
                                                 "printf 'B\\n' > /etc/b"))
    output = run(["ninja", "cached"], project, env=env).stdout
    assert stages_run(output) == {"cached/b"}, output
    assert "(unchanged," in stage_log(project, "b")


def entry_of(cache_dir, stage_label):
    """``(ref, commit)`` of a stage's entry in a cache directory."""
    import gi
    gi.require_version("OSTree", "1.0")
    from debostree import ostree as ostree_mod
    from debostree import stagecache
    repo = ostree_mod.Repo(str(cache_dir)).open_gi()
    refs = {}
    for name in os.listdir(cache_dir / "refs/heads/cache/v1/amd64"):
        ref = f"cache/v1/amd64/{name}"
        commit = ostree_mod.resolve_ref(repo, ref)
        metadata, _ = ostree_mod.commit_metadata(repo, commit)
        refs[metadata[stagecache.STAGE_META]] = (ref, commit)
    return refs[stage_label]


def test_tampered_and_foreign_entries_are_refused(cache, tmp_path):
    from debostree import ed25519
    from debostree import ostree as ostree_mod
    tampered = tmp_path / "tampered"
    shutil.copytree(cache["dir"], tampered, symlinks=True)
    repo = ostree_mod.Repo(str(tampered)).open_gi()
    # a: signed by another key only.
    _, a_commit = entry_of(tampered, "cached/a")
    other = ed25519.read_secret_key(cache["other_secret"])
    repo.write_commit_detached_metadata(a_commit, ed25519._with_signature(
        None, ed25519.sign(other, ed25519._commit_bytes(repo, a_commit))), None)
    # b: its ref names c's entry (signed, but for another key).
    b_ref, _ = entry_of(tampered, "cached/b")
    _, c_commit = entry_of(tampered, "cached/c")
    (tampered / "refs/heads" / b_ref).write_text(c_commit + "\n")
    # c: a file of its tree is not what its checksum says.
    checksum = ostree(cache["first"], "ls", "-C", "stage/cached/amd64/c",
                      "/etc/c").split()[-2]
    obj = tampered / "objects" / checksum[:2] / f"{checksum[2:]}.filez"
    data = bytearray(obj.read_bytes())
    data[-1] ^= 0xFF
    obj.write_bytes(bytes(data))

    # Read as a directory.
    project, env = machine(cache, "third", str(tampered), str(tmp_path / "pool"))
    output = run(["ninja", "cached"], project, env=env).stdout
    assert "cached/base: from the stage cache" in output
    assert re.search(r"cached/a: stage cache entry \S+ refused: commit \S+ has "
                     r"no valid ed25519 signature", output), output
    assert re.search(r"cached/b: stage cache entry \S+ refused: commit \S+ is "
                     r"the entry of another key", output), output
    assert re.search(r"cached/c: stage cache entry \S+ refused: .*", output)
    assert not built(project, "base")
    assert all(built(project, s) for s in ("a", "b", "c"))
    assert root_of(project, "test/cached") == root_of(cache["first"],
                                                       "test/cached")


def test_the_cache_going_away_falls_back_to_building(cache, tmp_path):
    server = Server(cache["dir"])
    project, env = machine(cache, "fourth", server.url, str(tmp_path / "pool"))
    try:
        output = run(["ninja", "cached/a"], project, env=env).stdout
    finally:
        server.close()
    assert "cached/a: from the stage cache" in output, output
    # New keys for b and c (another script, the same tree): they are looked
    # up again and cannot be; the stages taken already are not asked for.
    recipe = project / "recipes" / "cached.yaml"
    recipe.write_text(recipe.read_text().replace(
        'echo b > /etc/b', "printf 'b\\\\n' > /etc/b"))
    output = run(["ninja", "cached"], project, env=env).stdout
    for stage in ("b", "c"):
        assert re.search(rf"cached/{stage}: cannot read the stage cache "
                         rf"{re.escape(server.url)}: .*; building it", output), \
            output
        assert built(project, stage)
    assert not re.search(r"cached/(base|a): cannot read", output), output
    assert stages_run(output) == {"cached/b", "cached/c"}, output
    assert not built(project, "base") and not built(project, "a")
    assert root_of(project, "test/cached") == root_of(cache["first"],
                                                       "test/cached")


def test_verify_rebuilds_and_prune_keeps_the_cache_bounded(cache, tmp_path,
                                                           pool):
    first = cache["first"]
    env = {**EPOCH, "DEBOSTREE_CACHE_CONFIG": str(cache["root"] / "push.yaml")}
    tool = [sys.executable, os.path.join(TOP, "tools", "stage-cache"),
            "--config", "build/config.json"]
    output = run(tool + ["verify", "--stage", "cached/c"], first,
                 env=env).stdout
    assert "cached/c (amd64): the same tree" in output, output
    result = run(tool + ["verify", "--stage", "noisy/d"], first, env=env,
                 check=False)
    assert result.returncode == 1, result.stdout
    assert "noisy/d (amd64): the tree differs" in result.stdout
    assert "/etc/d" in result.stdout
    assert "1 stages built again differ" in result.stderr
    # The stage's own ref and commit are as they were.
    assert ostree(first, "rev-parse", "stage/noisy/amd64/d").strip() == \
        (first / "build/stages/noisy/amd64/d.commit").read_text().strip()

    copy = tmp_path / "cache"
    shutil.copytree(cache["dir"], copy, symlinks=True)
    (tmp_path / "push.yaml").write_text(
        (cache["root"] / "push.yaml").read_text().replace(
            str(cache["dir"]), str(copy)))
    env["DEBOSTREE_CACHE_CONFIG"] = str(tmp_path / "push.yaml")
    configure(first, pool, env)  # the push directory is configured
    output = run(tool + ["prune", "--keep-days", "1"], first, env=env).stdout
    assert "0 entries older than 1 days removed, 5 kept" in output, output
    output = run(tool + ["prune", "--keep-days", "0"], first, env=env).stdout
    assert "5 entries older than 0 days removed, 0 kept (Deleted " in output, \
        output
    assert run(["ostree", "refs", f"--repo={copy}"], first).stdout == ""
    # Nothing is left but the repository itself: every object was the
    # entries'.
    objects = [f for _, _, files in os.walk(copy / "objects") for f in files]
    assert objects == []
