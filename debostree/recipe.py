"""Recipe model and validation.

A recipe (``recipes/NAME.yaml``) describes one image: its OSTree branch
(``ref``), its architecture(s), the Debian archives it draws from by symbolic
name, and a chain of stages.  ``load_recipe`` validates everything and
returns a ``Recipe``; any problem is a ``UserError`` naming the file, the
line and the key path.  Each stage's own options are validated by its kind
(kinds/); an unknown kind is an error.
"""

import dataclasses
import os
import re
from dataclasses import dataclass, field

from . import bases, kinds, yamlsrc
from .debianlayout import ARCHITECTURES
from .errors import UserError
from .recipefields import (  # noqa: F401 (the model's names, used by others)
    ARCH_PLACEHOLDER, MAX_NAME, MAX_PATH, NAME_RE, PackageRequest, check_keys,
    describe, environment_map, shown, source_escape, string, string_list)


ARCHIVE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
SUITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
REF_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")
# Targets build.ninja always has (graph.py), and the per-recipe targets
# RECIPE/NAME besides its stages: no recipe or stage may take these names.
RESERVED_TARGETS = {"fetch", "publish", "pull-published", "update-lockfiles",
                    "check-lockfiles", "fsck", "all", "build.ninja"}
RESERVED_STAGE_NAMES = {"packages", "publish", "lockfile", "stand-ins",
                        "shell", "size", "from"} | set(ARCHITECTURES)


@dataclass(frozen=True)
class Archive:
    name: str
    suites: tuple
    components: tuple
    keyring: str = None  # absolute path, or None for the default keyring
    # False only for a frozen mirror (a snapshot) whose Release files carry
    # a Valid-Until that has passed: like apt's Check-Valid-Until: no.
    check_valid_until: bool = True


@dataclass
class Stage:
    name: str
    kind: str
    options: object   # the kind's spec (kinds/KIND.py), validated
    parent: str = None  # "recipe/stage" this stage starts from, or None
    environment: dict = field(default_factory=dict)
    line: int = None

    def for_arch(self, arch):
        """This stage as built for ``arch`` (package names with ``{arch}``)."""
        return dataclasses.replace(
            self, options=kinds.get(self.kind).for_arch(self.options, arch))


@dataclass
class Recipe:
    name: str
    path: str
    ref: str
    architectures: tuple
    archives: tuple
    stages: list
    recommends: bool = False
    environment: dict = field(default_factory=dict)
    parent: str = None  # "recipe/stage" the first stage starts from
    source: yamlsrc.Source = None
    version: str = None  # the branch commits' version; None: automatic
    image: "ImageSpec" = None  # a disk image of the deployable tree
    base: "bases.BaseSpec" = None  # a published branch the stages start from
    sysexts: list = field(default_factory=list)  # Sysext

    def stage(self, name):
        """The stage called ``name``: the recipe's, or a system
        extension's (``sysext.EXT...``)."""
        for stage in self.stages + self.sysext_stages():
            if stage.name == name:
                return stage
        return None

    def sysext_stages(self):
        return [stage for ext in self.sysexts for stage in ext.stages]

    def ref_for(self, arch):
        """The branch of the final commit for ``arch``."""
        if len(self.architectures) == 1:
            return self.ref.replace("{arch}", arch)
        return self.ref.replace("{arch}", arch) if "{arch}" in self.ref \
            else f"{self.ref}/{arch}"


@dataclass
class Sysext:
    """A system extension: stages on the recipe's tree (its last stage
    before 'deployable'), whose additions under /usr and /opt become a
    systemd-sysext image (sysext.py)."""
    name: str
    stages: list  # Stage, named sysext.NAME (packages), sysext.NAME.STAGE
    line: int = None


def recipe_name(path):
    base = os.path.basename(path)
    return base[:-5] if base.endswith(".yaml") else base


def _parent_ref(src, keypath, value):
    text = string(src, keypath, value, what="a 'recipe/stage' reference")
    if text.count("/") != 1 or not all(NAME_RE.fullmatch(p) for p in text.split("/")):
        raise src.error(keypath, f"invalid stage reference '{shown(text)}'",
                        hint="write RECIPE/STAGE, for example minimal/base")
    return text


@dataclass(frozen=True)
class ImageSpec:
    """The recipe's ``image``: sizes in bytes, kernel arguments per
    architecture."""
    size: int
    boot_size: int
    esp_size: int
    kernel_arguments: dict          # {arch: (argument, ...)}


def _image(src, value, arches):
    from .image import parse_size
    keypath = ("image",)
    if not isinstance(value, dict):
        raise src.error(keypath, f"expected a mapping with 'size', got "
                        f"{describe(value)}")
    check_keys(src, keypath, value, IMAGE_KEYS, required=("size",))
    image = {}
    for key in ("size", "boot-size", "esp-size"):
        text = value.get(key, IMAGE_DEFAULTS.get(key))
        size = parse_size(text) if isinstance(text, (str, int)) else None
        if not size or size % (1024 * 1024):
            raise src.error(keypath + (key,), f"invalid size {text!r}",
                            hint="a whole number of MiB: for example \"4G\" "
                            "or \"512M\"")
        image[key.replace("-", "_")] = size
    if image["esp_size"] < 33 * 1024 * 1024:
        raise src.error(keypath + ("esp-size",), "an EFI system partition "
                        "needs at least 33M (FAT32)")
    # A list for every architecture, or a mapping of architecture -> list
    # (serial consoles differ: ttyS0 on PCs, ttyAMA0 on ARM).
    raw = value.get("kernel-arguments", [])
    if isinstance(raw, dict):
        per_arch = {}
        for arch, items in raw.items():
            if arch not in arches:
                raise src.error(keypath + ("kernel-arguments", arch),
                                f"'{arch}' is not one of the recipe's "
                                "architectures")
            per_arch[arch] = _kernel_arguments(
                src, keypath + ("kernel-arguments", arch), items)
        image["kernel_arguments"] = {a: per_arch.get(a, ()) for a in arches}
    else:
        kargs = _kernel_arguments(src, keypath + ("kernel-arguments",), raw)
        image["kernel_arguments"] = {a: kargs for a in arches}
    return ImageSpec(**image)


def _kernel_arguments(src, keypath, value):
    kargs = string_list(src, keypath, value, what="kernel argument",
                         allow_empty=True)
    for i, karg in enumerate(kargs):
        if not KARG_RE.fullmatch(karg):
            raise src.error(keypath + (i,), f"invalid kernel argument {karg!r}",
                            hint="no spaces or quotes; one argument per item")
        if karg.split("=")[0] in ("root", "ostree"):
            raise src.error(keypath + (i,),
                            f"'{karg.split('=')[0]}=' is set by the image build")
    return tuple(kargs)


RECIPE_KEYS = {"ref", "architecture", "architectures", "archives", "stages",
               "recommends", "environment", "from", "description", "version",
               "image", "sysexts"}
IMAGE_KEYS = {"size", "kernel-arguments", "boot-size", "esp-size"}
IMAGE_DEFAULTS = {"boot-size": "512M", "esp-size": "64M"}
KARG_RE = re.compile(r"^[^\s\"']+$")
ARCHIVE_KEYS = {"name", "suites", "components", "keyring", "check-valid-until"}
STAGE_KEYS = {"name", "from", "environment"} | set(kinds.REGISTRY)


def _architectures(src, data):
    """The recipe's architectures (``architecture`` or ``architectures``)."""
    root = ()
    if ("architecture" in data) == ("architectures" in data):
        raise src.error(root, "set exactly one of 'architecture' and "
                        "'architectures'")
    if "architecture" in data:
        arches = (string(src, ("architecture",), data["architecture"],
                          what="a Debian architecture name"),)
        archkey = ("architecture",)
    else:
        arches = string_list(src, ("architectures",), data["architectures"],
                              what="Debian architecture name")
        archkey = ("architectures",)
    for i, arch in enumerate(arches):
        if arch not in ARCHITECTURES:
            raise src.error(archkey + ((i,) if len(archkey) and
                                       archkey[0] == "architectures" else ()),
                            f"unknown architecture '{arch}'",
                            hint="one of " + ", ".join(ARCHITECTURES))
    if len(set(arches)) != len(arches):
        raise src.error(archkey, "an architecture is listed twice")
    return arches


def _archives(src, data, recipe_dir):
    """The recipe's archives, each named once, keyrings found."""
    archives = []
    if "archives" in data:
        raw = data["archives"]
        if not isinstance(raw, list) or not raw:
            raise src.error(("archives",), "expected a non-empty list of archives")
        seen = set()
        for i, entry in enumerate(raw):
            keypath = ("archives", i)
            if not isinstance(entry, dict):
                raise src.error(keypath, f"expected a mapping with 'name' and "
                                f"'suites', got {describe(entry)}")
            check_keys(src, keypath, entry, ARCHIVE_KEYS,
                        required=("name", "suites"))
            aname = string(src, keypath + ("name",), entry["name"],
                            ARCHIVE_NAME_RE, "a symbolic archive name "
                            "(lower-case letters, digits, '.', '_', '-')")
            if aname in seen:
                raise src.error(keypath + ("name",), f"archive '{aname}' is "
                                "listed twice", hint="list all its suites once")
            seen.add(aname)
            suites = string_list(src, keypath + ("suites",), entry["suites"],
                                  SUITE_RE, "suite name")
            components = string_list(src, keypath + ("components",),
                                      entry.get("components", ["main"]),
                                      SUITE_RE, "component name")
            keyring = None
            if "keyring" in entry:
                keyring = string(src, keypath + ("keyring",), entry["keyring"],
                                  what="a keyring file path", max_len=MAX_PATH)
                keyring = os.path.normpath(os.path.join(recipe_dir, keyring))
                if not os.path.isfile(keyring):
                    raise src.error(keypath + ("keyring",), f"no such keyring "
                                    f"file: {keyring}")
            check_valid_until = entry.get("check-valid-until", True)
            if not isinstance(check_valid_until, bool):
                raise src.error(keypath + ("check-valid-until",), "expected "
                                f"true or false, got {describe(check_valid_until)}")
            archives.append(Archive(aname, suites, components, keyring,
                                    check_valid_until))

    return tuple(archives)


def _stages(src, data, name, arches, recipe_dir, parent, root=("stages",),
            prefix=""):
    """The recipe's stages (or a system extension's, at ``root``, named
    with ``prefix``): names, kinds (validated by each kind), the stage each
    starts from."""
    raw_stages = data
    for key in root:
        raw_stages = raw_stages[key]
    if not isinstance(raw_stages, list) or not raw_stages:
        raise src.error(root, "expected a non-empty list of stages")
    context = kinds.RecipeContext(arches, recipe_dir)
    stages = []
    names = set()
    for i, raw in enumerate(raw_stages):
        keypath = root + (i,)
        if not isinstance(raw, dict):
            raise src.error(keypath, f"expected a mapping with 'name' and one "
                            f"stage kind, got {describe(raw)}")
        check_keys(src, keypath, raw, STAGE_KEYS, required=("name",))
        sname = string(src, keypath + ("name",), raw["name"], NAME_RE,
                        "a stage name (letters, digits, '.', '_', '+', '-')")
        if sname in names:
            raise src.error(keypath + ("name",), f"stage name '{sname}' is used "
                            "twice", hint="stage names must be unique in a recipe")
        if sname in RESERVED_STAGE_NAMES:
            raise src.error(keypath + ("name",), f"a stage may not be named "
                            f"'{sname}': the recipe's targets use that name "
                            f"(RECIPE/{sname})", hint="reserved: " + ", ".join(
                                sorted(RESERVED_STAGE_NAMES)))
        if not prefix and sname.startswith(SYSEXT_PREFIX):
            raise src.error(keypath + ("name",), f"a stage name may not start "
                            f"with '{SYSEXT_PREFIX}': system extensions' "
                            "stages are named so")
        names.add(sname)
        sname = prefix + sname
        found = [k for k in raw if k in kinds.REGISTRY]
        if len(found) != 1:
            raise src.error(keypath, f"stage '{sname}' must have exactly one "
                            f"kind, found {len(found)}",
                            hint="one of " + ", ".join(kinds.REGISTRY))
        kind = found[0]
        options = kinds.get(kind).validate(src, keypath + (kind,), raw[kind],
                                           context)
        if prefix and (kind in ("bootstrap", "deployable") or "from" in raw):
            raise src.error(keypath, "a system extension's stage adds to "
                            "the recipe's tree: no 'bootstrap', 'deployable' "
                            "or 'from' there")
        stage_parent = None
        if "from" in raw:
            stage_parent = _parent_ref(src, keypath + ("from",), raw["from"])
        elif i == 0:
            stage_parent = parent
        else:
            stage_parent = f"{name}/{stages[-1].name}"
        if kind == "bootstrap" and stage_parent is not None:
            raise src.error(keypath, "a bootstrap stage starts from an empty "
                            "tree", hint="remove 'from', or use an 'install' "
                            "stage on top of the other stage")
        if kind != "bootstrap" and stage_parent is None:
            raise src.error(keypath, f"stage '{sname}' has nothing to start "
                            "from", hint="make the first stage a 'bootstrap' "
                            "stage, or give the recipe a 'from: RECIPE/STAGE'")
        stages.append(Stage(sname, kind, options, stage_parent,
                            environment_map(src, keypath + ("environment",),
                                         raw.get("environment")),
                            src.line(keypath)))
    return stages


def load_recipe(path):
    """Load and validate the recipe file at ``path``."""
    data, src = yamlsrc.load(path)
    name = recipe_name(path)
    if "/" in name or not NAME_RE.fullmatch(name.replace(" ", "_")) or \
            len(name) > MAX_NAME:
        raise UserError("invalid recipe file name", path=path,
                        hint="use letters, digits, '.', '_', '+', '-' and "
                        f"spaces, at most {MAX_NAME} characters")
    if name in RESERVED_TARGETS:
        raise UserError(f"a recipe may not be named '{name}': ninja already "
                        "has a target of that name", path=path,
                        hint="rename the file; reserved: "
                        + ", ".join(sorted(RESERVED_TARGETS)))
    if not isinstance(data, dict):
        raise UserError(f"a recipe must be a mapping, got {describe(data)}",
                        path=path, line=src.line(()))
    root = ()
    check_keys(src, root, data, RECIPE_KEYS, required=("ref", "stages"))
    ref = string(src, ("ref",), data["ref"], what="an OSTree branch name")
    if not REF_RE.fullmatch(ref.replace("{arch}", "arch")):
        raise src.error(("ref",), f"invalid OSTree ref '{shown(ref)}'",
                        hint="use letters, digits, '.', '_', '-' separated by '/'")

    arches = _architectures(src, data)

    recipe_dir = os.path.dirname(os.path.abspath(path))
    parent = None
    base = None
    if isinstance(data.get("from"), dict):
        base = _base(src, data["from"], arches)
        # The first stage starts from the base, a stage of no recipe.
        parent = f"{name}/{bases.BASE_STAGE}"
    elif "from" in data:
        parent = _parent_ref(src, ("from",), data["from"])

    archives = _archives(src, data, recipe_dir)
    if not archives and parent is None:
        raise src.error(root, "missing required key 'archives'",
                        hint="name at least one archive with its suites")

    recommends = data.get("recommends", False)
    if not isinstance(recommends, bool):
        raise src.error(("recommends",), f"expected true or false, got "
                        f"{describe(recommends)}")
    environment = environment_map(src, ("environment",), data.get("environment"))
    version = None
    if "version" in data:
        if isinstance(data["version"], (int, float)):
            raise src.error(("version",), "the version must be a string",
                            hint=f'quote it: version: "{data["version"]}"')
        version = string(src, ("version",), data["version"], VERSION_RE,
                          "a version (letters, digits, '.', '_', '+', '~', '-')")

    image = None
    if "image" in data:
        image = _image(src, data["image"], arches)

    stages = _stages(src, data, name, arches, recipe_dir, parent)
    deployable = [s for s in stages if s.kind == "deployable"]
    if deployable and stages[-1] is not deployable[-1] or len(deployable) > 1:
        index = stages.index(deployable[0])
        raise src.error(root + ("stages", index), "a 'deployable' stage must be "
                        "the recipe's last stage", hint="it moves /etc and "
                        "/var's content under /usr; later stages would not find "
                        "them")
    if image is not None and (not stages or stages[-1].kind != "deployable"):
        raise src.error(("image",), "a disk image needs a deployable tree",
                        hint="end the stages with a 'deployable' stage")
    if image is not None and not set(arches) <= {"amd64", "arm64"}:
        raise src.error(("image",), "disk images are made for amd64 and arm64 "
                        "(GRUB for EFI)", hint="drop 'image' or the other "
                        "architectures")
    sysexts = _sysexts(src, data, name, arches, recipe_dir, stages) \
        if "sysexts" in data else []
    if base is not None and stages[0].parent != parent:
        raise src.error(("stages", 0, "from"), "the first stage of a recipe "
                        "built on a published branch starts from it",
                        hint="drop the stage's 'from'")
    return Recipe(name, os.path.abspath(path), ref, arches, archives,
                  stages, recommends, environment, parent, src, version, image,
                  base, sysexts)


SYSEXT_PREFIX = "sysext."
SYSEXT_KEYS = {"name", "packages", "stages"}


def _sysexts(src, data, name, arches, recipe_dir, stages):
    """``sysexts``: each a name with ``packages`` and/or ``stages``, built
    on the last stage before the recipe's 'deployable' one."""
    value = data["sysexts"]
    if not isinstance(value, list) or not value:
        raise src.error(("sysexts",), "expected a list of system extensions "
                        "({name, packages, stages})")
    if stages[-1].kind != "deployable" or len(stages) < 2:
        raise src.error(("sysexts",), "system extensions need a deployable "
                        "recipe", hint="systemd-sysext merges them on a booted "
                        "system: end the stages with a 'deployable' stage")
    base = stages[-2]
    found, names = [], set()
    for i, raw in enumerate(value):
        keypath = ("sysexts", i)
        if not isinstance(raw, dict):
            raise src.error(keypath, f"expected a mapping with 'name' and "
                            f"'packages' or 'stages', got {describe(raw)}")
        check_keys(src, keypath, raw, SYSEXT_KEYS, required=("name",))
        ext = string(src, keypath + ("name",), raw["name"], NAME_RE,
                     "an extension name (letters, digits, '.', '_', '+', '-')")
        if ext in names:
            raise src.error(keypath + ("name",), f"system extension '{ext}' "
                            "is listed twice")
        names.add(ext)
        if "packages" not in raw and "stages" not in raw:
            raise src.error(keypath, f"system extension '{ext}' adds nothing",
                            hint="give it 'packages', 'stages' or both")
        ext_stages = []
        parent = f"{name}/{base.name}"
        if "packages" in raw:
            spec = kinds.get("install").validate(
                src, keypath + ("packages",), raw["packages"],
                kinds.RecipeContext(arches, recipe_dir))
            ext_stages.append(Stage(f"{SYSEXT_PREFIX}{ext}", "install", spec,
                                    parent, {}, src.line(keypath)))
            parent = f"{name}/{ext_stages[-1].name}"
        if "stages" in raw:
            ext_stages += _stages(src, data, name, arches, recipe_dir, parent,
                                  root=keypath + ("stages",),
                                  prefix=f"{SYSEXT_PREFIX}{ext}.")
        found.append(Sysext(ext, ext_stages, src.line(keypath)))
    return found


def _base(src, value, arches):
    """``from: {remote: NAME, ref: BRANCH}``: a published branch."""
    check_keys(src, ("from",), value, {"remote", "ref"},
               required=("remote", "ref"))
    remote = string(src, ("from", "remote"), value["remote"], NAME_RE,
                    "a remote name (letters, digits, '.', '_', '+', '-')")
    ref = string(src, ("from", "ref"), value["ref"], what="an OSTree branch")
    if not REF_RE.fullmatch(ref.replace("{arch}", "arch")):
        raise src.error(("from", "ref"), f"invalid OSTree ref '{shown(ref)}'",
                        hint="use letters, digits, '.', '_', '-' separated by "
                        "'/' ({arch} for each architecture)")
    if len(arches) > 1 and "{arch}" not in ref:
        raise src.error(("from", "ref"), "one branch for several "
                        "architectures", hint="put {arch} in it, e.g. "
                        "exampleos/trixie/{arch}/server")
    return bases.BaseSpec(remote, ref)


def load_recipes(directory):
    """Load every ``*.yaml`` recipe under ``directory``, sorted by name."""
    try:
        files = sorted(f for f in os.listdir(directory) if f.endswith(".yaml"))
    except OSError as error:
        raise UserError(f"cannot list recipes: {error.strerror}", path=directory)
    recipes = [load_recipe(os.path.join(directory, f)) for f in files]
    check_references(recipes)
    check_refs_unique(recipes)
    return recipes


def check_refs_unique(recipes):
    """Two recipes committing to one branch would overwrite each other."""
    owners = {}
    for rec in recipes:
        for arch in rec.architectures:
            ref = rec.ref_for(arch)
            if ref in owners and owners[ref] is not rec:
                other = owners[ref]
                raise rec.source.error(
                    ("ref",), f"ref '{ref}' is also the ref of recipe "
                    f"'{other.name}' ({other.path}:{other.source.line(('ref',))})",
                    hint="give each recipe a ref of its own")
            owners[ref] = rec


def check_references(recipes):
    """Check that every 'from' names an existing recipe stage, with no cycles."""
    by_name = {r.name: r for r in recipes}
    for recipe in recipes:
        for index, stage in enumerate(recipe.stages):
            if stage.parent is None or is_base_parent(recipe, stage.parent):
                continue
            other_name, other_stage = stage.parent.split("/")
            keypath = ("stages", index, "from") if index or recipe.parent is None \
                else ("from",)
            other = by_name.get(other_name)
            if other is None:
                raise recipe.source.error(keypath, f"no recipe named "
                                          f"'{other_name}'", hint="recipes are "
                                          "the files in the recipes directory")
            if other.stage(other_stage) is None:
                raise recipe.source.error(keypath, f"recipe '{other_name}' has "
                                          f"no stage '{other_stage}'")
            if other is not recipe and not set(recipe.architectures) <= \
                    set(other.architectures):
                raise recipe.source.error(keypath, f"recipe '{other_name}' is "
                                          "not built for all of this recipe's "
                                          "architectures")
    # Cycles: follow parents from every stage.
    for recipe in recipes:
        for stage in recipe.stages:
            seen = set()
            current = (recipe.name, stage.name)
            while current is not None:
                if current in seen:
                    raise recipe.source.error(("stages",), "stages start from "
                                              "each other in a cycle: "
                                              + " -> ".join("/".join(s) for s in seen))
                seen.add(current)
                owner = by_name[current[0]]
                parent = owner.stage(current[1]).parent
                current = tuple(parent.split("/")) if parent and \
                    not is_base_parent(owner, parent) else None


def is_base_parent(recipe, parent):
    """Whether ``parent`` (a stage's "recipe/stage") is ``recipe``'s
    published base rather than a stage of a recipe."""
    return recipe.base is not None and \
        parent == f"{recipe.name}/{bases.BASE_STAGE}"
