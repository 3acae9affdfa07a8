"""Validation of the values in a recipe, shared by the recipe model
(recipe.py) and the stage kinds (kinds/): names, strings and lists with
their limits, environments, package requests, paths.  Every problem is a
``UserError`` from ``src.error`` naming the file, the line and the key path.
"""

import dataclasses
import os
import re
from dataclasses import dataclass

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# A package request: name, optionally :arch and/or =version.
PACKAGE_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9+.-]+)(?::(?P<arch>[a-z0-9-]+))?"
    r"(?:=(?P<version>[A-Za-z0-9.+~:-]+))?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MODE_RE = re.compile(r"^0?[0-7]{3,4}$")
OWNER_RE = re.compile(r"^([a-z_][a-z0-9_-]*|[0-9]+)$")
MAX_NAME = 255
MAX_PATH = 4095
MAX_SCRIPT = 1 << 20
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


def check_keys(src, keypath, mapping, allowed, required=()):
    for key in mapping:
        if key not in allowed:
            raise src.error(keypath + (key,), f"unknown key '{shown(key)}'",
                            hint="allowed here: " + ", ".join(sorted(allowed)))
    for key in required:
        if key not in mapping:
            raise src.error(keypath, f"missing required key '{key}'")


def shown(value, limit=60):
    """A value as an error line shows it: one line, not too long."""
    text = repr(value)[1:-1] if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def string(src, keypath, value, pattern=None, what="a string",
            max_len=MAX_NAME):
    if not isinstance(value, str) or not value:
        raise src.error(keypath, f"expected {what}, got {describe(value)}")
    if max_len and len(value) > max_len:
        raise src.error(keypath, f"{len(value)} characters is too long for "
                        f"{what} (at most {max_len})")
    if pattern is not None and not pattern.fullmatch(value):
        raise src.error(keypath, f"invalid value '{shown(value)}'",
                        hint=f"expected {what}")
    if any(c in value for c in "\0\n\r") and max_len == MAX_NAME:
        raise src.error(keypath, f"invalid value '{shown(value)}': a line "
                        "break or NUL in it", hint=f"expected {what}")
    return value


def string_list(src, keypath, value, pattern=None, what="a string",
                 allow_empty=False, max_len=MAX_NAME):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise src.error(keypath, f"expected a list of {what}s, got "
                        f"{describe(value)}")
    if not value and not allow_empty:
        raise src.error(keypath, "the list is empty")
    return tuple(string(src, keypath + (i,), item, pattern, what, max_len)
                 for i, item in enumerate(value))


def describe(value):
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
    return f"'{shown(value)}'"


def environment_map(src, keypath, value):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise src.error(keypath, f"expected a mapping of variable names to "
                        f"values, got {describe(value)}")
    env = {}
    for name, val in value.items():
        if not ENV_NAME_RE.fullmatch(name):
            raise src.error(keypath + (name,), "invalid environment variable name")
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            raise src.error(keypath + (name,), f"expected a string value, got "
                            f"{describe(val)}")
        if "\0" in str(val) or len(str(val)) > MAX_PATH:
            raise src.error(keypath + (name,), "a NUL character or more than "
                            f"{MAX_PATH} characters in the value")
        env[name] = str(val)
    return env


def package_requests(src, keypath, value, arch_names, allow_empty=False):
    names = string_list(src, keypath, value, what="package name",
                         allow_empty=allow_empty)
    requests = []
    for i, text in enumerate(names):
        # "{arch}" in a name is each architecture's name (linux-image-{arch}).
        match = PACKAGE_RE.fullmatch(text.replace(ARCH_PLACEHOLDER, ARCH_TOKEN))
        if not match:
            raise src.error(keypath + (i,), f"invalid package request '{shown(text)}'",
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
