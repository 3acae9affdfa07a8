"""Bases published elsewhere: a recipe's ``from: {remote: NAME, ref: BRANCH}``.

A derived image (a product on a base another team publishes) starts from a
commit of a published OSTree repository instead of a bootstrap.  This
module owns:

- the remotes' settings (``remotes.yaml``): each NAME's URL and the key its
  commits must be signed with (a GPG keyring or an ed25519 public key);
  like a mirror, a remote is named in recipes and located by configuration;
- pinning (``ninja update-lockfiles``): the branch's head pulled metadata
  only, its signature checked, its version and the lockfile it was built
  from read out of its metadata (``LOCKFILE_META``, written by branch.py);
  the pin is the lockfile's first stanza (``Pin``), and the base's installed
  packages follow in it under the stage name ``BASE_STAGE``;
- the build's pull (``tools/pull-base``): exactly the pinned commit, its
  signature checked again, committed under a local ref and given the
  manifest (owners, modes, xattrs) a stage's parent has.

The base's packages are what its tree has installed (its commit's package
list), with the archive stanzas of its lockfile: the layer's stages resolve
on top of them, and may not move them (``check_unmoved``).
"""

import os
import re
import stat
from dataclasses import dataclass, field

from . import ed25519, ostree, proc, yamlsrc
from .errors import UserError
from .project import URL_RE, user_config_file
from .recipefields import check_keys

CONFIG_ENV_VAR = "DEBOSTREE_REMOTES"
SETTINGS_KEYS = {"url", "gpg-keyring", "ed25519-public-key"}
# The stage name of a derived recipe's base: its packages' Lock-Stage, and
# the parent its first stage starts from (RECIPE/from).
BASE_STAGE = "from"
# The lockfile a branch commit was built from, in its metadata (branch.py).
LOCKFILE_META = "debostree.lockfile"
# The pin a derived branch commit was built on: "REMOTE REF COMMIT VERSION".
BASE_META = "debostree.base"
# The remote of a base in a repository: one per remote NAME.
REMOTE_PREFIX = "debostree-base-"
COMMIT_RE = re.compile(r"^[0-9a-f]{64}$")
PIN_FIELDS = ("Lock-Base-Remote", "Lock-Base-Ref", "Lock-Base-Commit",
              "Lock-Base-Version", "Lock-Base-Signed-By")


@dataclass(frozen=True)
class BaseSpec:
    """A recipe's ``from`` when it names a published branch."""
    remote: str
    ref: str    # may hold {arch}

    def ref_for(self, arch):
        return self.ref.replace("{arch}", arch)


@dataclass(frozen=True)
class Pin:
    """The base commit a lockfile pins."""
    remote: str
    ref: str
    commit: str
    version: str
    signed_by: str  # "gpg:FINGERPRINT" or "ed25519:PUBLIC KEY (base64)"
    line: int = field(default=None, compare=False)

    def fields(self):
        return list(zip(PIN_FIELDS, (self.remote, self.ref, self.commit,
                                     self.version, self.signed_by)))

    def describe(self):
        return f"{self.remote}:{self.ref} {self.version} ({self.commit[:12]})"


def pin_from_fields(para, path, line):
    """A ``Pin`` from a lockfile stanza's fields, checked."""
    for name in PIN_FIELDS:
        if not para.get(name):
            raise UserError(f"the base stanza lacks the '{name}' field",
                            path=path, line=line,
                            hint="regenerate it with 'ninja update-lockfiles'")
    if not COMMIT_RE.fullmatch(para["Lock-Base-Commit"]):
        raise UserError(f"invalid Lock-Base-Commit "
                        f"{para['Lock-Base-Commit']!r}", path=path, line=line,
                        hint="regenerate it with 'ninja update-lockfiles'")
    return Pin(*(para[f].strip() for f in PIN_FIELDS), line=line)


# -- settings ------------------------------------------------------------------
def config_file():
    return user_config_file("remotes.yaml", CONFIG_ENV_VAR)


def read_settings(path=None):
    """``{NAME: {"url", "gpg_keyring" | "ed25519_public_key"}}`` from the
    remotes file: a mapping of names to mappings with ``url`` (a URL or a
    directory) and the key to check commits with, ``gpg-keyring`` (a
    keyring file) or ``ed25519-public-key`` (an ostree public key file).
    A base is never taken unchecked: one of the two is required."""
    path = path or config_file()
    if not os.path.exists(path):
        return {}
    data, src = yamlsrc.load(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError("expected a mapping of remote names to their url and "
                        "key", path=path, line=src.line(()))
    remotes = {}
    here = os.path.dirname(os.path.abspath(path))
    for name, value in data.items():
        if not isinstance(name, str) or not re.fullmatch(
                r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise src.error((name,), f"invalid remote name {name!r}",
                            hint="letters, digits, '.', '_' and '-'")
        if not isinstance(value, dict):
            raise src.error((name,), "expected a mapping with 'url' and "
                            "'gpg-keyring' or 'ed25519-public-key'")
        check_keys(src, (name,), value, SETTINGS_KEYS, required=("url",))
        url = value["url"]
        if not isinstance(url, str) or not url:
            raise src.error((name, "url"), f"expected a URL, got {url!r}")
        if "://" not in url:
            url = "file://" + os.path.join(here, os.path.expanduser(url))
        if not URL_RE.match(url):
            raise src.error((name, "url"), f"invalid URL {url!r}",
                            hint="an http://, https:// or file:// URL, or a "
                            "directory")
        keys = [k for k in ("gpg-keyring", "ed25519-public-key") if k in value]
        if len(keys) != 1:
            raise src.error((name,), "set one of 'gpg-keyring' and "
                            "'ed25519-public-key'", hint="the key the base's "
                            "commits are signed with; unsigned bases are not "
                            "taken")
        settings = {"url": url.rstrip("/")}
        key_path = _existing(src, (name, keys[0]), value[keys[0]], here)
        if keys[0] == "ed25519-public-key":
            try:
                ed25519.read_public_key(key_path)
            except UserError as error:
                raise src.error((name, keys[0]), error.message)
            settings["ed25519_public_key"] = key_path
        else:
            settings["gpg_keyring"] = key_path
        remotes[name] = settings
    return remotes


def _existing(src, keypath, value, here):
    if not isinstance(value, str) or not value:
        raise src.error(keypath, f"expected a path, got {value!r}")
    path = os.path.join(here, os.path.expanduser(value))
    if not os.path.exists(path):
        raise src.error(keypath, f"no such file or directory: {path}")
    return path


def settings_of(remotes, name, recipe=None):
    """The settings of remote ``name``, or a one-line error naming the
    recipe's ``from`` and the file to add it to."""
    if name in remotes:
        return remotes[name]
    where = {}
    if recipe is not None:
        where = {"path": recipe.path, "line": recipe.source.line(("from",)),
                 "key": "from.remote"}
    raise UserError(f"no remote named '{name}' is configured", **where,
                    hint=f"add it, with its url and signing key, to "
                    f"{config_file()} (see docs/recipes.md, Bases)")


# -- a repository's remote -----------------------------------------------------
def setup_remote(repo_path, name, settings):
    """(Re)make the repository's remote for ``name``, set to check its GPG
    key (ed25519 signatures are checked by ``check_signature``: Debian
    12's ostree cannot)."""
    remote = REMOTE_PREFIX + name
    existing = proc.run(["ostree", "remote", "list", f"--repo={repo_path}"],
                        capture=True).stdout.split()
    if remote in existing:
        proc.run(["ostree", "remote", "delete", f"--repo={repo_path}", remote])
    gpg = bool(settings.get("gpg_keyring"))
    proc.run(["ostree", "remote", "add", f"--repo={repo_path}",
              f"--set=gpg-verify={'true' if gpg else 'false'}",
              "--set=gpg-verify-summary=false", remote, settings["url"]])
    if gpg:
        proc.run(["ostree", "remote", "gpg-import", f"--repo={repo_path}",
                  f"--keyring={settings['gpg_keyring']}", remote], capture=True)
    return remote


def _pull(repo_path, remote, name, url, what, args):
    result = proc.run(["ostree", "pull", f"--repo={repo_path}"] + args
                      + [remote, what], capture=True, check=False)
    if result.returncode != 0:
        lines = (result.stderr or "").strip().splitlines()
        message = lines[-1] if lines else \
            f"ostree pull exited with {result.returncode}"
        if message.startswith("error: "):
            message = message[len("error: "):]
        raise UserError(f"base {name}:{what} from {url}: {message}",
                        hint="what the remote serves does not check out, or "
                        f"it cannot be read: see its url and key in "
                        f"{config_file()}")


def check_signature(repo_path, gi_repo, remote, commit, settings, what):
    """The signer of ``commit`` ("gpg:FPR" or "ed25519:KEY"), which must be
    the remote's key; a one-line error otherwise."""
    if settings.get("ed25519_public_key"):
        public = ed25519.read_public_key(settings["ed25519_public_key"])
        try:
            good = ed25519.commit_verified(gi_repo, commit, public)
        except Exception:  # no detached metadata, an unreadable signature
            good = False
        if not good:
            raise UserError(f"base {what}: commit {commit} has no valid "
                            "ed25519 signature by the configured key; not "
                            "used", path=settings["ed25519_public_key"],
                            hint="check the remote's url and key")
        import base64
        return "ed25519:" + base64.b64encode(public).decode()
    from gi.repository import GLib, OSTree
    try:
        result = gi_repo.verify_commit_for_remote(commit, remote, None)
        result.require_valid_signature()
    except GLib.Error as error:
        raise UserError(f"base {what}: commit {commit}: {error.message}; not "
                        "used", path=settings.get("gpg_keyring"),
                        hint="check the remote's url and key")
    for index in range(result.count_all()):
        attrs = result.get(index, [OSTree.GpgSignatureAttr.VALID,
                                   OSTree.GpgSignatureAttr.FINGERPRINT])
        if attrs.get_child_value(0).get_boolean():
            return "gpg:" + attrs.get_child_value(1).get_string()
    raise UserError(f"base {what}: commit {commit} has no valid signature")


# -- pinning -------------------------------------------------------------------
@dataclass
class Pinned:
    pin: Pin
    lockfile_text: str
    records: list   # (name, version, arch, source) of the installed packages


def pin_base(spec, arch, remotes, cache_dir, recipe=None, out=None):
    """Pull the head of the base's branch (commit and metadata only) into
    ``cache_dir``'s repository, check its signature, and read what it was
    built from: a ``Pinned``."""
    from gi.repository import GLib
    from . import history
    settings = settings_of(remotes, spec.remote, recipe)
    ref = spec.ref_for(arch)
    repo = ostree.Repo(os.path.join(cache_dir, "bases", "repo"))
    repo.ensure()
    remote = setup_remote(repo.path, spec.remote, settings)
    what = f"{spec.remote}:{ref}"
    if out:
        print(f"pinning base {what}", file=out, flush=True)
    _pull(repo.path, remote, spec.remote, settings["url"], ref,
          ["--commit-metadata-only", "--depth=0"])
    commit = repo.rev_parse(f"{remote}:{ref}")
    gi_repo = repo.open_gi()
    signed_by = check_signature(repo.path, gi_repo, remote, commit, settings,
                                what)
    _, variant, _ = gi_repo.load_commit(commit)
    metadata = variant.get_child_value(0)
    text = metadata.lookup_value(LOCKFILE_META, GLib.VariantType.new("s"))
    version = metadata.lookup_value("version", GLib.VariantType.new("s"))
    records = history.metadata_records(gi_repo, commit)
    if text is None or records is None:
        raise UserError(f"base {what}: commit {commit} carries no lockfile "
                        "or package list in its metadata", hint="a base must "
                        "be published by a debostree that records them; "
                        "rebuild and publish it")
    return Pinned(Pin(spec.remote, ref, commit,
                      version.get_string() if version else commit[:12],
                      signed_by), text.get_string(), records)


def base_packages(pinned, what):
    """The base's installed packages as ``resolve.LockedPackage`` (stage
    ``BASE_STAGE``): each package of its commit's list with the stanza its
    lockfile has for that version."""
    from . import lockfile
    from .resolve import LockedPackage
    entries = {}
    for entry in lockfile.parse(pinned.lockfile_text, f"{what} (its lockfile)"):
        if entry.stage != lockfile.STAND_INS_STAGE:
            entries[(entry.name, entry.arch, entry.version)] = entry
    packages, unknown = [], []
    for name, version, arch, _ in pinned.records:
        entry = entries.get((name, arch, version))
        if entry is None:
            unknown.append(f"{name}:{arch} {version}")
            continue
        stanza = {k: v for k, v in entry.fields if not k.startswith("Lock-")}
        packages.append(LockedPackage(name, arch, version, entry.archive,
                                      entry.suite, stanza, BASE_STAGE))
    if unknown:
        raise UserError(f"base {what}: installed packages its lockfile does "
                        "not pin: " + ", ".join(unknown[:10]),
                        hint="the base was not built from its lockfile alone; "
                        "its publisher must rebuild it")
    return packages


def check_unmoved(base, installed, context):
    """A layer's stage may add packages, not move the base's: refuse a
    resolution that installs another version of one."""
    moved = [f"{p.name}:{p.arch} {base[p.key].version} -> {p.version}"
             for p in installed if p.key in base
             and base[p.key].version != p.version]
    if moved:
        raise UserError(f"{context}: would change packages of the base: "
                        + ", ".join(moved[:10]), hint="the base pins them: "
                        "update the base (its publisher), or ask for versions "
                        "that fit it (NAME=VERSION)")


# -- the build's pull ----------------------------------------------------------
def pull_pinned(config, options):
    """Pull exactly the pinned commit into the build repository, check its
    signature, keep it under a ref and write its manifest; returns it."""
    from . import manifest
    pin = Pin(options["remote"], options["ref"], options["commit"],
              options["version"], options["signed_by"])
    settings = settings_of(config.remotes, pin.remote)
    repo = ostree.Repo(config.repo)
    repo.ensure()
    remote = setup_remote(repo.path, pin.remote, settings)
    what = f"{pin.remote}:{pin.ref}"
    _pull(repo.path, remote, pin.remote, settings["url"], pin.commit, [])
    gi_repo = repo.open_gi()
    signed_by = check_signature(repo.path, gi_repo, remote, pin.commit,
                                settings, what)
    if signed_by != pin.signed_by:
        print(f"base {what}: signed by {signed_by}; the lockfile recorded "
              f"{pin.signed_by} (the remote's key changed)")
    # Objects are checked against their checksums as they arrive: the
    # commit is the one pinned, or the pull failed.
    gi_repo.set_ref_immediate(None, options["local_ref"], pin.commit, None)
    manifest.write(options["manifest"], tree_manifest(gi_repo, pin.commit))
    print(f"base {pin.describe()}: pulled, signature checked "
          f"({signed_by.split(':')[0]})")
    return pin.commit


def tree_manifest(gi_repo, commit):
    """The manifest (manifest.py) of a commit's tree, from its objects:
    owners and modes as committed, link targets, xattrs."""
    from gi.repository import Gio, OSTree
    from . import manifest
    entries = {}
    for path, is_dir, checksum in ostree.walk_tree(gi_repo, commit):
        if is_dir:
            _, meta = gi_repo.load_variant(OSTree.ObjectType.DIR_META, checksum)
            uid, gid, mode = (int.from_bytes(meta.get_child_value(i).get_uint32()
                                             .to_bytes(4, "little"), "big")
                              for i in range(3))
            xattrs = meta.get_child_value(3)
            target = None
        else:
            _, _, info, xattrs = gi_repo.load_file(checksum, None)
            uid = info.get_attribute_uint32("unix::uid")
            gid = info.get_attribute_uint32("unix::gid")
            mode = info.get_attribute_uint32("unix::mode")
            target = info.get_symlink_target() \
                if info.get_file_type() == Gio.FileType.SYMBOLIC_LINK else None
            if stat.S_ISLNK(mode) and target is None:
                target = info.get_symlink_target()
        pairs = []
        if xattrs is not None:
            for i in range(xattrs.n_children()):
                item = xattrs.get_child_value(i)
                name = bytes(item.get_child_value(0).get_bytestring()).decode()
                value = bytes(item.get_child_value(1).get_data_as_bytes()
                              .get_data())
                pairs.append((name, value))
        entries[path] = manifest.Entry(path, mode, uid, gid, target,
                                       tuple(pairs))
    return entries


def pull_options(pin, local_ref, manifest_path):
    """What configure writes for the build's pull (``pull_pinned``)."""
    return {"remote": pin.remote, "ref": pin.ref, "commit": pin.commit,
            "version": pin.version, "signed_by": pin.signed_by,
            "local_ref": local_ref, "manifest": manifest_path}
