"""Mirror configuration: symbolic archive names -> URLs.

Recipes and lockfiles never hold a URL.  A symbolic archive name (``debian``,
``debian-security``, ...) is mapped to a URL from, in this order:

1. ``--mirror NAME=URL`` on the command line;
2. the ``DEBOSTREE_MIRRORS`` environment variable (``NAME=URL`` items separated
   by spaces or commas);
3. the user config file ``$XDG_CONFIG_HOME/debostree/mirrors.yaml`` (a mapping
   of names to URLs; ``DEBOSTREE_CONFIG`` names another file);
4. the host's apt sources (deb822 ``*.sources`` and one-line ``*.list`` files
   under ``/etc/apt``): an archive is known by the last path component of its
   URI, so ``.../debian`` is ``debian`` and ``.../debian-security`` is
   ``debian-security``.  An archive name that matches no URI this way falls
   back to the host source that carries all of the recipe's suites.

The host sources also give the default keyring (their ``Signed-By``).
"""

import glob
import os
import re
from dataclasses import dataclass

from .errors import UserError
from .project import URL_RE, user_config_file

ENV_VAR = "DEBOSTREE_MIRRORS"
CONFIG_ENV_VAR = "DEBOSTREE_CONFIG"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@dataclass(frozen=True)
class HostSource:
    uri: str
    suites: tuple
    components: tuple
    signed_by: str = None
    origin: str = ""


def parse_mirror_option(text, origin="--mirror"):
    """Parse ``NAME=URL``; return ``(name, url)``."""
    name, sep, url = text.partition("=")
    name = name.strip()
    url = url.strip()
    if not sep or not name or not URL_RE.match(url):
        raise UserError(f"{origin}: invalid mirror '{text}'",
                        hint="write NAME=URL with an http://, https:// or "
                        "file:// URL")
    return name, url.rstrip("/")


def _config_file():
    return user_config_file("mirrors.yaml", CONFIG_ENV_VAR)


def _read_config_file(path):
    from . import yamlsrc
    if not os.path.exists(path):
        return {}
    data, src = yamlsrc.load(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError("expected a mapping of archive names to URLs",
                        path=path, line=src.line(()))
    result = {}
    for name, url in data.items():
        if not isinstance(url, str) or not URL_RE.match(url):
            raise src.error((name,), f"invalid URL {url!r}",
                            hint="an http://, https:// or file:// URL")
        result[name] = url.rstrip("/")
    return result


def read_host_sources(etc="/etc/apt"):
    """The host's apt sources of type ``deb``, in apt's reading order."""
    from debian import deb822
    sources = []
    list_files = []
    main_list = os.path.join(etc, "sources.list")
    if os.path.exists(main_list):
        list_files.append(main_list)
    list_files += sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.list")))
    for path in list_files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if not line.startswith("deb "):
                    continue
                options = {}
                match = re.match(r"deb\s+\[([^\]]*)\]\s+(.*)", line)
                rest = line[4:]
                if match:
                    for opt in match.group(1).split():
                        key, _, val = opt.partition("=")
                        options[key] = val
                    rest = match.group(2)
                parts = rest.split()
                if len(parts) < 2:
                    continue
                sources.append(HostSource(parts[0].rstrip("/"), (parts[1],),
                                          tuple(parts[2:]),
                                          options.get("signed-by"), path))
    for path in sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.sources"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            for para in deb822.Deb822.iter_paragraphs(f):
                if "deb" not in para.get("Types", "").split():
                    continue
                if para.get("Enabled", "yes").strip().lower() == "no":
                    continue
                signed_by = para.get("Signed-By")
                if signed_by and "\n" in signed_by.strip():
                    signed_by = None  # an inline key block; not a path
                for uri in para.get("URIs", "").split():
                    sources.append(HostSource(
                        uri.rstrip("/"), tuple(para.get("Suites", "").split()),
                        tuple(para.get("Components", "").split()),
                        signed_by.strip() if signed_by else None, path))
    return sources


class Mirrors:
    """Resolves symbolic archive names to URLs and default keyrings."""

    def __init__(self, cli=(), environ=None, config_file=None, host_sources=None):
        environ = os.environ if environ is None else environ
        self.explicit = {}
        config_file = config_file or _config_file()
        self.explicit.update(_read_config_file(config_file))
        for item in re.split(r"[\s,]+", environ.get(ENV_VAR, "").strip()):
            if item:
                name, url = parse_mirror_option(item, ENV_VAR)
                self.explicit[name] = url
        for item in cli:
            name, url = parse_mirror_option(item)
            self.explicit[name] = url
        self._host_sources = host_sources

    @property
    def host_sources(self):
        if self._host_sources is None:
            self._host_sources = read_host_sources()
        return self._host_sources

    def _host_match(self, archive):
        for source in self.host_sources:
            if source.uri.rsplit("/", 1)[-1] == archive.name:
                return source
        for source in self.host_sources:
            if set(archive.suites) <= set(source.suites):
                return source
        return None

    def url(self, archive):
        """The base URL of ``archive`` (a ``recipe.Archive``)."""
        if archive.name in self.explicit:
            return self.explicit[archive.name]
        source = self._host_match(archive)
        if source is None:
            raise UserError(
                f"no mirror is configured for archive '{archive.name}'",
                hint=f"pass --mirror {archive.name}=URL, set {ENV_VAR}, or add "
                f"it to {_config_file()}")
        return source.uri

    def keyring(self, archive):
        """The keyring that verifies ``archive``'s Release files."""
        if archive.keyring:
            return archive.keyring
        source = self._host_match(archive)
        if source is not None and source.signed_by and \
                os.path.isfile(source.signed_by):
            return source.signed_by
        return DEFAULT_KEYRING

    def as_dict(self, archives):
        return {a.name: self.url(a) for a in archives}
