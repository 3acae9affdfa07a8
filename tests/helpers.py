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
    return {(e.name, e.arch): e.version for e in lockfile.parse(text)
            if e.stage != ".sandbox"}  # the build's own helpers


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
