"""The 'copy' stage kind: files and directories from beside the recipe
into the image, with owners and modes.  No command runs: the copy is done
under fakeroot on the host side, every destination resolved inside the
tree (treepath.py) and every source kept inside the recipe's directory."""

import dataclasses
import os
import stat
from dataclasses import dataclass

from ..errors import UserError
from ..recipefields import (MAX_PATH, MODE_RE, OWNER_RE, check_keys, describe,
                            shown, source_escape, string)
from .base import Kind, StageOptions


@dataclass(frozen=True)
class CopyItem:
    src: str          # path relative to the recipe's directory
    dest: str         # absolute path in the image
    owner: str = "root"
    group: str = "root"
    mode: str = None  # octal string; None keeps the source's permission bits


@dataclass(frozen=True)
class CopySpec:
    items: tuple                    # CopyItem


@dataclass
class CopyItemOptions:
    src_abs: str      # the source on the host
    src_root: str     # the recipe's directory, which the source may not leave
    dest: str
    owner: str
    group: str
    mode: str = None

    def key_value(self):
        """In the stage's input key: the source by its place beside the
        recipe and its content, not by where this checkout is."""
        from ..cachekey import tree_digest
        return {"src": os.path.relpath(self.src_abs, self.src_root),
                "content": tree_digest(self.src_abs), "dest": self.dest,
                "owner": self.owner, "group": self.group, "mode": self.mode}


@dataclass(kw_only=True)
class CopyOptions(StageOptions):
    items: list                     # CopyItemOptions

    NESTED = {"items": CopyItemOptions}


class Copy(Kind):
    name = "copy"
    Options = CopyOptions
    keeps_services_stopped = False  # nothing is configured

    def validate(self, src, keypath, value, context):
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not value:
            raise src.error(keypath, "expected a list of {src, dest} mappings")
        items = []
        for i, item in enumerate(value):
            itempath = keypath + (i,)
            if not isinstance(item, dict):
                raise src.error(itempath, f"expected a mapping with 'src' and "
                                f"'dest', got {describe(item)}")
            check_keys(src, itempath, item, {"src", "dest", "owner", "group", "mode"},
                        required=("src", "dest"))
            source = string(src, itempath + ("src",), item["src"], what="a path",
                             max_len=MAX_PATH)
            if os.path.isabs(source) or ".." in source.split("/"):
                raise src.error(itempath + ("src",), f"'{source}' must be a path "
                                "inside the recipe's directory",
                                hint="write it relative to the recipe file")
            # '{arch}' in a source: one file per architecture of the
            # recipe (GRUB's settings for a PC's serial port, say); every
            # one must be there.
            for arch in (context.architectures if "{arch}" in source
                         else (None,)):
                full = os.path.join(context.dir, source.replace("{arch}", arch)
                                    if arch else source)
                if not os.path.lexists(full):
                    raise src.error(itempath + ("src",), "no such file or "
                                    f"directory: {full}" + (
                                        f" (for {arch})" if arch else ""))
                escape = source_escape(context.dir, full)
                if escape:
                    raise src.error(itempath + ("src",), f"'{source}' leads out "
                                    f"of the recipe's directory (to {escape}) "
                                    "through a symbolic link", hint="copy the "
                                    "files into the recipe's directory")
            dest = string(src, itempath + ("dest",), item["dest"], what="a path",
                           max_len=MAX_PATH)
            if not dest.startswith("/") or ".." in dest.split("/") or "\n" in dest:
                raise src.error(itempath + ("dest",), f"'{dest}' must be an "
                                "absolute path in the image")
            owner = str(item.get("owner", "root"))
            group = str(item.get("group", "root"))
            for key, val in (("owner", owner), ("group", group)):
                if not OWNER_RE.fullmatch(val):
                    raise src.error(itempath + (key,), f"invalid {key} '{shown(val)}'",
                                    hint="a user or group name, or a number")
            mode = item.get("mode")
            if mode is not None:
                if isinstance(mode, int):  # YAML 1.1 reads 0644 as octal int
                    mode = format(mode, "o")
                mode = str(mode)
                if not MODE_RE.fullmatch(mode):
                    raise src.error(itempath + ("mode",), f"invalid mode '{shown(mode)}'",
                                    hint="an octal string such as \"0644\"")
            items.append(CopyItem(source, dest, owner, group, mode))
        return CopySpec(tuple(items))

    def for_arch(self, spec, arch):
        return CopySpec(tuple(dataclasses.replace(
            item, src=item.src.replace("{arch}", arch)) for item in spec.items))

    def options(self, graph, recipe, arch, stage, entries):
        root = os.path.dirname(os.path.abspath(recipe.path))
        items, inputs = [], []
        for item in stage.options.items:
            src = os.path.join(os.path.dirname(recipe.path),
                               item.src.replace("{arch}", arch))
            items.append(CopyItemOptions(src, root, item.dest, item.owner,
                                         item.group, item.mode))
            inputs += source_files(src)
        return {"items": items}, inputs

    def prepare(self, opts, tree):
        copy_items(opts.items, tree)

    def command(self, opts):
        """None: a copy runs nothing in the sandbox (``prepare`` did it)."""
        return None


def source_files(src):
    """A copy source's files and directories, as implicit inputs."""
    if not os.path.isdir(src) or os.path.islink(src):
        return [src]
    found = [src]
    for dirpath, dirnames, filenames in os.walk(src):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return found


def _id_of(tree, name, database, keypath):
    if name.isdigit():
        return int(name)
    try:
        text = tree.read(database).decode("utf-8", "replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        fields = line.split(":")
        if fields[0] == name and len(fields) > 2 and fields[2].isdigit():
            return int(fields[2])
    raise UserError(f"{keypath}: no {'user' if 'passwd' in database else 'group'} "
                    f"'{name}' in the image's {database}",
                    hint="create it in an earlier stage, or use a number")


def copy_items(items, tree):
    """The copy stage's work, every destination resolved inside the tree
    and every source kept inside the recipe's directory."""
    for item in items:
        uid = _id_of(tree, item.owner, "/etc/passwd", item.dest)
        gid = _id_of(tree, item.group, "/etc/group", item.dest)
        src = item.src_abs
        escape = source_escape(item.src_root or os.path.dirname(src), src)
        if escape:
            raise UserError(f"copy: {src} leads out of the recipe's directory "
                            f"(to {escape}) through a symbolic link")
        dest = item.dest
        try:
            tree.makedirs(os.path.dirname(dest))
            if os.path.isdir(src) and not os.path.islink(src):
                paths = _copy_dir(src, tree, dest)
            else:
                resolved = tree.dir(dest)
                if resolved is not None:
                    os.close(resolved)
                    dest = dest.rstrip("/") + "/" + os.path.basename(src)
                _copy_entry(src, tree, dest)
                paths = [dest]
        except OSError as error:
            # Links are followed as in the image (/var/lock -> /run/lock),
            # never out of it: a link to what the tree lacks stops here.
            raise UserError(f"copy: cannot write {item.dest} in the image: "
                            f"{error.strerror} ({error.filename})",
                            hint="a directory on the way may be a link to a "
                            "path the image does not have")
        for path in paths:
            tree.chown(path, uid, gid)
            st = tree.lstat(path)
            if item.mode and not stat.S_ISLNK(st.st_mode):
                if stat.S_ISDIR(st.st_mode) and path != dest:
                    continue
                tree.chmod(path, int(item.mode, 8))


def _copy_entry(src, tree, dest):
    """One file or link from the host to ``dest`` in the tree (a new inode:
    never a write into a hardlinked file in place)."""
    if os.path.islink(src):
        if tree.lstat(dest) is not None and not tree.is_dir(dest):
            tree.unlink(dest)
        tree.symlink(os.readlink(src), dest)
        return
    with open(src, "rb") as f:
        tree.write(dest, f, os.stat(src).st_mode & 0o7777)


def _copy_dir(src, tree, dest):
    """A directory from the host into the tree, links copied as links;
    returns the tree paths made or replaced."""
    paths = [dest]
    if not tree.is_dir(dest):
        tree.makedirs(dest)
        tree.chmod(dest, os.stat(src).st_mode & 0o7777)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        inside = dest if rel == "." else dest.rstrip("/") + "/" + rel
        for name in sorted(dirnames):
            full = os.path.join(dirpath, name)
            path = inside.rstrip("/") + "/" + name
            if os.path.islink(full):
                _copy_entry(full, tree, path)  # os.walk does not enter it
            elif not tree.is_dir(path):
                if tree.exists(path):
                    tree.unlink(path)
                tree.makedirs(path)
                tree.chmod(path, os.stat(full).st_mode & 0o7777)
            paths.append(path)
        for name in sorted(filenames):
            path = inside.rstrip("/") + "/" + name
            _copy_entry(os.path.join(dirpath, name), tree, path)
            paths.append(path)
    return paths


KIND = Copy()
