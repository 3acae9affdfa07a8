"""Stage kinds: one module per kind, and the registry of them.

A kind (``base.Kind``) owns everything about its stages: the recipe's
validation, the packages it asks the resolver for, its options and implicit
inputs in the graph (an options dataclass per kind, written by configure and
read back by the stage), and its run (preparation, the command and script in
the sandbox, native stand-ins, what follows the command).

Adding a kind: a module here with a ``KIND``, a line in ``REGISTRY``, and
its executable ``stages/NAME``.
"""

from ..errors import UserError
from . import bootstrap, copy, deployable, install, remove, run
from .base import Kind, RecipeContext, StageOptions, read_options  # noqa: F401

REGISTRY = {kind.name: kind for kind in (
    bootstrap.KIND, install.KIND, remove.KIND, run.KIND, copy.KIND,
    deployable.KIND)}


def get(name):
    """The kind named ``name``; an unknown name is an error."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown stage kind {name!r}",
                        hint="one of " + ", ".join(REGISTRY)) from None


def load_options(path):
    """A stage's options file, as its kind's options dataclass."""
    return read_options(path, REGISTRY)


def resolve_stage(root, stage, state, context):
    """Resolve one stage (already ``for_arch``) on top of ``state``:
    ``(new_state, installed)``, the packages tagged with the stage."""
    new_state, installed = get(stage.kind).resolve(root, stage.options, state,
                                                   context)
    for pkg in installed:
        pkg.stage = stage.name
    return new_state, installed
