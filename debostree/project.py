"""The project's layout and the build configuration that ./configure records.

The source tree holds ``recipes/``, ``lockfiles/``, ``build.ninja.in`` and
``configure.py``; the build directory (``build`` by default) holds the OSTree
repository, the package pool, caches, per-stage logs, and ``config.json``:
the settings configure resolved (mirror URLs, pool path), which the build's
commands read so that a mirror change does not change their command lines.
"""

import json
import os
import re
import sys
from dataclasses import dataclass, asdict, field

from .errors import UserError

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A URL as the user's configuration files and options may give one.
URL_RE = re.compile(r"^(https?|file)://\S+$")


def user_config_file(name, env_var):
    """The user's configuration file ``name``: the file the environment
    variable ``env_var`` names, else ``$XDG_CONFIG_HOME/debostree/NAME``
    (``~/.config`` by default)."""
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(
        os.path.expanduser("~"), ".config")
    return os.path.join(base, "debostree", name)


@dataclass
class BuildConfig:
    top: str
    builddir: str
    pool: str
    recipes: str
    lockfiles: str
    mirrors: dict
    python: str = sys.executable
    host_arch: str = "amd64"
    publish: dict = field(default_factory=dict)  # publish.read_settings()
    native_helpers: bool = True  # native.py: host programs in foreign bootstraps
    stage_cache: dict = field(default_factory=dict)  # stagecache.read_settings()
    remotes: dict = field(default_factory=dict)  # bases.read_settings(), those used

    @property
    def config_path(self):
        return os.path.join(self.builddir, "config.json")

    @property
    def repo(self):
        return os.path.join(self.builddir, "repo")

    @property
    def cache(self):
        return os.path.join(self.builddir, "cache")

    @property
    def publish_repo(self):
        """The archive repository ``ninja publish`` fills (publish.py)."""
        return os.path.join(self.builddir, "publish")

    def save(self):
        """Write config.json, only when its content changes."""
        from .files import write_if_changed
        return write_if_changed(self.config_path, json.dumps(
            asdict(self), indent=2, sort_keys=True) + "\n")


def load_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        config = BuildConfig(**data)
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"cannot read the build configuration: {error}",
                        path=path, hint="run ./configure again")
    claim_builddir(config.builddir)
    return config


OWNER_FILE = ".ninja-owner"


def _process(pid):
    """``(command name, start time)`` of a running process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return name, fields[19]


def ninja_ancestor(levels=3):
    """The pid of the ninja that runs this command (through ``sh -c``), or
    None."""
    pid = os.getppid()
    for _ in range(levels):
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            return None
        if text[text.index("(") + 1:text.rindex(")")] == "ninja":
            return pid
        pid = int(text[text.rindex(")") + 2:].split()[1])
        if pid <= 1:
            return None
    return None


def claim_builddir(builddir, parent=None):
    """Stop a command that a second ninja runs in a build directory a first
    ninja is still building in: the two would do the same work at once and
    race on its outputs.  The build directory records the ninja whose
    commands run in it (pid and start time, under a lock); a command whose
    parent is not a ninja (run by hand) is not checked."""
    import fcntl
    parent = parent or ninja_ancestor()
    me = parent and _process(parent)
    if not me or me[0] != "ninja":
        return
    os.makedirs(builddir, exist_ok=True)
    with open(os.path.join(builddir, OWNER_FILE), "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        words = f.read().split()
        if len(words) == 2 and words[0].isdigit() and int(words[0]) != parent \
                and _process(int(words[0])) == ("ninja", words[1]):
            raise UserError(
                f"another ninja (pid {words[0]}) is building in {builddir}; "
                "this one stopped so that the two do not race",
                hint="wait for it to finish, then run ninja again")
        if words != [str(parent), me[1]]:
            f.seek(0)
            f.truncate()
            f.write(f"{parent} {me[1]}\n")
