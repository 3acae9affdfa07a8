"""OCI images: a recipe's branch commits as an OCI image layout.

This module owns turning commits into an image layout directory (the
``oci:`` transport of skopeo and podman) and its ``oci-archive`` tarball,
with no daemon and no root: every file, owner, mode and extended attribute
is read from the OSTree repository, never from a checkout.

Layers follow packages.  The tree's own dpkg database says which package
installed each path (``info/PKG.list``) and what its content was
(``info/PKG.md5sums`` and the status file's ``Conffiles``): a path a package
installed and no stage changed goes to that package's layer, with the
package's ``info/PKG.*`` files; everything else (files stages wrote or
changed, the status file, users, caches) goes to one last layer, "what the
stages changed".  Packages are grouped into at most ``MAX_LAYERS - 1``
layers: the biggest ones, and the ones the lockfile's git history shows
changing most often, get a layer each; the others share a few layers
chosen by a hash of their name, so one package's update changes one
layer.  Each layer carries the directories its paths are in (with the
tree's owners and modes), so every path is in exactly one layer and no
whiteouts are needed.  Stable layers come first.

The same commit and SOURCE_DATE_EPOCH give the same bytes: tar headers
carry numeric owners, no user names and time 0 (as OSTree deploys every
file), so a layer depends on its files alone; gzip streams carry no name
or time; JSON is written with sorted keys; the image's creation time is
SOURCE_DATE_EPOCH's, or the commit's.

A 'deployable' tree is laid out as a bootable container image (bootc,
ostree-native containers) expects: /usr with the kernel and initramfs in
``/usr/lib/modules/VERSION/``, and the tree's ``/usr/etc`` as ``/etc``
(which ostree moves back to ``/usr/etc`` when it imports the image); its
config carries the labels ``containers.bootc=1`` and ``ostree.bootable``.
"""

import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass, field

from debian import deb822

from . import lockfile, ostree, proc
from .errors import UserError

MAX_LAYERS = 64
STAGES_LAYER = "what the stages changed"
# Debian architecture -> OCI platform (architecture, variant).
PLATFORMS = {"amd64": ("amd64", None), "arm64": ("arm64", "v8"),
             "armhf": ("arm", "v7"), "armel": ("arm", "v5"),
             "i386": ("386", None), "ppc64el": ("ppc64le", None),
             "riscv64": ("riscv64", None), "s390x": ("s390x", None),
             "mips64el": ("mips64le", None), "loong64": ("loong64", None)}
DPKG_ADMIN_DIRS = ("/usr/lib/sysimage/dpkg", "/var/lib/dpkg")
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
HISTORY_REVISIONS = 50
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def layout_path(builddir, recipe, arch=None):
    name = recipe if arch is None else f"{recipe}.{arch}"
    return os.path.join(builddir, "oci", name)


# -- reading a commit -------------------------------------------------------

def _read_file(gi_repo, checksum):
    _, stream, _, _ = gi_repo.load_file(checksum, None)
    return _GioReader(stream).read() if stream is not None else b""


class _GioReader:
    """A Gio input stream as a Python file object (``read`` only)."""

    def __init__(self, stream):
        self.stream = stream

    def read(self, size=-1):
        chunks, wanted = [], size
        while wanted != 0:
            block = self.stream.read_bytes(
                1 << 20 if wanted < 0 else min(wanted, 1 << 20), None)
            data = block.get_data() if block.get_size() else b""
            if not data:
                break
            chunks.append(bytes(data))
            if wanted > 0:
                wanted -= len(data)
        return b"".join(chunks)

    def close(self):
        self.stream.close(None)


@dataclass
class Tree:
    """A commit's paths: ``{path: (is_dir, checksum)}`` in walk order."""
    commit: str
    entries: dict

    @classmethod
    def read(cls, gi_repo, commit):
        return cls(commit, {path: (is_dir, checksum) for path, is_dir, checksum
                            in ostree.walk_tree(gi_repo, commit)})

    def file(self, path):
        entry = self.entries.get(path)
        return entry[1] if entry and not entry[0] else None


def _top_links(gi_repo, tree):
    """``{"/bin": "/usr/bin", ...}``: the tree's top-level links into /usr,
    through which dpkg's lists name merged-/usr paths."""
    links = {}
    for path, (is_dir, checksum) in tree.entries.items():
        if is_dir or path.count("/") != 1:
            continue
        _, _, info, _ = gi_repo.load_file(checksum, None)
        if info.get_file_type() == 3:  # Gio.FileType.SYMBOLIC_LINK
            target = info.get_symlink_target()
            if target.startswith("usr/") and "/" not in target[4:]:
                links[path] = "/" + target
    return links


def package_paths(gi_repo, tree, deployable):
    """``{path: package}``: the paths of the tree each installed package
    put there and no stage changed since (the rest belongs to the stages'
    layer).  ``package`` is dpkg's name for it (``libc6`` or, for
    Multi-Arch: same, ``libc6:amd64``)."""
    admin = next((d for d in DPKG_ADMIN_DIRS
                  if tree.entries.get(d + "/info", (False,))[0]), None)
    if admin is None:
        return {}
    links = _top_links(gi_repo, tree)

    def in_tree(path):
        top = "/" + path.split("/")[1] if path.count("/") > 1 else None
        if top in links:
            path = links[top] + path[len(top):]
        if deployable and (path == "/etc" or path.startswith("/etc/")):
            path = "/usr" + path
        return path

    conffiles = {}
    status = tree.file(admin + "/status")
    if status:
        for para in deb822.Deb822.iter_paragraphs(
                _read_file(gi_repo, status).decode("utf-8", "replace")
                .splitlines(True)):
            for line in para.get("Conffiles", "").splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    conffiles[parts[0]] = parts[1]
    owners = {}
    info = admin + "/info/"
    lists = sorted(p for p in tree.entries
                   if p.startswith(info) and p.endswith(".list")
                   and "/" not in p[len(info):])
    for list_path in lists:
        package = list_path[len(info):-len(".list")]
        md5sums = {}
        sums = tree.file(info + package + ".md5sums")
        if sums:
            for line in _read_file(gi_repo, sums).decode(
                    "utf-8", "surrogateescape").splitlines():
                digest, _, name = line.partition("  ")
                if name:
                    md5sums["/" + name] = digest
        for line in _read_file(gi_repo, tree.file(list_path)).decode(
                "utf-8", "surrogateescape").splitlines():
            if not line.startswith("/") or line == "/.":
                continue
            path = in_tree(line)
            checksum = tree.file(path)
            if checksum is None or path in owners:
                continue
            expected = md5sums.get(line) or conffiles.get(line)
            if expected is not None:
                if hashlib.md5(_read_file(gi_repo, checksum)).hexdigest() \
                        != expected:
                    continue  # changed by a stage
            owners[path] = package
    # dpkg's files about each package (info/PKG.list, .md5sums, scripts)
    # travel with it.
    packages = {p[len(info):-len(".list")] for p in lists}
    for path, (is_dir, _) in tree.entries.items():
        if not is_dir and path.startswith(info) and "/" not in path[len(info):]:
            package = path[len(info):].rsplit(".", 1)[0]
            if package in packages:
                owners.setdefault(path, package)
    return owners


def change_counts(top, lockfile_paths, revisions=HISTORY_REVISIONS):
    """``{package name: versions seen}`` over the last ``revisions`` commits
    of the lockfiles in ``top``'s git history (empty outside a checkout)."""
    counts = {}
    for path in lockfile_paths:
        rel = os.path.relpath(os.path.realpath(path), os.path.realpath(top))
        result = proc.run(["git", "-c", f"safe.directory={top}", "-C", top,
                           "log", f"-n{revisions}", "--format=%H", "--", rel],
                          capture=True, check=False)
        if result.returncode != 0:
            continue
        previous = None
        for revision in reversed(result.stdout.split()):
            shown = proc.run(["git", "-c", f"safe.directory={top}", "-C",
                              top, "show", f"{revision}:{rel}"],
                             capture=True, check=False)
            if shown.returncode != 0:
                continue
            try:
                versions = {e.name: e.version for e in
                            lockfile.parse(shown.stdout, rel)}
            except UserError:
                continue
            if previous is not None:
                for name, version in versions.items():
                    if previous.get(name) != version:
                        counts[name] = counts.get(name, 0) + 1
            previous = versions
    return counts


def shallow_checkout(top):
    """Whether ``top`` is a shallow git clone: the history change_counts
    reads is cut short there."""
    result = proc.run(["git", "-c", f"safe.directory={top}", "-C", top,
                       "rev-parse", "--is-shallow-repository"],
                      capture=True, check=False)
    return result.returncode == 0 and result.stdout.strip() == "true"


# -- the layer plan ----------------------------------------------------------

@dataclass
class Layer:
    title: str
    packages: list = field(default_factory=list)
    size: int = 0
    changes: int = 0


def group_packages(sizes, changes, slots):
    """Packages (``{package: bytes}``) in at most ``slots`` groups, as
    ``[[package, ...], ...]``: three quarters of them alone, the others in
    groups by a hash of their name (stable across versions).

    Alone are those whose update costs most in a shared layer: an update
    downloads its layer again, so a package weighs its own size plus what
    it would share with (about the mean package's), times how often it
    changed (``changes``, by package name)."""
    names = sorted(sizes)
    if len(names) <= slots:
        return [[name] for name in names]
    shared = max(1, slots // 4)
    mean = sum(sizes.values()) / len(sizes)

    def weight(name):
        return (sizes[name] + mean) * (1 + changes.get(name.split(":")[0], 0))

    ranked = sorted(names, key=lambda n: (-weight(n), n))
    groups = [[name] for name in ranked[:slots - shared]]
    buckets = [[] for _ in range(shared)]
    for name in sorted(ranked[slots - shared:]):
        buckets[zlib.crc32(name.split(":")[0].encode()) % shared].append(name)
    return groups + [b for b in buckets if b]


def plan(gi_repo, tree, deployable, changes, max_layers=MAX_LAYERS):
    """``(layers, {path: layer index})`` for a tree: every file and link in
    one layer, directories where their contents are (``dir_layers``)."""
    owners = package_paths(gi_repo, tree, deployable)
    sizes = {}
    for path, package in owners.items():
        _, _, info, _ = gi_repo.load_file(tree.entries[path][1], None)
        sizes[package] = sizes.get(package, 0) + info.get_size()
    groups = group_packages(sizes, changes, max_layers - 1)
    layers = []
    for packages in groups:
        title = (f"package {packages[0]}" if len(packages) == 1 else
                 f"packages {', '.join(packages)}")
        layers.append(Layer(title, packages, sum(sizes[p] for p in packages),
                            max(changes.get(p.split(":")[0], 0)
                                for p in packages)))
    # Stable first: what changes least, then the biggest.
    layers.sort(key=lambda l: (l.changes, -l.size, l.title))
    index = {p: i for i, l in enumerate(layers) for p in l.packages}
    stages = len(layers)
    layers.append(Layer(STAGES_LAYER))
    assignment = {}
    for path, (is_dir, _) in tree.entries.items():
        if not is_dir:
            assignment[path] = index[owners[path]] if path in owners else stages
    return layers, assignment


def dir_layers(tree, assignment, stages):
    """``{directory: {layer index, ...}}``: each layer has the directories
    its paths are in; directories with nothing in them are the stages'."""
    result = {}
    for path, layer in assignment.items():
        parent = os.path.dirname(path)
        while parent != "/":
            result.setdefault(parent, set()).add(layer)
            parent = os.path.dirname(parent)
    for path, (is_dir, _) in tree.entries.items():
        if is_dir and path != "/" and path not in result:
            parent = path
            while parent != "/":
                result.setdefault(parent, set()).add(stages)
                parent = os.path.dirname(parent)
    return result


# -- writing ---------------------------------------------------------------

class _Hashing(io.RawIOBase):
    """A write-only file object that hashes and counts what passes through."""

    def __init__(self, target):
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self):
        return True

    def write(self, data):
        self.digest.update(data)
        self.size += len(data)
        if self.target is not None:
            self.target.write(data)
        return len(data)


class _LayerWriter:
    """One layer: tar (PAX) -> diff_id hash -> gzip -> digest hash -> file."""

    def __init__(self, path):
        self.path = path
        self.file = open(path, "wb")
        self.compressed = _Hashing(self.file)
        self.gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self.compressed,
                                  mtime=0, compresslevel=6)
        self.raw = _Hashing(self.gzip)
        self.tar = tarfile.open(fileobj=self.raw, mode="w|",
                                format=tarfile.PAX_FORMAT)
        self.entries = 0

    def close(self):
        self.tar.close()
        self.gzip.close()
        self.file.close()
        return ("sha256:" + self.compressed.digest.hexdigest(),
                self.compressed.size, "sha256:" + self.raw.digest.hexdigest())


def _image_path(path, deployable):
    if deployable and (path == "/usr/etc" or path.startswith("/usr/etc/")):
        return path[len("/usr"):]
    return path


def _tarinfo(name, uid, gid, mode, xattrs):
    info = tarfile.TarInfo(name.lstrip("/"))
    info.uid, info.gid, info.mode = uid, gid, stat.S_IMODE(mode)
    info.uname = info.gname = ""
    # OSTree keeps no times: its deployments' files are all of time 0, and
    # so are the layers', which then depend on their files alone (a new
    # commit of the same package gives the same layer).
    info.mtime = 0
    if xattrs is not None:
        for i in range(xattrs.n_children()):
            item = xattrs.get_child_value(i)
            key = bytes(item.get_child_value(0).get_data_as_bytes().get_data())
            value = bytes(item.get_child_value(1).get_data_as_bytes().get_data())
            key = key.rstrip(b"\0").decode("utf-8", "surrogateescape")
            info.pax_headers["SCHILY.xattr." + key] = value.decode(
                "utf-8", "surrogateescape")
    return info


def write_layers(gi_repo, tree, layers, assignment, deployable, blobs):
    """Write the layers' blobs into ``blobs`` (``blobs/sha256/HEX``); returns
    ``[(digest, size, diff_id, title)]`` of the layers that have entries."""
    stages = len(layers) - 1
    directories = dir_layers(tree, assignment, stages)
    if deployable and "/etc" in tree.entries:
        raise UserError(f"commit {tree.commit} is deployable but has both "
                        "/etc and /usr/etc")
    writers = [_LayerWriter(os.path.join(blobs, f".layer-{i}.tmp"))
               for i in range(len(layers))]
    try:
        for path, (is_dir, checksum) in tree.entries.items():
            if path == "/":
                continue
            name = _image_path(path, deployable)
            if is_dir:
                wanted = directories.get(path)
                if not wanted:
                    continue
                uid, gid, mode, xattrs = ostree.dirmeta(gi_repo, checksum)
                info = _tarinfo(name, uid, gid, mode, xattrs)
                info.type = tarfile.DIRTYPE
                for layer in sorted(wanted):
                    writers[layer].tar.addfile(info)
                    writers[layer].entries += 1
                continue
            _, stream, file_info, xattrs = gi_repo.load_file(checksum, None)
            info = _tarinfo(name, file_info.get_attribute_uint32("unix::uid"),
                            file_info.get_attribute_uint32("unix::gid"),
                            file_info.get_attribute_uint32("unix::mode"),
                            xattrs)
            writer = writers[assignment[path]]
            if file_info.get_file_type() == 3:  # symbolic link
                info.type = tarfile.SYMTYPE
                info.linkname = file_info.get_symlink_target()
                writer.tar.addfile(info)
            else:
                info.size = file_info.get_size()
                reader = _GioReader(stream)
                writer.tar.addfile(info, reader)
                reader.close()
            writer.entries += 1
        results = []
        for layer, writer in zip(layers, writers):
            digest, size, diff_id = writer.close()
            if writer.entries:
                os.replace(writer.path, os.path.join(blobs, digest[7:]))
                results.append((digest, size, diff_id, layer.title))
            else:
                os.unlink(writer.path)
        return results
    finally:
        for writer in writers:
            if not writer.file.closed:
                writer.file.close()
            if os.path.exists(writer.path):
                os.unlink(writer.path)


def _blob(blobs, data, media_type, annotations=None):
    """Write JSON ``data`` as a blob; returns its descriptor."""
    raw = _json(data)
    digest = hashlib.sha256(raw).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(raw)
    descriptor = {"mediaType": media_type, "digest": f"sha256:{digest}",
                  "size": len(raw)}
    if annotations:
        descriptor["annotations"] = annotations
    return descriptor


def _json(data):
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")


def labels(gi_repo, tree, recipe, deployable):
    """The image's labels, from the commit's metadata."""
    metadata, _ = ostree.commit_metadata(gi_repo, tree.commit)
    result = {"org.opencontainers.image.title": recipe,
              "ostree.commit": tree.commit}
    for key, label in (("version", "org.opencontainers.image.version"),
                       ("debostree.source", "org.opencontainers.image.revision"),
                       ("debostree.lockfile-sha256", "debostree.lockfile.sha256"),
                       ("debostree.recipe", "debostree.recipe")):
        if isinstance(metadata.get(key), str):
            result[label] = metadata[key]
    if deployable:
        result["containers.bootc"] = "1"
        result["ostree.bootable"] = "true"
        kernels = sorted(p.split("/")[4] for p in tree.entries
                         if p.startswith("/usr/lib/modules/")
                         and p.endswith("/vmlinuz") and p.count("/") == 5)
        if kernels:
            result["ostree.linux"] = kernels[-1]
    return result


def image_manifest(gi_repo, commit, arch, recipe, blobs, changes, epoch=None,
                   max_layers=MAX_LAYERS, say=print):
    """One architecture's image (layers, config, manifest) in ``blobs``;
    returns the manifest's descriptor, with its platform."""
    tree = Tree.read(gi_repo, commit)
    deployable = "/usr/etc" in tree.entries and "/etc" not in tree.entries
    if epoch is None:
        _, epoch = ostree.commit_metadata(gi_repo, commit)
    layers, assignment = plan(gi_repo, tree, deployable, changes, max_layers)
    written = write_layers(gi_repo, tree, layers, assignment, deployable,
                           blobs)
    os_arch, variant = PLATFORMS.get(arch, (arch, None))
    shell = "/bin/bash" if tree.file("/usr/bin/bash") else "/bin/sh"
    created = _iso(epoch)
    config = {
        "architecture": os_arch, "os": "linux", "created": created,
        "config": {"Env": [PATH_ENV], "Cmd": [shell],
                   "Labels": labels(gi_repo, tree, recipe, deployable)},
        "rootfs": {"type": "layers", "diff_ids": [w[2] for w in written]},
        "history": [{"created": created, "created_by": title}
                    for _, _, _, title in written],
    }
    if variant:
        config["variant"] = variant
    config_descriptor = _blob(blobs, config, MEDIA_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": config_descriptor,
                "layers": [{"mediaType": MEDIA_LAYER, "digest": digest,
                            "size": size} for digest, size, _, _ in written],
                "annotations": {"org.opencontainers.image.created": created}}
    descriptor = _blob(blobs, manifest, MEDIA_MANIFEST)
    platform = {"architecture": os_arch, "os": "linux"}
    if variant:
        platform["variant"] = variant
    descriptor["platform"] = platform
    packages = sum(1 for l in layers for _ in l.packages)
    total = sum(size for _, size, _, _ in written)
    say(f"{recipe}/{arch}: {len(written)} layers ({packages} packages), "
        f"{total / 1e6:.1f} MB compressed, commit {commit[:12]}")
    return descriptor


def write_layout(out, images, ref_name="latest"):
    """An OCI image layout at ``out`` of ``images`` ([(arch, build function
    taking the blobs directory and returning a manifest descriptor)]);
    replaces what was there only once it is complete."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    work = out + ".tmp"
    shutil.rmtree(work, ignore_errors=True)
    blobs = os.path.join(work, "blobs", "sha256")
    os.makedirs(blobs)
    descriptors = [build(blobs) for _, build in images]
    annotations = {"org.opencontainers.image.ref.name": ref_name}
    if len(descriptors) == 1:
        top = dict(descriptors[0], annotations=annotations)
    else:
        top = _blob(blobs, {"schemaVersion": 2, "mediaType": MEDIA_INDEX,
                            "manifests": descriptors}, MEDIA_INDEX,
                    annotations)
    with open(os.path.join(work, "oci-layout"), "wb") as f:
        f.write(_json({"imageLayoutVersion": "1.0.0"}))
    with open(os.path.join(work, "index.json"), "wb") as f:
        f.write(_json({"schemaVersion": 2, "mediaType": MEDIA_INDEX,
                       "manifests": [top]}))
    for top_dir, dirs, names in os.walk(work):
        os.chmod(top_dir, 0o755)
        for name in names:
            os.chmod(os.path.join(top_dir, name), 0o644)
    old = out + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out):
        os.rename(out, old)
    os.rename(work, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def write_archive(layout, out, epoch):
    """The layout as an ``oci-archive`` tarball, the same bytes each time."""
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for top, dirs, names in sorted(os.walk(layout)):
            dirs.sort()
            rel = os.path.relpath(top, layout)
            if rel != ".":
                tar.addfile(_archive_info(rel + "/", tarfile.DIRTYPE, 0o755,
                                          0, epoch))
            for name in sorted(names):
                path = os.path.join(top, name)
                member = os.path.normpath(os.path.join(rel, name))
                info = _archive_info(member, tarfile.REGTYPE, 0o644,
                                     os.path.getsize(path), epoch)
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    os.replace(tmp, out)
    return out


def _archive_info(name, kind, mode, size, epoch):
    info = tarfile.TarInfo(name.rstrip("/"))
    info.type, info.mode, info.size, info.mtime = kind, mode, size, epoch
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _load_blob(layout, digest):
    algorithm, _, hexdigest = digest.partition(":")
    path = os.path.join(layout, "blobs", algorithm, hexdigest)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"{layout}: cannot read blob {digest}: {error}")


def read_image(layout, arch=None):
    """``(manifest, config)`` of the layout's image for ``arch`` (Debian's
    name; None: the only one)."""
    try:
        with open(os.path.join(layout, "index.json"), encoding="utf-8") as f:
            descriptors = list(json.load(f)["manifests"])
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{layout}: not an OCI image layout ({error})")
    images = []
    while descriptors:
        descriptor = descriptors.pop(0)
        if descriptor.get("mediaType") == MEDIA_INDEX:
            descriptors += _load_blob(layout, descriptor["digest"])["manifests"]
        else:
            images.append(descriptor)
    if arch is not None:
        wanted = PLATFORMS.get(arch, (arch, None))[0]
        images = [d for d in images
                  if d.get("platform", {}).get("architecture") in (wanted, None)]
    if len(images) != 1:
        raise UserError(f"{layout}: {len(images)} images"
                        + (f" for {arch}" if arch else "")
                        + "; name the architecture")
    manifest = _load_blob(layout, images[0]["digest"])
    return manifest, _load_blob(layout, manifest["config"]["digest"])


def layer_entries(layout, manifest, bootable):
    """``(path, manifest.Entry or None, content)`` of the image's layers in
    order, as ``ostree.commit_entries`` takes them (whiteouts as removals;
    a bootable image's /etc back under /usr)."""
    from .manifest import Entry
    for layer in manifest["layers"]:
        algorithm, _, hexdigest = layer["digest"].partition(":")
        with tarfile.open(os.path.join(layout, "blobs", algorithm, hexdigest),
                          "r:*") as tar:
            for member in tar:
                path = os.path.normpath("/" + member.name)
                if bootable and (path == "/etc" or path.startswith("/etc/")):
                    path = "/usr" + path
                name = os.path.basename(path)
                if name == ".wh..wh..opq":
                    raise UserError(f"{layer['digest']}: opaque whiteouts are "
                                    "not supported")
                if name.startswith(".wh."):
                    yield os.path.join(os.path.dirname(path), name[4:]), None, None
                    continue
                xattrs = tuple(sorted(
                    (key[len("SCHILY.xattr."):],
                     value.encode("utf-8", "surrogateescape"))
                    for key, value in member.pax_headers.items()
                    if key.startswith("SCHILY.xattr.")))
                mode = stat.S_IMODE(member.mode)
                if member.isdir():
                    yield path, Entry(path, stat.S_IFDIR | mode, member.uid,
                                      member.gid, None, xattrs), None
                elif member.issym():
                    yield path, Entry(path, stat.S_IFLNK | 0o777, member.uid,
                                      member.gid, member.linkname, xattrs), None
                elif member.isfile() or member.islnk():
                    data = tar.extractfile(member).read()
                    yield path, Entry(path, stat.S_IFREG | mode, member.uid,
                                      member.gid, None, xattrs), data
                else:
                    raise UserError(f"{layer['digest']}: {member.name} is a "
                                    "device or fifo, which OSTree does not keep")


def import_layout(layout, repo_path, branch, arch=None):
    """Commit the tree an OCI image's layers make on ``branch`` of the
    repository at ``repo_path``; returns the commit."""
    manifest, config = read_image(layout, arch)
    image_labels = config.get("config", {}).get("Labels") or {}
    bootable = image_labels.get("ostree.bootable") in ("true", "1")
    return ostree.commit_entries(
        repo_path, layer_entries(layout, manifest, bootable), branch,
        f"Imported from {layout}", metadata={
            "debostree.oci-config": manifest["config"]["digest"]})


def _commits(opts):
    commits = []
    for arch, commit_file in opts["commits"]:
        with open(commit_file, encoding="utf-8") as f:
            commits.append((arch, f.read().split()[0]))
    return commits


def build(config, opts, say=print):
    """The recipe's layout from its branch commits, as ``opts`` (written by
    the graph) names them."""
    gi_repo = ostree.Repo(config.repo).open_gi()
    changes = change_counts(config.top, opts["lockfiles"])
    if shallow_checkout(config.top):
        # The same files either way, but other layers than a full clone's.
        say(f"{config.top} is a shallow clone: its layers follow the "
            "lockfile history it has, not a full clone's (git fetch "
            "--unshallow for those)")
    epoch = opts.get("source_date_epoch")
    images = [(arch, lambda blobs, arch=arch, commit=commit:
               image_manifest(gi_repo, commit, arch, opts["recipe"], blobs,
                              changes, epoch, say=say))
              for arch, commit in _commits(opts)]
    return write_layout(opts["layout"], images)


def archive(config, opts, say=print):
    """The recipe's layout as an oci-archive tarball; its times are
    SOURCE_DATE_EPOCH's, or the newest commit's."""
    epoch = opts.get("source_date_epoch")
    if epoch is None:
        gi_repo = ostree.Repo(config.repo).open_gi()
        epoch = max(ostree.commit_metadata(gi_repo, commit)[1]
                    for _, commit in _commits(opts))
    write_archive(opts["layout"], opts["archive"], epoch)
    say(f"{opts['archive']}: {os.path.getsize(opts['archive']) / 1e6:.1f} MB")
    return opts["archive"]
