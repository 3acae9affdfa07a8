"""Each stage kind on its own (kinds/), without a sandbox or the network:
the registry, the recipe's value to a spec, the options configure writes
and the stage reads back, and the files and commands of a stage run."""

import json
import os
import types

import pytest

from conftest import TOP
from debostree import kinds, lockfile, yamlsrc
from debostree.errors import UserError
from debostree.kinds.base import PackageFile
from debostree.recipefields import PackageRequest
from debostree.stagefiles import WorkFiles

CONTEXT = kinds.RecipeContext(("amd64", "arm64"), TOP + "/recipes")
COMMON = {"recipe": "r", "arch": "amd64", "stage": "s", "ref": "stage/r/amd64/s",
          "environment": {"LANG": "C.UTF-8"}, "source_date_epoch": 1704067200}


def validate(kind, text):
    """A kind's spec from YAML text given as the stage's value."""
    data, src = yamlsrc.load("recipe.yaml", text=f"{kind}: {text}\n")
    return kinds.get(kind).validate(src, (kind,), data[kind], CONTEXT)


def stanza(name, version, arch="amd64"):
    return (f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
            f"Filename: pool/{name}_{version}_{arch}.deb\nSize: 10\n"
            f"SHA256: {(name + version).encode().hex()[:64].ljust(64, '0')}\n"
            f"Lock-Stage: s\nLock-Archive: debian\nLock-Suite: trixie\n")


class Graph:
    """What a kind's ``options`` uses of the graph builder."""

    def __init__(self, tmp_path):
        self.config = types.SimpleNamespace(pool=str(tmp_path / "pool"))
        self.fetched, self.imported = [], []

    def fetch_edge(self, entry):
        self.fetched.append(entry.name)
        return f"pool/{entry.sha256}.deb"

    def import_edge(self, entry):
        self.imported.append(entry.name)
        return f"pkgs/{entry.sha256}.json"

    def plan_edge(self, recipe, arch, stage, debs):
        self.planned = debs
        return "stages/plan.json"

    def absolute(self, path):
        return "/build/" + path


def options_of(kind_name, spec, tmp_path, entries=(), recipe_path=None):
    kind = kinds.get(kind_name)
    stage = types.SimpleNamespace(options=spec)
    recipe = types.SimpleNamespace(path=recipe_path or TOP + "/recipes/r.yaml")
    own, inputs = kind.options(Graph(tmp_path), recipe, "amd64", stage,
                               list(entries))
    options = kind.Options(kind=kind_name, **COMMON, **own)
    # What configure writes is what the stage reads back.
    path = tmp_path / f"{kind_name}.options.json"
    path.write_text(json.dumps(options.to_json(), sort_keys=True))
    assert kinds.load_options(str(path)) == options
    return options, inputs


def test_registry_names_every_kind_and_its_executable():
    assert set(kinds.REGISTRY) == {"bootstrap", "install", "remove", "run",
                                   "copy", "deployable"}
    for name, kind in kinds.REGISTRY.items():
        assert kind.name == name
        assert os.access(os.path.join(TOP, "stages", name), os.X_OK)
    with pytest.raises(UserError, match="unknown stage kind 'tarball'"):
        kinds.get("tarball")


def test_options_files_are_checked(tmp_path):
    path = tmp_path / "x.options.json"
    path.write_text(json.dumps({**COMMON, "kind": "run"}))
    with pytest.raises(UserError, match="missing fields script"):
        kinds.load_options(str(path))
    path.write_text(json.dumps({**COMMON, "kind": "run", "script": "true",
                                "colour": "red"}))
    with pytest.raises(UserError, match="unknown fields colour"):
        kinds.load_options(str(path))
    path.write_text(json.dumps({**COMMON, "kind": "tarball"}))
    with pytest.raises(UserError, match="unknown stage kind 'tarball'"):
        kinds.load_options(str(path))
    path.write_text("{")
    with pytest.raises(UserError, match="not JSON"):
        kinds.load_options(str(path))


def test_bootstrap(tmp_path):
    spec = validate("bootstrap", "{variant: minbase, packages: ['linux-image-{arch}']}")
    assert spec.variant == "required"  # mmdebstrap's alias
    assert [str(r) for r in kinds.get("bootstrap").for_arch(spec, "arm64").packages] \
        == ["linux-image-arm64"]
    assert kinds.get("bootstrap").requests(spec) == spec.packages
    with pytest.raises(UserError, match="needs a list of packages"):
        validate("bootstrap", "{variant: custom}")
    with pytest.raises(UserError, match="unknown variant 'tiny'"):
        validate("bootstrap", "{variant: tiny}")
    entries = lockfile.parse(stanza("libc6", "2.41-1") + "Multi-Arch: same\n\n"
                             + stanza("dash", "0.5.12-9"))
    options, inputs = options_of("bootstrap", kinds.get("bootstrap").for_arch(
        spec, "amd64"), tmp_path, entries)
    assert options.variant == "required"
    assert options.requests == ["linux-image-amd64"]
    assert {p.name: p.dpkg_name for p in options.packages} == {
        "libc6": "libc6:amd64", "dash": "dash"}
    assert options.merged_usr_dirs == ["bin", "sbin", "lib", "lib32", "lib64",
                                       "libx32"]
    assert inputs == [f"pkgs/{p.sha256}.json" for p in options.packages] + \
        ["stages/plan.json"]
    assert options.summaries == ["/build/" + i for i in inputs[:-1]]
    assert options.plan == "/build/stages/plan.json"


def test_bootstrap_runs_the_preinsts_in_the_plan_order(tmp_path):
    work = WorkFiles(str(tmp_path / "work"))
    os.makedirs(work.run)
    target = tmp_path / "target"
    (target / "var/lib/dpkg/info").mkdir(parents=True)
    (target / "var/lib/dpkg/info/dash.preinst").write_text("#!/bin/sh\n")
    packages, summaries = [], []
    for name in ("dash", "libc6"):
        sha = name.encode().hex().ljust(64, "0")
        summary = tmp_path / f"{name}.json"
        summary.write_text(json.dumps({"sha256": sha,
                                       "control": f"Package: {name}\n"}))
        summaries.append(str(summary))
        packages.append(PackageFile(name, "1", "amd64", sha, f"{name}.deb",
                                    f"/pool/{name}.deb", "", dpkg_name=name))
    with open(work.plan, "w") as f:
        json.dump([["preinst", ["libc6", "dash"]],
                   ["dpkg", ["--configure", "libc6"]]], f)
    options = kinds.get("bootstrap").Options(
        kind="bootstrap", **COMMON, variant="required", requests=[],
        packages=packages, summaries=summaries, merged_usr_dirs=[])
    lines = kinds.get("bootstrap").script(options, work, str(target))
    assert lines[1] == "printf '%s install\\n' libc6 dash | dpkg --set-selections"
    # Only dash has a preinst: run from tmp.ci beside its control file.
    preinsts = [line for line in lines if line.endswith("preinst install")]
    assert len(preinsts) == 1 and "DPKG_MAINTSCRIPT_PACKAGE=dash " in preinsts[0]
    assert lines[-2:] == ["dpkg --configure libc6", "dpkg --configure -a"]
    with open(os.path.join(work.run, "control", packages[0].sha256)) as f:
        assert f.read() == "Package: dash\n"
    assert kinds.get("bootstrap").copy_first({"/etc/a.dpkg-new": 1, "/etc/b": 1}) \
        == ["/etc/a.dpkg-new"]


def test_install(tmp_path):
    spec = validate("install", "[openssh-server, 'libfoo:arm64=1.0']")
    assert spec.packages == (PackageRequest("openssh-server"),
                             PackageRequest("libfoo", "arm64", "1.0"))
    with pytest.raises(UserError, match="invalid package request"):
        validate("install", "['Bad Name']")
    pool = tmp_path / "pool"
    pool.mkdir()
    entries = lockfile.parse(stanza("iproute2", "6.1-1") + "\n"
                             + stanza("tzdata", "2025a", arch="all"))
    options, inputs = options_of("install", spec, tmp_path, entries)
    assert [p.name for p in options.packages] == ["iproute2", "tzdata"]
    assert all(p.dpkg_name is None for p in options.packages)
    assert inputs == [f"pool/{e.sha256}.deb" for e in entries]
    for package in options.packages:
        os.makedirs(os.path.dirname(package.pool_path), exist_ok=True)
        with open(package.pool_path, "w") as f:
            f.write(package.name)
    work = WorkFiles(str(tmp_path / "work"))
    os.makedirs(work.run)
    lines = kinds.get("install").script(options, work, str(tmp_path / "t"))
    assert lines[-1].endswith("install -y --no-install-recommends "
                              "iproute2:amd64=6.1-1 tzdata=2025a")
    apt = os.path.join(work.run, "apt")
    with open(os.path.join(apt, "sources.list")) as f:
        assert f.read() == "deb [trusted=yes] file:/run/debostree/apt ./\n"
    with open(os.path.join(apt, "pool/iproute2_6.1-1_amd64.deb")) as f:
        assert f.read() == "iproute2"
    with open(os.path.join(apt, "Packages")) as f:
        assert "Package: tzdata" in f.read()


def test_remove(tmp_path):
    spec = validate("remove", "[iproute2, 'libfoo:arm64']")
    with pytest.raises(UserError, match="invalid package name 'x=1'"):
        validate("remove", "['x=1']")
    options, inputs = options_of("remove", spec, tmp_path)
    assert options.packages == ["iproute2", "libfoo:arm64"] and inputs == []
    [line] = kinds.get("remove").script(options, None, None)
    assert "purge -y iproute2 libfoo:arm64;" in line
    assert "dpkg --purge iproute2 libfoo:arm64" in line
    assert kinds.get("remove").stand_ins(None, options, None, None, None) is None


def test_run(tmp_path):
    spec = validate("run", "['echo one', 'echo two']")
    assert spec.script == "echo one\necho two"
    options, _ = options_of("run", spec, tmp_path)
    assert kinds.get("run").command(options) == \
        ["/bin/sh", "-c", "set -e\necho one\necho two"]
    assert kinds.get("run").stand_ins(None, options, None, None, None) is None
    # A host key the command left behind is worth a warning.
    target = tmp_path / "t"
    (target / "etc/ssh").mkdir(parents=True)
    (target / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    [warning] = kinds.get("run").warnings(options, str(target), {})
    assert warning.startswith("warning: r/s: /etc/ssh/ssh_host_ed25519_key:")
    assert kinds.get("run").warnings(options, str(target), {
        "/etc/ssh/ssh_host_ed25519_key": None}) == []


def test_copy(tmp_path):
    recipes = tmp_path / "recipes"
    (recipes / "files/etc").mkdir(parents=True)
    (recipes / "files/etc/motd").write_text("hello\n")
    (recipes / "files/etc/issue").write_text("hi\n")
    context = kinds.RecipeContext(("amd64",), str(recipes))
    data, src = yamlsrc.load("r.yaml", text="copy: {src: files/etc, dest: /etc, "
                             "mode: 0644}\n")
    spec = kinds.get("copy").validate(src, ("copy",), data["copy"], context)
    assert spec.items[0].mode == "644" and spec.items[0].owner == "root"
    options, inputs = options_of("copy", spec, tmp_path,
                                 recipe_path=str(recipes / "r.yaml"))
    [item] = options.items
    assert item.src_abs == str(recipes / "files/etc")
    assert item.src_root == str(recipes)
    assert sorted(inputs) == sorted([str(recipes / "files/etc"),
                                     str(recipes / "files/etc/motd"),
                                     str(recipes / "files/etc/issue")])
    # No command: the copy is done on the host side, under fakeroot.
    assert kinds.get("copy").command(options) is None
    assert not kinds.get("copy").keeps_services_stopped
    data, src = yamlsrc.load("r.yaml", text="copy: {src: ../x, dest: /etc}\n")
    with pytest.raises(UserError, match="must be a path inside the recipe"):
        kinds.get("copy").validate(src, ("copy",), data["copy"], context)


def test_copy_source_per_architecture(tmp_path):
    """'{arch}' in a source: each architecture's build copies its own file,
    and every architecture's file must be there."""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "console.amd64.cfg").write_text("serial\n")
    context = kinds.RecipeContext(("amd64", "arm64"), str(recipes))
    text = "copy: {src: 'console.{arch}.cfg', dest: /etc/console.cfg}\n"
    data, src = yamlsrc.load("r.yaml", text=text)
    with pytest.raises(UserError, match=r"r.yaml:1: copy\[0\]\.src: no such "
                       r"file or directory: .*console\.arm64\.cfg \(for arm64\)"):
        kinds.get("copy").validate(src, ("copy",), data["copy"], context)
    (recipes / "console.arm64.cfg").write_text("firmware\n")
    spec = kinds.get("copy").validate(src, ("copy",), data["copy"], context)
    for arch in ("amd64", "arm64"):
        options, inputs = options_of(
            "copy", kinds.get("copy").for_arch(spec, arch), tmp_path,
            recipe_path=str(recipes / "r.yaml"))
        assert [item.src_abs for item in options.items] == inputs == \
            [str(recipes / f"console.{arch}.cfg")]
        assert options.items[0].key_value()["src"] == f"console.{arch}.cfg"


def test_deployable(tmp_path):
    spec = validate("deployable", "{dracut-modules: [lvm]}")
    assert spec.dracut_modules == ("lvm",)
    assert validate("deployable", "").dracut_modules == ()
    with pytest.raises(UserError, match="unknown key 'modules'"):
        validate("deployable", "{modules: [lvm]}")
    options, _ = options_of("deployable", spec, tmp_path)
    from debostree.stagefiles import WorkFiles
    work = WorkFiles(str(tmp_path / "work"))
    os.makedirs(work.run)
    lines = kinds.get("deployable").script(options, work, None)
    assert any("ostree lvm" in line for line in lines)
    # The wrappers the script names are in its run directory.
    for name in ("ldd", "dracut-install"):
        assert os.access(os.path.join(work.run, name), os.X_OK)
        assert any(f"=/run/debostree/{name}" in line for line in lines)
    assert "digests=/run/debostree/stand-ins.sha256\n" in open(
        os.path.join(work.run, "dracut-install")).read()
    assert kinds.get("deployable").command(options) == \
        ["/bin/sh", "-e", "/run/debostree/script"]


def test_bootstrap_dpkg_database():
    """What dpkg's unpack would have registered: status 'unpacked' with
    new conffiles, file and named trigger interests."""
    from debostree.kinds.bootstrap import dpkg_database
    files = dpkg_database([
        {"dpkg_name": "man-db", "control": "Package: man-db\nVersion: 2\n",
         "conffiles": [["/etc/manpath.config", "x"]],
         "triggers": "interest-noawait /usr/share/man\n# note\n"},
        {"dpkg_name": "libc-bin", "control": "Package: libc-bin\n",
         "conffiles": [], "triggers": "interest ldconfig\n"}], "arm64")
    assert files["/var/lib/dpkg/status"] == (
        "Package: man-db\nStatus: deinstall ok unpacked\nVersion: 2\n"
        "Conffiles:\n /etc/manpath.config newconffile\n\n"
        "Package: libc-bin\nStatus: deinstall ok unpacked\n")
    assert files["/var/lib/dpkg/triggers/File"] == "/usr/share/man man-db/noawait\n"
    assert files["/var/lib/dpkg/triggers/ldconfig"] == "libc-bin\n"
    assert files["/var/lib/dpkg/arch"] == "arm64\n"


def test_dracut_installer_puts_the_trees_programs_back(tmp_path):
    """The deployable stage's dracut-install wrapper, run by the host's sh
    around a stand-in installer: copies of stand-ins in the initramfs are
    replaced by the tree's own files before libraries are resolved (-R), and
    after a non-lazy install with their libraries resolved then."""
    import hashlib
    import subprocess
    from debostree import deployable
    sysroot, initdir = tmp_path / "sysroot", tmp_path / "initdir"
    (sysroot / "usr" / "bin").mkdir(parents=True)
    (initdir / "usr" / "bin").mkdir(parents=True)
    stand_in = b"\x7fELF host build of sed"
    (sysroot / "usr" / "bin" / "sed").write_bytes(b"\x7fELF the tree's sed")
    (sysroot / "usr" / "bin" / "sed").chmod(0o751)
    digest = hashlib.sha256(stand_in).hexdigest()
    (tmp_path / "digests").write_text(f"{digest} /usr/bin/sed\n")
    (tmp_path / "digests.only").write_text(f"{digest}\n")
    calls = tmp_path / "calls"
    # The installer copies what the sandbox shows at /usr/bin/sed: the
    # stand-in; with -R it records what it would resolve, and in what state.
    real = tmp_path / "real-dracut-install"
    real.write_text(f"""#!/bin/sh
case " $* " in
*" -R "*) for f; do [ -f "$f" ] && echo "R $f $(cat "$f")" >> {calls}; done ;;
*) printf '{stand_in.decode()}' > {initdir}/usr/bin/sed
   printf 'other' > {initdir}/usr/bin/other
   echo "install $*" >> {calls} ;;
esac
""")
    real.chmod(0o755)
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(deployable.INSTALL_WRAPPER_TEXT.format(
        real=real, digests=tmp_path / "digests"))
    wrapper.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "DEBOSTREE_SYSROOT": str(sysroot)}

    def run(*args, lazy=True):
        subprocess.run([str(wrapper), "-D", str(initdir), *args], check=True,
                       env={**env, **({"DRACUT_RESOLVE_LAZY": "1"} if lazy else {})})
    # Lazy: the copy stays until the resolving pass, which sees the tree's.
    run("-a", "sed")
    assert (initdir / "usr" / "bin" / "sed").read_bytes() == stand_in
    run("-R", "--", str(initdir / "usr" / "bin" / "sed"))
    assert (initdir / "usr" / "bin" / "sed").read_bytes() == b"\x7fELF the tree's sed"
    assert (initdir / "usr" / "bin" / "sed").stat().st_mode & 0o777 == 0o751
    assert f"R {initdir}/usr/bin/sed \x7fELF the tree's sed" in calls.read_text()
    # Not lazy: restored right after, and its libraries resolved.
    calls.write_text("")
    run("-a", "sed", lazy=False)
    assert (initdir / "usr" / "bin" / "sed").read_bytes() == b"\x7fELF the tree's sed"
    assert (initdir / "usr" / "bin" / "other").read_bytes() == b"other"
    assert calls.read_text().splitlines() == [
        f"install -D {initdir} -a sed",
        f"R {initdir}/usr/bin/sed \x7fELF the tree's sed"]
