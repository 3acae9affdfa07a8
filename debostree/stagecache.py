"""The shared stage cache: stage commits kept under their input keys
(cachekey.py) in an OSTree archive repository, which a plain directory,
any static HTTP server or an object store serves.

An entry is a commit of its own: the stage's tree, no parent, the time it
was pushed, and metadata naming its key, architecture and stage and
holding the stage's manifest (owners, modes and xattrs, zlib-compressed,
with its SHA256).  Its ref is ``cache/v1/ARCH/KEY``; readers ask for that
ref alone, so the repository needs no summary and pushers never contend
for one.  Every entry is signed: ed25519 in ostree's format (ed25519.py)
or GPG (``ostree gpg-sign``).

Reading (``lookup_many``, by the probe edge of a recipe and architecture,
before its stages run, for all of them at once): the
entry's commit alone is pulled first, and is refused unless it is signed by
the configured key and names the key that was asked for and a manifest
with the SHA256 it states; then its tree, which ostree checks object by
object as it arrives, and which must have the manifest's paths and
directory owners and modes.  No ref ever names a refused entry (what it
left is an unreferenced object or two, which ``ostree prune`` removes).
The stage's commit is made from that tree as a build would make it (the
previous commit when the tree is the same, so ninja's restat still stops
what follows).  A miss is a line in the stage's log; an
unreachable cache or a refused entry a line on the terminal too; and the
stage builds.

Writing (``push``): each built stage's commit becomes an entry in the push
directory (an archive repository; made if missing), signed, skipped when
the key is there already.  Objects and refs are written by ostree's
atomic renames and an entry's ref is set only once it is signed, so
concurrent pushers never leave a half entry.  ``prune`` removes entries
pushed more than N days ago; ``verify`` rebuilds stages without the cache
and compares their trees with the entries.

Settings (``read_settings``): ``--cache URL`` (or a directory) at
configure, else ``$DEBOSTREE_CACHE``, else ``url`` in the cache
configuration file (``$DEBOSTREE_CACHE_CONFIG``, else
``~/.config/debostree/cache.yaml``), which also holds the keys and the
push directory.
"""

import hashlib
import json
import os
import time
import zlib

from . import ed25519, files, ostree, proc, signing, yamlsrc
from .errors import UserError
from .project import URL_RE, user_config_file
from .recipefields import check_keys

CONFIG_ENV_VAR = "DEBOSTREE_CACHE_CONFIG"
URL_ENV_VAR = "DEBOSTREE_CACHE"
SETTINGS_KEYS = {"url", "push", "ed25519-key", "ed25519-public-key",
                 "gpg-key", "gpg-homedir", "gpg-keyring", "keep-days"}
DEFAULT_KEEP_DAYS = 30
REMOTE = "debostree-cache"
REF_PREFIX = "cache/v1"
KEY_META = "debostree.cache.key"
ARCH_META = "debostree.cache.arch"
STAGE_META = "debostree.cache.stage"
MANIFEST_META = "debostree.cache.manifest"
MANIFEST_SHA_META = "debostree.cache.manifest-sha256"


def entry_ref(arch, key):
    return f"{REF_PREFIX}/{arch}/{key}"


def config_file():
    return user_config_file("cache.yaml", CONFIG_ENV_VAR)


def _url_of(text, origin):
    """A URL from a URL or a directory (made absolute, as file://)."""
    if "://" in text:
        if not URL_RE.match(text):
            raise UserError(f"{origin}: invalid cache URL {text!r}",
                            hint="an http://, https:// or file:// URL, or a "
                            "directory")
        return text.rstrip("/")
    return "file://" + os.path.abspath(os.path.expanduser(text))


def read_settings(cli_url=None, cli_push=None, path=None, environ=os.environ):
    """The cache settings: ``{url, push, ed25519_key, ed25519_public_key,
    gpg_key, gpg_homedir, gpg_keyring}`` (only those set).

    The file is a mapping: ``url`` (where entries are read: a URL or a
    directory), ``push`` (the directory ``ninja cache-push`` writes), and
    the keys: ``ed25519-key`` (a secret key file: signs pushed entries, and
    its public half checks read ones), ``ed25519-public-key`` (a public key
    file: checks read entries), or ``gpg-key`` (a key id, with an optional
    ``gpg-homedir``: signs, and its public key checks) and ``gpg-keyring``
    (a keyring file: checks); ``keep-days``, how long ``ninja cache-prune``
    keeps entries (``DEFAULT_KEEP_DAYS``).  ``--cache`` and ``$DEBOSTREE_CACHE`` give
    the URL instead of the file's; ``--cache-push`` the push directory.
    Reading needs a key to check entries with, pushing one to sign them.
    """
    path = path or config_file()
    settings = {}
    if os.path.exists(path):
        data, src = yamlsrc.load(path)
        if data is not None:
            settings = _file_settings(data, src, path)
    env_url = environ.get(URL_ENV_VAR)
    if cli_url:
        settings["url"] = _url_of(cli_url, "--cache")
    elif env_url:
        settings["url"] = _url_of(env_url, URL_ENV_VAR)
    if cli_push:
        settings["push"] = os.path.abspath(os.path.expanduser(cli_push))
    if "url" in settings and not _checks(settings):
        raise UserError(f"a stage cache to read ({settings['url']}) needs a "
                        "key to check its entries' signatures", path=path,
                        hint="set 'ed25519-public-key', 'ed25519-key', "
                        "'gpg-keyring' or 'gpg-key' there")
    if "push" in settings and not (settings.get("ed25519_key")
                                   or settings.get("gpg_key")):
        raise UserError(f"a stage cache to push to ({settings['push']}) needs "
                        "a key to sign its entries", path=path,
                        hint="set 'ed25519-key' or 'gpg-key' there")
    return settings


def _checks(settings):
    return any(settings.get(k) for k in ("ed25519_key", "ed25519_public_key",
                                         "gpg_keyring", "gpg_key"))


def _file_settings(data, src, path):
    if not isinstance(data, dict):
        raise UserError("expected a mapping with 'url' or 'push' and keys",
                        path=path, line=src.line(()))
    check_keys(src, (), data, SETTINGS_KEYS)
    settings = {}
    here = os.path.dirname(os.path.abspath(path))
    for key in ("url", "push", "gpg-key"):
        if key in data and (not isinstance(data[key], str) or not data[key]):
            raise src.error((key,), f"expected a string, got {data[key]!r}")
    if "url" in data:
        text = data["url"]
        if "://" not in text:
            text = os.path.join(here, os.path.expanduser(text))
        try:
            settings["url"] = _url_of(text, "url")
        except UserError as error:
            raise src.error(("url",), error.message, hint=error.hint)
    if "push" in data:
        settings["push"] = os.path.join(here, os.path.expanduser(data["push"]))
    if "ed25519-public-key" in data and "gpg-keyring" in data:
        raise src.error(("gpg-keyring",),
                        "set one of 'ed25519-public-key' and 'gpg-keyring'")
    if "ed25519-public-key" in data:
        settings["ed25519_public_key"] = yamlsrc.existing_path(
            src, data, "ed25519-public-key", path)
        try:
            ed25519.read_public_key(settings["ed25519_public_key"])
        except UserError as error:
            raise src.error(("ed25519-public-key",), error.message,
                            hint=error.hint)
    if "gpg-keyring" in data:
        settings["gpg_keyring"] = yamlsrc.existing_path(src, data,
                                                        "gpg-keyring", path)
    settings.update(signing.read_signing_settings(src, data, path))
    if "keep-days" in data:
        days = data["keep-days"]
        if isinstance(days, bool) or not isinstance(days, int) or days < 0:
            raise src.error(("keep-days",), f"expected a number of days, got "
                            f"{days!r}", hint="e.g. 30")
        settings["keep_days"] = days
    return settings


# -- reading -------------------------------------------------------------------
def remote_stamp(config):
    """The output of the edge that sets up the cache's remote."""
    return os.path.join(config.builddir, "stagecache", "remote.json")


def setup_remote(config):
    """The build repository's remote for the cache (one writer: the edge
    ``graph.GraphBuilder.cache_remote_edge``, before any probe), set to
    check the configured GPG key; ed25519 signatures are checked by
    ``lookup`` (Debian 12's ostree cannot)."""
    settings = config.stage_cache
    repo = ostree.Repo(config.repo)
    existing = proc.run(["ostree", "remote", "list", f"--repo={repo.path}"],
                        capture=True).stdout.split()
    if REMOTE in existing:
        proc.run(["ostree", "remote", "delete", f"--repo={repo.path}", REMOTE])
    if settings.get("url"):
        gpg = _public_key(settings) is None
        proc.run(["ostree", "remote", "add", f"--repo={repo.path}",
                  f"--set=gpg-verify={'true' if gpg else 'false'}",
                  "--set=gpg-verify-summary=false", REMOTE, settings["url"]])
        if gpg:
            keyring = settings.get("gpg_keyring")
            exported = None
            if not keyring:
                exported = signing.GpgSigner(
                    settings["gpg_key"], settings.get("gpg_homedir")
                ).export_keyring(os.path.join(repo.path, "tmp", "cache-key.gpg"))
                keyring = exported
            proc.run(["ostree", "remote", "gpg-import", f"--repo={repo.path}",
                      f"--keyring={keyring}", REMOTE])
            if exported:
                os.unlink(exported)
    files.write_if_changed(remote_stamp(config), json.dumps(
        {"url": settings.get("url")}) + "\n")


def _public_key(settings):
    if settings.get("ed25519_public_key"):
        return ed25519.read_public_key(settings["ed25519_public_key"])
    if settings.get("ed25519_key"):
        return ed25519.read_secret_key(settings["ed25519_key"]).public
    return None


class Refused(Exception):
    """An entry that is not used, and why."""


class TreesDiffer(UserError):
    """``verify`` found stages that build to another tree: a failed check,
    not bad input."""

    exit_status = 1


def lookup(config, arch, key):
    """The entry for ``key``, pulled into the build repository and checked:
    ``(entry commit, manifest text)``; None when there is none.
    Raises ``Refused`` for an entry that fails a check, and ``UserError``
    when the cache cannot be read."""
    found = lookup_many(config, [(arch, key)])[(arch, key)]
    if isinstance(found, Exception):
        raise found
    return found


def lookup_many(config, wanted):
    """``lookup`` of each ``(arch, key)`` of ``wanted`` at once: ``{(arch,
    key): (commit, manifest text), None, or the Refused or UserError that
    stops it}``.  The entries' commits come in one pull and their trees in
    another, which fetches an object that several trees share once; a pull
    that fails is made again for each entry, to say which one failed."""
    repo = config.repo
    results = {}
    refs = {item: entry_ref(*item) for item in wanted}
    # The commits alone, first: nothing of a tree is fetched before its
    # commit's signature and metadata are checked.
    try:
        _pull(config, repo, ["--commit-metadata-only", REMOTE]
              + sorted(set(refs.values())), several=True)
    except (Refused, UserError):
        for item, ref in refs.items():
            try:
                _pull(config, repo, ["--commit-metadata-only", REMOTE, ref])
            except (Refused, UserError) as error:
                results[item] = error
    gi_repo = ostree.Repo(repo).open_gi()
    public = _public_key(config.stage_cache)
    checked = {}
    for item, ref in refs.items():
        if item in results:
            continue
        commit = ostree.resolve_ref(gi_repo, f"{REMOTE}:{ref}")
        if commit is None:
            results[item] = None
            continue
        # The remote's ref is only the way to the commit.
        gi_repo.set_ref_immediate(REMOTE, ref, None, None)
        try:
            if public is not None and not ed25519.commit_verified(
                    gi_repo, commit, public):
                raise Refused(f"commit {commit} has no valid ed25519 "
                              "signature by the configured key")
            checked[item] = (commit, entry_manifest(gi_repo, commit, *item))
        except Refused as refused:
            results[item] = refused
    # The trees: ostree checks every object against its checksum.  Objects
    # that the pool's import store has (the packages' files) are linked
    # from there rather than fetched.
    local = [f"--localcache-repo={store}" for store in _local_caches(config)]
    commits = sorted({commit for commit, _ in checked.values()})
    pulled = set()
    if commits:
        try:
            _pull(config, repo, [REMOTE] + commits + local, tree=True)
            pulled = set(commits)
        except (Refused, UserError):
            pass
    gi_repo = ostree.Repo(repo).open_gi()
    for item, (commit, text) in checked.items():
        try:
            if commit not in pulled:
                _pull(config, repo, [REMOTE, commit] + local, tree=True)
            problem = outline_problem(ostree.tree_outline(gi_repo, commit),
                                      text)
            if problem:
                raise Refused(f"commit {commit}: its tree does not match "
                              f"its manifest ({problem})")
            results[item] = (commit, text)
        except (Refused, UserError) as error:
            results[item] = error
    return results


def _local_caches(config):
    """Repositories of this machine whose objects a pull may link."""
    from . import importstore
    found = []
    store = os.path.join(config.pool, importstore.STORE_DIR)
    if os.path.isdir(os.path.join(store, "repo")) and \
            importstore.usable(config.pool):
        found.append(os.path.join(store, "repo"))
    return found


def entry_manifest(gi_repo, commit, arch, key):
    """The manifest an entry holds, once its metadata is checked: it names
    ``key`` and ``arch``, and a manifest with the SHA256 it states."""
    metadata, _ = ostree.commit_metadata(gi_repo, commit)
    if metadata.get(KEY_META) != key or metadata.get(ARCH_META) != arch:
        raise Refused(f"commit {commit} is the entry of another key "
                      f"({metadata.get(KEY_META)}, {metadata.get(ARCH_META)})")
    try:
        text = zlib.decompress(metadata.get(MANIFEST_META, b"")).decode()
    except (zlib.error, UnicodeDecodeError):
        raise Refused(f"commit {commit}: its manifest is unreadable")
    if hashlib.sha256(text.encode()).hexdigest() != \
            metadata.get(MANIFEST_SHA_META):
        raise Refused(f"commit {commit}: its manifest is not the one it names")
    return text


def probe(config, stage_bases, say=print):
    """Look stages up before they run (the probe edge of a recipe and
    architecture): write what was found to each one's ``StageFiles.probe``
    and its dyndep file, which adds the packages it needs as inputs unless
    the cache has it.  Entries are taken into the build repository here
    (``lookup_many``); a stage looked up before under the key it has now
    is not looked up again (``_probed_already``)."""
    from .cachekey import read_key, run_key
    from .ids import reference_digest, write_reference
    from .stagefiles import StageFiles
    references = {}
    stages = []
    for base in stage_bases:
        stage = StageFiles(base)
        with open(stage.probe_inputs, encoding="utf-8") as f:
            wanted = json.load(f)
        with open(stage.options, encoding="utf-8") as f:
            options = json.load(f)
        key = read_key(stage.key)
        if key is None:
            raise UserError("the stage has no key", path=stage.key,
                            hint="run ./configure")
        recipe, arch = options["recipe"], options["arch"]
        if (recipe, arch) not in references:
            # The IDs the stages would keep from their branch's history are
            # part of the key they are cached under: found as a stage
            # finds them.
            work = base + ".probe.d"
            files.remove_tree(work)
            os.makedirs(work)
            try:
                write_reference(config, recipe, arch, work)
                references[(recipe, arch)] = reference_digest(work)
            finally:
                files.remove_tree(work)
        stages.append((stage, wanted, f"{recipe}/{options['stage']}", arch,
                       key, run_key(key, references[(recipe, arch)])))
    gi_repo = ostree.Repo(config.repo).open_gi()
    todo = []
    for stage, wanted, label, arch, key, run in stages:
        before = _probed_already(gi_repo, stage, key)
        if before is None:
            todo.append((stage, wanted, label, arch, key, run))
        else:
            # Its packages may be elsewhere now (another pool).
            _write_probe(stage, wanted, key, before["run_key"],
                         before["entry"])
    found = lookup_many(config, [(arch, run) for _, _, _, arch, _, run
                                 in todo]) if todo else {}
    entries = {}
    for stage, wanted, label, arch, plain_key, key in todo:
        result = found[(arch, key)]
        entry = None
        if isinstance(result, Refused):
            say(f"{label}: stage cache entry {key} refused: {result}; "
                "building it")
        elif isinstance(result, UserError):
            say(f"{label}: {result.message}; building it")
        elif result:
            entry = result[0]
        entries[stage.base] = entry
        _write_probe(stage, wanted, plain_key, key, entry)
    return entries


def _probed_already(gi_repo, stage, key):
    """What the stage's probe found before (its ``StageFiles.probe``) when
    that was under the key it has now (``StageFiles.key``) and an entry
    found then is whole in the build repository; else None.  (When a
    recipe's probe runs again for another of its stages, this one's lookup
    could only matter if the stage ran again, which a key that is the same
    does not make it do.)"""
    try:
        with open(stage.probe, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or found.get("key") != key or \
            not found.get("run_key"):
        return None
    if not found.get("entry"):
        return found
    from gi.repository import GLib, OSTree
    try:
        _, _, state = gi_repo.load_commit(found["entry"])
    except GLib.Error:
        return None
    return None if state & OSTree.RepoCommitState.PARTIAL else found


def _write_probe(stage, wanted, plain_key, key, entry):
    from .ninja import escape_path
    files.write_if_changed(stage.probe, json.dumps(
        {"key": plain_key, "run_key": key, "entry": entry}) + "\n")
    line = f"build {escape_path(wanted['commit'])}: dyndep"
    if entry is None and wanted["inputs"]:
        line += " | " + " ".join(escape_path(p) for p in wanted["inputs"])
    files.write_if_changed(stage.dyndep,
                           f"ninja_dyndep_version = 1\n{line}\n")


# How ostree says the cache could not be reached (rather than that what
# it served is wrong).
UNREACHABLE = ("couldn't connect", "could not connect", "timeout", "timed out",
               "could not resolve", "connection", "opening repo",
               "no such file or directory", "server returned http")


def _pull(config, repo, args, tree=False, several=False):
    """``ostree pull`` into the build repository.  For an entry's commit:
    a missing ref is nothing, a refused signature ``Refused``, anything
    else ``UserError``.  For its tree (``tree``): an unreachable cache is
    ``UserError``, anything else (a corrupt object) ``Refused``.  For the
    commits of ``several`` refs: a missing one fails them all
    (``UserError``), and the caller pulls each on its own."""
    for attempt in range(ostree.ATTEMPTS):
        result = proc.run(["ostree", "pull", f"--repo={repo}"] + args,
                          capture=True, check=False)
        if result.returncode == 0:
            return
        if ostree.STAGING_RACE not in (result.stderr or ""):
            break
        time.sleep(0.05 * (attempt + 1))  # see ostree.retry_staging_race
    lines = (result.stderr or "").strip().splitlines()
    message = lines[-1] if lines else f"exit status {result.returncode}"
    lowered = message.lower()
    unreachable = UserError(f"cannot read the stage cache "
                            f"{config.stage_cache.get('url')}: {message}")
    if tree:
        if any(text in lowered for text in UNREACHABLE):
            raise unreachable
        raise Refused(message)
    if "signature" in lowered or "gpg" in lowered:
        raise Refused(message)
    # No such ref: "Refspec '...' not found" (a directory), HTTP 404.
    if not several and (("refspec" in lowered and "not found" in lowered)
                        or "404" in lowered):
        return
    raise unreachable


def outline_problem(outline, manifest_text):
    """Where a tree (``ostree.tree_outline``) and a manifest disagree: paths,
    and the owners and modes of directories; None when they agree."""
    from .manifest import Entry
    import stat
    entries = {}
    for line in manifest_text.splitlines():
        entry = Entry.from_json(line)
        entries[entry.path] = entry
    missing = sorted(set(entries) - set(outline))
    extra = sorted(set(outline) - set(entries))
    if missing or extra:
        return ", ".join([f"{p} not in the tree" for p in missing[:3]]
                         + [f"{p} not in the manifest" for p in extra[:3]])
    for path, (is_dir, uid, gid, mode) in outline.items():
        entry = entries[path]
        if is_dir != stat.S_ISDIR(entry.mode):
            return f"{path} is {'a' if is_dir else 'not a'} directory"
        if is_dir and (uid, gid, mode) != (entry.uid, entry.gid, entry.mode):
            return f"{path}: owner or mode differ"
    return None


# -- writing -------------------------------------------------------------------
def push(config, stages, say=print, now=time.time):
    """Add each of ``stages`` (``(label, arch, stage commit, run key,
    manifest path)``) to the push directory, signed; returns the count of
    new entries."""
    settings = config.stage_cache
    target = ostree.Repo(settings["push"])
    if not target.exists():
        os.makedirs(target.path, exist_ok=True)
        proc.run(["ostree", "init", "--mode=archive", f"--repo={target.path}"])
    signer = signing.signer_for(settings)
    added = 0
    for label, arch, commit, key, manifest_path in stages:
        ref = entry_ref(arch, key)
        if target.rev_parse(ref):
            say(f"cache-push: {label} ({arch}) is there already ({key[:16]})")
            continue
        with open(manifest_path, encoding="utf-8") as f:
            text = f.read()
        # Its time is when it was pushed (cache-prune), whatever
        # SOURCE_DATE_EPOCH says.
        entry, _ = ostree.commit_tree_of(
            config.repo, commit, f"{label} ({arch}): stage cache entry",
            timestamp=int(now()),
            metadata={KEY_META: key, ARCH_META: arch, STAGE_META: label,
                      MANIFEST_META: zlib.compress(text.encode(), 9),
                      MANIFEST_SHA_META: hashlib.sha256(text.encode())
                      .hexdigest()})
        # --untrusted: every object is checked against its checksum, so a
        # corrupt object of the build repository is never shared.
        ostree.retry_staging_race(lambda: proc.run(
            ["ostree", "pull-local", "--untrusted", f"--repo={target.path}",
             config.repo, entry], capture=True))
        gi_target = target.open_gi()
        signer.sign_commit(target.path, gi_target, entry)
        # Only a signed entry gets its ref.
        gi_target.set_ref_immediate(None, ref, entry, None)
        added += 1
        say(f"cache-push: {label} ({arch}) -> {ref} ({signer.describe()})")
    return added


def prune(config, keep_days, now, say=print):
    """Remove the entries pushed more than ``keep_days`` days before
    ``now``, and the objects only they used; returns the count removed."""
    target = ostree.Repo(config.stage_cache["push"])
    if not target.exists():
        return 0
    from gi.repository import OSTree
    gi_target = target.open_gi()
    _, refs = gi_target.list_refs_ext(REF_PREFIX,
                                      OSTree.RepoListRefsExtFlags.NONE, None)
    removed = 0
    for ref, commit in sorted(refs.items()):
        _, timestamp = ostree.commit_metadata(gi_target, commit)
        if now - timestamp > keep_days * 86400:
            gi_target.set_ref_immediate(None, ref, None, None)
            removed += 1
    freed = ""
    if removed:
        lines = proc.run(["ostree", "prune", f"--repo={target.path}",
                          "--refs-only"], capture=True).stdout.splitlines()
        freed = f" ({lines[-1].strip()})" if lines else ""
    say(f"cache-prune: {removed} entries older than {keep_days} days removed, "
        f"{len(refs) - removed} kept{freed}")
    return removed


# -- the stages of the build ---------------------------------------------------
def stage_index(config):
    """Configure's index of every stage (graph.stage_index): ``[{label,
    arch, kind, commit, options, parent}]``."""
    index_path = os.path.join(config.builddir, "stagecache", "stages.json")
    try:
        with open(index_path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        raise UserError("no stage index in the build directory",
                        path=index_path, hint="run ./configure")


def built_stages(config):
    """Every stage of the build directory (configure's index) that was
    built, with the keys its commit is cached under: ``[{label, arch,
    kind, commit, options, parent, stage_commit, run_keys, manifest}]``."""
    index = stage_index(config)
    from .stagefiles import StageFiles
    found = []
    for stage in index:
        files_of = StageFiles.from_commit(stage["commit"])
        try:
            with open(stage["commit"], encoding="utf-8") as f:
                commit = f.read().split()[0]
            with open(files_of.run_key, encoding="utf-8") as f:
                recorded = json.load(f)
        except (OSError, ValueError, IndexError):
            continue  # not built (or built before keys were recorded)
        if recorded.get("commit") != commit or \
                not isinstance(recorded.get("keys"), list):
            continue
        found.append({**stage, "stage_commit": commit,
                      "run_keys": recorded["keys"],
                      "manifest": files_of.manifest})
    return found


def verify(config, sample, seed, only=(), say=print):
    """Build ``sample`` stages (or those labelled ``only``) again, each from
    its parent's commit, without the cache, and compare each tree with the
    stage's commit (from the cache or built): a tree that differs means an
    input missing from the keys, or a build that is not reproducible.  Two
    builds are compared when they hold for a common key (the IDs kept from
    the branch's history are part of it).  Returns the labels of the
    stages whose trees differ."""
    import random
    import shutil
    import sys
    from .stagefiles import StageFiles
    stages = [s for s in built_stages(config)
              if s["parent"] is None or os.path.exists(s["parent"])]
    if only:
        chosen = [s for s in stages if s["label"] in only]
        unknown = sorted(set(only) - {s["label"] for s in chosen})
        if unknown:
            raise UserError(f"no built stage {', '.join(unknown)}",
                            hint="name stages as RECIPE/STAGE, built first")
    else:
        chosen = random.Random(seed).sample(stages, min(sample, len(stages)))
    work = os.path.join(config.builddir, "stagecache", "verify")
    differ = []
    for stage in sorted(chosen, key=lambda s: (s["label"], s["arch"])):
        name = f"{stage['label']} ({stage['arch']})"
        with open(stage["options"], encoding="utf-8") as f:
            options = json.load(f)
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        # Its own ref, so the stage's ref and commit stay as they are; its
        # key beside its output, so it records the keys it holds for.
        options["ref"] = "verify/" + options["ref"]
        options_path = os.path.join(work, "options.json")
        with open(options_path, "w", encoding="utf-8") as f:
            json.dump(options, f)
        rebuilt_files = StageFiles(os.path.join(work, "rebuilt"))
        shutil.copyfile(StageFiles.from_commit(stage["commit"]).key,
                        rebuilt_files.key)
        argv = [sys.executable, os.path.join(config.top, "stages",
                                             stage["kind"]),
                "--config", config.config_path, "--options", options_path,
                "--out", rebuilt_files.commit]
        if stage["parent"]:
            argv += ["--parent", stage["parent"]]
        say(f"cache-verify: building {name} again, without the cache")
        proc.run(argv)
        with open(rebuilt_files.commit, encoding="utf-8") as f:
            rebuilt = f.read().split()[0]
        with open(rebuilt_files.run_key, encoding="utf-8") as f:
            rebuilt_keys = json.load(f)["keys"]
        if not set(rebuilt_keys) & set(stage["run_keys"]):
            say(f"cache-verify: {name}: its branch's system user and group "
                "IDs differ from those it was built with; not compared")
            continue
        gi_repo = ostree.Repo(config.repo).open_gi()
        if ostree.same_tree(gi_repo, rebuilt, stage["stage_commit"]):
            say(f"cache-verify: {name}: the same tree")
            continue
        changes = proc.run(["ostree", "diff", f"--repo={config.repo}",
                            stage["stage_commit"], rebuilt],
                           capture=True).stdout.splitlines()
        say(f"cache-verify: {name}: the tree differs from "
            f"{stage['stage_commit']} ({len(changes)} paths: "
            f"{', '.join(c.strip() for c in changes[:5])})")
        differ.append(name)
    shutil.rmtree(work, ignore_errors=True)
    return differ
