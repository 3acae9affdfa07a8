"""The 'deployable' stage kind: the last stage of a bootable recipe.  Its
script builds the initramfs (dracut) for the tree's kernel; then the tree
is rearranged into what ``ostree admin deploy`` expects (deployable.py)."""

from dataclasses import dataclass

from .. import deployable, native, proc
from ..recipefields import NAME_RE, check_keys, describe, shown, string_list
from ..stagefiles import RUN_INSIDE
from .base import Kind, StageOptions


@dataclass(frozen=True)
class DeployableSpec:
    dracut_modules: tuple = ()


@dataclass(kw_only=True)
class DeployableOptions(StageOptions):
    dracut_modules: list
    # With system extensions: os-release's SYSEXT_LEVEL (sysext.py).
    sysext_level: str = None


class Deployable(Kind):
    name = "deployable"
    Options = DeployableOptions
    # dracut runs on the target's programs, or on the host builds of the
    # same versions (native.py): with those bound in, the copies it makes of
    # them are replaced by the tree's own files, read from a view of the
    # tree without them (deployable.INSTALL_WRAPPER_TEXT).
    uses_stand_ins = True
    pristine_view = RUN_INSIDE + "/sysroot"

    def validate(self, src, keypath, value, context):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise src.error(keypath, f"expected a mapping (or {{}}), got "
                            f"{describe(value)}")
        check_keys(src, keypath, value, {"dracut-modules"})
        modules = string_list(src, keypath + ("dracut-modules",),
                              value.get("dracut-modules", []),
                              what="dracut module name", allow_empty=True)
        for i, module in enumerate(modules):
            if not NAME_RE.fullmatch(module):
                raise src.error(keypath + ("dracut-modules", i),
                                f"invalid dracut module name '{shown(module)}'")
        return DeployableSpec(tuple(modules))

    def options(self, graph, recipe, arch, stage, entries):
        # SYSEXT_LEVEL, for a recipe with system extensions: the level key
        # of the stage before this one (graph.py), which follows every
        # input of the tree (the recipe's stages, their packages and files)
        # but not where or by whom or with which version of this tool it
        # is built: the same on any machine, and another for any other
        # base, on which systemd-sysext then refuses this one's extensions.
        level = None
        if getattr(recipe, "sysexts", None):
            parent_recipe, parent_stage = stage.parent.split("/")
            level = graph.level_keys[(parent_recipe, arch, parent_stage)][:16]
        return {"dracut_modules": list(stage.options.dracut_modules),
                "sysext_level": level}, []

    def script(self, opts, work, target):
        deployable.write_dracut_helpers(work)
        return deployable.kernel_script(opts.dracut_modules)

    def stand_ins(self, config, opts, target, triplet, host_root):
        return native.stand_ins(
            target, config.host_arch, triplet, host_root=host_root,
            initramfs_kept_apart="dracut's copies of them are replaced by "
            "the tree's own")

    def finish(self, opts, target, helper, env):
        proc.run(helper + ["deployable", target]
                 + ([opts.sysext_level] if opts.sysext_level else []), env=env)


KIND = Deployable()
