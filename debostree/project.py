"""The project's layout and the build configuration that ./configure records.

The source tree holds ``recipes/``, ``lockfiles/``, ``build.ninja.in`` and
``configure.py``; the build directory (``build`` by default) holds the OSTree
repository, the package pool, caches, per-stage logs, and ``config.json``:
the settings configure resolved (mirror URLs, pool path), which the build's
commands read so that a mirror change does not change their command lines.
"""

import json
import os
import sys
from dataclasses import dataclass, asdict, field

from .errors import UserError

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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

    @property
    def config_path(self):
        return os.path.join(self.builddir, "config.json")

    @property
    def repo(self):
        return os.path.join(self.builddir, "repo")

    @property
    def cache(self):
        return os.path.join(self.builddir, "cache")

    def save(self):
        """Write config.json, only when its content changes."""
        from .files import write_if_changed
        return write_if_changed(self.config_path, json.dumps(
            asdict(self), indent=2, sort_keys=True) + "\n")


def load_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return BuildConfig(**data)
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"cannot read the build configuration: {error}",
                        path=path, hint="run ./configure again")
