"""Helpers shared by tests: recipes against the test archive, and apt-get
simulations on the resolver's private apt root for comparison."""

import os
import re
import subprocess

import yaml

from debostree import mirrors, recipe, update

INST_RE = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) .*\[(\S+)\]\)")


def write_recipe(directory, name, stages, archive, arch="amd64", suites=None,
                 **extra):
    data = {"ref": "test/" + name.replace(" ", "-"), "architecture": arch,
            "archives": [{"name": "test",
                          "suites": suites or ["stable", "stable-updates"],
                          "components": ["main"],
                          "keyring": archive.key.keyring}],
            "stages": stages}
    data.update(extra)
    if "architectures" in extra:
        del data["architecture"]
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def mirrors_for(archive):
    return mirrors.Mirrors(cli=[f"test={archive.url}"], environ={},
                           config_file="/nonexistent", host_sources=[])


def resolve_recipe(tmp_path, archive, stages, arch="amd64", **extra):
    path = write_recipe(tmp_path / "recipes", "r", stages, archive, arch, **extra)
    rec = recipe.load_recipe(path)
    texts = update.resolve_all([rec], mirrors_for(archive),
                               str(tmp_path / "cache"))
    return texts[("r", arch)], str(tmp_path / "cache" / "apt" / f"r.{arch}")


# apt flags the package "apt" Essential unless pkgCacheGen::ForceEssential
# says otherwise.  mmdebstrap's apt configuration clears it for every variant
# but 'apt'; apt inside an image (install and remove stages) keeps apt's
# default.  The references below say which they mean instead of relying on the
# resolver's own configuration file.
MMDEBSTRAP_APT = ("-o", "pkgCacheGen::ForceEssential=,")
DEFAULT_APT = ("-o", "pkgCacheGen::ForceEssential=apt")


def apt_simulate(root_dir, args, status_text="", options=MMDEBSTRAP_APT):
    """``apt-get --simulate`` on a resolver root; returns {(name, arch): ver}."""
    with open(os.path.join(root_dir, "status"), "w") as f:
        f.write(status_text)
    env = {**os.environ, "APT_CONFIG": os.path.join(root_dir, "apt.conf"),
           "LC_ALL": "C"}
    result = subprocess.run(["apt-get", "--simulate", "--yes"] + list(options)
                            + list(args),
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    found = {}
    for line in result.stdout.splitlines():
        match = INST_RE.match(line)
        if match:
            name = match.group(1).split(":")[0]
            found[(name, match.group(3))] = match.group(2)
    return found


def locked_set(text):
    from debostree import lockfile
    return {(e.name, e.arch): e.version for e in lockfile.parse(text)}


def status_of(text):
    """dpkg status text describing a lockfile's packages as installed."""
    from debostree import lockfile
    out = []
    for entry in lockfile.parse(text):
        fields = [(k, v) for k, v in entry.fields
                  if k not in ("Filename", "Size", "SHA256") and
                  not k.startswith("Lock-")]
        fields.insert(1, ("Status", "install ok installed"))
        out.append(lockfile.stanza_text(fields))
    return "\n".join(out)


def mmdebstrap_like(root_dir, arch, pattern, extra=(), extra_merged_usr=False):
    """What mmdebstrap's apt calls install for a priority variant: the
    Essential set first, then ``pattern`` + apt + ``extra`` on top of it."""
    # mmdebstrap's merged-usr hook installs a dummy usr-is-merged first.
    dummy = ("Package: usr-is-merged\nStatus: install ok installed\n"
             "Version: 1\nArchitecture: all\nMulti-Arch: foreign\n")
    essential = apt_simulate(root_dir, ["install", f"?narrow(?architecture({arch}),"
                                        "?essential)"], dummy)
    # Describe the Essential set as installed, from the resolver's own lists.
    lists = os.path.join(root_dir, "lists")
    stanzas = []
    for name in sorted(os.listdir(lists)):
        if not name.endswith("_Packages"):
            continue
        with open(os.path.join(lists, name)) as f:
            for stanza in f.read().split("\n\n"):
                fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                              if ": " in line and not line.startswith(" "))
                key = (fields.get("Package"), fields.get("Architecture"))
                if "Package" in fields and essential.get(key) == fields.get("Version"):
                    stanzas.append(stanza.strip() + "\nStatus: install ok installed\n")
                    essential.pop(key)
                    essential[("done",) + key] = fields["Version"]
    installed = {k[1:]: v for k, v in essential.items()}
    merged = ["usr-is-merged"] if extra_merged_usr else []
    rest = apt_simulate(root_dir, ["install", "apt"] + merged +
                        [f"?narrow(?architecture({arch}),"
                         f"?and({pattern},?not(?essential)))"] + list(extra),
                        "\n".join(stanzas + ([dummy] if extra_merged_usr else [])))
    return {**installed, **rest}


def dpkg_health(repo, ref, workdir):
    """What ``dpkg --audit`` and ``dpkg --verify`` say about the tree of
    ``ref``, run inside it (emulated for foreign architectures): ``(audit
    output, verify lines)``.  A deployable tree is seen as a booted system
    sees it: ``/usr/etc`` at ``/etc``, dpkg's database under
    ``/usr/lib/sysimage``, and what it lacks only until boot not reported:
    ``/var`` paths its tmpfiles.d makes, and ``/boot`` files of a kernel
    kept in ``/usr/lib/modules/VERSION/`` (ostree's layout)."""
    tree = os.path.join(workdir, ref.replace("/", "_"))
    subprocess.run(["ostree", f"--repo={repo}", "checkout", "--user-mode",
                    "-H", ref, tree], check=True, capture_output=True)
    try:
        return dpkg_health_of_tree(tree)
    finally:
        subprocess.run(["rm", "-rf", tree], check=True)


def dpkg_health_of_tree(tree):
    """``dpkg_health`` of a checked-out tree."""
    argv = ["bwrap", "--unshare-all", "--die-with-parent"]
    if os.geteuid() != 0:
        argv += ["--unshare-user", "--uid", "0", "--gid", "0"]
    binds = ["--ro-bind", tree, "/"]
    admindir = []
    if os.path.isdir(os.path.join(tree, "usr/etc")) and \
            not os.path.isdir(os.path.join(tree, "etc")):
        os.mkdir(os.path.join(tree, "etc"))
        binds += ["--ro-bind", os.path.join(tree, "usr/etc"), "/etc"]
        admindir = ["--admindir=/usr/lib/sysimage/dpkg"]
    argv += binds + ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                     "--clearenv", "--setenv", "PATH", "/usr/sbin:/usr/bin",
                     "--setenv", "LC_ALL", "C"]
    outputs = []
    for action in ("--audit", "--verify"):
        result = subprocess.run(argv + ["dpkg"] + admindir + [action],
                                capture_output=True, text=True)
        assert result.returncode in (0, 1), (tree, action, result.stderr)
        outputs.append(result.stdout + result.stderr)
    verify = outputs[1].splitlines()
    if admindir:
        verify = [line for line in verify
                  if not made_at_boot(tree, line.split(None, 1)[1])
                  or not line.startswith("missing ")]
    return outputs[0], verify


def made_at_boot(tree, path):
    """Whether a deployable tree's ``path`` is made when it boots."""
    if path.startswith("/boot/"):
        version = re.sub(r"^[A-Za-z.]+-", "", os.path.basename(path))
        return os.path.isfile(os.path.join(tree, "usr/lib/modules", version,
                                           "vmlinuz"))
    if not path.startswith("/var/"):
        return False
    made, linked = set(), set()
    conf_dir = os.path.join(tree, "usr/lib/tmpfiles.d")
    for name in os.listdir(conf_dir):
        with open(os.path.join(conf_dir, name), errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 2 or fields[0].startswith("#"):
                    continue
                made.add(fields[1])
                if fields[0].startswith("L"):
                    linked.add(fields[1])
    return any(p == path or p.startswith(path + "/") for p in made) or \
        any(path.startswith(p + "/") for p in linked)


OTHER_USER = "debostree-test"


def other_user_dir(directory, readable=()):
    """Make ``directory`` for a build by another user when the suite runs
    as root (created if needed, ``readable`` paths and their parents opened
    to them); returns ``(user or None, environment for that user)``."""
    import pwd
    from pathlib import Path
    os.makedirs(directory, exist_ok=True)
    if os.geteuid() != 0:
        return None, {}
    if subprocess.run(["id", OTHER_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", OTHER_USER], check=True)
    info = pwd.getpwnam(OTHER_USER)
    os.chown(directory, info.pw_uid, info.pw_gid)
    for path in [Path(directory).parent, *Path(directory).parents,
                 *[q for p in readable for q in (Path(p), *Path(p).parents)]]:
        if str(path) not in ("/", "/tmp"):
            os.chmod(path, os.stat(path).st_mode | 0o005)
    return OTHER_USER, {"HOME": info.pw_dir}


def check_stand_ins(log, lock_path):
    """A foreign bootstrap's stand-ins are the lockfile's: its log names
    programs of the locked host-architecture packages (Lock-Stage:
    stand-ins), at their source versions, whatever the host has installed."""
    from debostree import lockfile, resolve
    locked = {e.name: e for e in lockfile.read(str(lock_path))
              if e.stage == lockfile.STAND_INS_STAGE}
    assert "libc6" in locked and "coreutils" in locked, sorted(locked)
    match = re.search(r"^native stand-ins: (.*)$", log, re.M)
    assert match and not match.group(1).startswith("none"), log[-2000:]
    named = re.findall(r"([a-z0-9.+-]+) (\S+) \((\d+) programs?\)",
                       match.group(1))
    assert len(named) >= 5, match.group(0)
    for name, version, _ in named:
        assert name in locked, (name, sorted(locked))
        entry = locked[name]
        assert version == resolve.source_version(
            {"Source": entry.get("Source") or ""}, entry.version), (name, version)
