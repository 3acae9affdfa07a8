"""System user and group IDs kept from one version of a recipe to the next.

Maintainer scripts (``adduser --system``, ``addgroup --system``, ``useradd
-r``, ``groupadd -r``, ``systemd-sysusers``) and ``run`` stages give a new
system user or group the next free ID when they run, so a package added to a
bootstrap, or packages configured in another order, renumber the users and
groups made after it.  A device that upgrades keeps its ``/var`` (and the
files of ``/etc`` it changed): they would then belong to other users.

So each stage, once its work ran and its manifest is known, compares its
tree's ``/etc/passwd`` and ``/etc/group`` with those of a reference: the
head of the recipe's branch, the commit the next branch commit follows
(``branch.parent_commit``: the local branch, or the published one), named
by ``write_reference`` in the stage's work directory and read by ``keep``.
Every system name both have gets its reference ID back; a name the
reference does not know keeps its ID unless the reference gave that ID to
another name (a kept one, or one removed since), and then gets a free one.
The tree follows: ``/etc/passwd`` and ``/etc/group`` (a user's group too),
the owner and group of every path of the manifest, POSIX ACLs, numeric
owners in dpkg's statoverride file and in the ``deployable`` stage's
tmpfiles.d file.  ``/etc/shadow``, ``/etc/gshadow``, ``/etc/subuid`` and
``/etc/subgid`` name users, not IDs.

Only system IDs move (``SYSTEM_IDS``: 100-999, adduser's and useradd's
range on Debian): never base-passwd's static ones (0-99), nor ordinary
users (1000 and up), nor ``nobody`` (65534).  Every name is alike, whoever
made it.  ``plan`` is the pure part: file texts in, ID maps out.
"""

import dataclasses
import json
import os
import re
import stat
import struct
from dataclasses import dataclass, field

from . import deployable, ostree
from .errors import UserError
from .stagefiles import StageFiles

SYSTEM_IDS = (100, 999)
REFERENCE_FILE = "ids.reference.json"
# Where a tree keeps its account files: /etc, or /usr/etc in a tree made
# deployable (deployable.py).
ETC_DIRS = ("/etc", "/usr/etc")
STATOVERRIDE = ("/var/lib/dpkg/statoverride",
                deployable.SYSIMAGE + "/dpkg/statoverride")
ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
ACL_USER, ACL_GROUP = 0x02, 0x08


@dataclass
class Plan:
    """ID changes for a tree: ``{old: new}`` for users and for groups, and
    what was done and why, one line each."""
    users: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def __bool__(self):
        return bool(self.users or self.groups)


def parse_ids(text):
    """``[(name, id), ...]`` of a passwd or group file, in file order
    (comments, NIS ``+``/``-`` lines and malformed lines are skipped)."""
    found = []
    for line in (text or "").splitlines():
        fields = line.split(":")
        if len(fields) < 4 or not fields[0] or line.startswith(("#", "+", "-")):
            continue
        try:
            found.append((fields[0], int(fields[2])))
        except ValueError:
            continue
    return found


def plan(reference_passwd, reference_group, passwd, group, *,
         system_ids=SYSTEM_IDS, avoid_uids=(), avoid_gids=()):
    """How to renumber a tree's users and groups (the texts of its
    ``/etc/passwd`` and ``/etc/group``) so that they keep the reference's
    IDs.  ``avoid_*``: IDs that files use without a name (never handed out).
    """
    result = Plan()
    result.users, notes = plan_ids(
        "user", parse_ids(reference_passwd), parse_ids(passwd), system_ids,
        avoid_uids)
    result.notes += notes
    result.groups, notes = plan_ids(
        "group", parse_ids(reference_group), parse_ids(group), system_ids,
        avoid_gids)
    result.notes += notes
    return result


def plan_ids(kind, reference, current, system_ids=SYSTEM_IDS, avoid=()):
    """``({old: new}, notes)`` for one kind of ID (users or groups).

    ``reference`` and ``current`` are ``[(name, id), ...]``.  A file owned
    by an ID is owned by every name of that ID, so IDs move, not names: an
    ID moves to the reference ID of its names when they agree and both are
    system IDs; a system ID no name of the reference has moves to a free
    system ID when the reference gave it to another name.  A move onto an
    ID that stays (not a system ID, or one whose names disagree) is
    dropped, with a note.
    """
    low, high = system_ids

    def system(i):
        return low <= i <= high

    ref_id = {}
    for name, i in reference:
        ref_id.setdefault(name, i)
    ref_ids = {i for _, i in reference}
    ref_owner = {}
    for name, i in reference:
        ref_owner.setdefault(i, name)
    names_of = {}  # id -> [names], in file order
    for name, i in current:
        names_of.setdefault(i, []).append(name)
    notes = []
    moves = {}       # id -> reference id
    fixed = set()    # ids that stay as they are
    fresh = []       # system ids of new names that must move to a free id
    for i, names in names_of.items():
        known = [n for n in names if n in ref_id]
        targets = {ref_id[n] for n in known}
        if not known:
            if system(i) and i in ref_ids:
                fresh.append(i)
            else:
                fixed.add(i)
        elif len(targets) > 1:
            fixed.add(i)
            notes.append(f"{kind}s {', '.join(known)} share {i} but not in "
                         "the reference: left alone")
        else:
            target = targets.pop()
            if target == i:
                fixed.add(i)
            elif system(i) and system(target):
                moves[i] = target
            else:
                fixed.add(i)
                notes.append(f"{kind} {known[0]}: {i}, {target} in the "
                             "reference; not both system IDs: left alone")
    # Two IDs that would become one, or a move onto an ID that stays: such
    # moves are dropped, which may make their own ID one that stays.
    while True:
        onto = {}
        for i, target in moves.items():
            onto.setdefault(target, []).append(i)
        dropped = []
        for target, sources in onto.items():
            if len(sources) > 1:
                dropped += sources
                notes.append(f"{kind}s {', '.join(names_of[s][0] for s in sources)}"
                             f" all had {target} in the reference: left alone")
            elif target in fixed:
                dropped += sources
                notes.append(f"{kind} {names_of[sources[0]][0]} keeps "
                             f"{sources[0]}: its reference ID {target} is "
                             f"{', '.join(names_of[target])}'s here")
        if not dropped:
            break
        for i in dropped:
            del moves[i]
            fixed.add(i)
    # A new name whose ID the reference gave to another name (one kept
    # here, one made later, or one removed since: its files may remain on
    # devices) gets a free system ID, none of the reference's nor in use.
    onto = {target: i for i, target in moves.items()}
    taken = ref_ids | set(avoid) | fixed | set(moves.values())
    for i in fresh:
        new = _free_id(i, taken, low, high)
        if new is None:
            raise UserError(f"no free system {kind} ID between {low} and "
                            f"{high} for {', '.join(names_of[i])}",
                            hint="too many system users or groups")
        taken.add(new)
        moves[i] = new
        holder = names_of[onto[i]][0] if i in onto else ref_owner[i]
        notes.append(f"new {kind} {', '.join(names_of[i])}: {i} -> {new} "
                     f"({i} is {holder}'s in the reference)")
    for i in sorted(set(moves) - set(fresh)):
        notes.append(f"{kind} {', '.join(names_of[i])}: {i} -> {moves[i]} "
                     "(as in the reference)")
    return moves, notes


def _free_id(start, taken, low, high):
    """The free ID nearest above ``start`` (allocators that count up, like
    adduser), else nearest below it (those that count down, like useradd
    -r and systemd-sysusers)."""
    for candidate in list(range(start + 1, high + 1)) + \
            list(range(start - 1, low - 1, -1)):
        if candidate not in taken:
            return candidate
    return None


# -- applying a plan ---------------------------------------------------------
def _map(word, mapping, prefix=""):
    """``word`` (an ID, after ``prefix``) through ``mapping``."""
    digits = word[len(prefix):]
    if word.startswith(prefix) and digits.isdigit() and int(digits) in mapping:
        return f"{prefix}{mapping[int(digits)]}"
    return word


def _rewrite_accounts(text, columns):
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        fields = body.split(":")
        if len(fields) >= 4 and not body.startswith(("#", "+", "-")):
            for column, mapping in columns:
                fields[column] = _map(fields[column], mapping)
            line = ":".join(fields) + line[len(body):]
        out.append(line)
    return "".join(out)


def rewrite_passwd(text, users, groups):
    """``/etc/passwd`` with users' IDs and their groups' IDs renumbered."""
    return _rewrite_accounts(text, ((2, users), (3, groups)))


def rewrite_group(text, groups):
    return _rewrite_accounts(text, ((2, groups),))


def rewrite_statoverride(text, users, groups):
    """dpkg's statoverride file (``OWNER GROUP MODE PATH``): owners given as
    ``#ID`` follow (names stay names)."""
    out = []
    for line in text.splitlines(keepends=True):
        fields = line.split(" ", 3)
        if len(fields) == 4:
            fields[0] = _map(fields[0], users, "#")
            fields[1] = _map(fields[1], groups, "#")
            line = " ".join(fields)
        out.append(line)
    return "".join(out)


def rewrite_tmpfiles(text, users, groups):
    """A tmpfiles.d file's numeric user and group fields (``TYPE PATH MODE
    USER GROUP ...``), as the deployable stage writes them."""
    out = []
    for line in text.splitlines(keepends=True):
        parts = re.split(r"([ \t]+)", line)  # words at even indices
        if len(parts) > 8 and parts[0] and not parts[0].startswith("#"):
            parts[6] = _map(parts[6], users)
            parts[8] = _map(parts[8], groups)
            line = "".join(parts)
        out.append(line)
    return "".join(out)


def rewrite_acl(value, users, groups):
    """A POSIX ACL xattr (a version word, then ``tag, perm, id`` entries)
    with its named users and groups renumbered, in the kernel's order."""
    if len(value) < 4 or (len(value) - 4) % 8:
        return value
    entries = []
    for offset in range(4, len(value), 8):
        tag, perm, ident = struct.unpack_from("<HHI", value, offset)
        if tag == ACL_USER:
            ident = users.get(ident, ident)
        elif tag == ACL_GROUP:
            ident = groups.get(ident, ident)
        entries.append((tag, ident, perm))
    return value[:4] + b"".join(struct.pack("<HHI", tag, perm, ident)
                                for tag, ident, perm in sorted(entries))


def renumber_manifest(entries, users, groups):
    """``(entries, count)``: the manifest with owners, groups and ACLs
    renumbered, and how many paths changed."""
    out = {}
    count = 0
    for path, entry in entries.items():
        xattrs = tuple((name, rewrite_acl(value, users, groups)
                        if name in ACL_XATTRS else value)
                       for name, value in entry.xattrs)
        new = dataclasses.replace(entry, uid=users.get(entry.uid, entry.uid),
                                  gid=groups.get(entry.gid, entry.gid),
                                  xattrs=xattrs)
        count += new != entry
        out[path] = new
    return out, count


# -- inside the namespace: the stage's tree ----------------------------------
def _regular(entries, path):
    entry = entries.get(path)
    return entry is not None and stat.S_ISREG(entry.mode)


def _read(path):
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def _replace(path, text):
    """Write a file of the overlay anew (never into a lower file)."""
    tmp = path + ".debostree-ids"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
    os.replace(tmp, path)


def reference_files(repo_path, commit):
    """``(passwd, group)`` texts of a commit (libostree: the stage loads it
    anyway to commit), or None when it has neither."""
    from gi.repository import GLib
    repo = ostree.Repo(repo_path).open_gi()
    try:
        _, root, _ = repo.read_commit(commit, None)
    except GLib.Error:
        return None  # gone since the stage started (a pruned repository)

    def text(path):
        # The object's content through the repository: GFile.load_contents
        # would ask the stream for a GFileInputStream's attributes (GLib
        # prints a critical warning; the read works all the same).
        node = root.resolve_relative_path(path)
        node.ensure_resolved()
        _, stream, info, _ = repo.load_file(node.get_checksum(), None)
        data = stream.read_bytes(info.get_size(), None).get_data()
        return bytes(data).decode("utf-8", "surrogateescape")

    for etc in ETC_DIRS:
        try:
            return tuple(text(etc[1:] + name) for name in ("/passwd", "/group"))
        except GLib.Error:
            continue
    return None


def reference_digest(work):
    """What a stage's result takes from the reference ``write_reference``
    named in ``work``: the names and IDs of its users and groups, as a
    digest for the key the stage is cached under (cachekey.run_key); None
    without a reference."""
    from .cachekey import digest_json
    try:
        with open(os.path.join(work, REFERENCE_FILE), encoding="utf-8") as f:
            reference = json.load(f)
    except FileNotFoundError:
        return None
    texts = reference_files(reference["repo"], reference["commit"])
    if not texts:
        return digest_json({"ids": None})
    return digest_json({"users": parse_ids(texts[0]),
                        "groups": parse_ids(texts[1])})


def keep(work, target, entries):
    """Renumber the stage's tree ``target`` and its manifest ``entries`` to
    the IDs of the reference ``write_reference`` named in ``work``; returns
    the manifest.  What it does goes to the stage's log."""
    try:
        with open(os.path.join(work, REFERENCE_FILE), encoding="utf-8") as f:
            reference = json.load(f)
    except FileNotFoundError:
        return entries
    etc = next((d for d in ETC_DIRS if _regular(entries, d + "/passwd")
                and _regular(entries, d + "/group")), None)
    texts = etc and reference_files(reference["repo"], reference["commit"])
    if not texts:
        print(f"ids: no /etc/passwd and /etc/group in the "
              f"{'reference' if etc else 'tree'}: nothing to compare",
              flush=True)
        return entries
    passwd = _read(target + etc + "/passwd")
    group = _read(target + etc + "/group")
    result = plan(
        *texts, passwd, group,
        avoid_uids={e.uid for e in entries.values()}
        - {i for _, i in parse_ids(passwd)},
        avoid_gids={e.gid for e in entries.values()}
        - {i for _, i in parse_ids(group)})
    where = f"{reference['branch']} {reference['commit'][:12]}"
    for note in result.notes:
        print(f"ids: {note}", flush=True)
    if not result:
        print(f"ids: system users and groups as in {where}", flush=True)
        return entries
    _replace(target + etc + "/passwd",
             rewrite_passwd(passwd, result.users, result.groups))
    _replace(target + etc + "/group", rewrite_group(group, result.groups))
    for path, rewrite in [(p, rewrite_statoverride) for p in STATOVERRIDE] + \
            [(deployable.TMPFILES, rewrite_tmpfiles)]:
        if _regular(entries, path):
            text = _read(target + path)
            new = rewrite(text, result.users, result.groups)
            if new != text:
                _replace(target + path, new)
                print(f"ids: renumbered in {path}", flush=True)
    entries, count = renumber_manifest(entries, result.users, result.groups)
    print(f"ids: renumbered to keep the IDs of {where}: "
          f"{len(result.users)} users, {len(result.groups)} groups, "
          f"the owners of {count} paths", flush=True)
    return entries


# -- the reference ------------------------------------------------------------
def branch_of(config, recipe, arch):
    """The branch of the stage's recipe, from the options file of its branch
    edge (graph.branch_edge): not an input of the stage."""
    path = StageFiles.branch(config.builddir, recipe, arch).options
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)["branch"]
    except (OSError, ValueError, KeyError):
        return None


def find_reference(config, branch):
    """``(repository path, commit)`` of the commit a new one on ``branch``
    would follow (as ``branch.parent_commit`` finds it, without copying a
    published commit into the build repository), or None.  Through
    libostree, which the stage's process has loaded for its commit."""
    repo = ostree.Repo(config.repo)
    gi_repo = repo.open_gi()
    local = ostree.resolve_ref(gi_repo, branch)
    published_repo = ostree.Repo(config.publish_repo)
    if published_repo.exists():
        published = ostree.resolve_ref(published_repo.open_gi(), branch)
        if published and published != local:
            if not local or not ostree.is_ancestor(gi_repo, published,
                                                   local):
                return published_repo.path, published
    return (repo.path, local) if local else None


def write_reference(config, recipe, arch, work):
    """Find the reference of a stage and name it in ``work`` for ``keep``;
    returns a line for the stage's log."""
    branch = branch_of(config, recipe, arch)
    found = find_reference(config, branch) if branch else None
    if found is None:
        return "ids: no reference for system user and group IDs (the " \
            "branch has no commit yet)"
    repo_path, commit = found
    with open(os.path.join(work, REFERENCE_FILE), "w", encoding="utf-8") as f:
        json.dump({"branch": branch, "commit": commit, "repo": repo_path}, f)
    return f"ids: system user and group IDs kept from {branch} {commit} " \
        f"({os.path.basename(repo_path)})"
