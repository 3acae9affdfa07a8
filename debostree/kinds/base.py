"""What every stage kind provides (``Kind``), and the options contract
between configure (which writes a stage's options file) and the stage
(which reads it back): ``StageOptions`` and a dataclass per kind."""

import dataclasses
import json
from dataclasses import dataclass, field

from .. import lockfile
from ..errors import UserError

# Marks an options field that is left out of the file while it is None, so
# that files stay as they were before the field existed.
OMIT_IF_NONE = {"omit_if_none": True}

SCRIPT_COMMAND = ["/bin/sh", "-e", "/run/debostree/script"]


def plain(value):
    """Options (dataclasses, lists, mappings) as JSON values."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if not (f.metadata.get("omit_if_none")
                        and getattr(value, f.name) is None)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


# Marks an options field that only names a place on this machine (a path in
# the pool or the build directory): left out of the stage's input key
# (cachekey.py), whose content is covered otherwise (a package's SHA256).
NOT_IN_KEY = {"in_key": False}


def key_value(value):
    """Options as they enter the stage's input key (cachekey.py): as
    ``plain``, without ``NOT_IN_KEY`` fields; a value with a ``key_value``
    method gives its own."""
    if hasattr(value, "key_value"):
        return value.key_value()
    if dataclasses.is_dataclass(value):
        return {f.name: key_value(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if f.metadata.get("in_key", True)
                and not (f.metadata.get("omit_if_none")
                         and getattr(value, f.name) is None)}
    if isinstance(value, (list, tuple)):
        return [key_value(v) for v in value]
    if isinstance(value, dict):
        return {k: key_value(v) for k, v in value.items()}
    return value


def decode(cls, data, what):
    """``cls`` from a mapping read from a file, every field known."""
    if not isinstance(data, dict):
        raise UserError(f"{what}: expected a mapping, got {type(data).__name__}",
                        hint="run ./configure again")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in data and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if unknown or missing:
        raise UserError(f"{what}: " + "; ".join(
            ([f"unknown fields {', '.join(unknown)}"] if unknown else [])
            + ([f"missing fields {', '.join(missing)}"] if missing else [])),
            hint="the options file is from another version: run ./configure")
    return cls(**data)


@dataclass
class PackageFile:
    """A locked package as a stage installs it."""
    name: str
    version: str
    arch: str
    sha256: str
    filename: str                   # its path in the archive
    pool_path: str = field(metadata=NOT_IN_KEY)  # the verified .deb
    stanza: str                     # its Packages stanza
    # The name dpkg knows it by (NAME:ARCH when Multi-Arch: same); only a
    # bootstrap, which writes dpkg's status itself, needs it.
    dpkg_name: str = field(default=None, metadata=OMIT_IF_NONE)

    @classmethod
    def of(cls, entry, pool_path, with_dpkg_name=False):
        dpkg_name = None
        if with_dpkg_name:
            dpkg_name = f"{entry.name}:{entry.arch}" \
                if entry.get("Multi-Arch") == "same" else entry.name
        return cls(entry.name, entry.version, entry.arch, entry.sha256,
                   entry.filename, pool_path, lockfile.stanza_text(entry.fields),
                   dpkg_name)


@dataclass(kw_only=True)
class StageOptions:
    """What every stage's options file holds; a kind's ``Options`` adds its
    own fields."""
    recipe: str
    arch: str
    stage: str
    kind: str
    ref: str                        # the stage's ref in the build repository
    environment: dict               # variables of the stage's command
    source_date_epoch: int
    commit_timestamp: int = None    # None: the time of the commit
    # Foreign architectures: the target's fakeroot library (sandboxlib.py),
    # and the locked host-architecture packages whose programs may stand in
    # for emulated ones (PackageFile, native.py).
    # (Its version is the host's fakeroot's: cachekey.tool_versions.)
    fakeroot_deb: str = field(default=None,
                              metadata={**OMIT_IF_NONE, **NOT_IN_KEY})
    stand_ins: list = field(default=None, metadata=OMIT_IF_NONE)

    # Fields holding lists of dataclasses: {field: class}.
    NESTED = {"stand_ins": PackageFile}

    @property
    def label(self):
        return f"{self.recipe}/{self.stage}"

    def to_json(self):
        return plain(self)

    @classmethod
    def from_json(cls, data, what="stage options"):
        values = dict(data) if isinstance(data, dict) else data
        nested = {}
        for klass in reversed(cls.__mro__):  # a kind's fields and the base's
            nested.update(getattr(klass, "NESTED", {}))
        if isinstance(values, dict):
            for name, item_class in nested.items():
                if isinstance(values.get(name), list):
                    values[name] = [decode(item_class, item, f"{what}: {name}")
                                    for item in values[name]]
        return decode(cls, values, what)


@dataclass(frozen=True)
class RecipeContext:
    """What a kind's validation may need of the recipe around the stage."""
    architectures: tuple
    dir: str                        # the recipe file's directory


class Kind:
    """A stage kind.  The defaults are those of a kind that runs a script
    in the sandbox and resolves no packages."""

    name = None
    Options = StageOptions
    # Whether services must be kept from starting (policy-rc.d) while the
    # stage runs: whenever packages may be configured.
    keeps_services_stopped = True
    # Whether host programs may stand in for emulated ones in a foreign
    # stage of this kind (``stand_ins``): the lockfile then pins them.
    uses_stand_ins = False
    # Where, while stand-ins are bound in, the stage's tree is mounted a
    # second time without them (a path inside the sandbox, announced to the
    # script as $DEBOSTREE_SYSROOT), or None: for a command that must read
    # the target's own programs, such as an initramfs generator.
    pristine_view = None

    # -- the recipe -------------------------------------------------------
    def validate(self, src, keypath, value, context):
        """The recipe's value for this kind -> the stage's spec (a frozen
        dataclass); a problem is ``src.error``."""
        raise NotImplementedError

    def for_arch(self, spec, arch):
        """The spec as built for ``arch`` ({arch} in package names)."""
        return spec

    # -- update-lockfiles -------------------------------------------------
    def requests(self, spec):
        """The package requests the lockfile must satisfy."""
        return ()

    def resolve(self, root, spec, state, context):
        """``(new_state, installed)`` after this stage (resolve.py)."""
        return state.copy(), []

    # -- configure ----------------------------------------------------------
    def options(self, graph, recipe, arch, stage, entries):
        """This kind's fields of the stage's options and the implicit
        inputs of its edge: ``({field: value}, [path, ...])``.  ``entries``
        are the lockfile's packages for the stage."""
        return {}, []

    # -- the stage run --------------------------------------------------------
    def plan(self, run):
        """On the host, before the checkout (``run`` is the
        ``stagerun.Stage``)."""

    def base(self, run):
        """``(commit, manifest)`` the stage starts from, or None for the
        parent stage's."""
        return None

    def copy_first(self, base_manifest):
        """Paths to copy up before the fakeroot daemon starts."""
        return ()

    def prepare(self, opts, tree):
        """Under fakeroot, on the host side, before the command
        (``tree``: a treepath.Tree of the stage's tree)."""

    def command(self, opts):
        """The command run in the sandbox."""
        return SCRIPT_COMMAND

    def script(self, opts, work, target):
        """The lines of /run/debostree/script (``work``: WorkFiles)."""
        return []

    def stand_ins(self, config, opts, target, triplet, host_root):
        """Host programs (from ``host_root``: the locked stand-in packages)
        that may run in place of the target's in a foreign stage
        (native.py), or None: never for this kind."""
        return None

    def finish(self, opts, target, helper, env):
        """Under fakeroot, after the command."""

    def warnings(self, opts, target, base_manifest):
        """Lines about the resulting tree for the user's terminal."""
        return []


def read_options(path, registry):
    """A stage's options file, as the dataclass of its kind."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except ValueError as error:
            raise UserError(f"{path}: not JSON ({error})",
                            hint="run ./configure again")
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in registry:
        raise UserError(f"{path}: unknown stage kind {kind!r}",
                        hint="run ./configure again")
    return registry[kind].Options.from_json(data, what=path)


def package_requests_for_arch(spec, arch):
    """``spec`` with ``{arch}`` in its package requests' names replaced."""
    return dataclasses.replace(
        spec, packages=tuple(r.for_arch(arch) for r in spec.packages))
