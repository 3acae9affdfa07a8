"""Lockfiles: reading, writing and comparing them.

A lockfile (``lockfiles/RECIPE.ARCH.lock``) is a Debian Packages index in
deb822 form: one stanza per package the recipe installs, sorted by package
name, architecture and version, with the archive's own fields (Package,
Version, Architecture, the relation fields, Filename relative to the
archive's root, Size, SHA256, ...) and three of ours:

``Lock-Archive``  the symbolic archive the package comes from;
``Lock-Suite``    the suite it was found in (for the humans reading a diff);
``Lock-Stage``    the recipe stage that installs it.

A recipe built on a published commit (``from: {remote, ref}``, bases.py)
has one more stanza, first: the pinned base commit (``Lock-Base-Remote``,
``-Ref``, ``-Commit``, ``-Version``, ``-Signed-By``; no ``Package``), and
the base's installed packages, under the stage name ``from``.

apt reads it as it is (unknown fields are ignored), so a directory holding
it as ``Packages`` beside the fetched files is a ``file:`` apt source.  The
same inputs always give the same bytes; a lockfile is rewritten only when its
content changes.
"""

import re
from dataclasses import dataclass

from . import changes
from .errors import UserError

# The archive fields a lockfile keeps, in this order (the order of Debian's
# own Packages files); descriptions, maintainers and homepages are left out
# to keep nightly diffs to what matters.
ARCHIVE_FIELDS = (
    "Package", "Source", "Version", "Installed-Size", "Architecture",
    "Replaces", "Provides", "Depends", "Pre-Depends", "Recommends", "Suggests",
    "Enhances", "Conflicts", "Breaks", "Multi-Arch", "Essential", "Protected",
    "Important", "Priority", "Section", "Filename", "Size", "SHA256",
)
LOCK_FIELDS = ("Lock-Archive", "Lock-Suite", "Lock-Stage")
# The Lock-Stage of the host-architecture packages whose programs stand in
# for a foreign recipe's emulated ones (native.py): a name no stage may take.
STAND_INS_STAGE = "stand-ins"
REQUIRED_FIELDS = ("Package", "Version", "Architecture", "Filename", "Size",
                   "SHA256") + LOCK_FIELDS
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# What dpkg accepts (lib/parsehelp.c, lib/arch.c, deb-version(7)): names
# that become file names and command arguments never hold '/', spaces or
# shell characters, nor start with '.'.
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]*$")
ARCH_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
VERSION_RE = re.compile(r"^(?:[0-9]+:)?[A-Za-z0-9][A-Za-z0-9.+~:-]*$")
LOCK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]*$")
FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~%/-]*\.u?deb$")


@dataclass(frozen=True)
class Entry:
    """One locked package, as read from a lockfile."""
    name: str
    version: str
    arch: str
    archive: str
    suite: str
    stage: str
    filename: str
    size: int
    sha256: str
    fields: tuple      # ((field, value), ...) in file order
    line: int = None

    def get(self, field, default=None):
        for key, value in self.fields:
            if key == field:
                return value
        return default


def lockfile_name(recipe_name, arch):
    return f"{recipe_name}.{arch}.lock"


def stanza_text(fields):
    """Serialise ``(field, value)`` pairs as one deb822 stanza."""
    lines = []
    for field, value in fields:
        value = str(value)
        if "\n" in value.strip("\n"):
            first, *rest = value.strip("\n").split("\n")
            lines.append(f"{field}: {first}".rstrip())
            lines.extend(" " + line.strip() if line.strip() else " ."
                         for line in rest)
        else:
            lines.append(f"{field}: {value.strip()}")
    return "\n".join(lines) + "\n"


def render(packages, pin=None):
    """The lockfile text for resolved packages (``resolve.LockedPackage``),
    after the base's pin (``bases.Pin``) when there is one."""
    stanzas = []
    for pkg in packages:
        fields = [(f, pkg.stanza[f]) for f in ARCHIVE_FIELDS if f in pkg.stanza]
        fields += [("Lock-Archive", pkg.archive), ("Lock-Suite", pkg.suite),
                   ("Lock-Stage", pkg.stage)]
        stanzas.append(((pkg.name, pkg.arch, pkg.version, pkg.stage),
                        stanza_text(fields)))
    stanzas.sort(key=lambda item: item[0])
    texts = [text for _, text in stanzas]
    if pin is not None:
        texts.insert(0, stanza_text(pin.fields()))
    return "\n".join(texts)


def _blocks(text):
    """``(first line number, stanza text)`` of each stanza."""
    line_no = 0
    block = []
    block_start = None
    for raw in text.splitlines(keepends=True) + ["\n"]:
        line_no += 1
        if raw.strip() == "":
            if block:
                yield block_start, "".join(block)
                block = []
            continue
        if block_start is None or not block:
            block_start = line_no
        block.append(raw)


def _is_pin(block):
    return block.startswith("Lock-Base-")


def parse_pin(text, path="<lockfile>"):
    """The base commit the lockfile pins (``bases.Pin``), or None."""
    from .bases import pin_from_fields
    for line, block in _blocks(text):
        if _is_pin(block):
            if line != 1:
                raise UserError("the base stanza must come first", path=path,
                                line=line, hint="regenerate it with "
                                "'ninja update-lockfiles'")
            from debian import deb822
            return pin_from_fields(deb822.Deb822(block), path, line)
    return None


def parse(text, path="<lockfile>"):
    """Parse lockfile text into a list of ``Entry`` (the packages; see
    ``parse_pin`` for a base's stanza); validate every stanza."""
    entries = [_entry(block, path, line) for line, block in _blocks(text)
               if not _is_pin(block)]
    seen = {}
    for entry in entries:
        key = (entry.name, entry.arch, entry.stage)
        if key in seen:
            raise UserError(f"package {entry.name}:{entry.arch} is locked twice "
                            f"for stage '{entry.stage}'", path=path,
                            line=entry.line,
                            hint="run 'ninja update-lockfiles' to rewrite it")
        seen[key] = entry
    return entries


def _entry(text, path, line):
    try:
        from debian import deb822  # here: costly, and stages need none
        para = deb822.Deb822(text)
    except Exception as error:  # python-debian raises several kinds
        raise UserError(f"unreadable stanza: {error}", path=path, line=line)
    for field in REQUIRED_FIELDS:
        if not para.get(field):
            raise UserError(f"stanza lacks the '{field}' field", path=path,
                            line=line, key=para.get("Package"),
                            hint="regenerate it with 'ninja update-lockfiles'")
    for field, pattern in (("Package", PACKAGE_RE), ("Version", VERSION_RE),
                           ("Architecture", ARCH_RE), ("Lock-Archive", LOCK_NAME_RE),
                           ("Lock-Suite", LOCK_NAME_RE), ("Lock-Stage", LOCK_NAME_RE)):
        if not pattern.fullmatch(para[field]):
            raise UserError(f"invalid {field} {para[field]!r}", path=path,
                            line=line, key=f"{para['Package'][:60]}.{field}",
                            hint="regenerate it with 'ninja update-lockfiles'")
    sha256 = para["SHA256"].strip()
    if not SHA256_RE.fullmatch(sha256):
        raise UserError(f"invalid SHA256 '{sha256}'", path=path, line=line,
                        key=f"{para['Package']}.SHA256")
    try:
        size = int(para["Size"])
        if size <= 0 or not para["Size"].strip().isdigit():
            raise ValueError(size)
    except ValueError:
        raise UserError(f"invalid Size '{para['Size']}'", path=path, line=line,
                        key=f"{para['Package']}.Size")
    filename = para["Filename"].strip()
    if not FILENAME_RE.fullmatch(filename) or ".." in filename.split("/"):
        raise UserError(f"invalid Filename '{filename}'", path=path, line=line,
                        key=f"{para['Package']}.Filename",
                        hint="a path relative to the archive root, ending in .deb")
    return Entry(para["Package"], para["Version"], para["Architecture"],
                 para["Lock-Archive"], para["Lock-Suite"], para["Lock-Stage"],
                 filename, size, sha256, tuple(para.items()), line)


def read(path):
    """Read and validate the lockfile at ``path``: its packages."""
    return parse(read_text(path), path)


def read_pin(path):
    """The base commit the lockfile at ``path`` pins, or None."""
    return parse_pin(read_text(path), path)


def read_text(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise UserError(f"cannot read lockfile: {error.strerror}", path=path,
                        hint="run 'ninja update-lockfiles' to create it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"not UTF-8 text ({error.reason} at byte {error.start})",
                        path=path, line=data.count(b"\n", 0, error.start) + 1,
                        hint="regenerate it with 'ninja update-lockfiles'")
    if "\0" in text:
        raise UserError("a NUL character in the lockfile", path=path,
                        line=text.count("\n", 0, text.index("\0")) + 1)
    return text


def compare(old_entries, new_entries):
    """What changed between two lockfiles' entries (changes.py), packages
    named NAME:ARCH."""
    def packages(entries):
        return {f"{e.name}:{e.arch}": (e.version, e.sha256) for e in entries}
    return changes.compare(packages(old_entries), packages(new_entries))


def install_order(entries):
    """Entries in an order where Pre-Depends and Depends come first.

    Cycles (which Debian allows between Depends) are broken in name order,
    as dpkg's own ordering would configure them together.
    """
    by_name = {}
    provides = {}
    for entry in entries:
        by_name.setdefault(entry.name, entry)
        for item in (entry.get("Provides") or "").split(","):
            item = item.strip().split(" ")[0].split(":")[0]
            if item:
                provides.setdefault(item, []).append(entry)
    deps = {}
    for entry in entries:
        targets = set()
        for field in ("Pre-Depends", "Depends"):
            for group in (entry.get(field) or "").split(","):
                for alt in group.split("|"):
                    name = alt.strip().split(" ")[0].split(":")[0]
                    if not name:
                        continue
                    found = [by_name[name]] if name in by_name else \
                        provides.get(name, [])
                    if found:
                        targets.add(found[0].name)
                        break
        targets.discard(entry.name)
        deps[entry.name] = targets
    order, state = [], {}

    def visit(name):
        if state.get(name) == 2 or state.get(name) == 1:
            return
        state[name] = 1
        for dep in sorted(deps.get(name, ())):
            visit(dep)
        state[name] = 2
        order.append(by_name[name])

    for name in sorted(by_name):
        visit(name)
    return order
