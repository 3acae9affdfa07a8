"""The names of a stage's files: what its edge in the graph writes beside
the build (``StageFiles``: the commit, the manifest, the options) and what
the processes of one stage run pass each other in its work directory
(``WorkFiles``).  Nothing else derives these names from suffixes."""

import os

from . import ostree

COMMIT = ".commit"


class StageFiles:
    """``BUILDDIR/stages/RECIPE/ARCH/STAGE``: ``.commit`` (the edge's
    output: the commit checksum), ``.manifest`` (owners, modes and xattrs
    of that tree) and ``.options.json`` (what configure wrote for it); the
    same names for a branch's and an image's edge."""

    def __init__(self, base):
        self.base = base

    @classmethod
    def of(cls, builddir, recipe, arch, stage):
        return cls(os.path.join(builddir, "stages", recipe, arch,
                                ostree.encode_ref_part(stage)))

    @classmethod
    def branch(cls, builddir, recipe, arch):
        """The branch edge's files (``.commit``: the branch's commit)."""
        return cls(os.path.join(builddir, "branches", recipe, arch))

    @classmethod
    def image(cls, builddir, recipe, arch):
        """The image edge's options (the image itself is named apart)."""
        return cls(os.path.join(builddir, "images", recipe, arch))

    @classmethod
    def from_commit(cls, path):
        """The stage files of a ``.commit`` path (another name is taken as
        the base itself, as a benchmark's output may be)."""
        return cls(path[:-len(COMMIT)] if path.endswith(COMMIT) else path)

    @property
    def commit(self):
        return self.base + COMMIT

    @property
    def manifest(self):
        return self.base + ".manifest"

    @property
    def options(self):
        return self.base + ".options.json"

    @property
    def key(self):
        """The stage's input key and what went into it (cachekey.py),
        written by configure; not an input of the stage's edge."""
        return self.base + ".key.json"

    @property
    def run_key(self):
        """The key the stage's commit is cached under (cachekey.run_key),
        written with the commit."""
        return self.base + ".run-key"

    @property
    def dyndep(self):
        """With a stage cache: the stage's dyndep file (ninja), written by
        its probe (stagecache.probe)."""
        return self.base + ".dd"

    @property
    def probe(self):
        """What the probe found: the key and the cache entry, if any."""
        return self.base + ".probe.json"

    @property
    def probe_inputs(self):
        """What configure tells the probe: the stage's output and the
        packages it needs when it builds."""
        return self.base + ".probe-inputs.json"

    @property
    def plan(self):
        """A bootstrap's steps in apt's order (dpkgorder.py), planned by an
        edge of its own while the packages are imported."""
        return self.base + ".plan.json"


# Where WorkFiles.run is inside the sandbox.
RUN_INSIDE = "/run/debostree"


class WorkFiles:
    """A stage run's work directory, ``BUILDDIR/work/RECIPE/ARCH/STAGE``:
    written by one step of the run and read by a later one (host side,
    inside the namespace, under fakeroot)."""

    def __init__(self, path):
        self.path = path

    def _(name):
        return property(lambda self: os.path.join(self.path, name))

    options = _("options.json")           # the stage's options, as read
    plan = _("plan.json")                 # a bootstrap's steps (dpkgorder)
    skeleton = _("skeleton")              # a bootstrap's own directories
    lower_path = _("lower.path")          # the checkout under the overlay
    stand_in_root = _("stand-ins.path")   # the unpacked stand-in packages
    base_manifest = _("base.manifest")    # the tree the stage starts from
    base_commit = _("base.commit")
    target = _("target")                  # the overlay: the stage's tree
    upper = _("upper")
    overlay_work = _("ovl")
    run = _("run")                        # RUN_INSIDE in the sandbox
    stand_in_digests = _("run/stand-ins.sha256")  # "SHA256 PATH" per stand-in
    stand_in_digests_only = _("run/stand-ins.sha256.only")
    native = _("native")                  # stand-ins' mount sources
    libfakeroot = _("libfakeroot")        # a foreign chroot's library
    faked_save = _("faked.save")          # the fakeroot daemon's state
    policy_created = _("policy-rc.d-created")
    warnings = _("warnings")              # lines for the user's terminal
    result = _("result.json")             # {"commit", "changed"}
    terminal = _("terminal.json")         # a shell's (tools/shell) stdio and
                                          # whether it commits
    result_manifest = _("result.manifest")
    del _
