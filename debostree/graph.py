"""The build graph: recipes + lockfiles -> a ``ninja.Graph``.

This is where the project's targets are decided: ``update-lockfiles`` and
``check-lockfiles``, one fetch edge per locked ``.deb`` (so only new packages
are fetched), a phony target per recipe, and the rule that regenerates
``build.ninja`` when a recipe, a lockfile, the template or the configure code
changes.
"""

import glob
import hashlib
import json
import os

from . import (bases, cachekey, fetch, files, kinds, lockfile, oci, ostree,
               publish, sandboxlib, stagecache, sysext)
from .kinds.base import PackageFile, key_value
from .lockfile import STAND_INS_STAGE
from .recipe import is_base_parent
from .stagefiles import StageFiles
from .ninja import Build, Graph, Raw, Rule, escape_path, shell_args

# Used inside the sandbox when SOURCE_DATE_EPOCH is not set at configure time
# (2024-01-01), so that trees are reproducible by default; /etc/shadow's
# "last changed" day and similar stamps come from it.
DEFAULT_SOURCE_DATE_EPOCH = 1704067200


def rel(path, top):
    """A path as written in build.ninja: relative to the top when inside it."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path, top)
    return path if relative.startswith("..") else relative


def stage_label(recipe, arch, stage):
    """How ninja's status names a stage's edges: ``RECIPE/STAGE``, and the
    architecture when the recipe has several."""
    return f"{recipe.name}/{stage.name}" + (
        f" {arch}" if len(recipe.architectures) > 1 else "")


class GraphBuilder:
    def __init__(self, config, recipes, locks, configure_args,
                 lock_problems=None):
        self.config = config
        self.recipes = recipes
        self.locks = locks  # {(recipe, arch): (path, entries) or (path, None)}
        self.lock_problems = lock_problems or {}
        self.configure_args = configure_args
        self.graph = Graph()
        self.top = config.top
        self.base = os.getcwd()  # where build.ninja is, and ninja runs
        self.fetched = {}   # sha256 -> pool path (one edge per .deb)
        self.imported = {}  # sha256 -> (summary path, entry)
        self.by_name = {r.name: r for r in recipes}
        self.stage_outputs = {}  # (recipe, arch, stage) -> .commit path
        self.stage_keys = {}     # (recipe, arch, stage) -> input key
        self.level_keys = {}     # (recipe, arch, stage) -> key without code
        self.stage_index = []    # every stage, for tools/stage-cache
        # The packages' edges (fetch, import, plan, fakeroot library): with
        # a stage cache, what a stage needs of them is a dynamic input
        # (``probe_edge``), and import edges know their consumers from here.
        self.package_paths = set()
        self.probes = {}  # (recipe, arch) -> its stages' probes (probe_edges)
        self.dynamic_inputs = {}  # stage output -> package inputs
        self._key_context = None
        self.checked = set()
        self.pending = {}
        # Read once: every stage and branch of the graph gets the same.
        sde = os.environ.get("SOURCE_DATE_EPOCH")
        self.source_date_epoch = int(sde) if sde else None

    def absolute(self, path):
        """A path of the graph (relative to build.ninja) as an absolute one."""
        return os.path.abspath(os.path.join(self.base, path))

    def p(self, path):
        return rel(path, self.base)

    def build(self):
        g = self.graph
        g.variables["python"] = self.config.python
        g.variables["top"] = self.top
        g.variables["builddir"] = self.p(self.config.builddir)
        g.variables["config"] = self.p(self.config.config_path)
        g.pools["fetch"] = 8
        g.builds.append(Build([self.p(os.path.join(self.config.repo, "config"))],
                              "init_repo"))

        self._rules()
        g.builds.append(Build(["update-lockfiles"], "update_lockfiles",
                              variables={"flags": Raw("")}))
        g.builds.append(Build(["check-lockfiles"], "update_lockfiles",
                              variables={"flags": Raw("--check")}))
        defaults = []
        all_fetch = []
        branch_outs = []
        for recipe in self.recipes:
            fetched, published = self._recipe_edges(recipe)
            all_fetch += fetched
            branch_outs += published
            defaults.append(recipe.name)
        self.import_all()
        self.probe_edges()
        g.builds.append(Build(["fetch"], "phony", sorted(set(all_fetch))))
        stamp = self.publish_stamp()
        g.builds.append(Build([stamp], "publish_summary", [], implicit=branch_outs
                              + [self.p(self.config.config_path)]))
        g.builds.append(Build(["publish"], "phony", [stamp]))
        g.builds.append(Build(["pull-published"], "pull_published"))
        g.builds.append(Build(["fsck"], "fsck"))
        for target in ("cache-push", "cache-prune", "cache-verify"):
            g.builds.append(Build([target], "stage_cache", variables={
                "action": target.split("-")[1]}))
        self.write_options(os.path.join(self.config.builddir, "stagecache",
                                        "stages.json"), self.stage_index)
        self._regenerate()
        g.defaults = defaults
        return g

    def _rules(self):
        """The rules: one per tool, one per stage kind."""
        g = self.graph

        def run(*path):
            """``$python`` and one of the project's scripts, quoted."""
            return f"$python {shell_args([os.path.join(self.top, *path)])}"

        g.rules.append(Rule(
            "configure", run("configure.py") + " " + shell_args(self.configure_args),
            "CONFIGURE", {"generator": "1", "pool": "console"}))
        g.rules.append(Rule(
            "update_lockfiles",
            run("tools", "update-lockfiles") + " --config $config $flags",
            "UPDATE-LOCKFILES", {"pool": "console"}))
        g.rules.append(Rule(
            "fetch_deb",
            # A file in the pool is complete and verified (it is only ever
            # renamed into place after its check), so a shared pool costs
            # one test per package, not a process.
            "test -f $out || " + run("tools", "fetch-packages")
            + " --config $config --one $archive $filename $sha256 $size $out",
            "FETCH $package ($size_text)", {"pool": "fetch", "restat": "1"}))
        g.rules.append(Rule(
            "init_repo", run("tools", "init-repo") + " $out", "INIT $out"))
        g.rules.append(Rule(
            "order_packages", run("tools", "order-packages")
            + " --options $options --out $out", "ORDER $name", {"restat": "1"}))
        g.rules.append(Rule(
            "import_debs", run("tools", "import-debs") + " --config $config $list",
            "IMPORT $count packages", {"restat": "1"}))
        for kind in kinds.REGISTRY:
            g.rules.append(Rule(
                f"stage_{kind}", run("stages", kind)
                + " --config $config --options $options $parent_arg --out $out",
                f"STAGE $name ({kind})", {"restat": "1"}))
        g.rules.append(Rule(
            "branch", run("tools", "commit-branch")
            + " --config $config --options $options --stage $in --out $out",
            "BRANCH $branch", {"restat": "1"}))
        # One writer of the published repository at a time.
        g.pools["publish"] = 1
        g.rules.append(Rule(
            "publish", run("tools", "publish") + " --config $config --out $out $in",
            "PUBLISH $branch", {"pool": "publish"}))
        g.rules.append(Rule(
            "publish_sysext", run("tools", "publish") + " --config $config "
            "--sysext $sysext --out $out", "PUBLISH sysext $name",
            {"pool": "publish"}))
        g.rules.append(Rule(
            "publish_summary", run("tools", "publish")
            + " --config $config --summary --out $out",
            "PUBLISH summary", {"pool": "publish"}))
        g.rules.append(Rule(
            "pull_published", run("tools", "pull-published") + " --config $config",
            "PULL-PUBLISHED", {"pool": "console"}))
        g.rules.append(Rule(
            "image", run("tools", "make-image") + " --config $config --options "
            "$options --commit $in --out $out", "IMAGE $out"))
        g.rules.append(Rule(
            "check_image_tools", run("tools", "make-image") + " --check-tools $out",
            "CHECK host tools for disk images"))
        g.rules.append(Rule(
            "oci", run("tools", "make-oci") + " --config $config --options "
            "$options $flags", "OCI $name $flags"))
        g.rules.append(Rule(
            "sysext", run("tools", "make-sysext") + " --config $config "
            "--options $options --out $out", "SYSEXT $name"))
        # One at a time: each sets up its remote in the build repository.
        g.pools["pull_base"] = 1
        g.rules.append(Rule(
            "pull_base", run("tools", "pull-base") + " --config $config "
            "--options $options --out $out", "PULL base $name",
            {"pool": "pull_base", "restat": "1"}))
        g.rules.append(Rule(
            "check_boot_tools", run("tools", "boot") + " --check-tools $arch "
            "$out", "CHECK host tools to boot $arch images"))
        g.rules.append(Rule(
            "check_arch", run("tools", "check-arch") + " $arch $out",
            "CHECK $arch programs run here"))
        g.rules.append(Rule(
            "sandbox_library", run("tools", "fetch-sandbox-library")
            + " --config $config $arch $version $out",
            "FETCH fakeroot library for $arch chroots"))
        g.rules.append(Rule(
            "fsck", run("tools", "fsck") + " --config $config",
            "FSCK", {"pool": "console"}))
        g.rules.append(Rule(
            "stage_cache_remote", run("tools", "stage-cache")
            + " --config $config remote", "CACHE remote", {"restat": "1"}))
        g.rules.append(Rule(
            "stage_cache_probe", run("tools", "stage-cache")
            + " --config $config probe $stages",
            "CACHE $name", {"restat": "1"}))
        g.rules.append(Rule(
            "spdx", run("tools", "spdx") + " --config $config --name $recipe"
            " --out $out $lockfiles", "SPDX $name"))
        g.rules.append(Rule(
            "shell", run("tools", "shell") + " --config $config $target",
            "SHELL $target", {"pool": "console"}))
        g.rules.append(Rule(
            "boot", run("tools", "boot") + " --config $config --no-build "
            "$target", "BOOT $target", {"pool": "console"}))
        g.rules.append(Rule(
            "size", run("tools", "size") + " --repo $repo $image $branch",
            "SIZE $branch", {"pool": "console"}))
        g.rules.append(Rule(
            "stage_cache", run("tools", "stage-cache")
            + " --config $config $action", "CACHE $action",
            {"pool": "console"}))
        g.rules.append(Rule(
            "missing_lockfile",
            "echo $message >&2; exit 1", "LOCKFILE $name"))

    def _recipe_edges(self, recipe):
        """A recipe's edges and targets; returns the fetch outputs and the
        published refs of its architectures."""
        g = self.graph
        all_fetch = []
        branch_outs = []
        recipe_targets = []
        image_targets = []
        publish_targets = []
        size_targets = []
        sysext_targets = {}
        branch_by_arch = {}
        for arch in recipe.architectures:
            path, entries = self.locks[(recipe.name, arch)]
            if entries is None:
                target = f"{recipe.name}/{arch}/lockfile"
                g.builds.append(Build([target], "missing_lockfile", variables={
                    "name": target,
                    "message": Raw(shell_args([self.lock_problems.get(
                        (recipe.name, arch), f"{self.p(path)}: missing; "
                        "run 'ninja update-lockfiles' and commit it")]))}))
                recipe_targets.append(target)
                continue
            # A base's packages are in its tree already.
            debs = [self.fetch_edge(entry) for entry in entries
                    if entry.stage != bases.BASE_STAGE]
            suffix = f"/{arch}" if len(recipe.architectures) > 1 else ""
            phony = f"{recipe.name}{suffix}/packages"
            g.builds.append(Build([phony], "phony", debs))
            all_fetch += debs
            branch_out = self.branch_edge(recipe, arch)
            branch_by_arch[arch] = branch_out
            recipe_targets.append(branch_out)
            for ext in recipe.sysexts:
                image = self.sysext_edge(recipe, arch, ext)
                sysext_targets.setdefault(ext.name, []).append(image)
                # Published beside the commits by 'ninja publish'.
                stamp = image[:-len(".raw")] + ".published"
                self.graph.builds.append(Build(
                    [stamp], "publish_sysext", [image],
                    implicit=[self.p(self.config.config_path)],
                    variables={"sysext": Raw(shell_args(
                        [recipe.name, arch, image])),
                        "name": f"{recipe.name}/{arch}/{ext.name}"}))
                branch_outs.append(stamp)
            published = self.publish_edge(recipe, arch, branch_out)
            branch_outs.append(published)
            publish_targets.append(published)
            if len(recipe.architectures) > 1:
                g.builds.append(Build([f"{recipe.name}/{arch}/publish"],
                                      "phony", [published]))
            if recipe.image is not None:
                image = self.image_edge(recipe, arch, branch_out, published)
                image_targets.append(image)
                # tools/boot, once the image is up to date.
                # NAME/ARCH.boot, as images are named: NAME/ARCH/boot is
                # the target of a stage named boot.
                # QEMU and the firmware checked first, not once the image
                # is built.
                g.builds.append(Build(
                    [f"{recipe.name}/{arch}.boot"], "boot", [image],
                    order_only=[self.boot_tools_check(arch)],
                    variables={"target": Raw(shell_args(
                        [f"{recipe.name}/{arch}"]))}))
            if len(recipe.architectures) > 1:
                g.builds.append(Build([f"{recipe.name}/{arch}"], "phony",
                                      [branch_out]))
            size_targets.append(self.size_edge(recipe, arch, branch_out))
            # tools/shell in the recipe's last stage, built first.
            last = self.stage_outputs[(recipe.name, arch,
                                       recipe.stages[-1].name)]
            g.builds.append(Build([f"{recipe.name}/{arch}/shell"], "shell",
                                  [last], variables={"target": Raw(shell_args(
                                      [f"{recipe.name}/{arch}"]))}))
        if all(self.locks[(recipe.name, a)][1] is not None
               for a in recipe.architectures):
            for stage in recipe.stages:
                outs = [self.stage_outputs[(recipe.name, a, stage.name)]
                        for a in recipe.architectures]
                g.builds.append(Build([f"{recipe.name}/{stage.name}"],
                                      "phony", outs))
                if len(recipe.architectures) > 1:
                    for a, out in zip(recipe.architectures, outs):
                        g.builds.append(Build(
                            [f"{recipe.name}/{a}/{stage.name}"], "phony", [out]))
        g.builds.append(Build([recipe.name], "phony", recipe_targets))
        if all(self.locks[(recipe.name, a)][1] is not None
               for a in recipe.architectures):
            arch = self.config.host_arch if self.config.host_arch in \
                recipe.architectures else recipe.architectures[0]
            g.builds.append(Build([f"{recipe.name}/shell"], "phony",
                                  [f"{recipe.name}/{arch}/shell"]))
            if recipe.image is not None:
                g.builds.append(Build([f"{recipe.name}.boot"], "phony",
                                      [f"{recipe.name}/{arch}.boot"]))
        if size_targets and len(recipe.architectures) > 1:
            g.builds.append(Build([f"{recipe.name}/size"], "phony",
                                  size_targets))
        if all(self.locks[(recipe.name, a)][1] is not None
               for a in recipe.architectures):
            self.spdx_edge(recipe)
            self.oci_edges(recipe, branch_by_arch)
        if publish_targets:
            g.builds.append(Build([f"{recipe.name}/publish"], "phony",
                                  publish_targets))
        for name, outs in sorted(sysext_targets.items()):
            g.builds.append(Build([f"{recipe.name}/sysext/{name}"], "phony",
                                  outs))
            if len(recipe.architectures) > 1:
                for arch, out in zip(recipe.architectures, outs):
                    g.builds.append(Build(
                        [f"{recipe.name}/{arch}/sysext/{name}"], "phony", [out]))
        if sysext_targets:
            g.builds.append(Build([f"{recipe.name}/sysexts"], "phony",
                                  [o for outs in sysext_targets.values()
                                   for o in outs]))
        if image_targets:
            # The tools check first: missing tools stop the build before
            # any stage of the image runs.
            g.builds.append(Build([f"{recipe.name}.img"], "phony",
                                  [self.image_tools_check()] + image_targets))
        return all_fetch, branch_outs

    def fetch_edge(self, entry):
        out = self.p(fetch.pool_path(self.config.pool, entry.sha256))
        if entry.sha256 not in self.fetched:
            self.fetched[entry.sha256] = out
            self.package_paths.add(out)
            self.graph.builds.append(Build([out], "fetch_deb", variables={
                "archive": Raw(shell_args([entry.archive])),
                "filename": Raw(shell_args([entry.filename])),
                "sha256": entry.sha256,
                "size": str(entry.size),
                "package": f"{entry.name} {entry.version}",
                "size_text": f"{entry.size / 1e6:.1f} MB",
            }))
        return out

    def import_edge(self, entry):
        """The summary of a package's import; the edges that import them
        are added by ``import_all`` once every consumer is known."""
        out = self.p(os.path.join(self.config.builddir, "pkgs",
                                  entry.sha256 + ".json"))
        if entry.sha256 not in self.imported:
            self.imported[entry.sha256] = (out, entry)
            self.package_paths.add(out)
        return out

    def import_all(self):
        """The edges that import packages, one per set of consumers: the
        packages every edge in that set needs, and only those.  So a target
        imports exactly the packages it needs (``ninja minimal/amd64/base``
        imports the minbase set, not every lockfile's packages), in a few
        processes rather than one per package (a process per package would
        cost more than most imports).  Each edge skips packages already
        imported, so a lockfile change imports only what is new."""
        if not self.imported:
            return
        consumers = {out: set() for out, _ in self.imported.values()}
        for build in self.graph.builds:
            for path in (*build.inputs, *build.implicit, *build.order_only):
                if path in consumers:
                    consumers[path].add(build.outputs[0])
        for stage_out, paths in self.dynamic_inputs.items():
            for path in paths:
                if path in consumers:
                    consumers[path].add(stage_out)
        groups = {}
        for out, entry in self.imported.values():
            groups.setdefault(tuple(sorted(consumers[out])), []).append(
                (out, entry))
        for users, items in sorted(groups.items()):
            self._import_group(users, sorted(items, key=lambda item: item[0]))

    def _import_group(self, users, items):
        # Named by its consumers, so the list file (an input of the edge)
        # changes only when its packages do.
        name = hashlib.sha256("\n".join(users).encode()).hexdigest()[:16]
        list_path = os.path.join(self.config.builddir, "pkgs",
                                 f"import-{name}.json")
        self.write_options(list_path, [
            {"deb": self.absolute(self.fetch_edge(e)),
             "sha256": e.sha256, "summary": self.absolute(out),
             # Progress names the architecture: an amd64 stand-in and
             # its arm64 twin are otherwise the same line.
             "name": f"{e.name} {e.version} ({e.arch})",
             "expect": [e.name, e.version, e.arch]} for out, e in items])
        self.graph.builds.append(Build(
            [out for out, _ in items], "import_debs",
            [self.fetch_edge(e) for _, e in items],
            implicit=[self.p(list_path),
                      self.p(os.path.join(self.config.repo, "config"))],
            variables={"list": Raw(shell_args([self.p(list_path)])),
                       "count": str(len(items))}))

    def plan_edge(self, recipe, arch, stage, debs):
        """The edge that plans a bootstrap's steps (apt's order) from its
        options file: it needs the locked packages, not their imports, so
        ninja runs it beside the import edges."""
        stage_files = StageFiles.of(self.config.builddir, recipe.name, arch,
                                    stage.name)
        out = self.p(stage_files.plan)
        self.package_paths.add(out)
        self.graph.builds.append(Build(
            [out], "order_packages", [self.p(stage_files.options)],
            implicit=debs,
            variables={"options": Raw(shell_args([self.p(stage_files.options)])),
                       "name": stage_label(recipe, arch, stage)}))
        return out

    def write_options(self, path, options):
        """A stage's options file, written by ``flush`` once the whole graph
        is known to be good (a failed configure writes nothing), and only
        when it changes (it is an input of the stage's edge: a change
        reruns the stage)."""
        self.pending[path] = json.dumps(options, indent=1, sort_keys=True) + "\n"

    def flush(self):
        """Write the options files ``write_options`` collected."""
        for path, text in sorted(self.pending.items()):
            files.write_if_changed(path, text)
        self.pending.clear()

    def stage_edge(self, recipe, arch, stage):
        """The edge of one stage (and, first, of the stage it starts from)."""
        key = (recipe.name, arch, stage.name)
        if key in self.stage_outputs:
            return self.stage_outputs[key]
        path, entries = self.locks[(recipe.name, arch)]
        stage_files = StageFiles.of(self.config.builddir, recipe.name, arch,
                                    stage.name)
        kind = kinds.get(stage.kind)
        common = {
            "recipe": recipe.name, "arch": arch, "stage": stage.name,
            "kind": stage.kind,
            "ref": ostree.stage_ref(recipe.name, arch, stage.name),
            "environment": {**recipe.environment, **stage.environment},
            "source_date_epoch": self.source_date_epoch
            or DEFAULT_SOURCE_DATE_EPOCH,
            "commit_timestamp": self.source_date_epoch,
        }
        inputs = [stage_files.options]
        implicit = [os.path.join(self.top, "stages", stage.kind)]
        order_only = []
        if arch != self.config.host_arch:
            order_only.append(self.arch_check(arch))
            # The chroot's processes are the target's: they preload the
            # target's fakeroot library, matched to the host's daemon.
            library = self.sandbox_library_edge(arch)
            if library:
                common["fakeroot_deb"] = os.path.abspath(library)
                implicit.append(library)
        parent_arg = ""
        if stage.parent:
            parent_recipe, parent_stage = stage.parent.split("/")
            other = self.by_name[parent_recipe]
            if is_base_parent(recipe, stage.parent):
                parent_out = self.base_edge(recipe, arch)
            else:
                parent_out = self.stage_edge(other, arch,
                                             other.stage(parent_stage))
            inputs.append(parent_out)
            parent_arg = Raw("--parent " + shell_args([self.p(parent_out)]))
        if arch != self.config.host_arch and kind.uses_stand_ins and \
                self.config.native_helpers:
            # The host programs that may stand in for emulated ones: locked
            # for this host's architecture, imported like every package.
            stand_ins = [e for e in entries if e.stage == STAND_INS_STAGE
                         and e.arch == self.config.host_arch]
            if stand_ins:
                common["stand_ins"] = [PackageFile.of(
                    e, fetch.pool_path(self.config.pool, e.sha256))
                    for e in stand_ins]
                implicit += [self.import_edge(e) for e in stand_ins]
        mine = [e for e in entries if e.stage == stage.name]
        own, own_inputs = kind.options(self, recipe, arch,
                                       stage.for_arch(arch), mine)
        implicit += own_inputs
        variables = {}
        if self.config.stage_cache.get("url"):
            # The packages only matter when the stage builds: the probe
            # says which it needs (none when the cache has the stage).
            dynamic = [self.p(i) for i in implicit
                       if self.p(i) in self.package_paths]
            implicit = [i for i in implicit if self.p(i) not in self.package_paths]
            parent_probe = StageFiles.of(
                self.config.builddir, parent_recipe, arch,
                parent_stage).dyndep if stage.parent and \
                not is_base_parent(recipe, stage.parent) else None
            dyndep = self.probe_edge(recipe, arch, stage_files, parent_probe,
                                     dynamic)
            order_only.append(dyndep)
            variables["dyndep"] = Raw(escape_path(dyndep))
            self.dynamic_inputs[self.p(stage_files.commit)] = dynamic
        options = kind.Options(**common, **own)
        self.write_options(stage_files.options, options.to_json())
        parent_key = self.stage_keys[(parent_recipe, arch, parent_stage)] \
            if stage.parent else None
        self.stage_keys[key] = self.key_edge(stage_files, options, parent_key)
        # The stage's inputs without the tool's code and versions: what
        # os-release's SYSEXT_LEVEL is made of (kinds/deployable.py).
        self.level_keys[key] = cachekey.digest_json({
            "options": key_value(options),
            "parent": self.level_keys[(parent_recipe, arch, parent_stage)]
            if stage.parent else None})
        self.stage_index.append({
            "label": options.label, "arch": arch, "kind": stage.kind,
            "commit": stage_files.commit, "options": stage_files.options,
            "parent": self.absolute(parent_out) if stage.parent else None})
        self.graph.builds.append(Build(
            [self.p(stage_files.commit)], f"stage_{stage.kind}",
            [self.p(i) for i in inputs],
            implicit=[self.p(i) for i in implicit],
            implicit_outputs=[self.p(stage_files.manifest)],
            order_only=order_only,
            variables={"options": Raw(shell_args([self.p(stage_files.options)])),
                       "parent_arg": parent_arg or Raw(""),
                       "name": stage_label(recipe, arch, stage), **variables}))
        self.stage_outputs[key] = self.p(stage_files.commit)
        return self.p(stage_files.commit)

    def base_edge(self, recipe, arch):
        """The pinned commit of a derived recipe's base, pulled and checked
        (bases.pull_pinned): files like a stage's, so that the first stage
        starts from it as from a parent stage."""
        key = (recipe.name, arch, bases.BASE_STAGE)
        if key in self.stage_outputs:
            return self.stage_outputs[key]
        path, _ = self.locks[(recipe.name, arch)]
        pin = lockfile.read_pin(path)
        files_ = StageFiles.of(self.config.builddir, recipe.name, arch,
                               bases.BASE_STAGE)
        self.write_options(files_.options, bases.pull_options(
            pin, ostree.stage_ref(recipe.name, arch, bases.BASE_STAGE),
            self.absolute(files_.manifest)))
        out = self.p(files_.commit)
        self.graph.builds.append(Build(
            [out], "pull_base", [self.p(files_.options)],
            implicit=[self.p(self.config.config_path)],
            implicit_outputs=[self.p(files_.manifest)],
            variables={"options": Raw(shell_args([self.p(files_.options)])),
                       "name": f"{recipe.name}/{arch}: {pin.describe()}"}))
        # The stages' keys follow the base by its commit, which is its
        # content.
        self.stage_keys[key] = cachekey.digest_json({"base": pin.commit})
        self.level_keys[key] = self.stage_keys[key]
        self.stage_outputs[key] = out
        return out

    def sysext_edge(self, recipe, arch, ext):
        """A system extension's stages, on the recipe's last stage before
        'deployable', and its image (sysext.py)."""
        for stage in ext.stages:
            self.stage_edge(recipe, arch, stage)
        out = self.p(sysext.image_path(self.config.builddir, recipe.name, arch,
                                       ext.name))
        options_path = out[:-len(".raw")] + ".options.json"
        last = ext.stages[-1].name
        outputs = {name: self.stage_outputs[(recipe.name, arch, name)]
                   for name in (recipe.stages[-2].name, last,
                                recipe.stages[-1].name)}
        self.write_options(options_path, {
            "recipe": recipe.name, "recipe_path": recipe.path, "arch": arch,
            "name": ext.name, "line": ext.line,
            "base": self.absolute(outputs[recipe.stages[-2].name]),
            "extension": self.absolute(outputs[last]),
            "manifest": self.absolute(StageFiles.of(
                self.config.builddir, recipe.name, arch, last).manifest),
            "os_release_from": self.absolute(outputs[recipe.stages[-1].name]),
            "source_date_epoch": self.source_date_epoch
            or DEFAULT_SOURCE_DATE_EPOCH})
        self.graph.builds.append(Build(
            [out], "sysext", list(outputs.values()),
            implicit=[self.p(options_path)],
            implicit_outputs=[out + ".sha256"],
            variables={"options": Raw(shell_args([self.p(options_path)])),
                       "name": f"{recipe.name}/{arch}/{ext.name}"}))
        return out

    def oci_edges(self, recipe, branch_by_arch):
        """``ninja NAME.oci``: an OCI image layout of the recipe's branch
        commits (an image index when it has several architectures), and
        ``NAME.oci-archive``, the same as one tarball; ``NAME/ARCH.oci``
        for one architecture of several (oci.py)."""
        layouts = [(None, recipe.architectures)]
        if len(recipe.architectures) > 1:
            layouts += [(arch, [arch]) for arch in recipe.architectures]
        for only, archs in layouts:
            layout = oci.layout_path(self.config.builddir, recipe.name, only)
            archive = layout + ".tar" if only is None else None
            options_path = layout + ".options.json"
            self.write_options(options_path, {
                "recipe": recipe.name, "layout": self.absolute(self.p(layout)),
                "archive": archive and self.absolute(self.p(archive)),
                "commits": [[arch, self.absolute(branch_by_arch[arch])]
                            for arch in archs],
                "lockfiles": [os.path.abspath(self.locks[(recipe.name, a)][0])
                              for a in archs],
                "source_date_epoch": self.source_date_epoch})
            out = self.p(os.path.join(layout, "index.json"))
            variables = {"options": Raw(shell_args([self.p(options_path)])),
                         "name": recipe.name + (f"/{only}" if only else ""),
                         "flags": Raw("")}
            self.graph.builds.append(Build(
                [out], "oci", [branch_by_arch[a] for a in archs],
                implicit=[self.p(options_path)], variables=variables))
            if only is None:
                self.graph.builds.append(Build([f"{recipe.name}.oci"], "phony",
                                               [out]))
                self.graph.builds.append(Build(
                    [self.p(archive)], "oci", [out],
                    variables={**variables, "flags": Raw("--archive")}))
                self.graph.builds.append(Build(
                    [f"{recipe.name}.oci-archive"], "phony", [self.p(archive)]))
            else:
                self.graph.builds.append(Build([f"{recipe.name}/{only}.oci"],
                                               "phony", [out]))

    def size_edge(self, recipe, arch, branch_out):
        """``ninja NAME/ARCH/size``: what the branch's tree and image weigh
        (treesize.py); runs every time it is asked for."""
        out = f"{recipe.name}/{arch}/size"
        image = ""
        if recipe.image is not None:
            image = "--image " + shell_args([self.p(os.path.join(
                self.config.builddir, "images", f"{recipe.name}.{arch}.img"))])
        self.graph.builds.append(Build([out], "size", [branch_out], variables={
            "repo": Raw(shell_args([self.p(self.config.repo)])),
            "image": Raw(image),
            "branch": Raw(shell_args([recipe.ref_for(arch)]))}))
        return out

    def spdx_edge(self, recipe):
        """``ninja NAME.spdx``: the recipe's SPDX document (spdx.py), from
        its lockfiles and the copyright files of the packages they pin."""
        out = self.p(os.path.join(self.config.builddir, "spdx",
                                  f"{recipe.name}.spdx.json"))
        lockfiles, debs = [], []
        for arch in recipe.architectures:
            path, entries = self.locks[(recipe.name, arch)]
            lockfiles.append(f"{arch}={self.p(path)}")
            debs += [self.fetch_edge(e) for e in entries
                     if e.stage not in (STAND_INS_STAGE, bases.BASE_STAGE)]
            if recipe.base:  # its packages' copyright files are in its tree
                debs.append(self.base_edge(recipe, arch))
        self.graph.builds.append(Build(
            [out], "spdx", [self.p(self.locks[(recipe.name, a)][0])
                            for a in recipe.architectures],
            implicit=sorted(set(debs)) + [self.p(self.config.config_path)],
            variables={"name": recipe.name,
                       "recipe": Raw(shell_args([recipe.name])),
                       "lockfiles": Raw(shell_args(lockfiles))}))
        self.graph.builds.append(Build([f"{recipe.name}.spdx"], "phony", [out]))

    def key_edge(self, stage_files, options, parent_key):
        """The stage's input key (cachekey.py), written beside its options
        (not an input of its edge); returns it."""
        if self._key_context is None:
            self._key_context = (cachekey.code_digest(self.top),
                                 cachekey.tool_versions())
        code, tools = self._key_context
        key, inputs = cachekey.stage_key(key_value(options), parent_key,
                                         code, tools)
        self.write_options(stage_files.key, {"key": key, "inputs": inputs})
        return key

    def probe_edge(self, recipe, arch, stage_files, parent_probe, dynamic):
        """Add the stage to its recipe and architecture's probe (written by
        ``probe_edges``); returns the stage's dyndep file, which the probe
        writes: the packages the stage needs (``dynamic``) on a miss,
        nothing on a hit."""
        self.write_options(stage_files.probe_inputs, {
            "commit": self.p(stage_files.commit), "inputs": dynamic})
        group = self.probes.setdefault((recipe.name, arch), {
            "name": recipe.name + (f" {arch}" if len(recipe.architectures) > 1
                                   else ""), "stages": [], "after": []})
        group["stages"].append(stage_files)
        if parent_probe:
            group["after"].append(self.p(parent_probe))
        return self.p(stage_files.dyndep)

    def probe_edges(self):
        """One edge per recipe and architecture that looks its stages up in
        the stage cache before they run (stagecache.probe): one process and
        one pull for them all, so the objects their trees share come once.

        Its inputs are the stages' options and keys, which cover all that
        a stage reads (configure runs again when one of those files
        changes): so it runs again when a key changes, not for a stage's
        commit, and the probes run ahead of the stages.  A recipe that
        starts from another's stage follows that recipe's probe, whose
        trees its own mostly share."""
        for (_, _), group in sorted(self.probes.items()):
            stages = group["stages"]
            outputs = {self.p(s.dyndep) for s in stages}
            after = sorted({p for p in group["after"] if p not in outputs})
            self.graph.builds.append(Build(
                [self.p(s.dyndep) for s in stages], "stage_cache_probe",
                [self.p(s.options) for s in stages],
                implicit=[self.p(path) for s in stages
                          for path in (s.key, s.probe_inputs)],
                implicit_outputs=[self.p(s.probe) for s in stages],
                order_only=[self.cache_remote_edge(),
                            self.p(os.path.join(self.config.repo, "config"))]
                + after,
                variables={"stages": Raw(" ".join(
                    "--stage-files " + shell_args([self.p(s.base)])
                    for s in stages)), "name": group["name"]}))

    def cache_remote_edge(self):
        """The edge that sets up the build repository's remote for the
        stage cache (stagecache.setup_remote): before any probe runs."""
        out = self.p(stagecache.remote_stamp(self.config))
        if out not in self.checked:
            self.checked.add(out)
            # It writes the build repository's configuration: after that
            # is made.  (The import edges, which need that file to exist,
            # run again once after a change of the cache's URL or key.)
            self.graph.builds.append(Build(
                [out], "stage_cache_remote",
                implicit=[self.p(self.config.config_path)],
                order_only=[self.p(os.path.join(self.config.repo, "config"))]))
        return out

    def publish_stamp(self):
        # The summary is rewritten by every publish: ninja's output for it
        # (and gone, so rerun, when the published repository is removed).
        return self.p(os.path.join(self.config.builddir, "publish", "summary"))

    def image_tools_check(self):
        out = self.p(os.path.join(self.config.builddir, "checks", "image-tools.ok"))
        if out not in self.checked:
            self.checked.add(out)
            self.graph.builds.append(Build([out], "check_image_tools"))
        return out

    def boot_tools_check(self, arch):
        """QEMU and the UEFI firmware that boot ``arch`` images."""
        out = self.p(os.path.join(self.config.builddir, "checks",
                                  f"boot-tools.{arch}.ok"))
        if out not in self.checked:
            self.checked.add(out)
            self.graph.builds.append(Build([out], "check_boot_tools",
                                           variables={"arch": arch}))
        return out

    def publish_edge(self, recipe, arch, branch_out):
        """The branch's commits copied into the published repository; the
        output is the branch's ref file there."""
        branch = recipe.ref_for(arch)
        out = self.p(publish.ref_path(self.config, branch))
        self.graph.builds.append(Build(
            [out], "publish", [branch_out],
            implicit=[self.p(self.config.config_path)],
            variables={"branch": branch}))
        return out

    def image_edge(self, recipe, arch, branch_out, published):
        """The recipe's disk image for ``arch``, from its branch commit."""
        options_path = StageFiles.image(self.config.builddir, recipe.name,
                                        arch).options
        kargs = list(recipe.image.kernel_arguments[arch])
        settings = self.config.publish
        self.write_options(options_path, {
            "recipe": recipe.name, "recipe_path": recipe.path, "arch": arch,
            "branch": recipe.ref_for(arch),
            "osname": recipe.ref_for(arch).split("/")[0],
            "size": recipe.image.size, "boot_size": recipe.image.boot_size,
            "esp_size": recipe.image.esp_size, "kernel_arguments": kargs,
            "serial_console": any(k.startswith(("console=ttyS", "console=ttyAMA"))
                                  for k in kargs),
            "url": settings.get("url"), "gpg_key": settings.get("gpg_key"),
            "gpg_homedir": settings.get("gpg_homedir"),
            "ed25519_key": settings.get("ed25519_key"),
            "log": os.path.join(self.config.builddir, "logs", recipe.name, arch,
                                "image.log")})
        out = self.p(os.path.join(self.config.builddir, "images",
                                  f"{recipe.name}.{arch}.img"))
        self.graph.builds.append(Build(
            [out], "image", [branch_out],
            implicit=[self.p(options_path), published],
            order_only=[self.image_tools_check()],
            variables={"options": Raw(shell_args([self.p(options_path)]))}))
        if len(recipe.architectures) > 1:
            self.graph.builds.append(Build([f"{recipe.name}/{arch}.img"], "phony",
                                           [out]))
        return out

    def sandbox_library_edge(self, arch):
        """The edge that fetches ``arch``'s fakeroot library matched to the
        host's daemon (sandboxlib.py); None without a host fakeroot (the
        stage then names the missing tool)."""
        if not hasattr(self, "_host_fakeroot"):
            self._host_fakeroot = sandboxlib.host_version()
        if not self._host_fakeroot:
            return None
        out = self.p(sandboxlib.library_path(self.config.builddir, arch,
                                             self._host_fakeroot))
        self.package_paths.add(out)
        if out not in self.checked:
            self.checked.add(out)
            self.graph.builds.append(Build([out], "sandbox_library", variables={
                "arch": arch, "version": self._host_fakeroot}))
        return out

    def arch_check(self, arch):
        """An edge that fails, before any stage of ``arch`` runs, when the
        host cannot run its programs (no qemu-user or binfmt_misc entry)."""
        out = self.p(os.path.join(self.config.builddir, "checks", f"{arch}.ok"))
        if out not in self.checked:
            self.checked.add(out)
            self.graph.builds.append(Build([out], "check_arch",
                                           variables={"arch": arch}))
        return out

    def branch_edge(self, recipe, arch):
        """Commit the last stage's tree to the recipe's branch."""
        for stage in recipe.stages:
            self.stage_edge(recipe, arch, stage)
        last = self.stage_outputs[(recipe.name, arch, recipe.stages[-1].name)]
        branch_files = StageFiles.branch(self.config.builddir, recipe.name, arch)
        path, _ = self.locks[(recipe.name, arch)]
        options_path = branch_files.options
        pin = lockfile.read_pin(path) if recipe.base else None
        self.write_options(options_path, {
            "recipe": recipe.name, "arch": arch, "branch": recipe.ref_for(arch),
            "lockfile": os.path.abspath(path), "version": recipe.version,
            "commit_timestamp": self.source_date_epoch,
            "base": bases.pull_options(pin, None, None) if pin else None})
        out = self.p(branch_files.commit)
        self.graph.builds.append(Build(
            [out], "branch", [last], implicit=[self.p(options_path)],
            variables={"options": Raw(shell_args([self.p(options_path)])),
                       "branch": recipe.ref_for(arch)}))
        return out

    def _regenerate(self):
        """The edge that runs configure again, after every other edge is
        known: its inputs are the project's code, the recipes and
        lockfiles, and every source file a stage reads (its kind's script,
        copied files).  Stage keys (cachekey.py) are computed here from
        those files, so an edit of one must reconfigure, or the stage's
        key would name a tree that other content made."""
        top = self.top
        inputs = [os.path.join(top, "configure.py"),
                  os.path.join(top, "build.ninja.in")]
        inputs += sorted(glob.glob(os.path.join(top, "debostree", "**", "*.py"),
                                   recursive=True))
        inputs += [self.config.recipes, self.config.lockfiles]
        for recipe in self.recipes:
            inputs.append(recipe.path)
        for path, _ in self.locks.values():
            if os.path.exists(path):
                inputs.append(path)
        inputs = {self.p(i) for i in inputs}
        produced = {path for build in self.graph.builds
                    for path in (*build.outputs, *build.implicit_outputs)}
        builddir = self.p(self.config.builddir) + "/"
        sources = {path for build in self.graph.builds
                   for path in (*build.inputs, *build.implicit)
                   if path not in produced and not path.startswith(builddir)}
        for path in sorted(sources - inputs):
            # A source that is gone reruns configure, which says which
            # recipe names it, rather than ninja stopping at "missing".
            self.graph.builds.append(Build([path], "phony"))
        self.graph.builds.append(Build(
            ["build.ninja"], "configure",
            implicit=sorted(inputs | sources)))
