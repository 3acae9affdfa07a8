"""The 'remove' stage kind: packages purged from the image (with apt when
the image has it, else dpkg)."""

from dataclasses import dataclass

from .. import resolve
from ..recipefields import PACKAGE_RE, shown, string_list
from .base import Kind, StageOptions


@dataclass(frozen=True)
class RemoveSpec:
    packages: tuple                 # NAME or NAME:ARCH


@dataclass(kw_only=True)
class RemoveOptions(StageOptions):
    packages: list


class Remove(Kind):
    name = "remove"
    Options = RemoveOptions

    def validate(self, src, keypath, value, context):
        names = string_list(src, keypath, value, what="package name")
        for i, name in enumerate(names):
            if not PACKAGE_RE.fullmatch(name) or "=" in name:
                raise src.error(keypath + (i,),
                                f"invalid package name '{shown(name)}'")
        return RemoveSpec(names)

    def resolve(self, root, spec, state, context):
        return resolve.resolve_remove(root, spec.packages, state, context)

    def options(self, graph, recipe, arch, stage, entries):
        return {"packages": list(stage.options.packages)}, []

    def script(self, opts, work, target):
        names = " ".join(opts.packages)
        return [f"if command -v apt-get >/dev/null; then "
                f"apt-get -o Dir::State::Lists=/tmp/lists -o Dir::Cache::pkgcache= "
                f"-o Dir::Cache::srcpkgcache= purge -y {names}; "
                f"else dpkg --purge {names}; fi"]


KIND = Remove()
