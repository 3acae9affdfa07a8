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
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

from . import (debimport, deployable, dpkgorder, files, ids, manifest, native,
               ostree, proc, sandbox, sandboxlib, treepath)
from .errors import UserError
from .project import load_config, ninja_ancestor

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


def _rmtree(path):
    """Remove a work directory, including overlay work dirs of mode 000."""
    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        except OSError:
            pass
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, onerror=fix)
            else:
                os.unlink(p)
        except FileNotFoundError:
            pass
    if os.path.lexists(path):
        shutil.rmtree(path, onerror=fix)


def read_commit_file(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split()[0]


class Stage:
    """One stage run, from the options file configure wrote for it."""

    def __init__(self, config_path, options_path, parent_path, out_path):
        self.config = load_config(config_path)
        with open(options_path, encoding="utf-8") as f:
            self.opts = json.load(f)
        self.parent_path = parent_path
        self.out_path = os.path.abspath(out_path)
        self.repo = ostree.Repo(self.config.repo)
        name = f"{self.opts['recipe']}/{self.opts['arch']}/{self.opts['stage']}"
        self.work = os.path.join(self.config.builddir, "work", name)
        self.log = os.path.join(self.config.builddir, "logs", name + ".log")

    # -- outside the namespace ---------------------------------------------
    def run(self):
        started = time.monotonic()
        missing = sandbox.missing_tools(self.opts["arch"], self.config.host_arch)
        if missing:
            raise UserError("missing host tools: " + ", ".join(missing),
                            hint="run tools/setup-host")
        if self.opts["arch"] != self.config.host_arch and \
                not self.opts.get("fakeroot_deb"):
            raise UserError(f"no fakeroot library for {self.opts['arch']} "
                            "chroots was configured",
                            hint="apt-get install fakeroot, then run ./configure")
        problem = sandbox.binfmt_problem(self.opts["arch"], self.config.host_arch)
        if problem:
            raise UserError(f"cannot run {self.opts['arch']} programs: {problem}")
        if self.opts.get("fakeroot_deb"):
            daemon = sandboxlib.host_version() or "none"
            library = proc.run(["dpkg-deb", "-f", self.opts["fakeroot_deb"],
                                "Version"], capture=True).stdout.strip()
            problem = sandbox.fakeroot_mismatch(self.opts["arch"], daemon, library)
            if problem:
                raise UserError(problem)
        self.repo.ensure()
        os.makedirs(os.path.dirname(self.log), exist_ok=True)
        with open(self.log, "w") as f:
            f.write(f"stage {self.opts['recipe']}/{self.opts['stage']} "
                    f"({self.opts['kind']}, {self.opts['arch']})\n")
        # One run of a stage at a time: a run orphaned by a killed ninja may
        # still be finishing in this work directory.
        os.makedirs(os.path.dirname(self.work), exist_ok=True)
        lock = open(self.work + ".lock", "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        _rmtree(self.work)
        os.makedirs(self.work)
        try:
            if self.opts["kind"] == "bootstrap":
                t = time.monotonic()
                self.steps = dpkgorder.plan(
                    self.opts["packages"], self.opts["arch"],
                    self.opts["variant"], self.opts["requests"],
                    os.path.join(self.work, "apt"))
                with open(os.path.join(self.work, "plan.json"), "w") as f:
                    json.dump(self.steps, f)
                with open(self.log, "a") as f:
                    f.write(f"[apt's order of {len(self.opts['packages'])} "
                            f"packages: {time.monotonic() - t:.2f} s]\n")
            base, base_manifest = self.prepare_base()
            t = time.monotonic()
            lower = self.checkout(base)
            with open(os.path.join(self.work, "lower.path"), "w") as f:
                f.write(lower + "\n")
            with open(self.log, "a") as f:
                f.write(f"[checkout: {time.monotonic() - t:.2f} s]\n")
            manifest.write(os.path.join(self.work, "base.manifest"), base_manifest)
            with open(os.path.join(self.work, "base.commit"), "w") as f:
                f.write(base + "\n")
            # The reference for system user and group IDs: history, like
            # the branch's parent, so not an input of the stage (ids.py).
            note = ids.write_reference(self.config, self.opts, self.work)
            with open(self.log, "a") as f:
                f.write(note + "\n")
            inner = [sys.executable, "-m", "debostree.stagerun", "inner",
                     self.config.config_path, self.options_path_abs(),
                     self.work]
            env = {**os.environ, "PYTHONPATH": self.config.top}
            proc.run(sandbox.unshare_argv(inner), log=self.log, env=env,
                     tied=True)
            with open(os.path.join(self.work, "result.json")) as f:
                result = json.load(f)
            if os.path.exists(os.path.join(self.work, "warnings")):
                with open(os.path.join(self.work, "warnings")) as f:
                    sys.stderr.write(f.read())
            commit = result["commit"]
            out_manifest = self.out_path[:-len(".commit")] + ".manifest" \
                if self.out_path.endswith(".commit") else self.out_path + ".manifest"
            shutil.copyfile(os.path.join(self.work, "result.manifest"),
                            out_manifest + ".tmp")
            os.replace(out_manifest + ".tmp", out_manifest)
            changed = files.write_if_changed(self.out_path, commit + "\n")
            elapsed = time.monotonic() - started
            with open(self.log, "a") as f:
                f.write(f"commit {commit} ({'changed' if changed else 'unchanged'}"
                        f", {elapsed:.1f} s)\n")
        finally:
            if not os.environ.get("DEBOSTREE_KEEP_WORK"):
                _rmtree(self.work)

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
        _rmtree(tmp)
        self.repo.checkout(commit, tmp, log=self.log)
        try:
            os.rename(tmp, path)
        except OSError:
            _rmtree(tmp)  # another edge made the same checkout meanwhile
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
                _rmtree(old.path)
                os.unlink(old.path + ".lock")
        return path

    def options_path_abs(self):
        path = os.path.join(self.work, "options.json")
        with open(path, "w") as f:
            json.dump(self.opts, f)
        return path

    def prepare_base(self):
        """The commit the stage starts from, and its manifest."""
        if self.opts["kind"] != "bootstrap":
            parent = read_commit_file(self.parent_path)
            parent_manifest = self.parent_path[:-len(".commit")] + ".manifest"
            return parent, manifest.read(parent_manifest)
        return self.compose()

    def compose(self):
        """Merge the packages' commits into an unpacked tree (metadata only)."""
        summaries = [debimport.load_summary(p) for p in self.opts["summaries"]]
        # dpkg registers trigger interests as it unpacks: in the plan's order.
        unpacked = [name for kind, args in getattr(self, "steps", ())
                    if kind == "preinst"
                    for name in args]
        rank = {name: i for i, name in enumerate(unpacked)}
        summaries.sort(key=lambda s: rank.get(s["dpkg_name"], len(rank)))
        skel = os.path.join(self.work, "skeleton")
        entries = {}

        def add_dir(path, mode=0o755):
            os.makedirs(skel + path, exist_ok=True)
            os.chmod(skel + path, mode)
            entries[path] = manifest.Entry(path, stat.S_IFDIR | mode)

        add_dir("/")
        add_dir("/usr")
        # Packages that ship the merged-/usr links themselves (base-files
        # since Debian 13) decide which there are, as under dpkg.
        shipped = any(s.get("merged_usr_links") for s in summaries)
        for name in [] if shipped else self.opts["merged_usr_dirs"]:
            add_dir(f"/usr/{name}")
            os.symlink(f"usr/{name}", skel + "/" + name)
            entries["/" + name] = manifest.Entry("/" + name, stat.S_IFLNK | 0o777,
                                                 target=f"usr/{name}")
        for path in ("/var", "/var/lib", "/var/lib/dpkg", "/var/lib/dpkg/info",
                     "/var/lib/dpkg/updates", "/var/lib/dpkg/alternatives",
                     "/var/lib/dpkg/triggers", "/var/lib/dpkg/parts",
                     "/etc", "/etc/apt", "/etc/apt/apt.conf.d",
                     "/etc/apt/sources.list.d", "/etc/apt/preferences.d",
                     "/etc/apt/trusted.gpg.d", "/var/cache", "/var/cache/apt",
                     "/var/cache/apt/archives", "/var/cache/apt/archives/partial",
                     "/var/lib/apt", "/var/lib/apt/lists",
                     "/var/lib/apt/lists/partial", "/var/log", "/tmp"):
            add_dir(path, 0o1777 if path == "/tmp" else 0o755)

        def add_file(path, text, mode=0o644):
            with open(skel + path, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(skel + path, mode)
            entries[path] = manifest.Entry(path, stat.S_IFREG | mode)

        status = []
        triggers_file = []   # /var/lib/dpkg/triggers/File: "PATH PKG[/noawait]"
        interests = {}       # named triggers: name -> ["PKG[/noawait]"]
        for summary in summaries:
            # What dpkg registers when it unpacks a package with interests.
            for line in summary.get("triggers", "").splitlines():
                words = line.split("#", 1)[0].split()
                if len(words) != 2 or not words[0].startswith("interest"):
                    continue
                who = summary["dpkg_name"] + (
                    "/noawait" if words[0] == "interest-noawait" else "")
                if words[1].startswith("/"):
                    triggers_file.append(f"{words[1]} {who}\n")
                else:
                    interests.setdefault(words[1], []).append(who + "\n")
            control = summary.get("control_text", summary["control"]) \
                .rstrip("\n").split("\n")
            # Unpacked but not yet selected: "dpkg --configure --pending"
            # leaves it alone until the bootstrap's steps reach it (the
            # selection is set as its preinst runs, as dpkg's unpack does).
            lines = [control[0], "Status: deinstall ok unpacked"] + control[1:]
            if summary["conffiles"]:
                lines.append("Conffiles:")
                flags = summary.get("conffile_flags", {})
                lines += [f" {path} newconffile" + (f" {flags[path]}" if path in flags
                                                    else "")
                          for path, _ in summary["conffiles"]]
            status.append("\n".join(lines) + "\n")
        for path, text in (("/var/lib/dpkg/status", "\n".join(status)),
                           ("/var/lib/dpkg/diversions", ""),
                           ("/var/lib/dpkg/arch", self.opts["arch"] + "\n"),
                           ("/var/lib/dpkg/triggers/File", "".join(triggers_file)),
                           ("/var/lib/dpkg/triggers/Unincorp", "")):
            add_file(path, text)
        for name, lines in interests.items():
            add_file(f"/var/lib/dpkg/triggers/{name}", "".join(lines))
        # The skeleton is committed on its own: --owner-uid applies to every
        # tree of a commit, and the packages' trees keep their tar owners.
        skeleton = self.repo.commit_trees(
            f"tmp/{self.opts['ref']}/skeleton", [f"dir={skel}"],
            f"{self.opts['recipe']}/{self.opts['stage']}: skeleton",
            log=self.log, extra=["--owner-uid=0", "--owner-gid=0"])
        trees = [f"ref={skeleton}"]
        for summary in summaries:
            trees.append(f"ref={ostree.package_ref(summary['sha256'], 'data')}")
            trees.append(f"ref={ostree.package_ref(summary['sha256'], 'info')}")
            for line in summary["manifest"]:
                entry = manifest.Entry.from_json(line)
                entries[entry.path] = entry
            for line in summary["info_manifest"]:
                entry = manifest.Entry.from_json(line)
                entries[entry.path] = entry
        # The skeleton's directories stay as they are under packages' ones.
        commit = self.repo.commit_trees(
            f"tmp/{self.opts['ref']}/unpacked", trees,
            f"{self.opts['recipe']}/{self.opts['stage']}: packages unpacked",
            log=self.log)
        return commit, entries


class timed:
    """Log how long a step of the stage took (into the stage's log)."""

    def __init__(self, label):
        self.label = label

    def __enter__(self):
        self.start = time.monotonic()

    def __exit__(self, *exc):
        print(f"[{self.label}: {time.monotonic() - self.start:.2f} s]", flush=True)


# -- inside the namespace ----------------------------------------------------
def inner(config_path, options_path, work):
    config = load_config(config_path)
    with open(options_path, encoding="utf-8") as f:
        opts = json.load(f)
    with open(os.path.join(work, "lower.path")) as f:
        lower = f.read().strip()
    target = os.path.join(work, "target")
    base_manifest = manifest.read(os.path.join(work, "base.manifest"))
    with open(os.path.join(work, "base.commit")) as f:
        base_commit = f.read().strip()
    with timed("inodes"):
        inodes = manifest.lower_inodes(lower)
    # Paths copied up before the fakeroot daemon starts, so that each keeps
    # one inode for the whole stage (manifest.copy_up): those the daemon is
    # told about, those sharing an inode with others, the conffiles dpkg
    # will move into place, and what earlier runs of this stage found.
    first = set(manifest.special_paths(base_manifest))
    first.update(manifest.shared_inode_paths(inodes))
    if opts["kind"] == "bootstrap":
        first.update(p for p in base_manifest if p.endswith(".dpkg-new"))
    hints_path = os.path.join(config.builddir, "hints",
                              f"{opts['recipe']}/{opts['arch']}/{opts['stage']}.json")
    hints = set(_read_hints(hints_path))
    for attempt in range(1, ATTEMPTS + 1):
        stats, xattrs, (loaded, saved) = _attempt(
            config, opts, work, lower, target, base_manifest, first | hints)
        moved = manifest.moved_state(inodes, saved, loaded, stats,
                                     os.lstat(target).st_dev)
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
            raise UserError(f"stage {opts['recipe']}/{opts['stage']}: owners, "
                            f"modes or xattrs of {len(moved)} paths could not "
                            "be kept (the files kept changing identity)",
                            hint="see the stage's log")
        proc.run(["umount", target])
    result_manifest = manifest.combine(target, stats, saved, xattrs)
    if opts["kind"] == "run":
        for path in deployable.machine_secrets(target):
            if path not in base_manifest:
                warning = (f"warning: {opts['recipe']}/{opts['stage']}: {path}: "
                           "the stage left a per-machine secret in the tree; "
                           "every device built from it would share it (a "
                           "deployable stage removes it)")
                print(warning, flush=True)
                with open(os.path.join(work, "warnings"), "a") as f:
                    f.write(warning + "\n")
    with timed("ids"):
        result_manifest = ids.keep(work, target, result_manifest)
    manifest.write(os.path.join(work, "result.manifest"), result_manifest)
    previous = ostree.Repo(config.repo).rev_parse(opts["ref"])
    with timed("commit"):
        commit, changed = ostree.commit_changes(
            config.repo, base_commit, target, os.path.join(work, "upper"),
            base_manifest,
            result_manifest, opts["ref"],
            f"{opts['recipe']}/{opts['stage']} ({opts['kind']})",
            parent=previous, timestamp=opts.get("commit_timestamp"),
            metadata={"debostree.stage": f"{opts['recipe']}/{opts['stage']}"})
    with open(os.path.join(work, "result.json"), "w") as f:
        json.dump({"commit": commit, "changed": changed}, f)


ATTEMPTS = 3


def _read_hints(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return []


def _write_hints(path, hints):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    files.write_if_changed(path, json.dumps(sorted(hints), indent=0) + "\n")


def _attempt(config, opts, work, lower, target, base_manifest, copy_first):
    """One run of the stage's work on a fresh overlay over ``lower``.

    Returns the tree's stats, the xattrs read under fakeroot, and the
    fakeroot state as loaded and as saved, ``(loaded, saved)``."""
    upper = os.path.join(work, "upper")
    ovl = os.path.join(work, "ovl")
    for d in (upper, ovl, os.path.join(work, "run"), os.path.join(work, "native"),
              os.path.join(work, "libfakeroot")):
        _rmtree(d)
    for marker in ("policy-rc.d-created", "faked.save"):
        if os.path.exists(os.path.join(work, marker)):
            os.unlink(os.path.join(work, marker))
    for d in (upper, ovl, target):
        os.makedirs(d, exist_ok=True)
    proc.run(sandbox.overlay_mount_argv(lower, upper, ovl, target))
    with timed("fakeroot state"):
        manifest.copy_up(target, copy_first)
        state = manifest.fakeroot_state(target, base_manifest)
    saved = os.path.join(work, "faked.save")
    with timed("faked start"):
        faked = subprocess.Popen(sandbox.faked_argv(saved), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        key, _, pid = faked.communicate(state)[0].strip().partition(":")
    if not key or not pid.isdigit():
        raise UserError("the fakeroot daemon did not start")
    host_lib = sandbox.FAKEROOT_LIB_DIRS[config.host_arch]
    watch = _DaemonWatch(int(pid))
    watch.start()
    try:
        run_in_fakeroot(config, opts, work, target, key, host_lib)
        with timed("scan"):
            stale = cleanup(work, target)
            skip = set(VOLATILE) | {d + "/" + n for d in EMPTY_DIRS
                                    if os.path.isdir(target + d)
                                    for n in os.listdir(target + d)}
            stats = manifest.walk(target, skip)
            candidates = os.path.join(work, "xattr-candidates.json")
            with open(candidates, "w") as f:
                json.dump(manifest.xattr_candidates(stats, base_manifest), f)
            env = sandbox.fakeroot_env(key, host_lib, os.environ)
            proc.run([sys.executable, "-m", "debostree.stagerun", "xattrs",
                      target, candidates], env=env)
            with open(candidates + ".out") as f:
                xattrs = {p: [(n, bytes.fromhex(v)) for n, v in pairs]
                          for p, pairs in json.load(f).items()}
    except Exception:
        if watch.lost:
            raise watch.error()
        raise
    finally:
        watch.stop()
        with timed("faked stop"):
            _stop_faked(int(pid))
    if watch.lost:
        raise watch.error()
    saved_state = manifest.read_fakeroot_state(saved)
    for key in stale:
        saved_state.pop(key, None)
    return stats, xattrs, (manifest.parse_fakeroot_state(state), saved_state)


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

        if os.path.exists(os.path.join(work, "policy-rc.d-created")):
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


def run_in_fakeroot(config, opts, work, target, key, host_lib):
    """Everything that must see the fakeroot view: prepare, then run."""
    env = sandbox.fakeroot_env(key, host_lib, os.environ)
    helper = [sys.executable, "-m", "debostree.stagerun"]
    # Restore xattrs (fakeroot keeps them in memory only) and do the
    # host-side parts of the stage (copies, helper files).
    with timed("prepare"):
        proc.run(helper + ["prepare", options_path_of(work), work, target], env=env)
    command = stage_command(opts)
    if command:
        lib_dir = sandbox.FAKEROOT_LIB_DIRS[opts["arch"]]
        chroot_lib = host_lib
        if opts.get("fakeroot_deb"):
            # A foreign chroot gets the target architecture's preload
            # library; it talks to the same (host) fakeroot daemon.
            extracted = os.path.join(work, "libfakeroot")
            proc.run(["dpkg-deb", "-x", opts["fakeroot_deb"], extracted])
            chroot_lib = extracted + lib_dir
        ro_binds = [(chroot_lib, lib_dir)]
        preload = None
        if opts.get("fakeroot_deb") and config.native_helpers:
            helpers = foreign_stand_ins(config, opts, target, lib_dir)
            if helpers:
                ro_binds += helpers.mounts(os.path.join(work, "native"))
            if helpers:
                preload = native.FAKEROOT_PRELOAD
            if helpers is not None:
                print(helpers.describe(), flush=True)
        # Mount points the sandbox has to create go again afterwards.
        created = sorted({c for c in (_missing_ancestor(target, inside)
                                      for _, inside in ro_binds) if c})
        chroot_env = sandbox.chroot_env(
            {**opts.get("environment", {})}, key, lib_dir,
            opts["source_date_epoch"], preload)
        ro_binds.append((os.path.join(work, "run"), "/run/debostree"))
        argv = sandbox.bwrap_argv(target, command, chroot_env, ro_binds=ro_binds)
        try:
            print("$ " + " ".join(command), flush=True)
            with timed("command"):
                proc.run(argv)
        finally:
            with treepath.Tree(target) as tree:
                for path in created:
                    tree.rmtree(path)
    if opts["kind"] == "deployable":
        with timed("rearrange"):
            proc.run(helper + ["deployable", target], env=env)


def foreign_stand_ins(config, opts, target, lib_dir):
    """Host programs that may run in place of the target's in this foreign
    stage (native.py), or None for stage kinds that never use them: a `run`
    command may copy any program anywhere, and a removal could not delete a
    file with a mount on it."""
    triplet = os.path.basename(os.path.dirname(lib_dir))
    if opts["kind"] == "bootstrap":
        return native.stand_ins(target, config.host_arch, triplet)
    if opts["kind"] != "install":
        return None
    incoming = native.deb_paths(p["pool_path"] for p in opts["packages"])
    return native.stand_ins(target, config.host_arch, triplet,
                            keep_versions={p["name"]: p["version"]
                                           for p in opts["packages"]},
                            incoming=incoming)


def options_path_of(work):
    return os.path.join(work, "options.json")


def _missing_ancestor(root, path):
    """The topmost missing directory of ``path`` under ``root``, or None."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        candidate = "/" + "/".join(parts[:i])
        if not os.path.lexists(root + candidate):
            return candidate
    return None


def stage_command(opts):
    """The command run inside the sandbox for a stage kind (or None)."""
    kind = opts["kind"]
    if kind == "run":
        return ["/bin/sh", "-c", "set -e\n" + opts["script"]]
    if kind in ("bootstrap", "install", "remove", "deployable"):
        return ["/bin/sh", "-e", "/run/debostree/script"]
    return None


def _write_run_files(opts, work, target):
    """Files the stage's command reads under /run/debostree."""
    run = os.path.join(work, "run")
    os.makedirs(run, exist_ok=True)
    kind = opts["kind"]
    lines = []
    if kind == "bootstrap":
        # Each preinst runs as dpkg runs it: from /var/lib/dpkg/tmp.ci beside
        # the package's control files (debconf reads its templates and the
        # package name there), before "dpkg --configure -a" does the rest.
        # The steps follow apt's and dpkg's order (dpkgorder.py, planned on
        # the host before the stage ran); "dpkg --configure -a" settles
        # anything left.
        controls = os.path.join(run, "control")
        os.makedirs(controls)
        summaries = {}
        for path in opts["summaries"]:
            summary = debimport.load_summary(path)
            summaries[summary["sha256"]] = summary
        by_name = {pkg["dpkg_name"]: pkg for pkg in opts["packages"]}
        with open(os.path.join(work, "plan.json"), encoding="utf-8") as f:
            steps = json.load(f)
        lines.append("DPKG_RUNNING_VERSION=$(dpkg-query -W -f='${Version}' dpkg)")
        for kind, args in steps:
            if kind == "dpkg":
                lines.append(shlex.join(["dpkg"] + args))
                continue
            if args:
                lines.append("printf '%s install\\n' " + shlex.join(args)
                             + " | dpkg --set-selections")
            for pkg in (by_name[name] for name in args):
                info = f"/var/lib/dpkg/info/{pkg['dpkg_name']}"
                if not os.path.exists(target + info + ".preinst"):
                    continue
                with open(os.path.join(controls, pkg["sha256"]), "w") as f:
                    f.write(summaries[pkg["sha256"]]["control"])
                lines += [
                    "rm -rf /var/lib/dpkg/tmp.ci && mkdir /var/lib/dpkg/tmp.ci",
                    f"cp /run/debostree/control/{pkg['sha256']} /var/lib/dpkg/tmp.ci/control",
                    f"for f in {shlex.quote(info)}.*; do case ${{f##*.}} in list|md5sums) ;; "
                    f"*) cp -p \"$f\" /var/lib/dpkg/tmp.ci/${{f##*.}} ;; esac; done",
                    f"DPKG_MAINTSCRIPT_PACKAGE={shlex.quote(pkg['name'])} "
                    f"DPKG_MAINTSCRIPT_ARCH={shlex.quote(pkg['arch'])} "
                    f"DPKG_MAINTSCRIPT_NAME=preinst DPKG_ADMINDIR=/var/lib/dpkg "
                    f"DPKG_ROOT= DPKG_RUNNING_VERSION=$DPKG_RUNNING_VERSION "
                    f"DPKG_MAINTSCRIPT_PACKAGE_REFCOUNT=1 "
                    f"/var/lib/dpkg/tmp.ci/preinst install"]
            lines.append("rm -rf /var/lib/dpkg/tmp.ci")
        lines.append("dpkg --configure -a")
    elif kind == "install":
        apt_dir = os.path.join(run, "apt")
        os.makedirs(apt_dir)
        with open(os.path.join(apt_dir, "Packages"), "w") as f:
            f.write("\n".join(p["stanza"] for p in opts["packages"]))
        for pkg in opts["packages"]:
            link = os.path.join(apt_dir, pkg["filename"])
            os.makedirs(os.path.dirname(link), exist_ok=True)
            try:
                os.link(pkg["pool_path"], link)
            except OSError:
                shutil.copyfile(pkg["pool_path"], link)
        with open(os.path.join(apt_dir, "sources.list"), "w") as f:
            f.write("deb [trusted=yes] file:/run/debostree/apt ./\n")
        apt = ("apt-get -o Dir::Etc::SourceList=/run/debostree/apt/sources.list "
               "-o Dir::Etc::SourceParts=/run/debostree/none "
               "-o Dir::State::Lists=/tmp/lists -o Dir::Cache::Archives=/tmp/archives "
               "-o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= "
               "-o APT::Sandbox::User=root -o Acquire::Languages=none")
        names = " ".join(f"{p['name']}:{p['arch'] if p['arch'] != 'all' else opts['arch']}"
                         f"={p['version']}" if p["arch"] != "all" else
                         f"{p['name']}={p['version']}" for p in opts["packages"])
        lines += ["mkdir -p /tmp/lists/partial /tmp/archives/partial",
                  f"{apt} update",
                  f"{apt} install -y --no-install-recommends {names}"]
    elif kind == "remove":
        names = " ".join(opts["packages"])
        lines.append(f"if command -v apt-get >/dev/null; then "
                     f"apt-get -o Dir::State::Lists=/tmp/lists -o Dir::Cache::pkgcache= "
                     f"-o Dir::Cache::srcpkgcache= purge -y {names}; "
                     f"else dpkg --purge {names}; fi")
    elif kind == "deployable":
        lines += deployable.kernel_script(opts["dracut_modules"])
    with open(os.path.join(run, "script"), "w") as f:
        f.write(sandbox.shell_script(lines))


def prepare(options_path, work, target):
    """Under fakeroot, on the host side: xattrs, copies, policy-rc.d."""
    with open(options_path, encoding="utf-8") as f:
        opts = json.load(f)
    base_manifest = manifest.read(os.path.join(work, "base.manifest"))
    with treepath.Tree(target) as tree:
        for path, entry in base_manifest.items():
            for name, value in entry.xattrs:
                try:
                    tree.setxattr(path, name, value)
                except (OSError, ValueError) as error:
                    raise UserError(f"cannot restore xattr {name} on {path}: "
                                    f"{error}")
        if opts["kind"] == "copy":
            copy_items(opts, tree)
        _write_run_files(opts, work, target)
        if opts["kind"] != "copy" and not tree.exists(POLICY_RC_D) and \
                tree.is_dir(os.path.dirname(POLICY_RC_D)):
            # Keep services from starting while packages are configured.
            tree.write(POLICY_RC_D, b"#!/bin/sh\nexit 101\n", 0o755)
            open(os.path.join(work, "policy-rc.d-created"), "w").close()


def _id_of(tree, name, database, keypath):
    if name.isdigit():
        return int(name)
    try:
        text = tree.read(database).decode("utf-8", "replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        fields = line.split(":")
        if fields[0] == name and len(fields) > 2 and fields[2].isdigit():
            return int(fields[2])
    raise UserError(f"{keypath}: no {'user' if 'passwd' in database else 'group'} "
                    f"'{name}' in the image's {database}",
                    hint="create it in an earlier stage, or use a number")


def copy_items(opts, tree):
    """The copy stage's work, every destination resolved inside the tree
    and every source kept inside the recipe's directory."""
    from .recipe import source_escape
    for item in opts["items"]:
        uid = _id_of(tree, item["owner"], "/etc/passwd", item["dest"])
        gid = _id_of(tree, item["group"], "/etc/group", item["dest"])
        src = item["src_abs"]
        escape = source_escape(item.get("src_root") or os.path.dirname(src), src)
        if escape:
            raise UserError(f"copy: {src} leads out of the recipe's directory "
                            f"(to {escape}) through a symbolic link")
        dest = item["dest"]
        try:
            tree.makedirs(os.path.dirname(dest))
            if os.path.isdir(src) and not os.path.islink(src):
                paths = _copy_dir(src, tree, dest)
            else:
                resolved = tree.dir(dest)
                if resolved is not None:
                    os.close(resolved)
                    dest = dest.rstrip("/") + "/" + os.path.basename(src)
                _copy_entry(src, tree, dest)
                paths = [dest]
        except OSError as error:
            # Links are followed as in the image (/var/lock -> /run/lock),
            # never out of it: a link to what the tree lacks stops here.
            raise UserError(f"copy: cannot write {item['dest']} in the image: "
                            f"{error.strerror} ({error.filename})",
                            hint="a directory on the way may be a link to a "
                            "path the image does not have")
        for path in paths:
            tree.chown(path, uid, gid)
            st = tree.lstat(path)
            if item.get("mode") and not stat.S_ISLNK(st.st_mode):
                if stat.S_ISDIR(st.st_mode) and path != dest:
                    continue
                tree.chmod(path, int(item["mode"], 8))


def _copy_entry(src, tree, dest):
    """One file or link from the host to ``dest`` in the tree (a new inode:
    never a write into a hardlinked file in place)."""
    if os.path.islink(src):
        if tree.lstat(dest) is not None and not tree.is_dir(dest):
            tree.unlink(dest)
        tree.symlink(os.readlink(src), dest)
        return
    with open(src, "rb") as f:
        tree.write(dest, f, os.stat(src).st_mode & 0o7777)


def _copy_dir(src, tree, dest):
    """A directory from the host into the tree, links copied as links;
    returns the tree paths made or replaced."""
    paths = [dest]
    if not tree.is_dir(dest):
        tree.makedirs(dest)
        tree.chmod(dest, os.stat(src).st_mode & 0o7777)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        inside = dest if rel == "." else dest.rstrip("/") + "/" + rel
        for name in sorted(dirnames):
            full = os.path.join(dirpath, name)
            path = inside.rstrip("/") + "/" + name
            if os.path.islink(full):
                _copy_entry(full, tree, path)  # os.walk does not enter it
            elif not tree.is_dir(path):
                if tree.exists(path):
                    tree.unlink(path)
                tree.makedirs(path)
                tree.chmod(path, os.stat(full).st_mode & 0o7777)
            paths.append(path)
        for name in sorted(filenames):
            path = inside.rstrip("/") + "/" + name
            _copy_entry(os.path.join(dirpath, name), tree, path)
            paths.append(path)
    return paths


def xattrs(target, candidates_path):
    """Under fakeroot: read the xattrs of the candidate paths."""
    with open(candidates_path) as f:
        candidates = json.load(f)
    found = manifest.read_xattrs(target, candidates)
    with open(candidates_path + ".out", "w") as f:
        json.dump({p: [[n, v.hex()] for n, v in pairs]
                   for p, pairs in found.items()}, f)


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
        if stage.opts["kind"] != kind:
            raise UserError(f"options are for a '{stage.opts['kind']}' stage")
        stage.run()
        return 0
    cli_main(main)


def main(argv):
    command = argv[0]
    if command == "inner":
        inner(*argv[1:])
    elif command == "prepare":
        prepare(*argv[1:])
    elif command == "xattrs":
        xattrs(*argv[1:])
    elif command == "deployable":
        deployable.rearrange(*argv[1:])
    else:
        raise SystemExit(f"unknown command {command}")
    return 0


if __name__ == "__main__":
    from .errors import cli_main
    cli_main(main)
