"""System extensions: a recipe's ``sysexts`` as systemd-sysext images.

A system extension's stages run on the recipe's tree (its last stage
before 'deployable': the same /usr, with /etc and the dpkg database where
packages expect them).  What they add under /usr and /opt is the extension;
this module owns telling that apart and making the image:

- the changes between the base stage's tree and the extension's last
  stage's, read from the repository (``ostree.walk_tree``): additions under
  /usr and /opt are kept; the package manager's bookkeeping (the dpkg
  database, logs and caches, ``BOOKKEEPING``) is dropped, the extension
  carrying its package list instead; anything else (a write to /etc or
  /var, a changed or removed file of the base) is refused with one line
  naming the paths;
- ``/usr/lib/extension-release.d/extension-release.NAME`` with the base's
  ``ID``, ``VERSION_ID`` and ``SYSEXT_LEVEL`` (the 'deployable' stage's
  os-release), and ``ARCHITECTURE``: systemd-sysext refuses the image on any
  other base;
- a squashfs image (``mksquashfs``, owners and modes from the stage's
  manifest, times from SOURCE_DATE_EPOCH: the same inputs give the same
  bytes) and its SHA256.
"""

import hashlib
import os
import shutil
import stat
import tempfile

from . import manifest, ostree, proc
from .errors import UserError

# What dpkg and apt write besides a package's files: not part of an
# extension (which lists its packages in PACKAGE_LIST instead).
BOOKKEEPING = ("/var/lib/dpkg/", "/usr/lib/sysimage/dpkg/", "/var/log/",
               "/var/cache/", "/var/lib/apt/", "/etc/ld.so.cache")
KEPT = ("/usr/", "/opt/")
RELEASE_DIR = "/usr/lib/extension-release.d"
PACKAGE_LIST = "/usr/share/sysext/{name}.packages"
# systemd's names for the architectures (os-release(5), ARCHITECTURE=).
SYSTEMD_ARCH = {"amd64": "x86-64", "arm64": "arm64", "armhf": "arm",
                "i386": "x86", "ppc64el": "ppc64-le", "riscv64": "riscv64",
                "s390x": "s390x"}


def image_path(builddir, recipe, arch, name):
    return os.path.join(builddir, "sysexts", recipe, arch, f"{name}.raw")


def _entries(gi_repo, commit):
    return {path: (is_dir, checksum)
            for path, is_dir, checksum in ostree.walk_tree(gi_repo, commit)}


def _bookkeeping(path):
    return any(path == p.rstrip("/") or path.startswith(p) for p in BOOKKEEPING)


def _kept(path):
    return any(path == p.rstrip("/") or path.startswith(p) for p in KEPT)


def changes(gi_repo, base, extension):
    """``(added paths, refused {reason: [paths]})`` from the base commit's
    tree to the extension's."""
    before = _entries(gi_repo, base)
    after = _entries(gi_repo, extension)
    added, refused = [], {}

    def refuse(reason, path):
        refused.setdefault(reason, []).append(path)

    for path, (is_dir, checksum) in sorted(after.items()):
        if _bookkeeping(path):
            continue
        old = before.get(path)
        if old == (is_dir, checksum):
            continue
        if old is not None:
            refuse("changes what the base has", path)
        elif _kept(path):
            added.append(path)
        else:
            refuse("writes outside /usr and /opt", path)
    for path in sorted(set(before) - set(after)):
        if not _bookkeeping(path):
            refuse("removes what the base has", path)
    return added, refused


def os_release(repo_path, commit):
    """``{KEY: value}`` of a commit's os-release."""
    # A deployable tree's /etc is /usr/etc; its os-release (with the
    # SYSEXT_LEVEL) takes precedence over /usr/lib's.
    for path in ("/usr/etc/os-release", "/etc/os-release",
                 "/usr/lib/os-release"):
        result = proc.run(["ostree", "cat", f"--repo={repo_path}", commit,
                           path], capture=True, check=False)
        if result.returncode == 0:
            values = {}
            for line in result.stdout.splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip() and not key.startswith("#"):
                    values[key.strip()] = value.strip().strip('"').strip("'")
            return values
    raise UserError(f"commit {commit} has no os-release")


def release_text(name, arch, release):
    """extension-release.NAME for a base with os-release ``release``."""
    if not release.get("ID"):
        raise UserError("the base's os-release has no ID")
    lines = [f"ID={release['ID']}"]
    for key in ("VERSION_ID", "SYSEXT_LEVEL"):
        if release.get(key):
            lines.append(f"{key}={release[key]}")
    lines.append(f"ARCHITECTURE={SYSTEMD_ARCH.get(arch, arch)}")
    lines.append(f"SYSEXT_ID={name}")
    return "\n".join(lines) + "\n"


def package_list(repo_path, base, extension):
    """The packages the extension installs: ``name version arch`` lines."""
    from . import history
    gi_repo = ostree.Repo(repo_path).open_gi()
    old = {(n, a): v for n, v, a, _ in history.package_records(
        history.status_text(gi_repo, base) or "")}
    new = history.package_records(history.status_text(gi_repo, extension) or "")
    return "".join(f"{n} {v} {a}\n" for n, v, a, _ in new
                   if old.get((n, a)) != v)


def build(config, opts, out, say=print):
    """Make the extension image ``out`` (and ``out.sha256``)."""
    missing = [tool for tool in ("mksquashfs",) if not shutil.which(tool)]
    if missing:
        raise UserError("mksquashfs is not installed",
                        hint="run tools/setup-host, or apt-get install "
                        "squashfs-tools")
    repo = ostree.Repo(config.repo)
    gi_repo = repo.open_gi()
    base = _commit(opts["base"])
    extension = _commit(opts["extension"])
    label = f"{opts['recipe']}/{opts['arch']}: sysext {opts['name']}"
    added, refused = changes(gi_repo, base, extension)
    if refused:
        parts = []
        for reason, paths in sorted(refused.items()):
            shown = ", ".join(paths[:8]) + (f" and {len(paths) - 8} more"
                                             if len(paths) > 8 else "")
            parts.append(f"{reason}: {shown}")
        raise UserError(f"{label}: " + "; ".join(parts),
                        path=opts.get("recipe_path"), line=opts.get("line"),
                        key="sysexts", hint="an extension adds files under "
                        "/usr and /opt only; do the rest in the recipe's stages")
    if not added:
        raise UserError(f"{label}: adds nothing under /usr or /opt",
                        path=opts.get("recipe_path"), line=opts.get("line"),
                        key="sysexts")
    release = os_release(config.repo, _commit(opts["os_release_from"]))
    entries = manifest.read(opts["manifest"])
    work = tempfile.mkdtemp(prefix="sysext-", dir=os.path.dirname(out))
    try:
        root = os.path.join(work, "root")
        checkout = os.path.join(work, "checkout")
        os.makedirs(checkout)
        proc.run(["ostree", "checkout", f"--repo={config.repo}", "--user-mode",
                  "--subpath=/usr", extension, os.path.join(checkout, "usr")])
        if any(p == "/opt" or p.startswith("/opt/") for p in added):
            proc.run(["ostree", "checkout", f"--repo={config.repo}",
                      "--user-mode", "--subpath=/opt", extension,
                      os.path.join(checkout, "opt")])
        needed = set()
        for path in added:  # the directories on the way are the base's
            parent = os.path.dirname(path)
            while parent not in ("/", ""):
                needed.add(parent)
                parent = os.path.dirname(parent)
        os.makedirs(root)
        os.chmod(root, 0o755)
        for path in sorted(needed | set(added)):
            source = checkout + path
            dest = root + path
            if os.path.isdir(source) and not os.path.islink(source):
                os.makedirs(dest, exist_ok=True)
            elif os.path.islink(source):
                os.symlink(os.readlink(source), dest)
            else:
                shutil.copyfile(source, dest)
            entry = entries.get(path)
            if entry is not None and entry.xattrs:
                raise UserError(f"{label}: {path} has extended attributes "
                                f"({', '.join(n for n, _ in entry.xattrs)}), "
                                "which extension images do not carry yet")
        release_dir = root + RELEASE_DIR
        os.makedirs(release_dir, exist_ok=True)
        with open(os.path.join(release_dir, f"extension-release.{opts['name']}"),
                  "w", encoding="utf-8") as f:
            f.write(release_text(opts["name"], opts["arch"], release))
        packages = root + PACKAGE_LIST.format(name=opts["name"])
        os.makedirs(os.path.dirname(packages), exist_ok=True)
        with open(packages, "w", encoding="utf-8") as f:
            f.write(package_list(config.repo, base, extension))
        # Every path's owner and mode as the stage's manifest has them
        # (what this extension adds: root's, with the usual modes), so that
        # neither this user nor its umask shows in the image; fakeroot makes
        # the rest (the image's root) root's.
        pseudo = []
        for top, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(dirs + names):
                path = "/" + os.path.relpath(os.path.join(top, name), root)
                entry = entries.get(path)
                if entry is not None:
                    mode, uid, gid = stat.S_IMODE(entry.mode), entry.uid, entry.gid
                else:
                    mode = 0o755 if os.path.isdir(os.path.join(top, name)) \
                        else 0o644
                    uid = gid = 0
                pseudo.append(f"{_pseudo_path(path)} m {mode:o} {uid} {gid}\n")
        pseudo_file = os.path.join(work, "pseudo")
        with open(pseudo_file, "w", encoding="utf-8") as f:
            f.write("".join(pseudo))
        epoch = str(opts["source_date_epoch"])
        tmp = out + ".tmp"
        if os.path.exists(tmp):
            os.unlink(tmp)
        proc.run(["fakeroot", "mksquashfs", root, tmp, "-noappend", "-quiet",
                  "-no-progress", "-pf", pseudo_file, "-comp", "zstd",
                  "-mkfs-time", epoch, "-all-time", epoch, "-no-xattrs"])
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    digest = hashlib.sha256()
    with open(out, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    with open(out + ".sha256", "w", encoding="utf-8") as f:
        f.write(f"{digest.hexdigest()}  {os.path.basename(out)}\n")
    say(f"{out}: {label}, {len(added)} paths, "
        f"{os.path.getsize(out) / 1e6:.1f} MB, SYSEXT_LEVEL="
        f"{release.get('SYSEXT_LEVEL', '(none)')}, sha256 {digest.hexdigest()[:16]}")
    return out


def _commit(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split()[0]


def _pseudo_path(path):
    """A path as mksquashfs's pseudo file names it (relative to the root,
    spaces and quotes escaped)."""
    rel = path.lstrip("/") or "/"
    return "".join("\\" + c if c in " \"'\\" else c for c in rel)
