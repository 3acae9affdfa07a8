"""Signatures on what is published, behind one interface (``Signer``):
GPG (``ostree gpg-sign`` and ``ostree summary --gpg-sign``, checked by
ostree itself), ed25519 (ostree's format, made and checked by ed25519.py,
since Debian 12's ostree lacks ed25519) or none.

A signer signs commits and the summary, knows whether a commit already
carries its signature, sets up a remote that checks its signatures (for
``pull-published`` here and for the devices' remote in disk images), and
checks what a pull brought.  ``signer_for`` picks the one the publish
settings name (publish.read_settings).
"""

import os
import re
import shutil

from . import ed25519, proc
from .errors import UserError


class Signer:
    """No signing key: nothing is signed, nothing is checked."""

    name = None

    def describe(self):
        return "unsigned"

    def is_signed(self, gi_repo, commit):
        return True  # nothing to add

    def sign_commit(self, repo_path, gi_repo, commit):
        pass

    def summary_options(self):
        """Options of ``ostree summary --update``."""
        return []

    def sign_summary(self, repo_path):
        """After ``ostree summary --update``."""

    def sign_file(self, path):
        """A detached signature of the file ``path`` beside it (the
        checksum list of published system extensions); returns its path,
        or None."""
        return None

    def pull_remote(self, repo_path, remote):
        """Options of ``ostree remote add`` for pulling the published
        repository here (``after_remote_added`` does what needs the
        remote)."""
        return ["--set=gpg-verify=false"]

    def after_remote_added(self, repo_path, remote):
        pass

    def check_pulled(self, target, before):
        """After a pull: ``before`` is {branch: previous head}."""

    def device_remote(self, work, published_repo, commit, say):
        """What a disk image's remote needs to check this signer's
        signatures: ``{"remote_args": [...], "gpg_keyring": path or None}``
        (``say`` prints a warning)."""
        return {"remote_args": ["--set=gpg-verify=false"], "gpg_keyring": None}


class GpgSigner(Signer):
    name = "gpg"

    def __init__(self, key_id, homedir=None):
        self.key_id = key_id
        self.homedir = homedir

    def describe(self):
        return "signed (gpg)"

    def _homedir_option(self):
        return [f"--gpg-homedir={self.homedir}"] if self.homedir else []

    def is_signed(self, gi_repo, commit):
        metadata = _detached_metadata(gi_repo, commit)
        return metadata is not None and \
            metadata.lookup_value("ostree.gpgsigs", None) is not None

    def sign_commit(self, repo_path, gi_repo, commit):
        proc.run(["ostree", "gpg-sign", f"--repo={repo_path}"]
                 + self._homedir_option() + [commit, self.key_id])

    def summary_options(self):
        return [f"--gpg-sign={self.key_id}"] + self._homedir_option()

    def sign_file(self, path):
        # SHA256SUMS.gpg, as systemd-sysupdate reads it.
        proc.run(["gpg", "--batch", "--yes", "--detach-sign", "--local-user",
                  self.key_id, "--output", path + ".gpg"]
                 + (["--homedir", self.homedir] if self.homedir else [])
                 + [path], input=b"")
        return path + ".gpg"

    def export_keyring(self, path):
        """The public key, as a keyring file ostree imports."""
        home = ["--homedir", self.homedir] if self.homedir else []
        keyring = proc.run(["gpg", "--batch", "--export"] + home
                           + [self.key_id], capture=True, input=b"").stdout
        with open(path, "wb") as f:
            f.write(keyring)
        return path

    def pull_remote(self, repo_path, remote):
        return ["--set=gpg-verify=true"]

    def after_remote_added(self, repo_path, remote):
        exported = self.export_keyring(os.path.join(repo_path, "tmp",
                                                    "publish-key.gpg"))
        proc.run(["ostree", "remote", "gpg-import", f"--repo={repo_path}",
                  f"--keyring={exported}", remote])
        os.unlink(exported)
        shutil.rmtree(exported + ".d", ignore_errors=True)

    def device_remote(self, work, published_repo, commit, say):
        # Devices verify what they pull with the publishing key.
        return {"remote_args": ["--set=gpg-verify=true"],
                "gpg_keyring": self.export_keyring(
                    os.path.join(work, "publish-key.gpg"))}


class Ed25519Signer(Signer):
    name = "ed25519"

    def __init__(self, key_path):
        self.key_path = key_path
        self.key = ed25519.read_secret_key(key_path)

    def describe(self):
        return "signed (ed25519)"

    def is_signed(self, gi_repo, commit):
        # One by this key: after a key change the new key signs what the
        # old one did.
        return _detached_metadata(gi_repo, commit) is not None and \
            ed25519.commit_verified(gi_repo, commit, self.key.public)

    def sign_commit(self, repo_path, gi_repo, commit):
        ed25519.sign_commit(gi_repo, commit, self.key)

    def sign_summary(self, repo_path):
        ed25519.sign_summary(repo_path, self.key)

    def sign_file(self, path):
        import base64
        with open(path, "rb") as f:
            signature = ed25519.sign(self.key, f.read())
        with open(path + ".ed25519", "w", encoding="ascii") as f:
            f.write(base64.b64encode(signature).decode() + "\n")
        return path + ".ed25519"

    def check_pulled(self, target, before):
        """Refuse pulled heads without a valid signature by the key (this
        ostree may not check ed25519 itself), putting every such ref back
        where it was before the pull (or deleting it if it is new)."""
        gi_repo = target.open_gi()
        refused = []
        for branch, previous in sorted(before.items()):
            head = target.rev_parse(branch)
            if head is None or head == previous \
                    or ed25519.commit_verified(gi_repo, head, self.key.public):
                continue
            gi_repo.set_ref_immediate(None, branch, previous, None)
            refused.append(f"{branch} at {head}")
        if refused:
            raise UserError("published commits without a valid ed25519 "
                            "signature by the configured key, not used: "
                            + ", ".join(refused), path=self.key_path,
                            hint="check the repository's URL and the publish key")

    def device_remote(self, work, published_repo, commit, say):
        from .image import ostree_verifies_ed25519
        if not ostree_verifies_ed25519(published_repo, commit):
            say("the image's ostree is built without ed25519 support, so its "
                "remote cannot verify the publish key's signatures and does "
                "not; sign with 'gpg-key' to have devices verify what they pull")
            return super().device_remote(work, published_repo, commit, say)
        return {"remote_args": [
            "--set=gpg-verify=false", "--set=sign-verify=true",
            f"--set=verification-ed25519-key={self.key.public_base64}"],
            "gpg_keyring": None}


def signer_for(settings):
    """The signer the publish settings name (``ed25519_key`` or ``gpg_key``
    with ``gpg_homedir``), or the one that signs nothing."""
    if settings.get("ed25519_key"):
        return Ed25519Signer(settings["ed25519_key"])
    if settings.get("gpg_key"):
        return GpgSigner(settings["gpg_key"], settings.get("gpg_homedir"))
    return Signer()


def _detached_metadata(gi_repo, commit):
    from gi.repository import GLib
    try:
        _, metadata = gi_repo.read_commit_detached_metadata(commit, None)
    except GLib.Error:
        return None
    return metadata


GPG_KEY_RE = re.compile(r"^[0-9A-Fa-f]{8,40}$")


def read_signing_settings(src, data, config_path):
    """The signing key a configuration file (publish.yaml, cache.yaml)
    names: ``ed25519-key`` (an ostree secret key file) or ``gpg-key`` (a
    key id) with an optional ``gpg-homedir``; as ``{ed25519_key, gpg_key,
    gpg_homedir}`` (those set), checked."""
    from .yamlsrc import existing_path
    settings = {}
    if "ed25519-key" in data and "gpg-key" in data:
        raise src.error(("gpg-key",), "set one of 'ed25519-key' and 'gpg-key'")
    for key in ("ed25519-key", "gpg-homedir"):
        if key in data:
            settings[key.replace("-", "_")] = existing_path(src, data, key,
                                                            config_path)
    if "ed25519_key" in settings:
        try:
            ed25519.read_secret_key(settings["ed25519_key"])
        except UserError as error:
            raise src.error(("ed25519-key",), f"{settings['ed25519_key']}: "
                            f"{error.message}", hint=error.hint)
    if "gpg-key" in data:
        if not isinstance(data["gpg-key"], str) or \
                not GPG_KEY_RE.fullmatch(data["gpg-key"]):
            raise src.error(("gpg-key",), f"invalid GPG key id "
                            f"{data['gpg-key']!r}", hint="its fingerprint, "
                            "as 'gpg --list-secret-keys' shows")
        settings["gpg_key"] = data["gpg-key"]
    if "gpg_homedir" in settings and "gpg_key" not in settings:
        raise src.error(("gpg-homedir",), "'gpg-homedir' needs 'gpg-key'")
    return settings
