"""The signers (signing.py), each on its own: what they sign, how a
signature is recognised, the options they give ostree.  ed25519 signatures
are checked with openssl, independently of the signing code (PyNaCl)."""

import base64
import os

import pytest

from debostree import ostree, signing
from test_publish import (BadSignature, OpensslVerifier, commit_bytes,
                          detached_signatures, ed25519_keys, sh,
                          variant_signatures)


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    sh(["ostree", "init", "--mode=archive", f"--repo={path}"])
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("signed\n")
    commit = sh(["ostree", "commit", f"--repo={path}", "--branch=test/b",
                 f"--tree=dir={tree}", "--no-bindings"]).stdout.strip()
    return str(path), commit


def test_no_key_signs_nothing():
    signer = signing.signer_for({})
    assert signer.name is None and signer.describe() == "unsigned"
    assert signer.summary_options() == []
    assert signer.pull_remote("/r", "x") == ["--set=gpg-verify=false"]


def test_gpg_options():
    signer = signing.signer_for({"gpg_key": "0123456789ABCDEF",
                                 "gpg_homedir": "/keys"})
    assert signer.name == "gpg"
    assert signer.summary_options() == ["--gpg-sign=0123456789ABCDEF",
                                        "--gpg-homedir=/keys"]
    assert signer.pull_remote("/r", "x") == ["--set=gpg-verify=true"]
    assert signing.signer_for({"gpg_key": "0123456789ABCDEF"}) \
        .summary_options() == ["--gpg-sign=0123456789ABCDEF"]


def test_ed25519_commit_and_summary(tmp_path, repo):
    path, commit = repo
    secret, public = ed25519_keys(str(tmp_path))
    signer = signing.signer_for({"ed25519_key": secret, "gpg_key": None})
    assert signer.name == "ed25519"
    gi_repo = ostree.Repo(path).open_gi()
    assert not signer.is_signed(gi_repo, commit)
    signer.sign_commit(path, gi_repo, commit)
    assert signer.is_signed(gi_repo, commit)
    [signature] = detached_signatures(path, commit)
    verifier = OpensslVerifier(public, str(tmp_path))
    verifier.verify(commit_bytes(path, commit), signature)
    with pytest.raises(BadSignature):
        verifier.verify(commit_bytes(path, commit) + b"x", signature)
    # Another key's signer does not count this signature as its own.
    (tmp_path / "other").mkdir()
    other_secret, _ = ed25519_keys(str(tmp_path / "other"))
    assert not signing.signer_for({"ed25519_key": other_secret}) \
        .is_signed(gi_repo, commit)

    sh(["ostree", "summary", f"--repo={path}", "--update"]
       + signer.summary_options())
    signer.sign_summary(path)
    with open(os.path.join(path, "summary"), "rb") as f:
        summary = f.read()
    with open(os.path.join(path, "summary.sig"), "rb") as f:
        [summary_signature] = variant_signatures(f.read())
    verifier.verify(summary, summary_signature)


def test_ed25519_key_that_is_not_one(tmp_path):
    from debostree.errors import UserError
    bad = tmp_path / "bad.key"
    bad.write_text("bm90IGEga2V5\n")
    with pytest.raises(UserError, match="not an ed25519 secret key"):
        signing.signer_for({"ed25519_key": str(bad)})
    # Seed and public half of different keys.
    secret, _ = ed25519_keys(str(tmp_path))
    (tmp_path / "o").mkdir()
    other, _ = ed25519_keys(str(tmp_path / "o"))
    mixed = base64.b64decode(open(secret).read())[:32] + \
        base64.b64decode(open(other).read())[32:]
    bad.write_text(base64.b64encode(mixed).decode() + "\n")
    with pytest.raises(UserError, match="does not match"):
        signing.signer_for({"ed25519_key": str(bad)})
