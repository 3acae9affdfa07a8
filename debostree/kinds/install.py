"""The 'install' stage kind: ``apt-get install`` of locked packages in the
image, from a private file: archive of exactly the stage's locked .debs (so
apt in the image installs what the lockfile says, nothing newer)."""

import os
import shutil
from dataclasses import dataclass

from .. import fetch, native, resolve
from ..recipefields import package_requests
from .base import Kind, PackageFile, StageOptions, package_requests_for_arch

# apt in the image, pointed at the stage's own archive and kept from
# writing caches into the tree.
APT = ("apt-get -o Dir::Etc::SourceList=/run/debostree/apt/sources.list "
       "-o Dir::Etc::SourceParts=/run/debostree/none "
       "-o Dir::State::Lists=/tmp/lists -o Dir::Cache::Archives=/tmp/archives "
       "-o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= "
       "-o APT::Sandbox::User=root -o Acquire::Languages=none")


@dataclass(frozen=True)
class InstallSpec:
    packages: tuple                 # PackageRequest


@dataclass(kw_only=True)
class InstallOptions(StageOptions):
    packages: list                  # PackageFile: the stage's locked packages

    NESTED = {"packages": PackageFile}


class Install(Kind):
    name = "install"
    Options = InstallOptions
    uses_stand_ins = True

    def validate(self, src, keypath, value, context):
        return InstallSpec(package_requests(src, keypath, value,
                                            context.architectures))

    def for_arch(self, spec, arch):
        return package_requests_for_arch(spec, arch)

    def requests(self, spec):
        return spec.packages

    def resolve(self, root, spec, state, context):
        return resolve.resolve_install(root, spec.packages, state, context)

    def options(self, graph, recipe, arch, stage, entries):
        return {"packages": [PackageFile.of(e, fetch.pool_path(
            graph.config.pool, e.sha256)) for e in entries]}, \
            [graph.fetch_edge(e) for e in entries]

    def script(self, opts, work, target):
        apt_dir = os.path.join(work.run, "apt")
        os.makedirs(apt_dir)
        with open(os.path.join(apt_dir, "Packages"), "w") as f:
            f.write("\n".join(p.stanza for p in opts.packages))
        for pkg in opts.packages:
            link = os.path.join(apt_dir, pkg.filename)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            try:
                os.link(pkg.pool_path, link)
            except OSError:
                shutil.copyfile(pkg.pool_path, link)
        with open(os.path.join(apt_dir, "sources.list"), "w") as f:
            f.write("deb [trusted=yes] file:/run/debostree/apt ./\n")
        names = " ".join(
            f"{p.name}={p.version}" if p.arch == "all"
            else f"{p.name}:{p.arch}={p.version}" for p in opts.packages)
        return ["mkdir -p /tmp/lists/partial /tmp/archives/partial",
                f"{APT} update",
                f"{APT} install -y --no-install-recommends {names}"]

    def stand_ins(self, config, opts, target, triplet, host_root):
        incoming = native.deb_paths(p.pool_path for p in opts.packages)
        return native.stand_ins(target, config.host_arch, triplet,
                                host_root=host_root,
                                keep_versions={p.name: p.version
                                               for p in opts.packages},
                                incoming=incoming,
                                initramfs_kept_apart=initramfs_deferred(opts))


def initramfs_deferred(opts):
    """Why no initramfs is made in this stage, or None.  INITRD=No is what
    Debian's kernel packages pass their hooks for a kernel without one, and
    the hooks of initramfs-tools and dracut honour it."""
    if opts.environment.get("INITRD") == "No":
        return "the initramfs is deferred (INITRD=No)"
    return None


KIND = Install()
