"""Recipe validation: good recipes load, bad ones give one clear line."""

import os
import textwrap

import pytest

from conftest import TOP, run_tool
from debostree import recipe
from debostree.errors import UserError

GOOD = """\
ref: exampleos/bookworm/amd64/minimal
architecture: amd64
archives:
  - {name: debian, suites: [bookworm, bookworm-updates], components: [main]}
  - {name: debian-security, suites: [bookworm-security], components: [main]}
environment: {LANG: C.UTF-8}
stages:
  - {name: base, bootstrap: {variant: minbase, packages: [systemd-sysv]}}
  - {name: users, run: "useradd --create-home --shell /bin/bash demo"}
  - {name: tools, install: [iproute2, "openssh-server=1:9.2p1-2+deb12u3"]}
  - name: files
    copy:
      - {src: motd, dest: /etc/motd, owner: root, group: root, mode: "0644"}
  - {name: slim, remove: [iproute2]}
"""


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    (tmp_path / "motd").write_text("hello\n")
    return str(path)


def error_of(tmp_path, text):
    with pytest.raises(UserError) as info:
        recipe.load_recipe(write(tmp_path, text))
    return info.value


def test_good_recipe(tmp_path):
    rec = recipe.load_recipe(write(tmp_path, GOOD))
    assert rec.name == "r"
    assert rec.architectures == ("amd64",)
    assert [s.kind for s in rec.stages] == ["bootstrap", "run", "install",
                                            "copy", "remove"]
    assert rec.stages[0].options.variant == "required"  # minbase alias
    assert rec.stages[1].parent == "r/base"
    assert str(rec.stages[2].options.packages[1]) == \
        "openssh-server=1:9.2p1-2+deb12u3"
    assert rec.stages[3].options.items[0].mode == "0644"
    assert rec.archives[1].suites == ("bookworm-security",)
    assert rec.archives[1].check_valid_until is True
    assert rec.environment == {"LANG": "C.UTF-8"}


def test_default_recipes_are_valid():
    recipes = recipe.load_recipes(os.path.join(TOP, "recipes"))
    assert "minimal" in [r.name for r in recipes]
    server = [r for r in recipes if r.name == "server"][0]
    assert server.stages[-1].kind == "deployable"


def test_deployable_and_version(tmp_path):
    rec = recipe.load_recipe(write(tmp_path, GOOD.replace(
        "  - {name: slim, remove: [iproute2]}",
        "  - {name: ostree, deployable: {dracut-modules: [lvm]}}")
        + 'version: "2.1"\n'))
    assert rec.stages[-1].options.dracut_modules == ("lvm",)
    assert rec.version == "2.1"
    rec = recipe.load_recipe(write(tmp_path, GOOD.replace(
        "  - {name: slim, remove: [iproute2]}", "  - {name: o, deployable: }")))
    assert rec.stages[-1].options.dracut_modules == () and rec.version is None


def test_malformed_yaml_names_file_and_line(tmp_path):
    error = error_of(tmp_path, GOOD.replace("architecture: amd64",
                                            "architecture: [amd64"))
    assert error.path.endswith("r.yaml")
    assert error.line is not None and error.line >= 2
    assert "invalid YAML" in error.format()


@pytest.mark.parametrize("old,new,line,key,words", [
    ("architecture: amd64", "architecture: amd64\nbogus: 1", 3, "bogus",
     "unknown key 'bogus'"),
    ("variant: minbase", "variant: tiny", 8, "stages[0].bootstrap.variant",
     "unknown variant 'tiny'"),
    ("architecture: amd64", "architecture: sparc", 2, "architecture",
     "unknown architecture"),
    ("install: [iproute2,", "install: [Bad_Name,", 10,
     "stages[2].install[0]", "invalid package request"),
    ("{name: tools,", "{name: base,", 10, "stages[2].name", "used twice"),
    ("suites: [bookworm-security]", "suites: []", 5,
     "archives[1].suites", "the list is empty"),
    ("src: motd", "src: nothere", 13, "stages[3].copy[0].src",
     "no such file"),
    ('mode: "0644"', 'mode: "rw"', 13, "stages[3].copy[0].mode",
     "invalid mode"),
    ("dest: /etc/motd", "dest: etc/motd", 13, "stages[3].copy[0].dest",
     "absolute path"),
    ("{name: users, run:", "{name: users, install: [a], run:", 9,
     "stages[1]", "exactly one kind"),
    ("ref: exampleos/bookworm/amd64/minimal", "ref: bad ref!", 1, "ref",
     "invalid OSTree ref"),
    ("name: debian-security,", "name: debian,", 5, "archives[1].name",
     "listed twice"),
    ("components: [main]}\nenv", "components: [main], check-valid-until: later}"
     "\nenv", 5, "archives[1].check-valid-until", "expected true or false"),
    ("{name: slim, remove: [iproute2]}",
     "{name: slim, remove: [iproute2]}\n  - {name: d, deployable: {bogus: 1}}",
     15, "stages[5].deployable.bogus", "unknown key 'bogus'"),
    ("{name: slim, remove: [iproute2]}",
     "{name: slim, deployable: {dracut-modules: [\"bad name\"]}}", 14,
     "stages[4].deployable.dracut-modules[0]", "invalid dracut module name"),
    ("{name: users, run:", "{name: ostree, deployable: {}}\n  - {name: users, run:",
     9, "stages[1]", "must be the recipe's last stage"),
    ("environment: {LANG: C.UTF-8}", "environment: {LANG: C.UTF-8}\nversion: 1.10",
     7, "version", "quote it"),
    ("environment: {LANG: C.UTF-8}", "environment: {LANG: C.UTF-8}\nversion: 'a b'",
     7, "version", "invalid value"),
])
def test_bad_values(tmp_path, old, new, line, key, words):
    assert old in GOOD
    error = error_of(tmp_path, GOOD.replace(old, new, 1))
    assert error.line == line, error.format()
    assert error.key == key, error.format()
    assert words in error.format()


def test_duplicate_key(tmp_path):
    error = error_of(tmp_path, GOOD.replace("architecture: amd64",
                                            "architecture: amd64\nref: x/y"))
    assert error.line == 3 and "duplicate key 'ref'" in error.format()


def test_missing_required(tmp_path):
    error = error_of(tmp_path, "architecture: amd64\nstages: []\n")
    assert "missing required key 'ref'" in error.format()


def test_first_stage_needs_a_base(tmp_path):
    text = GOOD.replace(
        "  - {name: base, bootstrap: {variant: minbase, packages: [systemd-sysv]}}\n",
        "")
    error = error_of(tmp_path, text)
    assert "nothing to start from" in error.format()


def test_references_between_recipes(tmp_path):
    write(tmp_path, GOOD, "base.yaml")
    write(tmp_path, """\
        ref: exampleos/derived
        architecture: amd64
        from: base/tools
        stages:
          - {name: extra, install: [nano]}
        """, "derived.yaml")
    recipes = {r.name: r for r in recipe.load_recipes(str(tmp_path))}
    assert recipes["derived"].stages[0].parent == "base/tools"
    write(tmp_path, """\
        ref: exampleos/derived
        architecture: amd64
        from: base/nosuch
        stages:
          - {name: extra, install: [nano]}
        """, "derived.yaml")
    with pytest.raises(UserError) as info:
        recipe.load_recipes(str(tmp_path))
    assert "has no stage 'nosuch'" in info.value.format()
    assert info.value.line == 3


BOMB = """\
a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
description: *h
"""


@pytest.mark.parametrize("text,words", [
    (BOMB, "more than 100000 values"),
    ("ref: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("ref: " + "[" * 70 + "]" * 70 + "\n", "nested more than 64 levels"),
    (GOOD.replace("ref: exampleos/bookworm/amd64/minimal",
                  "ref: test/" + "a" * 100000), "too long"),
    (GOOD.replace("name: users,", "name: \"us\\ners\","), "invalid value 'us\\ners'"),
    (GOOD.replace("owner: root", "owner: \"root\\n\""), "invalid owner"),
    (GOOD.replace("[bookworm-security]", "[\"bookworm\\n\"]"), "invalid value"),
    (GOOD.replace("{LANG: C.UTF-8}", "{LANG: \"C\\0\"}"), "NUL"),
    (GOOD.replace("{name: tools,", "{name: packages,"), "may not be named 'packages'"),
    (GOOD.replace("{name: tools,", "{name: publish,"), "may not be named 'publish'"),
    (GOOD.replace("{name: tools,", "{name: arm64,"), "may not be named 'arm64'"),
])
def test_hostile_recipes_are_one_line(tmp_path, text, words):
    error = error_of(tmp_path, text)
    assert words in error.format()
    assert "\n" not in error.format()
    assert len(error.format()) < 600


def test_reserved_recipe_names(tmp_path):
    for name in ("fetch", "publish", "update-lockfiles", "fsck"):
        with pytest.raises(UserError) as info:
            recipe.load_recipe(write(tmp_path, GOOD, f"{name}.yaml"))
        assert f"may not be named '{name}'" in info.value.message


def test_two_recipes_with_one_ref(tmp_path):
    write(tmp_path, GOOD, "one.yaml")
    write(tmp_path, GOOD, "two.yaml")
    with pytest.raises(UserError) as info:
        recipe.load_recipes(str(tmp_path))
    assert "two.yaml" in info.value.format() and "one.yaml" in info.value.format()
    assert "exampleos/bookworm/amd64/minimal" in info.value.message


def test_bad_source_date_epoch_is_one_line(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    write(recipes, GOOD)
    result = run_tool([os.path.join(TOP, "configure.py"), "--recipes", recipes,
                       "--lockfiles", tmp_path / "lockfiles",
                       "--builddir", tmp_path / "build"], cwd=tmp_path,
                      env={**os.environ, "SOURCE_DATE_EPOCH": "abc"})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "SOURCE_DATE_EPOCH='abc' is not a number" in result.stderr
    assert not (tmp_path / "build").exists()


def test_a_failed_configure_writes_nothing(tmp_path):
    """Options files are inputs of stage edges: a configure that fails must
    leave the last good ones (and build.ninja) as they were."""
    import shutil
    recipes = tmp_path / "recipes"
    (recipes / "files").mkdir(parents=True)
    (tmp_path / "lockfiles").mkdir()
    shutil.copy(os.path.join(TOP, "recipes", "bookworm.yaml"), recipes)
    shutil.copy(os.path.join(TOP, "recipes", "files", "motd"), recipes / "files")
    shutil.copy(os.path.join(TOP, "lockfiles", "bookworm.amd64.lock"),
                tmp_path / "lockfiles")
    argv = [os.path.join(TOP, "configure.py"), "--recipes", recipes,
            "--lockfiles", tmp_path / "lockfiles", "--builddir", tmp_path / "build"]
    assert run_tool(argv, cwd=tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "build").rglob("*.json")}
    assert len([p for p in before if p.name.endswith(".options.json")]) >= 4
    ninja_file = (tmp_path / "build.ninja").read_bytes()
    recipe_file = recipes / "bookworm.yaml"
    recipe_file.write_text(recipe_file.read_text().replace(
        "useradd --create-home", "useradd --system --create-home"))
    result = run_tool(argv, cwd=tmp_path, env={"SOURCE_DATE_EPOCH": "soon"})
    assert result.returncode == 2
    assert {p: p.read_bytes() for p in (tmp_path / "build").rglob("*.json")} == before
    assert (tmp_path / "build.ninja").read_bytes() == ninja_file
    # And the same change with a good environment is written.
    assert run_tool(argv, cwd=tmp_path).returncode == 0
    assert {p: p.read_bytes() for p in (tmp_path / "build").rglob("*.json")} != before
    # A failure as late as writing build.ninja (a build directory whose
    # name ninja cannot hold): still no options file.
    bad = tmp_path / "bu\nild"
    result = run_tool(argv[:-1] + [bad], cwd=tmp_path)
    assert result.returncode == 2 and "newline" in result.stderr
    assert not list(bad.rglob("*.options.json")) if bad.exists() else True


def test_configure_reports_one_line_and_status_2(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    write(recipes, GOOD.replace("variant: minbase", "variant: tiny"))
    result = run_tool([os.path.join(TOP, "configure.py"), "--recipes", recipes,
                       "--lockfiles", tmp_path / "lockfiles"], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "r.yaml:8: stages[0].bootstrap.variant: unknown variant 'tiny'" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "build.ninja").exists()


def test_stages_may_not_take_the_names_of_recipe_targets(tmp_path):
    # RECIPE/shell and RECIPE/size are the recipe's own targets.
    for name in ("shell", "size", "packages"):
        path = write(tmp_path, GOOD.replace("name: users", f"name: {name}"),
                     "named.yaml")
        with pytest.raises(UserError) as info:
            recipe.load_recipe(path)
        assert f"a stage may not be named '{name}'" in info.value.message
