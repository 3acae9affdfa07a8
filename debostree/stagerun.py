"""Running one stage: check out, run in the sandbox, commit, report.

``run_stage`` is what every ``stages/KIND`` executable calls.  On the host it
checks out the parent tree (hardlinks), then re-runs itself (``inner``)
inside an unprivileged user and mount namespace where it mounts the overlay,
starts the fakeroot daemon from the parent's manifest, runs the stage's work
in bubblewrap, scans the result under fakeroot into a new manifest, and
commits it with libostree.  Back outside, the stage's output file (the commit
checksum) is rewritten only when the tree changed, which is what lets ninja
skip everything after a stage that produced the same tree (``restat``).

A failing stage moves no ref and leaves the previous output file alone; the
full log is under ``BUILDDIR/logs/``.
"""

import fcntl
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

from . import (cachekey, debianlayout, deployable, files, ids, initramfs, kinds,
               manifest, native, ostree, proc, sandbox, sandboxlib, treepath)
from .errors import UserError
from .project import load_config, ninja_ancestor
from .stagefiles import RUN_INSIDE, StageFiles, WorkFiles

# What a stage never leaves in a tree: logs, caches and backups that differ
# from run to run (documented in docs/recipes.md).
VOLATILE = (
    "/var/log/dpkg.log", "/var/log/alternatives.log", "/var/log/apt/history.log",
    "/var/log/apt/term.log", "/var/log/apt/eipp.log.xz",
    "/var/cache/ldconfig/aux-cache", "/var/cache/apt/pkgcache.bin",
    "/var/cache/apt/srcpkgcache.bin", "/var/cache/debconf/config.dat-old",
    "/var/cache/debconf/templates.dat-old", "/var/cache/debconf/passwords.dat-old",
    "/var/lib/dpkg/status-old", "/var/lib/dpkg/diversions-old",
    "/var/lib/dpkg/statoverride-old", "/var/lib/dpkg/lock",
    "/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/triggers/Lock",
    "/var/lib/apt/lists/lock", "/var/cache/apt/archives/lock",
    "/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-",
    "/etc/subuid-", "/etc/subgid-", "/var/lib/dbus/machine-id",
)
# Directories whose contents are never committed (mount points in the sandbox).
EMPTY_DIRS = ("/dev", "/proc", "/sys", "/run", "/tmp")
POLICY_RC_D = "/usr/sbin/policy-rc.d"
KEEP_CHECKOUTS = 6


def read_commit_file(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split()[0]


class Stage:
    """One stage run, from the options file configure wrote for it."""

    def __init__(self, config_path, options_path, parent_path, out_path):
        self.config = load_config(config_path)
        self.opts = kinds.load_options(options_path)
        self.kind = kinds.get(self.opts.kind)
        self.parent_path = parent_path
        self.out = StageFiles.from_commit(os.path.abspath(out_path))
        self.out_path = os.path.abspath(out_path)
        self.repo = ostree.Repo(self.config.repo)
        name = f"{self.opts.recipe}/{self.opts.arch}/{self.opts.stage}"
        self.work = os.path.join(self.config.builddir, "work", name)
        self.files = WorkFiles(self.work)
        self.log = os.path.join(self.config.builddir, "logs", name + ".log")
        # tools/shell: {"fds": [stdin, stdout, stderr], "commit": bool}, the
        # terminal its command gets; the run's exit status (None: it
        # committed, or is no shell).
        self.terminal = None
        self.shell_status = None

    def note(self, line):
        """A line in the stage's log."""
        with open(self.log, "a") as f:
            f.write(line + "\n")

    # -- outside the namespace ---------------------------------------------
    def check_host(self):
        """What the host must have for this stage, checked before any work."""
        opts = self.opts
        missing = sandbox.missing_tools(opts.arch, self.config.host_arch)
        if missing:
            raise UserError("missing host tools: " + ", ".join(missing),
                            hint="run tools/setup-host")
        if opts.arch != self.config.host_arch and not opts.fakeroot_deb:
            raise UserError(f"no fakeroot library for {opts.arch} "
                            "chroots was configured",
                            hint="apt-get install fakeroot, then run ./configure")
        problem = sandbox.binfmt_problem(opts.arch, self.config.host_arch)
        if problem:
            raise UserError(f"cannot run {opts.arch} programs: {problem}")
        if opts.fakeroot_deb:
            daemon = sandboxlib.host_version() or "none"
            library = proc.run(["dpkg-deb", "-f", opts.fakeroot_deb,
                                "Version"], capture=True).stdout.strip()
            problem = sandbox.fakeroot_mismatch(opts.arch, daemon, library)
            if problem:
                raise UserError(problem)

    def run(self):
        started = time.monotonic()
        # What a build needs of the host is checked only when it builds.
        if not (self.config.stage_cache.get("url") and self.probe_found()):
            self.check_host()
        self.repo.ensure()
        os.makedirs(os.path.dirname(self.log), exist_ok=True)
        with open(self.log, "w") as f:
            f.write(f"stage {self.opts.label} ({self.opts.kind}, "
                    f"{self.opts.arch})\n")
        # One run of a stage at a time: a run orphaned by a killed ninja may
        # still be finishing in this work directory.
        os.makedirs(os.path.dirname(self.work), exist_ok=True)
        lock = open(self.work + ".lock", "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        files.remove_tree(self.work)
        os.makedirs(self.work)
        try:
            if self.config.stage_cache.get("url") and self.from_cache():
                return
            t = time.monotonic()
            self.kind.plan(self)
            base, base_manifest = self.prepare_base()
            # A bootstrap composes its unpacked packages here; for other
            # kinds this is reading the parent's manifest.
            self.note(f"[base tree: {time.monotonic() - t:.2f} s]")
            t = time.monotonic()
            lower = self.checkout(base)
            with open(self.files.lower_path, "w") as f:
                f.write(lower + "\n")
            self.note(f"[checkout: {time.monotonic() - t:.2f} s]")
            if self.opts.stand_ins:
                t = time.monotonic()
                with open(self.files.stand_in_root, "w") as f:
                    f.write(self.stand_in_root() + "\n")
                self.note(f"[stand-ins: {time.monotonic() - t:.2f} s]")
            if isinstance(base_manifest, str):
                # The parent's manifest file, as it is: no need to parse
                # and write it again.
                shutil.copyfile(base_manifest, self.files.base_manifest)
            else:
                manifest.write(self.files.base_manifest, base_manifest)
            with open(self.files.base_commit, "w") as f:
                f.write(base + "\n")
            with open(self.files.options, "w") as f:
                json.dump(self.opts.to_json(), f)
            inner = [sys.executable, "-m", "debostree.stagerun", "inner",
                     self.config.config_path, self.work]
            env = {**os.environ, "PYTHONPATH": self.config.top}
            if self.terminal is not None:
                with open(self.files.terminal, "w") as f:
                    json.dump(self.terminal, f)
            proc.run(sandbox.unshare_argv(inner), log=self.log, env=env,
                     tied=True, pass_fds=self.terminal["fds"]
                     if self.terminal else ())
            with open(self.files.result) as f:
                result = json.load(f)
            if os.path.exists(self.files.warnings):
                with open(self.files.warnings) as f:
                    sys.stderr.write(f.read())
            commit = result["commit"]
            if commit is None:  # a shell that commits nothing
                self.shell_status = result["status"]
                return
            shutil.copyfile(self.files.result_manifest,
                            self.out.manifest + ".tmp")
            os.replace(self.out.manifest + ".tmp", self.out.manifest)
            changed = files.write_if_changed(self.out_path, commit + "\n")
            key = cachekey.read_key(self.out.key)
            if key is not None:
                self.write_run_key(commit, cachekey.run_keys(
                    key, result["ids_reference"], result["ids_renumbered"]))
            elapsed = time.monotonic() - started
            self.note(f"commit {commit} ({'changed' if changed else 'unchanged'}"
                      f", {elapsed:.1f} s)")
        finally:
            if not os.environ.get("DEBOSTREE_KEEP_WORK"):
                files.remove_tree(self.work)

    def write_run_key(self, commit, keys):
        """Name the keys this commit is cached under (``ninja cache-push``;
        cachekey.run_keys)."""
        files.write_if_changed(self.out.run_key, json.dumps({
            "keys": keys, "commit": commit}) + "\n")

    def probe_found(self):
        """Whether the stage's probe found a cache entry (stagecache.probe)."""
        try:
            with open(self.out.probe, encoding="utf-8") as f:
                return bool(json.load(f).get("entry"))
        except (OSError, ValueError, AttributeError):
            return False

    def from_cache(self):
        """Take the stage's commit from the stage cache entry its probe
        found and took into the build repository (stagecache.probe);
        False when there is none and the stage builds."""
        from . import stagecache  # here: it brings signing and YAML
        try:
            with open(self.out.probe, encoding="utf-8") as f:
                found = json.load(f)
        except (OSError, ValueError):
            return False
        entry, run_key = found.get("entry"), found.get("run_key")
        if not entry:
            return False
        label = self.opts.label
        gi_repo = self.repo.open_gi()
        from gi.repository import GLib
        try:
            manifest_text = stagecache.entry_manifest(
                gi_repo, entry, self.opts.arch, run_key)
        except (stagecache.Refused, GLib.Error) as error:
            # Gone since the probe (or never whole): the next run probes
            # again, and builds if it must.
            for path in (self.out.probe, self.out.dyndep):
                if os.path.exists(path):
                    os.unlink(path)
            raise UserError(f"stage {label}: the stage cache entry {entry} "
                            f"is not usable in the build repository ({error})",
                            hint="run ninja again")
        commit, changed = ostree.commit_tree_of(
            self.repo.path, entry, f"{label} ({self.opts.kind})",
            branch=self.opts.ref, parent=self.repo.rev_parse(self.opts.ref),
            timestamp=self.opts.commit_timestamp,
            metadata={"debostree.stage": label})
        files.write_atomically(self.out.manifest, manifest_text)
        changed = files.write_if_changed(self.out_path, commit + "\n")
        self.write_run_key(commit, [run_key])
        self.say(f"{label}: from the stage cache (key {run_key[:16]}, entry "
                 f"{entry[:12]}); commit {commit} "
                 f"({'changed' if changed else 'unchanged'})")
        return True

    def say(self, line):
        """A line for the terminal (ninja shows it) and the stage's log."""
        self.note(line)
        print(line, flush=True)

    def checkout(self, commit):
        """A hardlinked checkout of ``commit``, kept for the next stage runs.

        Checkouts are only ever the overlay's read-only lower layer, so one
        checkout serves every stage (and every rerun) that starts from the
        same commit.  The least recently used ones beyond a few are removed.
        """
        cache = os.path.join(self.config.builddir, "checkouts")
        os.makedirs(cache, exist_ok=True)
        path = os.path.join(cache, commit)
        # A shared lock while this stage uses the checkout; the clean-up
        # below removes only checkouts nobody holds.
        self.checkout_lock = open(path + ".lock", "w")
        fcntl.flock(self.checkout_lock, fcntl.LOCK_SH)
        if os.path.isdir(path):
            os.utime(path)
            return path
        tmp = f"{path}.tmp{os.getpid()}"
        files.remove_tree(tmp)
        self.repo.checkout(commit, tmp, log=self.log)
        # Its walk is kept beside it, naming its root (the rename keeps it),
        # once it is the checkout.
        manifest.prepare_lower(tmp, lower_walk_path(tmp))
        try:
            os.rename(tmp, path)
        except OSError:
            files.remove_tree(tmp)  # another edge made the same checkout meanwhile
            _unlink_if_present(lower_walk_path(tmp))
        else:
            os.replace(lower_walk_path(tmp), lower_walk_path(path))
        os.utime(path)  # ostree checks out with mtime 0; this marks it as used
        kept = sorted((e for e in os.scandir(cache)
                       if e.is_dir() and ".tmp" not in e.name),
                      key=lambda e: e.stat().st_mtime, reverse=True)
        for old in kept[KEEP_CHECKOUTS:]:
            with open(old.path + ".lock", "w") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # in use by a running stage
                files.remove_tree(old.path)
                _unlink_if_present(lower_walk_path(old.path))
                os.unlink(old.path + ".lock")
        return path

    def stand_in_root(self):
        """The locked stand-in packages (host architecture) unpacked into
        one tree, laid out as a merged-/usr system with its dpkg status:
        what native.py takes for "the host".  Made once per set of
        packages (a metadata-only merge of their imported commits, checked
        out with hardlinks) and kept."""
        packages = self.opts.stand_ins
        key = hashlib.sha256(" ".join(sorted(p.sha256 for p in packages))
                             .encode()).hexdigest()[:32]
        cache = os.path.join(self.config.builddir, "stand-ins")
        path = os.path.join(cache, key)
        if os.path.isdir(path):
            return path
        os.makedirs(cache, exist_ok=True)
        commit = ostree.merge_commits(
            self.repo.path, f"tmp/stand-ins/{key}",
            [ostree.package_ref(p.sha256, "data") for p in packages],
            "stand-ins")
        tmp = f"{path}.tmp{os.getpid()}"
        files.remove_tree(tmp)
        self.repo.checkout(commit, tmp, log=self.log)
        for name in ("bin", "sbin", "lib", "lib64"):
            if os.path.isdir(os.path.join(tmp, "usr", name)) and \
                    not os.path.lexists(os.path.join(tmp, name)):
                os.symlink(f"usr/{name}", os.path.join(tmp, name))
        os.makedirs(os.path.join(tmp, "var/lib/dpkg"), exist_ok=True)
        with open(os.path.join(tmp, "var/lib/dpkg/status"), "w") as f:
            f.write("\n".join(p.stanza.rstrip("\n") + "\nStatus: install ok "
                              "installed\n" for p in packages))
        # Host programs in the sandbox preload fakeroot's library from their
        # own library directory: the sandbox's, matched to its daemon.
        fakeroot = sandbox.FAKEROOT_LIB_DIRS[self.config.host_arch]
        if os.path.isdir(fakeroot) and not os.path.lexists(tmp + fakeroot):
            shutil.copytree(fakeroot, tmp + fakeroot, symlinks=True)
        try:
            os.rename(tmp, path)
        except OSError:
            files.remove_tree(tmp)  # another stage made it meanwhile
        return path

    def prepare_base(self):
        """The commit the stage starts from, and its manifest: the kind's
        own (a bootstrap's composed tree: a dict) or the parent stage's
        (the path of its manifest file)."""
        own = self.kind.base(self)
        if own is not None:
            return own
        if not self.parent_path:
            raise UserError(f"stage {self.opts.label}: no parent stage was "
                            "given", hint="run ./configure again")
        parent = StageFiles.from_commit(self.parent_path)
        return read_commit_file(parent.commit), parent.manifest


# -- inside the namespace ----------------------------------------------------
def lower_walk_path(checkout):
    """Where the walk of a cached checkout is kept (manifest.lower_walk)."""
    return checkout + ".walk.json"


def _unlink_if_present(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def inner(config_path, work_path):
    # libostree, for the commit at the end, loads while the stage works.
    threading.Thread(target=ostree.load_library, daemon=True).start()
    config = load_config(config_path)
    work = WorkFiles(work_path)
    opts = kinds.load_options(work.options)
    kind = kinds.get(opts.kind)
    with open(work.lower_path) as f:
        lower = f.read().strip()
    target = work.target
    base_manifest = manifest.read(work.base_manifest)
    with open(work.base_commit) as f:
        base_commit = f.read().strip()
    terminal = None
    if os.path.exists(work.terminal):
        with open(work.terminal) as f:
            terminal = json.load(f)
    with timed("inodes"):
        lower_stats = manifest.lower_walk(lower, lower_walk_path(lower))
        inodes = manifest.lower_inodes(lower_stats)
    # Paths copied up before the fakeroot daemon starts, so that each keeps
    # one inode for the whole stage (manifest.copy_up): those the daemon is
    # told about, those sharing an inode with others (none in a checkout
    # that separated them, but an older one has them), what the kind names
    # (a bootstrap's conffiles that dpkg will move into place), and what
    # earlier runs of this stage found.
    first = set(manifest.special_paths(base_manifest))
    first.update(manifest.shared_inode_paths(inodes))
    first.update(kind.copy_first(base_manifest))
    hints_path = os.path.join(config.builddir, "hints",
                              f"{opts.recipe}/{opts.arch}/{opts.stage}.json")
    hints = set(_read_hints(hints_path))
    for attempt in range(1, ATTEMPTS + 1):
        stats, xattrs, (loaded, saved) = _attempt(
            config, opts, work, lower, lower_stats, base_manifest,
            first | hints)
        moved = manifest.moved_state(inodes, saved, loaded, stats,
                                     os.lstat(target).st_dev)
        if terminal is not None:
            # A shell runs once: what it did is not done again.
            status = _read_status(work)
            if status != 0 or not terminal["commit"]:
                with open(work.result, "w") as f:
                    json.dump({"commit": None, "status": status}, f)
                return
            if moved:
                raise UserError(f"the owners, modes or xattrs of {len(moved)} "
                                "paths could not be kept "
                                f"({', '.join(moved[:5])}); nothing was "
                                "committed", hint="run it again")
            break
        if not moved:
            break
        print(f"{len(moved)} paths changed inode after the stage set their "
              f"owner, mode or xattrs ({', '.join(moved[:5])}"
              f"{', ...' if len(moved) > 5 else ''}); "
              + ("running the stage again with them copied up first"
                 if attempt < ATTEMPTS else "giving up"), flush=True)
        hints.update(moved)
        _write_hints(hints_path, hints)
        if attempt == ATTEMPTS:
            raise UserError(f"stage {opts.label}: owners, "
                            f"modes or xattrs of {len(moved)} paths could not "
                            "be kept (the files kept changing identity)",
                            hint="see the stage's log")
        proc.run(["umount", target])
    result_manifest = manifest.combine(target, stats, saved, xattrs)
    for warning in kind.warnings(opts, target, base_manifest):
        print(warning, flush=True)
        with open(work.warnings, "a") as f:
            f.write(warning + "\n")
    with timed("ids"):
        # The reference for system user and group IDs: history, like the
        # branch's parent, so not an input of the stage (ids.py).
        print(ids.write_reference(config, opts.recipe, opts.arch, work.path),
              flush=True)
        kept = ids.keep(work.path, target, result_manifest)
        renumbered = kept is not result_manifest  # keep's contract
        result_manifest = kept
    manifest.write(work.result_manifest, result_manifest)
    previous = ostree.resolve_ref(ostree.Repo(config.repo).open_gi(), opts.ref)
    with timed("commit"):
        commit, changed = ostree.commit_changes(
            config.repo, base_commit, target, work.upper, base_manifest,
            result_manifest, opts.ref, f"{opts.label} ({opts.kind})",
            parent=previous, timestamp=opts.commit_timestamp,
            metadata={"debostree.stage": opts.label})
    with open(work.result, "w") as f:
        json.dump({"commit": commit, "changed": changed,
                   "ids_reference": ids.reference_digest(work.path),
                   "ids_renumbered": renumbered}, f)


def _attempt(config, opts, work, lower, lower_stats, base_manifest,
             copy_first):
    """One run of the stage's work on a fresh overlay over ``lower``.

    Returns the tree's stats, the xattrs read under fakeroot, and the
    fakeroot state as loaded and as saved, ``(loaded, saved)``."""
    target = work.target
    for d in (work.upper, work.overlay_work, work.run, work.native,
              work.libfakeroot):
        files.remove_tree(d)
    for marker in (work.policy_created, work.faked_save):
        if os.path.exists(marker):
            os.unlink(marker)
    for d in (work.upper, work.overlay_work, target):
        os.makedirs(d, exist_ok=True)
    proc.run(sandbox.overlay_mount_argv(lower, work.upper, work.overlay_work,
                                        target))
    with timed("fakeroot state"):
        manifest.copy_up(target, copy_first)
        state = manifest.fakeroot_state(target, base_manifest, lower_stats)
    with timed("faked start"):
        # Not proc.run: the daemon forks and stays; only its first line
        # (key and pid) is read here.
        faked = subprocess.Popen(sandbox.faked_argv(work.faked_save),
                                 stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        key, _, pid = faked.communicate(state)[0].strip().partition(":")
    if not key or not pid.isdigit():
        raise UserError("the fakeroot daemon did not start")
    host_lib = sandbox.FAKEROOT_LIB_DIRS[config.host_arch]
    watch = _DaemonWatch(int(pid))
    watch.start()
    # The xattrs are read in a process of its own, for fakeroot's view
    # (xattrs.py); it starts now and waits for the paths.
    xattr_reader = proc.Started(
        [sys.executable, "-m", "debostree.xattrs", target],
        env=sandbox.fakeroot_env(key, host_lib, os.environ))
    try:
        run_in_fakeroot(config, opts, work, key, host_lib, base_manifest)
        with timed("scan"):
            stale = cleanup(work, target)
            skip = set(VOLATILE) | {d + "/" + n for d in EMPTY_DIRS
                                    if os.path.isdir(target + d)
                                    for n in os.listdir(target + d)}
            stats = manifest.walk(target, skip)
            found = json.loads(xattr_reader.finish(json.dumps(
                manifest.xattr_candidates(stats, base_manifest))))
            xattrs = {p: [(n, bytes.fromhex(v)) for n, v in pairs]
                      for p, pairs in found.items()}
    except Exception:
        if watch.lost:
            raise watch.error()
        raise
    finally:
        xattr_reader.stop()
        watch.stop()
        with timed("faked stop"):
            _stop_faked(int(pid))
    if watch.lost:
        raise watch.error()
    saved_state = manifest.read_fakeroot_state(work.faked_save)
    for key in stale:
        saved_state.pop(key, None)
    return stats, xattrs, (manifest.parse_fakeroot_state(state), saved_state)


class timed:
    """Log how long a step of the stage took (into the stage's log)."""

    def __init__(self, label):
        self.label = label

    def __enter__(self):
        self.start = time.monotonic()

    def __exit__(self, *exc):
        print(f"[{self.label}: {time.monotonic() - self.start:.2f} s]", flush=True)


ATTEMPTS = 3


def _read_status(work):
    """The exit status of a shell's command (``run_command``)."""
    with open(work.terminal + ".status") as f:
        return int(f.read())


def _read_hints(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return []


def _write_hints(path, hints):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    files.write_if_changed(path, json.dumps(sorted(hints), indent=0) + "\n")


def _alive(pid):
    """Whether ``pid`` runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


class _DaemonWatch(threading.Thread):
    """Stops the stage when its fakeroot daemon dies under it.

    Without the daemon, every process of the stage would wait forever for
    an answer (SysV message queues have no timeout).  The inner process is
    init of the stage's PID namespace (sandbox.unshare_argv), so it can end
    them all: the command it waits for then fails, and ``error`` says why.
    """

    def __init__(self, pid, interval=0.5):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.lost = False
        self._done = threading.Event()

    def run(self):
        while not self._done.wait(self.interval):
            if not _alive(self.pid):
                self.lost = True
                if os.getpid() == 1:  # only ever in the stage's namespace
                    for name in os.listdir("/proc"):
                        if name.isdigit() and int(name) != 1:
                            try:
                                os.kill(int(name), signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                return

    def stop(self):
        self._done.set()
        self.join()

    def error(self):
        return UserError("the stage's fakeroot daemon ended while the stage "
                         "ran (killed from outside?), so the owners and modes "
                         "it held are lost; the stage was stopped",
                         hint="run ninja again")


def _stop_faked(pid):
    """Stop the fakeroot daemon and wait until it has saved its state.

    The daemon is nobody's child here, so once it exits it stays a zombie
    until init reaps it: watch for that state rather than for the pid to go.
    """
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(1000):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.005)


def cleanup(work, target):
    """Drop the stage's helper files and the volatile paths.

    Every path is resolved inside the tree (treepath.py): a stage may have
    made ``/var/log`` or ``/etc`` a link to anywhere.  Returns the ``(dev,
    ino)`` of the files removed: they are removed behind the fakeroot
    daemon's back, so what it holds for those inodes is stale (and would
    otherwise go to a new file that reuses one)."""
    removed = set()
    with treepath.Tree(target) as tree:
        def unlink(path):
            st = tree.lstat(path)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                tree.unlink(path)
                removed.add((st.st_dev, st.st_ino))

        if os.path.exists(work.policy_created):
            unlink(POLICY_RC_D)
        for path in VOLATILE:
            unlink(path)
        # apt in the image runs debconf's preconfiguration (70debconf),
        # which leaves its work directory behind, empty.
        leftover = "/var/cache/debconf/tmp.ci"
        if tree.is_dir(leftover) and not tree.listdir(leftover):
            st = tree.lstat(leftover)
            removed.add((st.st_dev, st.st_ino))
            tree.rmdir(leftover)
        # As mmdebstrap leaves it (machine-id(5)): an image made once for
        # many machines has an empty /etc/machine-id, filled at boot
        # ("uninitialized" from a deployable stage also asks for first-boot
        # setup).
        machine_id = "/etc/machine-id"
        if tree.is_file(machine_id) and \
                tree.read(machine_id) not in (b"", b"uninitialized\n"):
            unlink(machine_id)
            tree.write(machine_id, b"", 0o644)
            st = tree.lstat(machine_id)
            removed.add((st.st_dev, st.st_ino))  # a new file: root's
    return removed


def run_in_fakeroot(config, opts, work, key, host_lib, base_manifest):
    """Everything that must see the fakeroot view: prepare, then run the
    kind's command in the sandbox, then what the kind does after it."""
    kind = kinds.get(opts.kind)
    target = work.target
    env = sandbox.fakeroot_env(key, host_lib, os.environ)
    helper = [sys.executable, "-m", "debostree.stagerun"]
    # Restore xattrs (fakeroot keeps them in memory only) and do the
    # host-side parts of the stage (copies, helper files): under fakeroot
    # when there are xattrs or the kind prepares the tree, else here (a
    # process under fakeroot starts slowly: every file access of its
    # imports is a round trip to the daemon).
    with timed("prepare"):
        if prepares_under_fakeroot(kind, base_manifest):
            proc.run(helper + ["prepare", work.path], env=env)
        else:
            prepare(work.path, base_manifest)
    command = kind.command(opts)
    if command is not None:
        run_command(config, opts, kind, work, command, key, host_lib)
    with timed("finish"):
        kind.finish(opts, target, helper, env)


def run_command(config, opts, kind, work, command, key, host_lib):
    """The kind's command in bubblewrap, chrooted into the stage's tree."""
    target = work.target
    lib_dir = sandbox.FAKEROOT_LIB_DIRS[opts.arch]
    chroot_lib = host_lib
    if opts.fakeroot_deb:
        # A foreign chroot gets the target architecture's preload
        # library; it talks to the same (host) fakeroot daemon.
        proc.run(["dpkg-deb", "-x", opts.fakeroot_deb, work.libfakeroot])
        chroot_lib = work.libfakeroot + lib_dir
    ro_binds = [(chroot_lib, lib_dir)]
    binds = []
    extra_env = {}
    preload = None
    helpers = None
    if opts.fakeroot_deb and config.native_helpers:
        # Never for a `run` command (it may copy any program anywhere) or
        # a removal (it could not delete a file with a mount on it): the
        # kind says.  The host programs are the lockfile's (stand_in_root),
        # never the host system's own.
        triplet = os.path.basename(os.path.dirname(lib_dir))
        if os.path.exists(work.stand_in_root):
            with open(work.stand_in_root) as f:
                host_root = f.read().strip()
            helpers = kind.stand_ins(config, opts, target, triplet, host_root)
        elif kind.uses_stand_ins:
            helpers = native.StandIns(reason="the lockfile has no stand-ins "
                                      f"for {config.host_arch} hosts")
        else:
            helpers = None
        if helpers:
            ro_binds += helpers.mounts(work.native)
            preload = native.FAKEROOT_PRELOAD
            if kind.pristine_view:
                # The same tree again, without the stand-ins (a bind of the
                # checkout directory does not carry the sandbox's mounts),
                # and what the stand-ins are, for the kind's script.
                os.makedirs(work.run + kind.pristine_view[len(RUN_INSIDE):],
                            exist_ok=True)
                binds.append((target, kind.pristine_view))
                extra_env["DEBOSTREE_SYSROOT"] = kind.pristine_view
                helpers.write_digests(work.stand_in_digests,
                                      work.stand_in_digests_only)
        if helpers is not None:
            print(helpers.describe(), flush=True)
    # Mount points the sandbox has to create go again afterwards.
    created = sorted({c for c in (_missing_ancestor(target, inside)
                                  for _, inside in ro_binds) if c})
    chroot_env = sandbox.chroot_env({**opts.environment, **extra_env}, key,
                                    lib_dir, opts.source_date_epoch, preload)
    ro_binds.append((work.run, RUN_INSIDE))
    argv = sandbox.bwrap_argv(target, command, chroot_env, binds=binds,
                              ro_binds=ro_binds)
    images_before = native.initramfs_images(target) if helpers else None
    terminal = None
    if os.path.exists(work.terminal):
        with open(work.terminal) as f:
            terminal = json.load(f)
    try:
        print("$ " + " ".join(command), flush=True)
        with timed("command"):
            if terminal is None:
                proc.run(argv)
            else:
                status = proc.run(argv, stdio=terminal["fds"],
                                  check=False).returncode
                with open(work.terminal + ".status", "w") as f:
                    f.write(f"{status}\n")
    finally:
        with treepath.Tree(target) as tree:
            for path in created:
                tree.rmtree(path)
    if helpers:
        check_initramfs_images(target, opts.arch, images_before)


def check_initramfs_images(target, arch, before):
    """Every initramfs image the command made or changed while stand-ins
    were bound in holds only programs for the target's machine."""
    machine = debianlayout.ELF_MACHINES[arch]
    after = native.initramfs_images(target)
    for path in sorted(p for p, sig in after.items() if before.get(p) != sig):
        with timed(f"check {path}"):
            foreign = initramfs.foreign_elf_files(target + path, machine)
        if foreign:
            shown = ", ".join(name for name, _ in foreign[:5])
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise UserError(
                f"the initramfs {path}, made while native stand-ins were "
                f"bound in, holds programs for another machine ({shown}{more})"
                ": an initramfs generator ran that the stage did not expect; "
                "defer it to the deployable stage (environment INITRD: No) or "
                "configure with --no-native-helpers")
        print(f"checked {path}: every program in it is for {arch}", flush=True)


def prepares_under_fakeroot(kind, base_manifest):
    """Whether the preparation needs fakeroot's view: to restore xattrs, or
    for the kind's own step (owners of copied files).  The script and
    policy-rc.d need none: a file this user namespace's root creates is
    root's, as it is under fakeroot."""
    return type(kind).prepare is not kinds.Kind.prepare or \
        any(entry.xattrs for entry in base_manifest.values())


def prepare(work_path, base_manifest=None):
    """On the host side, under fakeroot when it must be
    (``prepares_under_fakeroot``): xattrs, the kind's preparation, its
    script, policy-rc.d."""
    work = WorkFiles(work_path)
    opts = kinds.load_options(work.options)
    kind = kinds.get(opts.kind)
    target = work.target
    if base_manifest is None:
        base_manifest = manifest.read(work.base_manifest)
    with treepath.Tree(target) as tree:
        for path, entry in base_manifest.items():
            for name, value in entry.xattrs:
                try:
                    tree.setxattr(path, name, value)
                except (OSError, ValueError) as error:
                    raise UserError(f"cannot restore xattr {name} on {path}: "
                                    f"{error}")
        kind.prepare(opts, tree)
        os.makedirs(work.run, exist_ok=True)
        with open(os.path.join(work.run, "script"), "w") as f:
            f.write(sandbox.shell_script(kind.script(opts, work, target)))
        if kind.keeps_services_stopped and not tree.exists(POLICY_RC_D) and \
                tree.is_dir(os.path.dirname(POLICY_RC_D)):
            # Keep services from starting while packages are configured.
            tree.write(POLICY_RC_D, b"#!/bin/sh\nexit 101\n", 0o755)
            open(work.policy_created, "w").close()


def _missing_ancestor(root, path):
    """The topmost missing directory of ``path`` under ``root``, or None."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        candidate = "/" + "/".join(parts[:i])
        if not os.path.lexists(root + candidate):
            return candidate
    return None


def cli(kind):
    """The command line of ``stages/KIND``."""
    import argparse
    from .errors import cli_main

    def main(argv):
        parser = argparse.ArgumentParser(prog=kind)
        parser.add_argument("--config", required=True)
        parser.add_argument("--options", required=True)
        parser.add_argument("--parent")
        parser.add_argument("--out", required=True)
        args = parser.parse_args(argv)
        # A stage ends with the ninja that runs it (and, through the
        # namespaces, everything it started).
        proc.die_with_parent()
        ninja = ninja_ancestor()
        if ninja:
            proc.die_with(ninja)
        stage = Stage(args.config, args.options, args.parent, args.out)
        if stage.opts.kind != kind:
            raise UserError(f"options are for a '{stage.opts.kind}' stage")
        stage.run()
        return 0
    cli_main(main)


def main(argv):
    command = argv[0]
    if command == "inner":
        inner(*argv[1:])
    elif command == "prepare":
        prepare(*argv[1:])
    elif command == "deployable":
        deployable.rearrange(*argv[1:])
    else:
        raise SystemExit(f"unknown command {command}")
    return 0


if __name__ == "__main__":
    from .errors import cli_main
    cli_main(main)
