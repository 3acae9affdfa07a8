"""System user and group IDs kept from one version of a recipe to the next.

The planning is tested hermetically: swaps, new users on kept IDs, removed
users, users and groups apart, static and ordinary IDs left alone, and
random creation orders.  The build test makes system users and groups in
maintainer scripts (a throwaway archive's packages running adduser, dbus's
messagebus) and in a run stage (useradd -r, groupadd -r), commits the
recipe's branch, adds a package and a group that take IDs before them,
rebuilds, and checks in the commits that every name kept its ID and that
the files follow; then once more on a fresh build directory that only has
the published repository.
"""

import os
import random
import shutil
import stat
import struct
import subprocess

import pytest

from debostree import ids, manifest


def passwd(*users):
    return "".join(f"{name}:x:{uid}:{gid}:{name}:/nonexistent:/usr/sbin/nologin\n"
                   for name, uid, gid in users)


def group(*groups):
    return "".join(f"{name}:x:{gid}:\n" for name, gid in groups)


STATIC_USERS = [("root", 0, 0), ("daemon", 1, 1), ("_apt", 42, 65534),
                ("nobody", 65534, 65534)]
STATIC_GROUPS = [("root", 0), ("daemon", 1), ("shadow", 42), ("nogroup", 65534)]


def users_plan(reference, current, **kwargs):
    return ids.plan_ids("user", reference, current, **kwargs)[0]


def apply(current, mapping):
    return [(name, mapping.get(i, i)) for name, i in current]


def test_swap():
    reference = [("root", 0), ("a", 100), ("b", 101)]
    current = [("root", 0), ("b", 100), ("a", 101)]
    assert users_plan(reference, current) == {100: 101, 101: 100}


def test_same_ids_plan_nothing():
    reference = [("root", 0), ("a", 100), ("b", 101), ("demo", 1000)]
    mapping, notes = ids.plan_ids("user", reference, list(reference))
    assert mapping == {} and notes == []
    assert not ids.plan(passwd(("a", 100, 100)), group(("a", 100)),
                        passwd(("a", 100, 100)), group(("a", 100)))


def test_new_user_before_the_others_gets_a_free_id():
    # v1: a, b by adduser; v2: z made first takes 100 and shifts both.
    reference = [("root", 0), ("a", 100), ("b", 101)]
    current = [("root", 0), ("z", 100), ("a", 101), ("b", 102)]
    mapping, notes = ids.plan_ids("user", reference, current)
    assert mapping == {101: 100, 102: 101, 100: 102}
    assert "new user z: 100 -> 102 (100 is a's in the reference)" in notes
    assert "user a: 101 -> 100 (as in the reference)" in notes
    # Planned again on the result, nothing moves: a stage after this one
    # compares with the same reference.
    assert users_plan(reference, apply(current, mapping)) == {}


def test_new_user_never_takes_an_id_of_the_reference():
    # z was made after the others (no shift), on an ID the reference gave
    # to a user made later here: it moves, and c gets its ID in its stage.
    reference = [("a", 100), ("c", 101)]
    current = [("a", 100), ("z", 101)]
    assert users_plan(reference, current) == {101: 102}
    assert users_plan(reference, [("a", 100), ("z", 102), ("c", 103)]) == \
        {103: 101}


def test_removed_users_ids_stay_free():
    # a is gone (its package removed); its ID may still own files on
    # devices, so neither a new user nor a renumbered one gets it.
    reference = [("a", 100), ("b", 101), ("c", 102)]
    current = [("b", 100), ("c", 101), ("d", 102)]
    mapping = users_plan(reference, current)
    assert mapping == {100: 101, 101: 102, 102: 103}
    # (102 is c's, which a later stage may make again.)
    assert users_plan(reference, [("d", 100), ("b", 101)]) == {100: 103}
    # A new user on an ID nobody had keeps it.
    assert users_plan(reference, [("b", 101), ("e", 105)]) == {}


def test_counting_down_allocators_find_a_free_id_below():
    # useradd -r and systemd-sysusers count down from 999.
    reference = [("x", 999)]
    current = [("y", 999), ("x", 998)]
    assert users_plan(reference, current) == {998: 999, 999: 998}


def test_groups_and_users_apart():
    ref_passwd = passwd(*STATIC_USERS, ("a", 100, 101), ("b", 101, 100))
    ref_group = group(*STATIC_GROUPS, ("b", 100), ("a", 101))
    new_passwd = passwd(*STATIC_USERS, ("b", 100, 101), ("a", 101, 100))
    new_group = group(*STATIC_GROUPS, ("b", 101), ("a", 100))
    result = ids.plan(ref_passwd, ref_group, new_passwd, new_group)
    assert result.users == {100: 101, 101: 100}
    assert result.groups == {100: 101, 101: 100}
    text = ids.rewrite_passwd(new_passwd, result.users, result.groups)
    assert text == passwd(*STATIC_USERS, ("b", 101, 100), ("a", 100, 101))
    assert ids.rewrite_group(new_group, result.groups) == \
        group(*STATIC_GROUPS, ("b", 100), ("a", 101))
    # A group renumbered while its users keep theirs: their group follows.
    result = ids.plan(passwd(("a", 100, 100)), group(("a", 100), ("g", 101)),
                      passwd(("a", 100, 101)), group(("g", 100), ("a", 101)))
    assert result.users == {} and result.groups == {101: 100, 100: 101}
    assert ids.rewrite_passwd(passwd(("a", 100, 101)), result.users,
                              result.groups) == passwd(("a", 100, 100))


def test_static_ordinary_and_nobody_ids_never_move():
    reference = [("root", 0), ("sys", 3), ("_apt", 42), ("demo", 1000),
                 ("late", 1001), ("nobody", 65534), ("odd", 500)]
    current = [("root", 0), ("sys", 4), ("_apt", 43), ("demo", 1001),
               ("late", 1000), ("nobody", 65533), ("odd", 50)]
    mapping, notes = ids.plan_ids("user", reference, current)
    assert mapping == {}
    assert "user odd: 50, 500 in the reference; not both system IDs: " \
        "left alone" in notes
    # A new system user on a static ID of the reference is no system ID.
    assert users_plan([("_apt", 42)], [("new", 42)]) == {}


def test_moves_onto_ids_that_stay_are_dropped():
    # c and d share 100 here but not in the reference: 100 stays, so a
    # cannot have it back.
    reference = [("a", 100), ("c", 100), ("d", 102)]
    current = [("c", 100), ("d", 100), ("a", 101)]
    mapping, notes = ids.plan_ids("user", reference, current)
    assert mapping == {}
    assert any("share 100" in n for n in notes)
    assert "user a keeps 101: its reference ID 100 is c, d's here" in notes
    # Two IDs that would become one.
    reference = [("a", 100), ("b", 100)]
    assert users_plan(reference, [("a", 101), ("b", 102)]) == {}


def test_free_ids_avoid_owners_without_a_name():
    reference = [("a", 100), ("b", 101)]
    current = [("z", 100), ("a", 101)]
    assert users_plan(reference, current) == {101: 100, 100: 102}
    assert users_plan(reference, current, avoid={102}) == {101: 100, 100: 103}


def test_random_orders_keep_every_id():
    """adduser-like (counting up) and useradd -r-like (counting down)
    allocations in random orders, with users added and removed: after the
    plan every name the reference has keeps its ID, new names take none of
    the reference's, and every ID is one name's."""
    rng = random.Random(1)
    for _ in range(300):
        names = [f"u{i}" for i in range(rng.randint(1, 12))]
        up = set(rng.sample(names, rng.randint(0, len(names))))

        def allocate(order, taken=()):
            used = set(taken)
            result = [("root", 0), ("_apt", 42)]
            for name in order:
                candidates = range(100, 1000) if name in up \
                    else range(999, 99, -1)
                i = next(c for c in candidates if c not in used)
                used.add(i)
                result.append((name, i))
            return result

        reference = allocate(rng.sample(names, len(names)))
        kept = rng.sample(names, rng.randint(0, len(names)))
        new = [f"n{i}" for i in range(rng.randint(0, 4))]
        up.update(n for n in new if rng.random() < 0.5)
        current = allocate(rng.sample(kept + new, len(kept) + len(new)))
        result = apply(current, users_plan(reference, current))
        ref = dict(reference)
        final = dict(result)
        assert len(set(final.values())) == len(final), (reference, current)
        for name in kept:
            assert final[name] == ref[name], (reference, current, result)
        others = {i for n, i in reference if n not in new}
        for name in new:
            assert final[name] not in others
            assert 100 <= final[name] <= 999
        assert final["root"] == 0 and final["_apt"] == 42


def test_statoverride_tmpfiles_and_acls_follow():
    users, groups = {100: 101, 101: 100}, {105: 106}
    assert ids.rewrite_statoverride(
        "root messagebus 4754 /usr/lib/x\n#100 #105 0640 /var/lib/a b\n"
        "#5 #5 0600 /c\n", users, groups) == \
        "root messagebus 4754 /usr/lib/x\n#101 #106 0640 /var/lib/a b\n" \
        "#5 #5 0600 /c\n"
    assert ids.rewrite_tmpfiles(
        "# comment 100 105\nd /var/lib/a 0755 100 105 -\n"
        "L /var/x - - - - /y\nd /var/lib/b 0755 0 0 -\n", users, groups) == \
        "# comment 100 105\nd /var/lib/a 0755 101 106 -\n" \
        "L /var/x - - - - /y\nd /var/lib/b 0755 0 0 -\n"

    def acl(*entries):
        return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e)
                                               for e in entries)
    undefined = 0xFFFFFFFF
    value = acl((1, 7, undefined), (2, 5, 100), (2, 4, 101), (4, 5, undefined),
                (8, 5, 105), (0x10, 5, undefined), (0x20, 0, undefined))
    assert ids.rewrite_acl(value, users, groups) == acl(
        (1, 7, undefined), (2, 4, 100), (2, 5, 101), (4, 5, undefined),
        (8, 5, 106), (0x10, 5, undefined), (0x20, 0, undefined))

    entries = {
        "/": manifest.Entry("/", stat.S_IFDIR | 0o755),
        "/a": manifest.Entry("/a", stat.S_IFREG | 0o640, 100, 105,
                             xattrs=(("system.posix_acl_access", value),
                                     ("user.other", b"\x02\x00"))),
        "/b": manifest.Entry("/b", stat.S_IFDIR | 0o755, 1000, 42),
    }
    renumbered, count = ids.renumber_manifest(entries, users, groups)
    assert count == 1
    assert renumbered["/a"].uid == 101 and renumbered["/a"].gid == 106
    assert renumbered["/a"].xattrs == (
        ("system.posix_acl_access", ids.rewrite_acl(value, users, groups)),
        ("user.other", b"\x02\x00"))
    assert renumbered["/b"] == entries["/b"] and renumbered["/"] == entries["/"]


def test_keep_renumbers_a_tree(tmp_path, capsys):
    """``keep`` on a stage's tree: the files, the manifest, the log."""
    import json
    work, target = tmp_path / "work", tmp_path / "target"
    (target / "etc").mkdir(parents=True)
    (target / "var/lib/dpkg").mkdir(parents=True)
    work.mkdir()
    new_passwd = passwd(*STATIC_USERS, ("z", 100, 100), ("a", 101, 101))
    new_group = group(*STATIC_GROUPS, ("z", 100), ("a", 101))
    (target / "etc/passwd").write_text(new_passwd)
    (target / "etc/group").write_text(new_group)
    (target / "var/lib/dpkg/statoverride").write_text("#101 a 0640 /srv/a\n")
    reg, d = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755
    entries = {p: manifest.Entry(p, mode) for p, mode in (
        ("/", d), ("/etc", d), ("/etc/passwd", reg), ("/etc/group", reg),
        ("/var", d), ("/var/lib", d), ("/var/lib/dpkg", d),
        ("/var/lib/dpkg/statoverride", reg))}
    entries["/srv"] = manifest.Entry("/srv", d, 101, 101)
    entries["/srv/z"] = manifest.Entry("/srv/z", reg, 100, 100)
    # Without a reference (a branch's first commit) nothing happens.
    assert ids.keep(str(work), str(target), entries) is entries
    # The reference: a commit of a deployable tree (/usr/etc).
    reference = tmp_path / "reference"
    (reference / "usr/etc").mkdir(parents=True)
    (reference / "usr/etc/passwd").write_text(
        passwd(*STATIC_USERS, ("a", 100, 100)))
    (reference / "usr/etc/group").write_text(
        group(*STATIC_GROUPS, ("a", 100)))
    repo = str(tmp_path / "repo")
    subprocess.run(["ostree", "init", "--mode=bare-user", f"--repo={repo}"],
                   check=True)
    commit = subprocess.run(
        ["ostree", "commit", f"--repo={repo}", "--branch=test/b",
         f"--tree=dir={reference}", "--no-bindings"], check=True,
        capture_output=True, text=True).stdout.strip()
    # A reference gone meanwhile (or without the files) changes nothing.
    (work / ids.REFERENCE_FILE).write_text(json.dumps({
        "branch": "test/b", "commit": "0" * 64, "repo": repo}))
    assert ids.keep(str(work), str(target), entries) is entries
    assert "ids: no /etc/passwd and /etc/group in the reference" in \
        capsys.readouterr().out
    (work / ids.REFERENCE_FILE).write_text(json.dumps({
        "branch": "test/b", "commit": commit, "repo": repo}))
    result = ids.keep(str(work), str(target), entries)
    assert (target / "etc/passwd").read_text() == \
        passwd(*STATIC_USERS, ("z", 101, 101), ("a", 100, 100))
    assert (target / "etc/group").read_text() == \
        group(*STATIC_GROUPS, ("z", 101), ("a", 100))
    assert (target / "var/lib/dpkg/statoverride").read_text() == \
        "#100 a 0640 /srv/a\n"
    assert result["/srv"].uid == 100 and result["/srv/z"].gid == 101
    log = capsys.readouterr().out
    assert "ids: user a: 101 -> 100 (as in the reference)" in log
    assert "ids: new group z: 100 -> 101 (100 is a's in the reference)" in log
    assert "the owners of 2 paths" in log
    # Planned again (the next stage), nothing changes.
    assert ids.keep(str(work), str(target), result) is result


def test_reference_is_the_commit_the_branch_follows(tmp_path):
    """The local branch, or the published one when the local one is missing
    or does not descend from it (as branch.parent_commit)."""
    import json
    from conftest import TOP
    from debostree import ostree
    from debostree.project import BuildConfig
    config = BuildConfig(top=TOP, builddir=str(tmp_path / "build"), pool="",
                         recipes="", lockfiles="", mirrors={})
    work = tmp_path / "work"
    work.mkdir()
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)

    def commit(repo, mode, parent=None):
        ostree.Repo(repo).exists() or subprocess.run(
            ["ostree", "init", f"--mode={mode}", f"--repo={repo}"], check=True)
        (tree / "etc" / "passwd").write_text(f"{repo} {parent}\n")
        return subprocess.run(
            ["ostree", "commit", f"--repo={repo}", "--branch=test/r",
             f"--tree=dir={tree}", "--no-bindings",
             f"--parent={parent or 'none'}"], check=True,
            capture_output=True, text=True).stdout.strip()

    def reference():
        path = work / ids.REFERENCE_FILE
        if path.exists():
            path.unlink()
        note = ids.write_reference(config, "r", "amd64", str(work))
        found = json.loads(path.read_text()) if path.exists() else None
        return note, found and (os.path.basename(found["repo"]), found["commit"])

    assert reference() == ("ids: no reference for system user and group IDs "
                           "(the branch has no commit yet)", None)
    branches = tmp_path / "build" / "branches" / "r"
    branches.mkdir(parents=True)
    (branches / "amd64.options.json").write_text('{"branch": "test/r"}')
    local_repo, published_repo = config.repo, str(tmp_path / "build" / "publish")
    os.makedirs(local_repo)
    subprocess.run(["ostree", "init", "--mode=bare-user", f"--repo={local_repo}"],
                   check=True)
    assert reference()[1] is None
    local = commit(local_repo, "bare-user")
    note, found = reference()
    assert found == ("repo", local)
    assert note == f"ids: system user and group IDs kept from test/r {local} (repo)"
    published = commit(published_repo, "archive")
    assert reference()[1] == ("publish", published)
    subprocess.run(["ostree", "pull-local", f"--repo={local_repo}",
                    published_repo, published], check=True)
    newer = commit(local_repo, "bare-user", parent=published)
    assert reference()[1] == ("repo", newer)


# -- building: the IDs a branch's commits give system users and groups -------
ONE = """\
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  adduser --system --group --home /nonexistent --no-create-home idone
  chown idone:idone /var/lib/idtest-one
fi
"""

TWO = """\
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  addgroup --system idtwo-data
  adduser --system --ingroup idtwo-data --home /nonexistent --no-create-home idtwo
  chown idtwo:idtwo-data /var/lib/idtest-two/state
  chmod 0640 /var/lib/idtest-two/state
fi
"""

ZERO = ONE.replace("idone", "idzero").replace("idtest-one", "idtest-zero")

RECIPE = """\
ref: test/ids
architecture: amd64
{archives}  - {{name: local, suites: [stable], components: [main], keyring: local.gpg}}
stages:
  - {{name: base, bootstrap: {{variant: minbase, packages: [{base}]}}}}
  - {{name: more, install: [idtest-two, dbus]}}
  - name: own
    run: |
      {early}useradd --system --no-create-home idrun
      install -d -o idrun -g idrun /var/lib/idrun
"""


@pytest.fixture(scope="module")
def ids_archive(tmp_path_factory, key):
    from debarchive import Archive, Server
    root = tmp_path_factory.mktemp("ids-archive")
    archive = Archive(root, key, architectures=("amd64",))
    archive.add("stable", "idtest-one", "1.0", "all", depends="adduser",
                dirs=["var/lib/idtest-one"], scripts={"postinst": ONE})
    archive.add("stable", "idtest-zero", "1.0", "all", depends="adduser",
                dirs=["var/lib/idtest-zero"], scripts={"postinst": ZERO})
    archive.add("stable", "idtest-two", "1.0", "all", depends="adduser",
                files={"var/lib/idtest-two/state": "state\n"},
                scripts={"postinst": TWO})
    archive.publish()
    server = Server(root)
    yield server.url
    server.close()


def accounts(project, rev):
    """``({user: (uid, gid)}, {group: gid})`` of a commit."""
    from test_build import ostree
    users = {line.split(":")[0]: (int(line.split(":")[2]), int(line.split(":")[3]))
             for line in ostree(project, "cat", rev, "/etc/passwd").splitlines()}
    groups = {line.split(":")[0]: int(line.split(":")[2])
              for line in ostree(project, "cat", rev, "/etc/group").splitlines()}
    return users, groups


def check_owners(project, rev, users, groups):
    """The files of the system users and groups belong to them, by ID."""
    from treecompare import tree_from_commit
    tree = tree_from_commit(str(project / "build" / "repo"), rev)
    owners = {"/var/lib/idtest-one": ("idone", "idone"),
              "/var/lib/idtest-two/state": ("idtwo", "idtwo-data"),
              "/var/lib/idrun": ("idrun", "idrun")}
    if "idzero" in users:
        owners["/var/lib/idtest-zero"] = ("idzero", "idzero")
    for path, (user, grp) in owners.items():
        assert tree[path][2:4] == (users[user][0], groups[grp]), path
    assert tree["/usr/lib/dbus-1.0/dbus-daemon-launch-helper"][1:4] == \
        (0o4754, 0, groups["messagebus"])
    # Every user's group is the one of its name (or the one it was put in).
    for user, grp in (("idone", "idone"), ("idtwo", "idtwo-data"),
                      ("idrun", "idrun"), ("messagebus", "messagebus")):
        assert users[user][1] == groups[grp], user
    assert len({uid for uid, _ in users.values()}) == len(users)
    assert len(set(groups.values())) == len(groups)


@pytest.mark.network
@pytest.mark.sandbox
@pytest.mark.slow
def test_system_ids_kept_across_versions(tmp_path, pool, key, ids_archive,
                                         monkeypatch):
    from test_build import ARCHIVES, configure, ostree, run
    monkeypatch.setenv("DEBOSTREE_PUBLISH_CONFIG", str(tmp_path / "none.yaml"))
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    shutil.copyfile(key.keyring, project / "recipes" / "local.gpg")
    recipe = project / "recipes" / "ids.yaml"
    recipe.write_text(RECIPE.format(archives=ARCHIVES, base="idtest-one",
                                    early=""))
    mirror = ["--mirror", f"local={ids_archive}"]
    configure(project, pool, extra=mirror)
    run(["ninja", "update-lockfiles"], project)
    run(["ninja", "ids"], project)
    first = ostree(project, "rev-parse", "test/ids").strip()
    users1, groups1 = accounts(project, first)
    check_owners(project, first, users1, groups1)
    logs = project / "build" / "logs" / "ids" / "amd64"
    assert "ids: no reference" in (logs / "base.log").read_text()

    # A package and a group made before all of them: without the stage
    # renumbering, adduser gives idzero 100 and shifts what comes after,
    # groupadd -r takes idrun's group.
    recipe.write_text(RECIPE.format(archives=ARCHIVES,
                                    base="idtest-zero, idtest-one",
                                    early="groupadd --system idearly\n      "))
    run(["ninja", "update-lockfiles"], project)
    run(["ninja", "ids"], project)
    second = ostree(project, "rev-parse", "test/ids").strip()
    assert second != first
    assert ostree(project, "rev-parse", "test/ids^").strip() == first
    users2, groups2 = accounts(project, second)
    assert {"idzero"} == set(users2) - set(users1)
    assert {"idzero", "idearly"} == set(groups2) - set(groups1)
    for name, (uid, gid) in users1.items():
        assert users2[name] == (uid, gid), name
    for name, gid in groups1.items():
        assert groups2[name] == gid, name
    for new in ("idzero",):
        assert 100 <= users2[new][0] <= 999
        assert users2[new][0] not in {uid for uid, _ in users1.values()}
    for new in ("idzero", "idearly"):
        assert 100 <= groups2[new] <= 999
        assert groups2[new] not in set(groups1.values())
    check_owners(project, second, users2, groups2)
    base_log = (logs / "base.log").read_text()
    assert f"ids: system user and group IDs kept from test/ids {first}" in base_log
    assert "ids: new user idzero: " in base_log
    assert "ids: new group idearly: 999 -> " in (logs / "own.log").read_text()

    # Another machine, with only the published repository: the same IDs.
    run(["ninja", "ids/publish"], project)
    shutil.move(project / "build" / "publish", tmp_path / "publish")
    shutil.rmtree(project / "build")
    configure(project, pool, extra=mirror)
    shutil.move(tmp_path / "publish", project / "build" / "publish")
    run(["ninja", "ids"], project)
    third = ostree(project, "rev-parse", "test/ids").strip()
    assert accounts(project, third) == (users2, groups2)
    check_owners(project, third, users2, groups2)
    # The same tree, owners included, but for what dbus makes up anew.
    diff = ostree(project, "diff", second, third).splitlines()
    assert set(diff) <= {"M    /var/lib/dbus/machine-id"}, diff
    assert f"kept from test/ids {second} (publish)" in \
        (logs / "base.log").read_text()


def test_reference_files_read_from_a_commit_without_glib_warnings(tmp_path):
    """passwd and group of the reference commit, from /etc or (a deployable
    tree) /usr/etc, read through libostree; GLib's critical warnings are
    made fatal, so a read GLib complains about fails here."""
    import sys
    from conftest import TOP
    from debostree import ostree
    repo = ostree.Repo(str(tmp_path / "repo"))
    repo.ensure()
    commits = {}
    for etc in ("etc", "usr/etc"):
        tree = tmp_path / etc.replace("/", "-")
        (tree / etc).mkdir(parents=True)
        (tree / etc / "passwd").write_text(f"root:x:0:0::/root:/bin/sh # {etc}\n")
        (tree / etc / "group").write_text("root:x:0:\n")
        commits[etc] = repo.commit_trees(f"test/{etc}", [f"dir={tree}"], etc)
    empty = tmp_path / "empty"
    empty.mkdir()
    commits["none"] = repo.commit_trees("test/none", [f"dir={empty}"], "none")
    code = ("import sys, json; from debostree import ids; "
            "print(json.dumps([ids.reference_files(sys.argv[1], c) "
            "for c in sys.argv[2:]]))")
    result = subprocess.run(
        [sys.executable, "-c", code, repo.path, commits["etc"],
         commits["usr/etc"], commits["none"]],
        capture_output=True, text=True, cwd=TOP,
        env={**os.environ, "G_DEBUG": "fatal-criticals", "PYTHONPATH": TOP})
    assert result.returncode == 0, result.stderr
    assert "CRITICAL" not in result.stderr
    import json
    assert json.loads(result.stdout) == [
        ["root:x:0:0::/root:/bin/sh # etc\n", "root:x:0:\n"],
        ["root:x:0:0::/root:/bin/sh # usr/etc\n", "root:x:0:\n"],
        None]
