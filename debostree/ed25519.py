"""ed25519 signatures in OSTree's format: key files, signing, checking.

``ostree sign`` needs an ostree built with libsodium, and Debian 12's is
not.  The format is simple and public: a commit's detached metadata holds
``ostree.sign.ed25519`` (type ``aay``), the Ed25519 signatures (RFC 8032,
what libsodium's ``crypto_sign_detached`` makes) of the commit object's
bytes; ``summary.sig`` holds the same key for the summary file's bytes.  Key
files are ostree's: base64 lines, a 64-byte secret key (seed and public key,
libsodium's layout) or a 32-byte public key.  So any ostree with ed25519
support verifies what this module signs, and this module verifies what
such an ostree signs.

This module owns the key files and the format; PyNaCl (libsodium, as
ostree's own ed25519 engine) does the cryptography, in memory: no secret
key is ever written to a temporary file.
"""

import base64
import os

from nacl import exceptions as nacl_exceptions
from nacl import signing as nacl_signing

from .errors import UserError

METADATA_KEY = "ostree.sign.ed25519"


class SecretKey:
    def __init__(self, seed, public):
        self.seed = seed
        self.public = public
        self._signing = nacl_signing.SigningKey(seed)

    @property
    def public_base64(self):
        return base64.b64encode(self.public).decode()


def _key_bytes(path):
    """The first key of an ostree key file (base64 lines), as bytes."""
    try:
        with open(path, encoding="ascii") as f:
            lines = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the ed25519 key: {error}", path=path)
    try:
        return base64.b64decode(lines[0], validate=True) if lines else b""
    except ValueError:
        return b""


def read_secret_key(path):
    """The first key of an ostree secret key file, checked for consistency."""
    raw = _key_bytes(path)
    if len(raw) != 64:
        raise UserError("not an ed25519 secret key (expected a base64 line of "
                        "64 bytes: seed and public key, as 'ostree sign' reads)",
                        path=path, hint="see README, Publishing, for how to make one")
    key = SecretKey(raw[:32], raw[32:])
    if public_of_seed(key.seed) != key.public:
        raise UserError("the ed25519 secret key's public half does not match "
                        "its seed", path=path)
    return key


def read_public_key(path):
    """The public key of an ostree key file: a public key (32 bytes) or a
    secret key (its public half)."""
    raw = _key_bytes(path)
    if len(raw) == 64:
        return read_secret_key(path).public
    if len(raw) != 32:
        raise UserError("not an ed25519 public key (expected a base64 line "
                        "of 32 bytes, as 'ostree sign --verify' reads)",
                        path=path)
    return raw


def public_of_seed(seed):
    return bytes(nacl_signing.SigningKey(seed).verify_key)


def sign(key, data):
    """The 64-byte Ed25519 signature of ``data``."""
    return key._signing.sign(data).signature


def verify(public, data, signature):
    """Whether ``signature`` is ``public``'s Ed25519 signature of ``data``."""
    try:
        nacl_signing.VerifyKey(public).verify(data, signature)
        return True
    except (nacl_exceptions.BadSignatureError, ValueError, TypeError):
        return False


def _with_signature(metadata, signature):
    """``metadata`` (an a{sv} variant or None) with ``signature`` appended to
    its ed25519 signatures, other keys (GPG signatures) kept."""
    from gi.repository import GLib
    entries = {}
    if metadata is not None:
        for i in range(metadata.n_children()):
            entry = metadata.get_child_value(i)
            entries[entry.get_child_value(0).get_string()] = \
                entry.get_child_value(1).get_variant()
    existing = [bytes(s) for s in entries[METADATA_KEY].unpack()] \
        if METADATA_KEY in entries else []
    entries[METADATA_KEY] = GLib.Variant("aay", existing + [signature])
    return GLib.Variant("a{sv}", entries)


def signatures(metadata):
    if metadata is None:
        return []
    value = metadata.lookup_value(METADATA_KEY, None)
    return [bytes(s) for s in value.unpack()] if value is not None else []


def _commit_bytes(gi_repo, commit):
    from gi.repository import OSTree
    _, variant = gi_repo.load_variant(OSTree.ObjectType.COMMIT, commit)
    return variant.get_data_as_bytes().get_data()


def sign_commit(gi_repo, commit, key):
    """Add ``key``'s signature to ``commit``'s detached metadata."""
    _, metadata = gi_repo.read_commit_detached_metadata(commit, None)
    signature = sign(key, _commit_bytes(gi_repo, commit))
    gi_repo.write_commit_detached_metadata(
        commit, _with_signature(metadata, signature), None)


def commit_verified(gi_repo, commit, public):
    """Whether one of ``commit``'s ed25519 signatures is ``public``'s."""
    _, metadata = gi_repo.read_commit_detached_metadata(commit, None)
    data = _commit_bytes(gi_repo, commit)
    return any(verify(public, data, s) for s in signatures(metadata))


def sign_summary(repo_path, key):
    """Write ``summary.sig`` for the repository's current summary."""
    with open(os.path.join(repo_path, "summary"), "rb") as f:
        data = f.read()
    variant = _with_signature(None, sign(key, data))
    # Written aside and renamed: a server never hands out a half-written one.
    path = os.path.join(repo_path, "summary.sig")
    with open(path + ".tmp", "wb") as f:
        f.write(variant.get_data_as_bytes().get_data())
    os.replace(path + ".tmp", path)
