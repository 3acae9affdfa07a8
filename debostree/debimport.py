"""Packages as commits: one verified .deb -> two OSTree commits and a summary.

Each .deb is imported once, under refs named by its SHA256:

``pkg/SHA256/data``  its files, as ``dpkg --unpack`` would leave them on a
                     merged-/usr system: ``/bin``, ``/sbin``, ``/lib*`` moved
                     under ``/usr``, and conffiles as ``PATH.dpkg-new``; a
                     package that ships those top-level names as symbolic
                     links (``/bin -> usr/bin``: base-files since Debian 13)
                     keeps them as the links they are;
``pkg/SHA256/info``  its ``/var/lib/dpkg/info/PKG.*`` files: maintainer
                     scripts, md5sums, conffiles, triggers and the ``.list``
                     of its paths (as the package names them).

The summary (``BUILDDIR/pkgs/SHA256.json``) carries the control stanza, the
conffiles and a manifest of the data tree's owners and modes, so that
composing a tree never reads a .deb again.  Owners and modes come from the
tar headers; no root is needed and no emulated code runs.
"""

import functools
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile

from . import manifest, ostree
from .lockfile import ARCH_RE, PACKAGE_RE, VERSION_RE
from .errors import UserError

MERGED_USR_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "libo32")
CONTROL_MEMBER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# Import commits are a function of the .deb alone: the same package
# imported twice (on two machines, or by two builds at once) is the same
# commit.
IMPORT_TIMESTAMP = 0
# Control members dpkg keeps in its info directory (everything but control).
SKIP_CONTROL_MEMBERS = ("control",)


def dpkg_name(control):
    """The name dpkg uses for info files: NAME, or NAME:ARCH for M-A: same."""
    name = control["Package"]
    if control.get("Multi-Arch") == "same":
        return f"{name}:{control['Architecture']}"
    return name


def merged_path(path, moved=MERGED_USR_DIRS):
    """``bin/ls`` -> ``usr/bin/ls`` (paths without the leading ``./``), for
    the top-level directories in ``moved``."""
    head, sep, rest = path.partition("/")
    if head in moved:
        return "usr/" + head + sep + rest
    return path


def _member_path(member):
    """A tar member's path without ``./`` and trailing slashes."""
    name = member.name[2:] if member.name.startswith("./") else member.name
    return name.rstrip("/")


def merged_usr_links(members):
    """The top-level names of MERGED_USR_DIRS a package ships as symbolic
    links (trixie's base-files: ``bin``, ``lib``, ``lib64``, ``sbin`` on
    amd64).  dpkg installs them as they are, so they stay where they are;
    only the other names move under ``/usr``."""
    return sorted(path for path in (_member_path(m) for m in members
                                    if m.issym())
                  if path in MERGED_USR_DIRS)


def pathname_filter(moved):
    """ostree's --tar-pathname-filter moving ``moved`` under ``usr/``."""
    if not moved:
        return []
    return ["--tar-pathname-filter=^(" + "|".join(moved) + r")(/|$),usr/\1\2"]


def _tar_stream(deb, flag):
    # Not proc.run: the tar is streamed into its reader, never held whole.
    return subprocess.Popen(["dpkg-deb", flag, deb], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _finish(process, deb):
    process.stdout.close()
    err = process.stderr.read().decode(errors="replace")
    if process.wait() != 0:
        raise UserError(f"dpkg-deb cannot read {deb}: {err.strip()}")


def data_member(deb, path):
    """The content of the file ``path`` (``./usr/...``) in ``deb``'s data,
    or None when it has no such regular file; the data is read only as far
    as that member."""
    import tarfile
    process = _tar_stream(deb, "--fsys-tarfile")
    try:
        with tarfile.open(fileobj=process.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name if member.name.startswith("./") \
                    else "./" + member.name
                if name == path:
                    # The rest of the data is not needed.
                    content = tar.extractfile(member).read() \
                        if member.isfile() else None
                    process.kill()
                    process.wait()
                    return content
    except tarfile.TarError as error:
        process.kill()
        process.wait()
        raise UserError(f"{deb}: unreadable data ({error})")
    _finish(process, deb)
    return None


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_control(deb, control, expect=None):
    """Refuse a control stanza whose names could leave the info directory
    or that is not the package the lockfile pins."""
    what = f"{deb}: control file"
    for field, pattern in (("Package", PACKAGE_RE), ("Version", VERSION_RE),
                           ("Architecture", ARCH_RE)):
        value = control.get(field)
        if value is None or not pattern.fullmatch(value):
            raise UserError(f"{what}: invalid {field} {value!r}; refusing to "
                            "import it", hint="the mirror or pool serves a "
                            "broken or hostile package")
    if expect:
        got = (control["Package"], control["Version"], control["Architecture"])
        if got != tuple(expect):
            raise UserError(f"{what} says {' '.join(got)}, but the lockfile "
                            f"pins {' '.join(expect)} to its SHA256; refusing "
                            "to import it", hint="the archive's index and its "
                            "package disagree: report it to the archive")


def check_member_path(deb, member):
    """Refuse a data member whose path or hard-link target could leave the
    tree, or that dpkg's file lists could not hold."""
    for label, value in (("path", member.name),
                         ("hard link target", member.linkname if member.islnk()
                          else "")):
        if not value:
            continue
        parts = value.split("/")
        if value.startswith("/") or ".." in parts or any(
                c in value for c in "\n\r\0"):
            raise UserError(f"{deb}: member {label} {value!r} is not a "
                            "plain path inside the package; refusing to "
                            "import it", hint="the mirror or pool serves a "
                            "broken or hostile package")


def read_control(deb, info_dir, expect=None):
    """Extract the control members; write info files; return (control, conffiles)."""
    # Imported here: stages load this module for load_summary alone.
    import tarfile
    from debian import deb822
    process = _tar_stream(deb, "--ctrl-tarfile")
    members = {}
    with tarfile.open(fileobj=process.stdout, mode="r|") as tar:
        for member in tar:
            name = member.name[2:] if member.name.startswith("./") else member.name
            if not member.isfile() or "/" in name:
                continue
            if not CONTROL_MEMBER_RE.fullmatch(name):
                raise UserError(f"{deb}: invalid control member name {name!r}; "
                                "refusing to import it")
            members[name] = (tar.extractfile(member).read(), member.mode)
    _finish(process, deb)
    if "control" not in members:
        raise UserError(f"{deb}: no control file")
    control = deb822.Deb822(members["control"][0].decode(errors="replace"))
    check_control(deb, control, expect)
    prefix = os.path.join(info_dir, dpkg_name(control))
    for name, (data, mode) in members.items():
        if name in SKIP_CONTROL_MEMBERS:
            continue
        with open(f"{prefix}.{name}", "wb") as f:
            f.write(data)
        os.chmod(f"{prefix}.{name}", 0o755 if mode & 0o111 else 0o644)
    conffiles = []
    flags = {}
    if "conffiles" in members:
        for line in members["conffiles"][0].decode().splitlines():
            # "remove-on-upgrade /PATH" (dpkg >= 1.20.1): flags come first,
            # and dpkg's status keeps them after the path and hash.
            words = line.split()
            if not words or not words[-1].startswith("/"):
                continue
            conffiles.append(words[-1])
            if len(words) > 1:
                flags[words[-1]] = " ".join(words[:-1])
    triggers = members.get("triggers", (b"", 0))[0].decode()
    return control, conffiles, triggers, flags, members["control"][0].decode()


IMPORT_FORMAT = "debostree-import/1"


@functools.lru_cache(maxsize=None)
def _importer_digest():
    """SHA256 of the code that decides what an import makes: this module
    and the manifest format it writes."""
    digest = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("debimport.py", "manifest.py"):
        with open(os.path.join(here, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()


def import_key(sha256):
    """The key of a package's import (cachekey.py): the .deb's SHA256, the
    importer's code and ``IMPORT_FORMAT``.  An import made by other code has
    another key, so a store does not hand it out (importstore.py)."""
    from .cachekey import digest_json
    return digest_json({"format": IMPORT_FORMAT, "deb": sha256,
                        "importer": _importer_digest()})


def import_deb(repo_path, deb, sha256, summary_path, tmp_root, expect=None):
    """Import ``deb`` into the repo, after checking it has ``sha256`` and
    that it is the package ``expect`` = (name, version, architecture) the
    lockfile pins.  A pool file that does not match is removed (ninja then
    fetches it again), since the pool may be shared or tampered with."""
    import tarfile
    actual = file_sha256(deb)
    if actual != sha256:
        os.unlink(deb)
        raise UserError(f"pool file {deb} does not match its SHA256 (expected "
                        f"{sha256}, got {actual}); it was removed",
                        hint="run ninja again to fetch it")
    repo = ostree.Repo(repo_path)
    os.makedirs(tmp_root, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(summary_path)), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="import-", dir=tmp_root)
    try:
        info_dir = os.path.join(tmp, "info", "var", "lib", "dpkg", "info")
        os.makedirs(info_dir)
        control, conffiles, triggers, conffile_flags, control_text = \
            read_control(deb, info_dir, expect)
        conffile_set = set(conffiles)
        conffile_md5 = {}
        listing = ["/."]
        entries = {}
        data_tar = os.path.join(tmp, "data.tar")
        with open(data_tar, "wb") as out:
            # Not proc.run: standard output goes to the file, apart from
            # the error messages.
            result = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb],
                                    stdout=out, stderr=subprocess.PIPE)
        if result.returncode != 0:
            raise UserError(f"dpkg-deb cannot read {deb}: "
                            f"{result.stderr.decode(errors='replace').strip()}")
        # ostree reads the tar itself (moving /bin, /sbin, /lib* under /usr
        # with --tar-pathname-filter); here only the headers are read, for
        # dpkg's file list and the manifest, and the conffiles, which also
        # go in a second small tar as PATH.dpkg-new.
        conffiles_tar = os.path.join(tmp, "conffiles.tar")
        with tarfile.open(data_tar, "r:") as src, \
                tarfile.open(conffiles_tar, "w", format=tarfile.PAX_FORMAT) as extra:
            members = src.getmembers()
            for member in members:
                check_member_path(deb, member)
            links = merged_usr_links(members)
            moved = tuple(d for d in MERGED_USR_DIRS if d not in links)
            for member in members:
                original = _member_path(member)
                if original in ("", "."):
                    continue  # the root directory of the package
                # dpkg's list names the paths as the package does.
                listing.append("/" + original)
                new_name = merged_path(original, moved)
                entries["/" + new_name] = manifest.Entry(
                    "/" + new_name, member.mode | _type_bits(member), member.uid,
                    member.gid, member.linkname if member.issym() else None)
                if "/" + original in conffile_set and member.isfile():
                    data = src.extractfile(member).read()
                    conffile_md5[original] = hashlib.md5(data).hexdigest()
                    # As after mmdebstrap's extract step and dpkg's unpack:
                    # the file in place, and dpkg's copy beside it, which
                    # "dpkg --configure" then settles.
                    member.name = "./" + original + ".dpkg-new"
                    extra.addfile(member, fileobj=_Bytes(data))
                    entries["/" + new_name + ".dpkg-new"] = manifest.Entry(
                        "/" + new_name + ".dpkg-new",
                        member.mode | _type_bits(member), member.uid, member.gid)
        dname = dpkg_name(control)
        with open(os.path.join(info_dir, f"{dname}.list"), "w") as f:
            f.write("\n".join(listing) + "\n")
        data_commit = repo.commit_trees(
            ostree.package_ref(sha256, "data"),
            [f"tar={data_tar}", f"tar={conffiles_tar}"],
            f"{control['Package']} {control['Version']} data",
            extra=["--tar-autocreate-parents"] + pathname_filter(moved),
            timestamp=IMPORT_TIMESTAMP)
        info_commit = repo.commit_trees(
            ostree.package_ref(sha256, "info"),
            [f"dir={os.path.join(tmp, 'info')}"],
            f"{control['Package']} {control['Version']} dpkg info",
            extra=["--owner-uid=0", "--owner-gid=0"],
            timestamp=IMPORT_TIMESTAMP)
        info_entries = {}
        for dirpath, dirnames, filenames in os.walk(os.path.join(tmp, "info")):
            rel = "/" + os.path.relpath(dirpath, os.path.join(tmp, "info"))
            rel = "/" if rel == "/." else rel
            info_entries[rel] = manifest.Entry(rel, stat.S_IFDIR | 0o755)
            for name in filenames:
                st = os.lstat(os.path.join(dirpath, name))
                path = rel.rstrip("/") + "/" + name
                info_entries[path] = manifest.Entry(path, stat.S_IFREG |
                                                    (st.st_mode & 0o7777))
        summary = {
            "sha256": sha256,
            "key": import_key(sha256),
            "package": control["Package"],
            "version": control["Version"],
            "architecture": control["Architecture"],
            "dpkg_name": dname,
            "data_commit": data_commit,
            "info_commit": info_commit,
            "control": str(control),
            # As the package has it: dpkg copies values verbatim (trailing
            # spaces included) into its status.
            "control_text": control_text,
            "conffile_flags": conffile_flags,
            "conffiles": [[path, conffile_md5.get(path.lstrip("/"))]
                          for path in conffiles],
            "triggers": triggers,
            "merged_usr_links": links,
            "manifest": [e.to_json() for e in entries.values()],
            "info_manifest": [e.to_json() for e in info_entries.values()],
        }
        # A name of its own: another build may be importing the same
        # package into a shared store at the same moment.
        fd, tmp_summary = tempfile.mkstemp(
            prefix=os.path.basename(summary_path) + ".",
            dir=os.path.dirname(os.path.abspath(summary_path)))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(summary, f)
        os.chmod(tmp_summary, 0o644)
        os.replace(tmp_summary, summary_path)
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Bytes:
    """A minimal file object over bytes, for TarFile.addfile."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def read(self, size=-1):
        if size < 0:
            size = len(self.data) - self.pos
        chunk = self.data[self.pos:self.pos + size]
        self.pos += len(chunk)
        return chunk


def _type_bits(member):
    if member.isdir():
        return stat.S_IFDIR
    if member.issym():
        return stat.S_IFLNK
    if member.ischr():
        return stat.S_IFCHR
    if member.isblk():
        return stat.S_IFBLK
    if member.isfifo():
        return stat.S_IFIFO
    return stat.S_IFREG


def load_summary(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
