"""What a branch's tree weighs ('ninja NAME/ARCH/size'): the tree's bytes
and file count, its largest directories and packages, the disk image, and
the change since the branch's previous commit.

Sizes come from the repository alone, without a checkout: a file's size is
its object's (the build repository is bare-user, where a file's object is
its content, and a symbolic link's its target), and a package's is the
Installed-Size its dpkg status gives.
"""

import os
import stat

from debian import deb822

from . import history, ostree

TOP = 20
DIRECTORY_DEPTH = 3


def tree_sizes(repo_path, gi_repo, commit):
    """``(total bytes, file count, {directory: bytes of everything under
    it}, for directories DIRECTORY_DEPTH deep or less)``."""
    objects = os.path.join(repo_path, "objects")
    sizes = {}
    total = count = 0
    seen = {}
    for path, is_dir, checksum in ostree.walk_tree(gi_repo, commit):
        if is_dir:
            continue
        if checksum not in seen:
            seen[checksum] = _object_size(os.path.join(
                objects, checksum[:2], checksum[2:] + ".file"))
        size = seen[checksum]
        total += size
        count += 1
        parts = path.split("/")[1:-1]
        for depth in range(1, min(len(parts), DIRECTORY_DEPTH) + 1):
            directory = "/" + "/".join(parts[:depth])
            sizes[directory] = sizes.get(directory, 0) + size
    return total, count, sizes


def _object_size(path):
    """The size of a bare-user file object's file: its content's, or for a
    symbolic link (a file holding its target and a NUL) its target's."""
    size = os.lstat(path).st_size
    try:
        # user.ostreemeta: (uid, gid, mode, xattrs), big-endian.
        meta = os.getxattr(path, "user.ostreemeta")
    except OSError:
        return size
    if len(meta) >= 12 and stat.S_ISLNK(int.from_bytes(meta[8:12], "big")):
        return max(size - 1, 0)
    return size


def package_sizes(gi_repo, commit):
    """``{package: installed bytes}`` from the tree's dpkg status."""
    text = history.status_text(gi_repo, commit)
    if text is None:
        return {}
    found = {}
    for para in deb822.Deb822.iter_paragraphs(text.splitlines(True)):
        if "Package" not in para or \
                not para.get("Status", "").endswith(" installed"):
            continue
        try:
            kib = int(para.get("Installed-Size", "0"))
        except ValueError:
            kib = 0
        name = para["Package"]
        if para.get("Multi-Arch") == "same":
            name += ":" + para.get("Architecture", "")
        found[name] = kib * 1024
    return found


def human(size):
    """``12.3 MB`` (powers of 1000, as the rest of the project prints)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else \
                f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def signed(size):
    return ("+" if size >= 0 else "-") + human(abs(size))


def report(repo_path, branch, image=None):
    """The lines of the size report of ``branch``'s last commit."""
    repo = ostree.Repo(repo_path)
    gi_repo = repo.open_gi()
    commit = repo.rev_parse(branch)
    if commit is None:
        return [f"{branch}: no commit yet (build it first)"]
    total, count, directories = tree_sizes(repo_path, gi_repo, commit)
    packages = package_sizes(gi_repo, commit)
    lines = [f"{branch} {commit[:12]}: tree {human(total)} in {count} files; "
             f"{len(packages)} packages, {human(sum(packages.values()))} "
             "installed"]
    if image:
        if os.path.exists(image):
            st = os.stat(image)
            lines.append(f"image {image}: {human(st.st_size)} "
                         f"({human(st.st_blocks * 512)} allocated)")
        else:
            lines.append(f"image {image}: not built ('ninja "
                         f"{os.path.basename(image).rsplit('.', 2)[0]}.img')")
    lines.append(f"largest directories ({DIRECTORY_DEPTH} levels):")
    for path, size in sorted(directories.items(),
                             key=lambda kv: (-kv[1], kv[0]))[:TOP]:
        lines.append(f"  {human(size):>10}  {path}")
    lines.append("largest packages (installed size):")
    for name, size in sorted(packages.items(),
                             key=lambda kv: (-kv[1], kv[0]))[:TOP]:
        lines.append(f"  {human(size):>10}  {name}")
    parent = ostree.parent_of(gi_repo, commit)
    if parent is None:
        lines.append("since the previous commit: none (the branch's first)")
        return lines
    old_total, old_count, _ = tree_sizes(repo_path, gi_repo, parent)
    old_packages = package_sizes(gi_repo, parent)
    lines.append(f"since the previous commit {parent[:12]}: tree "
                 f"{signed(total - old_total)} ({count - old_count:+d} "
                 f"files), installed {signed(sum(packages.values()) - sum(old_packages.values()))}")
    moved = {name: packages.get(name, 0) - old_packages.get(name, 0)
             for name in set(packages) | set(old_packages)}
    for name, delta in sorted(moved.items(),
                              key=lambda kv: (-abs(kv[1]), kv[0]))[:TOP]:
        if delta == 0:
            break
        state = "added" if name not in old_packages else \
            "removed" if name not in packages else "changed"
        lines.append(f"  {signed(delta):>11}  {name} ({state})")
    return lines
