"""Archive access: Release files, their signatures, and Packages indices.

For each suite of an archive this module fetches ``InRelease`` (or ``Release``
plus ``Release.gpg``), verifies it with ``gpgv`` against the archive keyring
and keeps only the signed text, refuses an expired ``Valid-Until``, then
downloads the Packages indices the Release lists, checks them against the
Release's SHA256 and size, and caches them (decompressed) under the cache
directory so a later run downloads only what changed.  Nothing here trusts a
file that has not been checked.
"""

import bz2
import gzip
import hashlib
import http.client
import lzma
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from debian import deb822

from . import proc
from .errors import UserError

USER_AGENT = "debostree"
TIMEOUT = 30  # seconds a connect or a read may block
DECOMPRESSORS = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open, "": open}


@dataclass(frozen=True)
class Index:
    """One verified, decompressed Packages index in the cache."""
    archive: str
    suite: str
    component: str
    arch: str
    path: str          # decompressed Packages file
    release_path: str  # verified Release text of its suite


def log(message):
    print(message, file=sys.stderr, flush=True)


class FetchError(UserError):
    """A URL could not be opened.  ``status``: the HTTP status, if any;
    ``missing``: the server (or the file system) says there is no such
    file, which no retry changes."""

    def __init__(self, message, *, status=None, missing=False):
        self.status = status
        self.missing = missing
        super().__init__(message)

    @property
    def permanent(self):
        return self.missing or (self.status is not None
                                and 400 <= self.status < 500)


def open_url(url):
    """Open ``url`` for reading; raise FetchError for HTTP and network errors."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as error:
        raise FetchError(f"{url}: HTTP {error.code} {error.reason}",
                         status=error.code, missing=error.code in (404, 410))
    except urllib.error.URLError as error:
        reason = getattr(error.reason, "strerror", None) or error.reason
        raise FetchError(f"{url}: {reason}", missing=isinstance(
            error.reason, FileNotFoundError))
    except OSError as error:
        raise FetchError(f"{url}: {error}",
                         missing=isinstance(error, FileNotFoundError))


# A transfer that delivers less than STALL_BYTES in STALL_SECONDS is given
# up (a mirror trickling a byte now and then would otherwise hold a build
# forever); so is a body longer than expected (plus a margin: never written
# to disk in full).  Network failures are retried a few times, with backoff.
STALL_SECONDS = 30
STALL_BYTES = 1024
SIZE_MARGIN = 4096
MAX_RELEASE_BYTES = 64 << 20
RETRIES = 3
BACKOFF_SECONDS = 1.0


class _Transient(UserError):
    """A network failure worth another try."""


def _transfer(url, write, *, limit, what):
    """Stream ``url`` into ``write``; returns the byte count.  Raises
    _Transient for failures another try may fix, UserError otherwise."""
    size = 0
    try:
        response = open_url(url)
    except FetchError as error:
        if error.permanent or url.startswith("file:"):
            raise
        raise _Transient(error.message)
    with response:
        window_start, window_bytes = time.monotonic(), 0
        try:
            while True:
                chunk = response.read1(1 << 16)
                if not chunk:
                    break
                size += len(chunk)
                if limit is not None and size > limit:
                    raise UserError(f"{what or url}: {url} sent more than the "
                                    f"{limit} bytes expected; the download "
                                    "was stopped and not kept")
                write(chunk)
                window_bytes += len(chunk)
                now = time.monotonic()
                if now - window_start >= STALL_SECONDS:
                    if window_bytes < STALL_BYTES:
                        raise _Transient(f"{what or url}: {url} stalled "
                                         f"({window_bytes} bytes in "
                                         f"{now - window_start:.0f} s)")
                    window_start, window_bytes = now, 0
        except (OSError, http.client.HTTPException) as error:
            raise _Transient(f"{what or url}: download from {url} broke off "
                             f"after {size} bytes: {error!r}")
    return size


def _with_retries(attempt, what):
    for number in range(1, RETRIES + 1):
        try:
            return attempt()
        except _Transient as error:
            if number == RETRIES:
                raise UserError(f"{error.message} (tried {RETRIES} times)",
                                hint="the partial file was not kept; check "
                                "the mirror, then retry")
            log(f"  {error.message}; trying again")
            time.sleep(BACKOFF_SECONDS * 2 ** (number - 1))


def download(url, dest, *, expect_size=None, expect_sha256=None, what=None):
    """Download ``url`` to ``dest`` atomically, checking size and SHA256.

    The data goes to a temporary file beside ``dest`` and is renamed into
    place only once it is complete and verified, so a partial or bad download
    never looks complete.  Returns the SHA256 hex digest.
    """
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    limit = expect_size + SIZE_MARGIN if expect_size is not None else None

    def attempt():
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest) or ".",
                                   prefix=".part-" + os.path.basename(dest)[:40])
        try:
            with os.fdopen(fd, "wb") as out:
                def write(chunk):
                    out.write(chunk)
                    digest.update(chunk)
                size = _transfer(url, write, limit=limit, what=what)
            actual = digest.hexdigest()
            if (expect_size is not None and size != expect_size) or \
                    (expect_sha256 is not None and actual != expect_sha256):
                raise UserError(
                    f"{what or url}: downloaded file does not match: expected "
                    f"SHA256 {expect_sha256} ({expect_size} bytes), got {actual} "
                    f"({size} bytes) from {url}",
                    hint="the file was not kept; if the mirror is being "
                    "updated, retry later")
            # Readable by others: a pool or cache may be shared by several
            # users' builds (mkstemp made it 0600).
            os.chmod(tmp, 0o644)
            os.rename(tmp, dest)
            tmp = None
            return actual
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    return _with_retries(attempt, what)


def fetch_bytes(url, limit=MAX_RELEASE_BYTES):
    """The body of ``url`` (a Release file: small), at most ``limit`` bytes."""
    def attempt():
        parts = []
        _transfer(url, parts.append, limit=limit, what=None)
        return b"".join(parts)
    return _with_retries(attempt, url)


def verify_signature(signed_path, keyring, output_path, detached_sig=None):
    """Check an OpenPGP signature with gpgv; write the signed data to output.

    Raises UserError for an unsigned, badly signed or wrongly keyed file.
    """
    if not os.path.isfile(keyring):
        raise UserError(f"keyring not found: {keyring}",
                        hint="install debian-archive-keyring or set the "
                        "archive's 'keyring' in the recipe")
    argv = ["gpgv", "--status-fd", "1", "--keyring", keyring]
    if detached_sig:
        argv += [detached_sig, signed_path]
    else:
        argv += ["--output", output_path, signed_path]
    result = proc.run(argv, capture=True, check=False,
                      env={**os.environ, "LC_ALL": "C"})
    status = result.stdout.splitlines()
    tokens = {line.split()[1] for line in status
              if line.startswith("[GNUPG:] ") and len(line.split()) > 1}
    if result.returncode != 0 or "VALIDSIG" not in tokens or \
            tokens & {"BADSIG", "EXPKEYSIG", "REVKEYSIG", "ERRSIG", "NODATA"}:
        why = "no valid signature"
        if "BADSIG" in tokens:
            why = "bad signature"
        elif "NODATA" in tokens or "NO_PUBKEY" not in tokens and \
                "ERRSIG" not in tokens and "VALIDSIG" not in tokens:
            why = "not signed"
        elif "NO_PUBKEY" in tokens or "ERRSIG" in tokens:
            why = "signed by a key that is not in the keyring"
        elif "EXPKEYSIG" in tokens:
            why = "signed by an expired key"
        elif "REVKEYSIG" in tokens:
            why = "signed by a revoked key"
        detail = (result.stderr or "").strip().splitlines()
        raise UserError(f"{why} (keyring {keyring})"
                        + (f": {detail[-1]}" if detail else ""))
    if detached_sig:
        shutil.copyfile(signed_path, output_path)


def parse_release(path):
    with open(path, encoding="utf-8") as f:
        return deb822.Release(f)


def check_suite(release, suite, what):
    """Refuse a signed Release of another suite (as apt does): a mirror
    serving oldstable's files as stable would downgrade every package."""
    names = [release.get(f, "").strip() for f in ("Suite", "Codename")]
    if not any(names) or suite in names:
        return
    raise UserError(f"{what}: the signed Release is for suite "
                    f"'{names[0] or '-'}' (codename '{names[1] or '-'}'), not "
                    f"'{suite}'", hint="the mirror serves another suite's "
                    "Release (stale, misconfigured or replayed), or the "
                    "recipe names the wrong suite")


def check_valid_until(release, what, now=None):
    now = now or datetime.now(timezone.utc)
    valid_until = release.get("Valid-Until")
    if not valid_until:
        return
    try:
        limit = parsedate_to_datetime(valid_until)
    except (TypeError, ValueError):
        raise UserError(f"{what}: unreadable Valid-Until '{valid_until}'")
    if limit.tzinfo is None:
        limit = limit.replace(tzinfo=timezone.utc)
    if limit < now:
        raise UserError(f"{what}: the Release file expired on {valid_until}",
                        hint="the archive or mirror is stale or replayed; use "
                        "an up-to-date mirror (for a snapshot mirror, set "
                        "'check-valid-until: false' on the recipe's archive)")


class ArchiveCache:
    """Verified Release files and Packages indices of archives, cached on disk."""

    def __init__(self, cache_dir, mirrors, now=None):
        self.cache_dir = cache_dir
        self.mirrors = mirrors
        self.now = now
        self._releases = {}

    def _suite_dir(self, archive, suite):
        return os.path.join(self.cache_dir, archive.name,
                            "dists", suite.replace("/", "_"))

    def release(self, archive, suite):
        """Fetch and verify the Release of ``suite``; return (path, Release)."""
        key = (archive.name, suite)
        if key in self._releases:
            return self._releases[key]
        base = self.mirrors.url(archive)
        keyring = self.mirrors.keyring(archive)
        suite_dir = self._suite_dir(archive, suite)
        os.makedirs(suite_dir, exist_ok=True)
        what = f"archive '{archive.name}' suite '{suite}'"
        verified = os.path.join(suite_dir, "Release")
        with tempfile.TemporaryDirectory(dir=suite_dir) as tmp:
            inrelease = os.path.join(tmp, "InRelease")
            try:
                with open(inrelease, "wb") as f:
                    f.write(fetch_bytes(f"{base}/dists/{suite}/InRelease"))
                detached = None
            except FetchError as error:
                if not error.missing:
                    raise
                # No InRelease: try the older Release + Release.gpg pair.
                try:
                    with open(inrelease, "wb") as f:
                        f.write(fetch_bytes(f"{base}/dists/{suite}/Release"))
                except UserError:
                    raise UserError(
                        f"{what}: no such suite at {base} (no InRelease or "
                        "Release file)", hint="check the suite name in the "
                        "recipe and the mirror URL")
                detached = os.path.join(tmp, "Release.gpg")
                try:
                    with open(detached, "wb") as f:
                        f.write(fetch_bytes(f"{base}/dists/{suite}/Release.gpg"))
                except UserError:
                    raise UserError(f"{what}: the Release file is not signed "
                                    "(no InRelease, no Release.gpg)",
                                    hint="an unsigned archive cannot be trusted")
            try:
                verify_signature(inrelease, keyring, os.path.join(tmp, "Release"),
                                 detached)
            except UserError as error:
                raise UserError(f"{what}: Release file signature check failed: "
                                f"{error.message}", hint=error.hint)
            os.replace(os.path.join(tmp, "Release"), verified)
        release = parse_release(verified)
        check_suite(release, suite, what)
        if archive.check_valid_until:
            check_valid_until(release, what, self.now)
        self._releases[key] = (verified, release)
        return self._releases[key]

    def release_dates(self):
        """``{(archive name, suite): Date}`` of the Release files fetched."""
        return {key: release.get("Date", "").strip()
                for key, (_, release) in self._releases.items()}

    def indices(self, archive, arch):
        """All Packages indices of ``archive`` for ``arch``, verified and cached."""
        result = []
        for suite in archive.suites:
            release_path, release = self.release(archive, suite)
            files = {entry["name"]: entry for entry in release.get("SHA256", [])}
            if not files:
                raise UserError(f"archive '{archive.name}' suite '{suite}': the "
                                "Release file lists no SHA256 checksums")
            archs = [arch]
            release_archs = release.get("Architectures", "").split()
            # Like apt: a separate binary-all index is used only when the
            # Release lists the "all" architecture and does not say that
            # the per-architecture indices already carry those packages.
            no_all = release.get("No-Support-for-Architecture-all", "")
            if "all" in release_archs and "Packages" not in no_all.split():
                archs.append("all")
            if release_archs and arch not in release_archs:
                raise UserError(
                    f"archive '{archive.name}' suite '{suite}' has no "
                    f"architecture '{arch}'",
                    hint="it has " + ", ".join(release_archs))
            release_components = [c.rsplit("/", 1)[-1] for c in
                                  release.get("Components", "").split()]
            for component in archive.components:
                if release_components and component not in release_components \
                        and component not in release.get("Components", "").split():
                    raise UserError(
                        f"archive '{archive.name}' suite '{suite}' has no "
                        f"component '{component}'",
                        hint="it has " + ", ".join(release_components))
                for index_arch in archs:
                    path = self._fetch_index(archive, suite, component,
                                             index_arch, files, release)
                    result.append(Index(archive.name, suite, component,
                                        index_arch, path, release_path))
        return result

    def _fetch_index(self, archive, suite, component, arch, files, release):
        stem = f"{component}/binary-{arch}/Packages"
        what = f"archive '{archive.name}' suite '{suite}' {stem}"
        listed = [(ext, files[stem + ext]) for ext in (".xz", ".gz", ".bz2", "")
                  if stem + ext in files]
        if not listed:
            raise UserError(f"{what}: not listed in the Release file",
                            hint="check the components and architecture")
        out_dir = os.path.join(self._suite_dir(archive, suite), component,
                               f"binary-{arch}")
        out = os.path.join(out_dir, "Packages")
        stamp = out + ".source-sha256"
        wanted = {entry["sha256"] for _, entry in listed}
        if os.path.exists(out) and os.path.exists(stamp):
            with open(stamp) as f:
                if f.read().strip() in wanted:
                    return out
        base = self.mirrors.url(archive)
        by_hash = release.get("Acquire-By-Hash", "").lower() == "yes"
        os.makedirs(out_dir, exist_ok=True)
        # Try every compression the Release lists, by-hash first: a mirror
        # caught mid-sync may serve one variant that no longer matches while
        # another still does.  A file that matches no Release entry is never
        # accepted.
        errors = []
        for ext, entry in listed:
            sha256, size = entry["sha256"], int(entry["size"])
            urls = [f"{base}/dists/{suite}/{stem}{ext}"]
            if by_hash:
                urls.insert(0, f"{base}/dists/{suite}/{component}/binary-{arch}"
                            f"/by-hash/SHA256/{sha256}")
            compressed = out + ".download" + ext
            for url in urls:
                log(f"  get {archive.name} {suite} {stem}{ext} "
                    f"({size / 1e6:.1f} MB)")
                try:
                    download(url, compressed, expect_size=size,
                             expect_sha256=sha256, what=what)
                except UserError as error:
                    errors.append(error)
                    continue
                try:
                    tmp = out + ".tmp"
                    with DECOMPRESSORS[ext](compressed, "rb") as src, \
                            open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    os.replace(tmp, out)
                    with open(stamp, "w") as f:
                        f.write(sha256 + "\n")
                    return out
                except (lzma.LZMAError, OSError, EOFError) as error:
                    errors.append(UserError(f"{what}: cannot decompress: {error}"))
                finally:
                    if os.path.exists(compressed):
                        os.unlink(compressed)
        mismatch = [e for e in errors if "does not match" in e.message]
        raise (mismatch or errors)[0]
