"""The 'run' stage kind: a shell script run in the image (``set -e``)."""

from dataclasses import dataclass

from .. import deployable
from ..recipefields import MAX_SCRIPT, string, string_list
from .base import Kind, StageOptions


@dataclass(frozen=True)
class RunSpec:
    script: str


@dataclass(kw_only=True)
class RunOptions(StageOptions):
    script: str


class Run(Kind):
    name = "run"
    Options = RunOptions

    def validate(self, src, keypath, value, context):
        if isinstance(value, list):
            lines = string_list(src, keypath, value, what="shell command",
                                max_len=MAX_SCRIPT)
            return RunSpec("\n".join(lines))
        return RunSpec(string(src, keypath, value, what="a shell command",
                              max_len=MAX_SCRIPT))

    def options(self, graph, recipe, arch, stage, entries):
        return {"script": stage.options.script}, []

    def command(self, opts):
        return ["/bin/sh", "-c", "set -e\n" + opts.script]

    def warnings(self, opts, target, base_manifest):
        # A command may make what a package would not: a host key, a
        # machine ID.  Shared by every device, it is worth a word.
        return [f"warning: {opts.label}: {path}: the stage left a "
                "per-machine secret in the tree; every device built from it "
                "would share it (a deployable stage removes it)"
                for path in deployable.machine_secrets(target)
                if path not in base_manifest]


KIND = Run()
