"""The build graph: recipes + lockfiles -> a ``ninja.Graph``.

This is where the project's targets are decided: ``update-lockfiles`` and
``check-lockfiles``, one fetch edge per locked ``.deb`` (so only new packages
are fetched), a phony target per recipe, and the rule that regenerates
``build.ninja`` when a recipe, a lockfile, the template or the configure code
changes.
"""

import glob
import os
import shlex

from . import fetch, lockfile
from .ninja import Build, Graph, Raw, Rule, shell_args


def rel(path, top):
    """A path as written in build.ninja: relative to the top when inside it."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path, top)
    return path if relative.startswith("..") else relative


class GraphBuilder:
    def __init__(self, config, recipes, locks, configure_args):
        self.config = config
        self.recipes = recipes
        self.locks = locks  # {(recipe, arch): (path, entries) or (path, None)}
        self.configure_args = configure_args
        self.graph = Graph()
        self.top = config.top
        self.base = os.getcwd()  # where build.ninja is, and ninja runs
        self.fetched = {}   # sha256 -> pool path (one edge per .deb)

    def p(self, path):
        return rel(path, self.base)

    def build(self):
        g = self.graph
        g.variables["python"] = self.config.python
        g.variables["top"] = self.top
        g.variables["builddir"] = self.p(self.config.builddir)
        g.variables["config"] = self.p(self.config.config_path)
        g.pools["fetch"] = 8
        tools = os.path.join(self.top, "tools")
        g.rules.append(Rule(
            "configure",
            f"$python {shell_args([os.path.join(self.top, 'configure.py')])} "
            + shell_args(self.configure_args),
            "CONFIGURE", {"generator": "1", "pool": "console"}))
        g.rules.append(Rule(
            "update_lockfiles",
            f"$python {shell_args([os.path.join(tools, 'update-lockfiles')])} "
            "--config $config $flags",
            "UPDATE-LOCKFILES", {"pool": "console"}))
        g.rules.append(Rule(
            "fetch_deb",
            f"$python {shell_args([os.path.join(tools, 'fetch-packages')])} "
            "--config $config --one $archive $filename $sha256 $size $out",
            "FETCH $package ($size_text)", {"pool": "fetch", "restat": "1"}))
        g.rules.append(Rule(
            "missing_lockfile",
            "echo $message >&2; exit 1", "LOCKFILE $name"))
        self._regenerate()
        g.builds.append(Build(["update-lockfiles"], "update_lockfiles",
                              variables={"flags": Raw("")}))
        g.builds.append(Build(["check-lockfiles"], "update_lockfiles",
                              variables={"flags": Raw("--check")}))
        defaults = []
        all_fetch = []
        for recipe in self.recipes:
            recipe_targets = []
            for arch in recipe.architectures:
                path, entries = self.locks[(recipe.name, arch)]
                if entries is None:
                    target = f"{recipe.name}/{arch}/lockfile"
                    g.builds.append(Build([target], "missing_lockfile", variables={
                        "name": target,
                        "message": Raw(shell_args([
                            f"{self.p(path)}: missing; run 'ninja "
                            "update-lockfiles' and commit it"]))}))
                    recipe_targets.append(target)
                    continue
                debs = [self.fetch_edge(entry) for entry in entries]
                suffix = f"/{arch}" if len(recipe.architectures) > 1 else ""
                phony = f"{recipe.name}{suffix}/packages"
                g.builds.append(Build([phony], "phony", debs))
                recipe_targets.append(phony)
                all_fetch += debs
            g.builds.append(Build([recipe.name], "phony", recipe_targets))
            defaults.append(recipe.name)
        g.builds.append(Build(["fetch"], "phony", sorted(set(all_fetch))))
        g.defaults = defaults
        return g

    def fetch_edge(self, entry):
        out = self.p(fetch.pool_path(self.config.pool, entry.sha256))
        if entry.sha256 not in self.fetched:
            self.fetched[entry.sha256] = out
            self.graph.builds.append(Build([out], "fetch_deb", variables={
                "archive": Raw(shell_args([entry.archive])),
                "filename": Raw(shell_args([entry.filename])),
                "sha256": entry.sha256,
                "size": str(entry.size),
                "package": f"{entry.name} {entry.version}",
                "size_text": f"{entry.size / 1e6:.1f} MB",
            }))
        return out

    def _regenerate(self):
        top = self.top
        inputs = [os.path.join(top, "configure.py"),
                  os.path.join(top, "build.ninja.in")]
        inputs += sorted(glob.glob(os.path.join(top, "debostree", "*.py")))
        inputs += [self.config.recipes, self.config.lockfiles]
        for recipe in self.recipes:
            inputs.append(recipe.path)
        for path, _ in self.locks.values():
            if os.path.exists(path):
                inputs.append(path)
        self.graph.builds.append(Build(
            ["build.ninja"], "configure",
            implicit=[self.p(i) for i in sorted(set(inputs))]))


def configure_command(args):
    return " ".join(shlex.quote(a) for a in args)
