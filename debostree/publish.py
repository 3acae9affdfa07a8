"""Publishing: the recipes' branches in an archive-mode OSTree repository
(``BUILDDIR/publish``) that any static HTTP server can serve to devices.

``ninja publish`` copies each branch's new commits (with the ones between
it and what was published before) from the build repository, generates a
static delta from each branch's previous commit to its new one, signs the
new commits and the summary, and updates the summary.

Signing is configured in the publish configuration file (see
``read_settings``): an ed25519 secret key file (signatures in ``ostree
sign``'s format, made by ed25519.py since Debian 12's ostree lacks
ed25519) or a GPG key (``ostree gpg-sign``).  Without one the repository
is published unsigned, and publish says so.  signing.py signs.

``pull_published`` brings a published repository's branches back into
``BUILDDIR/publish`` on another machine, so that builds there continue its
history (see ``branch.parent_commit``).
"""

import os

from . import ostree, proc, signing, yamlsrc
from .errors import UserError
from .project import URL_RE, user_config_file
from .recipefields import check_keys

CONFIG_ENV_VAR = "DEBOSTREE_PUBLISH_CONFIG"
SETTINGS_KEYS = {"url", "ed25519-key", "gpg-key", "gpg-homedir"}


def repo_path(config):
    return config.publish_repo


def config_file():
    return user_config_file("publish.yaml", CONFIG_ENV_VAR)


def read_settings(path=None):
    """The publish settings: ``{url, ed25519_key, gpg_key, gpg_homedir}``.

    The file (``$DEBOSTREE_PUBLISH_CONFIG``, else
    ``~/.config/debostree/publish.yaml``) is a mapping with ``url`` (where
    devices find the published repository), and either ``ed25519-key`` (a
    file with the base64 secret key) or ``gpg-key`` (a key id) with an
    optional ``gpg-homedir``.  A missing file means: no URL, unsigned.
    """
    path = path or config_file()
    if not os.path.exists(path):
        return {}
    data, src = yamlsrc.load(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError("expected a mapping with 'url' and a signing key",
                        path=path, line=src.line(()))
    check_keys(src, (), data, SETTINGS_KEYS)
    settings = {}
    if "url" in data:
        if not isinstance(data["url"], str) or not URL_RE.match(data["url"]):
            raise src.error(("url",), f"invalid URL {data['url']!r}",
                            hint="an http://, https:// or file:// URL")
        settings["url"] = data["url"].rstrip("/")
    settings.update(signing.read_signing_settings(src, data, path))
    return settings


def _new_commits(local_gi, published_gi, head):
    """Commits from ``head`` back to (not including) the first one the
    published repository has, oldest first."""
    from gi.repository import GLib, OSTree
    missing = []
    commit = head
    while commit:
        try:
            published_gi.load_commit(commit)
            break
        except GLib.Error:
            pass
        try:
            _, variant, _ = local_gi.load_commit(commit)
        except GLib.Error:
            break  # the local history starts here (a shallow pull)
        missing.append(commit)
        commit = OSTree.commit_get_parent(variant)
    return list(reversed(missing))


def ref_path(config, branch):
    """The file of ``branch``'s ref in the published repository."""
    return os.path.join(repo_path(config), "refs", "heads", branch)


def publish(config, branches, settings):
    """Publish ``branches`` ({branch: commit}) and update the summary."""
    publish_branches(config, branches, settings)
    update_summary(config, settings)


def publish_branches(config, branches, settings):
    """Copy ``branches``' new commits ({branch: commit}) into
    BUILDDIR/publish, sign them, add a delta from each branch's parent."""
    from gi.repository import OSTree
    signer = signing.signer_for(settings)
    target = ostree.Repo(repo_path(config))
    if not target.exists():
        os.makedirs(target.path, exist_ok=True)
        proc.run(["ostree", "init", "--mode=archive", f"--repo={target.path}"])
    local_gi = ostree.Repo(config.repo).open_gi()
    published_gi = target.open_gi()
    for branch, head in sorted(branches.items()):
        previous = target.rev_parse(branch)
        new = _new_commits(local_gi, published_gi, head)
        for commit in new:
            # --untrusted: every object is checked against its checksum,
            # so a corrupt object in the build repository is never served.
            proc.run(["ostree", "pull-local", "--untrusted",
                      f"--repo={target.path}", config.repo, commit])
        published_gi = target.open_gi()
        for commit in [head] + new:
            if not signer.is_signed(published_gi, commit):
                signer.sign_commit(target.path, published_gi, commit)
        if previous != head:
            published_gi.set_ref_immediate(None, branch, head, None)
        _, variant, _ = published_gi.load_commit(head)
        parent = OSTree.commit_get_parent(variant)
        delta = ""
        if parent and published_gi.has_object(OSTree.ObjectType.COMMIT,
                                              parent, None)[1]:
            if not _has_delta(target, parent, head):
                proc.run(["ostree", "static-delta", "generate",
                          f"--repo={target.path}", f"--from={parent}",
                          f"--to={head}"])
            delta = f", delta from {parent[:12]}"
        state = "unchanged" if previous == head else \
            f"{len(new)} new commit{'s' if len(new) != 1 else ''}"
        print(f"publish: {branch} -> {head[:12]} ({state}{delta}), "
              + signer.describe())
        # Newer than the branch commit it came from, for ninja.
        os.utime(ref_path(config, branch))


SYSEXT_SUMS = "SHA256SUMS"


def publish_sysext(config, settings, recipe, arch, image):
    """Publish a system extension image beside the commits:
    ``BUILDDIR/publish/sysexts/RECIPE/ARCH/NAME_LEVEL.raw`` (named by the
    SYSEXT_LEVEL of the base it is for: a device takes the one of its own
    os-release), listed in that directory's SHA256SUMS, which is signed
    (SHA256SUMS.gpg or SHA256SUMS.ed25519) when a key is configured."""
    import hashlib
    import shutil
    from . import files, sysext
    name = os.path.basename(image)[:-len(".raw")]
    release = proc.run(["unsquashfs", "-cat", image,
                        f"{sysext.RELEASE_DIR.lstrip('/')}/extension-release."
                        f"{name}"], capture=True).stdout
    level = dict(line.partition("=")[::2] for line in release.splitlines()
                 ).get("SYSEXT_LEVEL", "any")
    directory = os.path.join(repo_path(config), "sysexts", recipe, arch)
    os.makedirs(directory, exist_ok=True)
    published = f"{name}_{level}.raw"
    shutil.copyfile(image, os.path.join(directory, published + ".tmp"))
    os.replace(os.path.join(directory, published + ".tmp"),
               os.path.join(directory, published))
    sums_path = os.path.join(directory, SYSEXT_SUMS)
    sums = {}
    if os.path.exists(sums_path):
        with open(sums_path, encoding="utf-8") as f:
            for line in f:
                digest, _, entry = line.rstrip("\n").partition("  ")
                if entry and os.path.exists(os.path.join(directory, entry)):
                    sums[entry] = digest
    with open(image, "rb") as f:
        sums[published] = hashlib.file_digest(f, "sha256").hexdigest() \
            if hasattr(hashlib, "file_digest") else \
            hashlib.sha256(f.read()).hexdigest()
    files.write_atomically(sums_path, "".join(
        f"{digest}  {entry}\n" for entry, digest in sorted(sums.items())))
    signer = signing.signer_for(settings)
    signature = signer.sign_file(sums_path)
    print(f"publish: sysext {recipe}/{arch}/{published}, "
          f"{len(sums)} in {SYSEXT_SUMS}, " + signer.describe()
          + (f" ({os.path.basename(signature)})" if signature else ""))
    return os.path.join(directory, published)


def update_summary(config, settings):
    """The summary (refs, deltas) of the published repository, signed."""
    signer = signing.signer_for(settings)
    target = ostree.Repo(repo_path(config))
    if not target.exists():
        raise UserError("nothing is published yet", path=target.path,
                        hint="run 'ninja publish'")
    proc.run(["ostree", "summary", f"--repo={target.path}", "--update"]
             + signer.summary_options())
    signer.sign_summary(target.path)
    if not signer.name:
        print("publish: WARNING: no signing key configured "
              f"({config_file()}: 'ed25519-key' or 'gpg-key'); the "
              "repository is unsigned, devices must not verify signatures")
    else:
        print(f"publish: commits and summary {signer.describe()}")
    print(f"publish: {target.path} is ready to be served over HTTP")


def _has_delta(target, parent, head):
    result = proc.run(["ostree", "static-delta", "show", f"--repo={target.path}",
                       f"{parent}-{head}"], capture=True, check=False)
    return result.returncode == 0


def pull_published(config, url, branches, settings):
    """Pull the published history at ``url`` into BUILDDIR/publish: each of
    ``branches``' head commit and tree (older commits are not needed to
    continue it), signatures checked by the configured key's signer."""
    target = ostree.Repo(repo_path(config))
    if not target.exists():
        os.makedirs(target.path, exist_ok=True)
        proc.run(["ostree", "init", "--mode=archive", f"--repo={target.path}"])
    signer = signing.signer_for(settings)
    remote = "debostree-published"
    proc.run(["ostree", "remote", "add", "--force", f"--repo={target.path}"]
             + signer.pull_remote(target.path, remote)
             + ["--set=gpg-verify-summary=false", remote, url])
    signer.after_remote_added(target.path, remote)
    result = proc.run(["ostree", "remote", "refs", f"--repo={target.path}",
                       remote], capture=True)
    available = {line.split(":", 1)[1] for line in result.stdout.split()}
    wanted = sorted(b for b in branches if b in available)
    for branch in sorted(set(branches) - available):
        print(f"pull-published: {branch} is not published yet; its history "
              "starts with the next build")
    before = {branch: target.rev_parse(branch) for branch in wanted}
    if wanted:
        proc.run(["ostree", "pull", f"--repo={target.path}", "--mirror",
                  remote] + wanted)
    proc.run(["ostree", "remote", "delete", f"--repo={target.path}", remote])
    signer.check_pulled(target, before)
    for branch in wanted:
        print(f"pull-published: {branch} at {target.rev_parse(branch)}")
    return wanted
