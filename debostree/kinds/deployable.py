"""The 'deployable' stage kind: the last stage of a bootable recipe.  Its
script builds the initramfs (dracut) for the tree's kernel; then the tree
is rearranged into what ``ostree admin deploy`` expects (deployable.py)."""

import hashlib
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
        return {"dracut_modules": list(stage.options.dracut_modules)}, []

    def script(self, opts, work, target):
        deployable.write_dracut_helpers(work)
        return deployable.kernel_script(opts.dracut_modules)

    def stand_ins(self, config, opts, target, triplet, host_root):
        return native.stand_ins(
            target, config.host_arch, triplet, host_root=host_root,
            initramfs_kept_apart="dracut's copies of them are replaced by "
            "the tree's own")

    # os-release's SYSEXT_LEVEL comes from the tree this stage starts
    # from: every other tree (any change before this stage) refuses the
    # system extensions built for this one (sysext.py), and the same tree
    # gets the same level on any machine, with any version of this tool.
    wants_base_tree = True

    def finish(self, opts, target, helper, env, base_tree=None):
        level = hashlib.sha256(base_tree.encode()).hexdigest()[:16] \
            if base_tree else None
        proc.run(helper + ["deployable", target] + ([level] if level else []),
                 env=env)


KIND = Deployable()
