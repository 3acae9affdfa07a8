"""Recipe model and validation.

A recipe (``recipes/NAME.yaml``) describes one image: its OSTree branch
(``ref``), its architecture(s), the Debian archives it draws from by symbolic
name, and a chain of stages.  ``load_recipe`` validates everything and
returns a ``Recipe``; any problem is a ``UserError`` naming the file, the
line and the key path.  The stage kinds are an explicit table (``STAGE_KINDS``);
an unknown kind is an error.
"""

import dataclasses
import os
import re
from dataclasses import dataclass, field

from . import yamlsrc
from .errors import UserError

# mmdebstrap's variants: what a bootstrap stage starts from before its
# extra packages.  "minbase" is an alias of "required" there, too.
VARIANTS = ("custom", "essential", "apt", "required", "minbase", "important",
            "standard")

# Debian architecture names this tool knows how to build.
ARCHITECTURES = ("amd64", "arm64", "armhf", "armel", "i386", "ppc64el",
                 "riscv64", "s390x", "mips64el")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
ARCHIVE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
SUITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
# A package request: name, optionally :arch and/or =version.
PACKAGE_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9+.-]+)(?::(?P<arch>[a-z0-9-]+))?"
    r"(?:=(?P<version>[A-Za-z0-9.+~:-]+))?$")
REF_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MODE_RE = re.compile(r"^0?[0-7]{3,4}$")
OWNER_RE = re.compile(r"^([a-z_][a-z0-9_-]*|[0-9]+)$")
MAX_NAME = 255
MAX_PATH = 4095
MAX_SCRIPT = 1 << 20
# Targets build.ninja always has (graph.py), and the per-recipe targets
# RECIPE/NAME besides its stages: no recipe or stage may take these names.
RESERVED_TARGETS = {"fetch", "publish", "pull-published", "update-lockfiles",
                    "check-lockfiles", "fsck", "all", "build.ninja"}
RESERVED_STAGE_NAMES = {"packages", "publish", "lockfile"} | set(ARCHITECTURES)





@dataclass(frozen=True)
class Archive:
    name: str
    suites: tuple
    components: tuple
    keyring: str = None  # absolute path, or None for the default keyring
    # False only for a frozen mirror (a snapshot) whose Release files carry
    # a Valid-Until that has passed: like apt's Check-Valid-Until: no.
    check_valid_until: bool = True


ARCH_PLACEHOLDER = "{arch}"
ARCH_TOKEN = "0debostree0arch0"  # stands in for {arch} while matching


@dataclass(frozen=True)
class PackageRequest:
    name: str
    arch: str = None
    version: str = None

    def for_arch(self, arch):
        """The request with ``{arch}`` in its name replaced by ``arch``."""
        if ARCH_PLACEHOLDER not in self.name:
            return self
        return dataclasses.replace(self, name=self.name.replace(ARCH_PLACEHOLDER, arch))

    def __str__(self):
        text = self.name
        if self.arch:
            text += ":" + self.arch
        if self.version:
            text += "=" + self.version
        return text


@dataclass(frozen=True)
class CopyItem:
    src: str          # path relative to the recipe's directory
    dest: str         # absolute path in the image
    owner: str = "root"
    group: str = "root"
    mode: str = None  # octal string; None keeps the source's permission bits


@dataclass
class Stage:
    name: str
    kind: str
    options: dict     # kind-specific, validated
    parent: str = None  # "recipe/stage" this stage starts from, or None
    environment: dict = field(default_factory=dict)
    line: int = None

    def for_arch(self, arch):
        """This stage as built for ``arch`` (package names with ``{arch}``)."""
        if "packages" not in self.options or self.kind == "remove":
            return self
        packages = tuple(r.for_arch(arch) for r in self.options["packages"])
        return dataclasses.replace(self, options={**self.options,
                                                  "packages": packages})


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
    image: dict = None   # {size, boot_size, esp_size (bytes),
    #                      kernel_arguments: {arch: (argument, ...)}}

    def stage(self, name):
        for stage in self.stages:
            if stage.name == name:
                return stage
        return None

    def ref_for(self, arch):
        """The branch of the final commit for ``arch``."""
        if len(self.architectures) == 1:
            return self.ref.replace("{arch}", arch)
        return self.ref.replace("{arch}", arch) if "{arch}" in self.ref \
            else f"{self.ref}/{arch}"


def recipe_name(path):
    base = os.path.basename(path)
    return base[:-5] if base.endswith(".yaml") else base


def _check_keys(src, keypath, mapping, allowed, required=()):
    for key in mapping:
        if key not in allowed:
            raise src.error(keypath + (key,), f"unknown key '{_shown(key)}'",
                            hint="allowed here: " + ", ".join(sorted(allowed)))
    for key in required:
        if key not in mapping:
            raise src.error(keypath, f"missing required key '{key}'")


def _shown(value, limit=60):
    """A value as an error line shows it: one line, not too long."""
    text = repr(value)[1:-1] if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _string(src, keypath, value, pattern=None, what="a string",
            max_len=MAX_NAME):
    if not isinstance(value, str) or not value:
        raise src.error(keypath, f"expected {what}, got {_describe(value)}")
    if max_len and len(value) > max_len:
        raise src.error(keypath, f"{len(value)} characters is too long for "
                        f"{what} (at most {max_len})")
    if pattern is not None and not pattern.fullmatch(value):
        raise src.error(keypath, f"invalid value '{_shown(value)}'",
                        hint=f"expected {what}")
    if any(c in value for c in "\0\n\r") and max_len == MAX_NAME:
        raise src.error(keypath, f"invalid value '{_shown(value)}': a line "
                        "break or NUL in it", hint=f"expected {what}")
    return value


def _string_list(src, keypath, value, pattern=None, what="a string",
                 allow_empty=False, max_len=MAX_NAME):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise src.error(keypath, f"expected a list of {what}s, got "
                        f"{_describe(value)}")
    if not value and not allow_empty:
        raise src.error(keypath, "the list is empty")
    return tuple(_string(src, keypath + (i,), item, pattern, what, max_len)
                 for i, item in enumerate(value))


def _describe(value):
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return f"number {value}"
    return f"'{_shown(value)}'"


def _environment(src, keypath, value):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise src.error(keypath, f"expected a mapping of variable names to "
                        f"values, got {_describe(value)}")
    env = {}
    for name, val in value.items():
        if not ENV_NAME_RE.fullmatch(name):
            raise src.error(keypath + (name,), "invalid environment variable name")
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            raise src.error(keypath + (name,), f"expected a string value, got "
                            f"{_describe(val)}")
        if "\0" in str(val) or len(str(val)) > MAX_PATH:
            raise src.error(keypath + (name,), "a NUL character or more than "
                            f"{MAX_PATH} characters in the value")
        env[name] = str(val)
    return env


def _packages(src, keypath, value, arch_names, allow_empty=False):
    names = _string_list(src, keypath, value, what="package name",
                         allow_empty=allow_empty)
    requests = []
    for i, text in enumerate(names):
        # "{arch}" in a name is each architecture's name (linux-image-{arch}).
        match = PACKAGE_RE.fullmatch(text.replace(ARCH_PLACEHOLDER, ARCH_TOKEN))
        if not match:
            raise src.error(keypath + (i,), f"invalid package request '{_shown(text)}'",
                            hint="write NAME, NAME:ARCH or NAME=VERSION; "
                            "{arch} in NAME stands for each architecture")
        if match["arch"] and match["arch"] not in arch_names + ("all",):
            raise src.error(keypath + (i,), f"architecture '{match['arch']}' "
                            f"is not one of the recipe's architectures")
        if ARCH_PLACEHOLDER in (match["arch"] or "") + (match["version"] or ""):
            raise src.error(keypath + (i,), "{arch} may only be in the package "
                            "name", hint="for example linux-image-{arch}")
        requests.append(PackageRequest(
            match["name"].replace(ARCH_TOKEN, ARCH_PLACEHOLDER),
            match["arch"], match["version"]))
    return tuple(requests)


def _parent_ref(src, keypath, value):
    text = _string(src, keypath, value, what="a 'recipe/stage' reference")
    if text.count("/") != 1 or not all(NAME_RE.fullmatch(p) for p in text.split("/")):
        raise src.error(keypath, f"invalid stage reference '{_shown(text)}'",
                        hint="write RECIPE/STAGE, for example minimal/base")
    return text


def _stage_bootstrap(src, keypath, value, recipe):
    if not isinstance(value, dict):
        raise src.error(keypath, f"expected a mapping with 'variant' and "
                        f"'packages', got {_describe(value)}")
    _check_keys(src, keypath, value, {"variant", "packages"})
    variant = value.get("variant", "minbase")
    if variant not in VARIANTS:
        raise src.error(keypath + ("variant",), f"unknown variant '{_shown(variant)}'",
                        hint="one of " + ", ".join(VARIANTS))
    if variant == "minbase":
        variant = "required"
    packages = _packages(src, keypath + ("packages",), value.get("packages", []),
                         recipe["architectures"], allow_empty=True)
    if variant == "custom" and not packages:
        raise src.error(keypath, "variant 'custom' needs a list of packages")
    return {"variant": variant, "packages": packages}


def _stage_install(src, keypath, value, recipe):
    return {"packages": _packages(src, keypath, value, recipe["architectures"])}


def _stage_remove(src, keypath, value, recipe):
    names = _string_list(src, keypath, value, what="package name")
    for i, name in enumerate(names):
        if not PACKAGE_RE.fullmatch(name) or "=" in name:
            raise src.error(keypath + (i,), f"invalid package name '{_shown(name)}'")
    return {"packages": names}


def _stage_run(src, keypath, value, recipe):
    if isinstance(value, list):
        lines = _string_list(src, keypath, value, what="shell command",
                             max_len=MAX_SCRIPT)
        script = "\n".join(lines)
    else:
        script = _string(src, keypath, value, what="a shell command",
                         max_len=MAX_SCRIPT)
    return {"script": script}


def source_escape(base, full):
    """Where ``full`` (a copy stage's source) leads when a symbolic link on
    its way leaves the directory ``base``, else None.  A source that is
    itself a link is copied as the link, so only its directory counts."""
    base = os.path.realpath(base)
    real = os.path.realpath(full if not os.path.islink(full)
                            else os.path.dirname(full))
    if real == base or real.startswith(base.rstrip("/") + "/"):
        return None
    return real


def _stage_copy(src, keypath, value, recipe):
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise src.error(keypath, "expected a list of {src, dest} mappings")
    items = []
    for i, item in enumerate(value):
        itempath = keypath + (i,)
        if not isinstance(item, dict):
            raise src.error(itempath, f"expected a mapping with 'src' and "
                            f"'dest', got {_describe(item)}")
        _check_keys(src, itempath, item, {"src", "dest", "owner", "group", "mode"},
                    required=("src", "dest"))
        source = _string(src, itempath + ("src",), item["src"], what="a path",
                         max_len=MAX_PATH)
        if os.path.isabs(source) or ".." in source.split("/"):
            raise src.error(itempath + ("src",), f"'{source}' must be a path "
                            "inside the recipe's directory",
                            hint="write it relative to the recipe file")
        full = os.path.join(recipe["dir"], source)
        if not os.path.lexists(full):
            raise src.error(itempath + ("src",), f"no such file or directory: "
                            f"{full}")
        escape = source_escape(recipe["dir"], full)
        if escape:
            raise src.error(itempath + ("src",), f"'{source}' leads out of the "
                            f"recipe's directory (to {escape}) through a "
                            "symbolic link", hint="copy the files into the "
                            "recipe's directory")
        dest = _string(src, itempath + ("dest",), item["dest"], what="a path",
                       max_len=MAX_PATH)
        if not dest.startswith("/") or ".." in dest.split("/") or "\n" in dest:
            raise src.error(itempath + ("dest",), f"'{dest}' must be an "
                            "absolute path in the image")
        owner = str(item.get("owner", "root"))
        group = str(item.get("group", "root"))
        for key, val in (("owner", owner), ("group", group)):
            if not OWNER_RE.fullmatch(val):
                raise src.error(itempath + (key,), f"invalid {key} '{_shown(val)}'",
                                hint="a user or group name, or a number")
        mode = item.get("mode")
        if mode is not None:
            if isinstance(mode, int):  # YAML 1.1 reads 0644 as octal int
                mode = format(mode, "o")
            mode = str(mode)
            if not MODE_RE.fullmatch(mode):
                raise src.error(itempath + ("mode",), f"invalid mode '{_shown(mode)}'",
                                hint="an octal string such as \"0644\"")
        items.append(CopyItem(source, dest, owner, group, mode))
    return {"items": tuple(items)}


def _image(src, value, arches):
    from .image import parse_size
    keypath = ("image",)
    if not isinstance(value, dict):
        raise src.error(keypath, f"expected a mapping with 'size', got "
                        f"{_describe(value)}")
    _check_keys(src, keypath, value, IMAGE_KEYS, required=("size",))
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
    return image


def _kernel_arguments(src, keypath, value):
    kargs = _string_list(src, keypath, value, what="kernel argument",
                         allow_empty=True)
    for i, karg in enumerate(kargs):
        if not KARG_RE.fullmatch(karg):
            raise src.error(keypath + (i,), f"invalid kernel argument {karg!r}",
                            hint="no spaces or quotes; one argument per item")
        if karg.split("=")[0] in ("root", "ostree"):
            raise src.error(keypath + (i,),
                            f"'{karg.split('=')[0]}=' is set by the image build")
    return tuple(kargs)


def _stage_deployable(src, keypath, value, recipe):
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise src.error(keypath, f"expected a mapping (or {{}}), got "
                        f"{_describe(value)}")
    _check_keys(src, keypath, value, {"dracut-modules"})
    modules = _string_list(src, keypath + ("dracut-modules",),
                           value.get("dracut-modules", []),
                           what="dracut module name", allow_empty=True)
    for i, module in enumerate(modules):
        if not NAME_RE.fullmatch(module):
            raise src.error(keypath + ("dracut-modules", i),
                            f"invalid dracut module name '{_shown(module)}'")
    return {"dracut_modules": tuple(modules)}


# The stage kinds: recipe key -> option validator.  Adding a kind means a
# validator here and an executable under stages/.
STAGE_KINDS = {
    "bootstrap": _stage_bootstrap,
    "install": _stage_install,
    "remove": _stage_remove,
    "run": _stage_run,
    "copy": _stage_copy,
    "deployable": _stage_deployable,
}

RECIPE_KEYS = {"ref", "architecture", "architectures", "archives", "stages",
               "recommends", "environment", "from", "description", "version",
               "image"}
IMAGE_KEYS = {"size", "kernel-arguments", "boot-size", "esp-size"}
IMAGE_DEFAULTS = {"boot-size": "512M", "esp-size": "64M"}
KARG_RE = re.compile(r"^[^\s\"']+$")
ARCHIVE_KEYS = {"name", "suites", "components", "keyring", "check-valid-until"}
STAGE_KEYS = {"name", "from", "environment"} | set(STAGE_KINDS)


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
        raise UserError(f"a recipe must be a mapping, got {_describe(data)}",
                        path=path, line=src.line(()))
    root = ()
    _check_keys(src, root, data, RECIPE_KEYS, required=("ref", "stages"))
    ref = _string(src, ("ref",), data["ref"], what="an OSTree branch name")
    if not REF_RE.fullmatch(ref.replace("{arch}", "arch")):
        raise src.error(("ref",), f"invalid OSTree ref '{_shown(ref)}'",
                        hint="use letters, digits, '.', '_', '-' separated by '/'")

    if ("architecture" in data) == ("architectures" in data):
        raise src.error(root, "set exactly one of 'architecture' and "
                        "'architectures'")
    if "architecture" in data:
        arches = (_string(src, ("architecture",), data["architecture"],
                          what="a Debian architecture name"),)
        archkey = ("architecture",)
    else:
        arches = _string_list(src, ("architectures",), data["architectures"],
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

    recipe_dir = os.path.dirname(os.path.abspath(path))
    parent = None
    if "from" in data:
        parent = _parent_ref(src, ("from",), data["from"])

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
                                f"'suites', got {_describe(entry)}")
            _check_keys(src, keypath, entry, ARCHIVE_KEYS,
                        required=("name", "suites"))
            aname = _string(src, keypath + ("name",), entry["name"],
                            ARCHIVE_NAME_RE, "a symbolic archive name "
                            "(lower-case letters, digits, '.', '_', '-')")
            if aname in seen:
                raise src.error(keypath + ("name",), f"archive '{aname}' is "
                                "listed twice", hint="list all its suites once")
            seen.add(aname)
            suites = _string_list(src, keypath + ("suites",), entry["suites"],
                                  SUITE_RE, "suite name")
            components = _string_list(src, keypath + ("components",),
                                      entry.get("components", ["main"]),
                                      SUITE_RE, "component name")
            keyring = None
            if "keyring" in entry:
                keyring = _string(src, keypath + ("keyring",), entry["keyring"],
                                  what="a keyring file path", max_len=MAX_PATH)
                keyring = os.path.normpath(os.path.join(recipe_dir, keyring))
                if not os.path.isfile(keyring):
                    raise src.error(keypath + ("keyring",), f"no such keyring "
                                    f"file: {keyring}")
            check_valid_until = entry.get("check-valid-until", True)
            if not isinstance(check_valid_until, bool):
                raise src.error(keypath + ("check-valid-until",), "expected "
                                f"true or false, got {_describe(check_valid_until)}")
            archives.append(Archive(aname, suites, components, keyring,
                                    check_valid_until))
    elif parent is None:
        raise src.error(root, "missing required key 'archives'",
                        hint="name at least one archive with its suites")

    recommends = data.get("recommends", False)
    if not isinstance(recommends, bool):
        raise src.error(("recommends",), f"expected true or false, got "
                        f"{_describe(recommends)}")
    environment = _environment(src, ("environment",), data.get("environment"))
    version = None
    if "version" in data:
        if isinstance(data["version"], (int, float)):
            raise src.error(("version",), "the version must be a string",
                            hint=f'quote it: version: "{data["version"]}"')
        version = _string(src, ("version",), data["version"], VERSION_RE,
                          "a version (letters, digits, '.', '_', '+', '~', '-')")

    image = None
    if "image" in data:
        image = _image(src, data["image"], arches)

    raw_stages = data["stages"]
    if not isinstance(raw_stages, list) or not raw_stages:
        raise src.error(("stages",), "expected a non-empty list of stages")
    context = {"architectures": arches, "dir": recipe_dir}
    stages = []
    names = set()
    for i, raw in enumerate(raw_stages):
        keypath = ("stages", i)
        if not isinstance(raw, dict):
            raise src.error(keypath, f"expected a mapping with 'name' and one "
                            f"stage kind, got {_describe(raw)}")
        _check_keys(src, keypath, raw, STAGE_KEYS, required=("name",))
        sname = _string(src, keypath + ("name",), raw["name"], NAME_RE,
                        "a stage name (letters, digits, '.', '_', '+', '-')")
        if sname in names:
            raise src.error(keypath + ("name",), f"stage name '{sname}' is used "
                            "twice", hint="stage names must be unique in a recipe")
        if sname in RESERVED_STAGE_NAMES:
            raise src.error(keypath + ("name",), f"a stage may not be named "
                            f"'{sname}': the recipe's targets use that name "
                            f"(RECIPE/{sname})", hint="reserved: " + ", ".join(
                                sorted(RESERVED_STAGE_NAMES)))
        names.add(sname)
        kinds = [k for k in raw if k in STAGE_KINDS]
        if len(kinds) != 1:
            raise src.error(keypath, f"stage '{sname}' must have exactly one "
                            f"kind, found {len(kinds)}",
                            hint="one of " + ", ".join(STAGE_KINDS))
        kind = kinds[0]
        options = STAGE_KINDS[kind](src, keypath + (kind,), raw[kind], context)
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
                            _environment(src, keypath + ("environment",),
                                         raw.get("environment")),
                            src.line(keypath)))
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
    if not archives and parent is None and \
            any(s.kind in ("bootstrap", "install") for s in stages):
        raise src.error(root, "missing required key 'archives'",
                        hint="stages that install packages need archives")
    return Recipe(name, os.path.abspath(path), ref, arches, tuple(archives),
                  stages, recommends, environment, parent, src, version, image)


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
            if stage.parent is None:
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
                parent = by_name[current[0]].stage(current[1]).parent
                current = tuple(parent.split("/")) if parent else None
