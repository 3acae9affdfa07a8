"""SPDX 2.3 documents (JSON) of a recipe's packages, from its lockfiles:
what ``ninja NAME.spdx`` writes.

One document per recipe, with a package for each of its architectures
(the image) that contains a package per locked ``.deb``: its name,
version, architecture and source package, the ``.deb``'s SHA256, a purl
(``pkg:deb/debian/NAME@VERSION?arch=ARCH``) and the license its
copyright file declares when that file is machine-readable (Debian's
copyright format; its short license names as SPDX identifiers where they
have one, ``LicenseRef-`` names otherwise), else NOASSERTION.  The host
programs a lockfile pins for emulated builds (stand-ins) are not part of
the image and not listed.

The document is byte-stable: the same lockfiles and SOURCE_DATE_EPOCH
give the same bytes (sorted packages and keys, the creation time from
SOURCE_DATE_EPOCH, a namespace derived from the lockfiles' SHA256s).
"""

import hashlib
import json
import re
import time
import urllib.parse
import uuid

from debian import deb822

from .lockfile import STAND_INS_STAGE

SPDX_VERSION = "SPDX-2.3"
NOASSERTION = "NOASSERTION"
# Debian's short names (copyright format 1.0) that are not SPDX's.
DEBIAN_TO_SPDX = {
    "Expat": "MIT", "Artistic": "Artistic-1.0-Perl",
    "BSD-2-clause": "BSD-2-Clause", "BSD-3-clause": "BSD-3-Clause",
    "BSD-4-clause": "BSD-4-Clause", "PSF-2": "PSF-2.0",
    "public-domain": "LicenseRef-public-domain",
}
# Short names that are SPDX identifiers as they are.
SPDX_AS_IS = {
    "0BSD", "Apache-1.0", "Apache-1.1", "Apache-2.0", "Artistic-1.0",
    "Artistic-2.0", "Beerware", "BSL-1.0", "bzip2-1.0.6", "CC-BY-3.0",
    "CC-BY-4.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC0-1.0", "curl",
    "FSFAP", "FSFUL", "FSFULLR", "FTL", "ISC", "libpng-2.0", "MIT",
    "MIT-0", "MPL-1.1", "MPL-2.0", "OFL-1.1", "OpenSSL", "Python-2.0",
    "Ruby", "Sleepycat", "TCL", "Unicode-DFS-2016",
    "Unlicense", "W3C", "WTFPL", "X11", "Zlib", "zlib-acknowledgement",
}
_GNU = re.compile(r"(A?GPL|LGPL|GFDL)-(\d(?:\.\d)?)(\+?)(?:-only)?")
_ID_CHARS = re.compile(r"[^A-Za-z0-9.\-]")
_LICENSE_REF = re.compile(r"LicenseRef-[A-Za-z0-9.\-]+")
_SPLIT = re.compile(r"\s+(or|and)\s+|\s*([,|])\s*", re.IGNORECASE)


def spdx_license_id(name):
    """An SPDX license identifier for one of Debian's short names."""
    name = name.strip()
    if name in DEBIAN_TO_SPDX:
        return DEBIAN_TO_SPDX[name]
    if name in SPDX_AS_IS:
        return name
    gnu = _GNU.fullmatch(name)
    if gnu:
        family, version, later = gnu.groups()
        if "." not in version:
            version += ".0"
        return f"{family}-{version}-{'or-later' if later else 'only'}"
    return "LicenseRef-" + (_ID_CHARS.sub("-", name) or "unknown")


def license_expression(name_field):
    """An SPDX expression for a copyright file's License: short name line
    (``GPL-2+ or Artistic``; ``and``, ``or`` and ``,`` as Debian writes
    them), or None when it names nothing."""
    parts, operators = [], []
    position = 0
    for match in _SPLIT.finditer(name_field):
        parts.append(name_field[position:match.start()])
        word = (match.group(1) or match.group(2)).lower()
        operators.append("OR" if word in ("or", "|") else "AND")
        position = match.end()
    parts.append(name_field[position:])
    ids = [spdx_license_id(part) for part in parts if part.strip()]
    if not ids:
        return None
    if len(ids) == 1:
        return ids[0]
    text = ids[0]
    for operator, ident in zip(operators, ids[1:]):
        text += f" {operator} {ident}"
    return f"({text})"


def declared_license(copyright_text):
    """The license a machine-readable copyright file declares: its Files
    paragraphs' licenses joined with AND (each once, in order); None for a
    file in free form."""
    paragraphs = list(deb822.Deb822.iter_paragraphs(
        copyright_text.splitlines(True)))
    if not paragraphs or "copyright-format/1.0" not in \
            paragraphs[0].get("Format", ""):
        return None
    found = []
    for paragraph in paragraphs[1:]:
        if "Files" not in paragraph or "License" not in paragraph:
            continue
        expression = license_expression(paragraph["License"].split("\n")[0])
        if expression and expression not in found:
            found.append(expression)
    if not found:
        return None
    return found[0] if len(found) == 1 else " AND ".join(found)


def purl(name, version, arch):
    return (f"pkg:deb/debian/{urllib.parse.quote(name, safe='.+-')}@"
            f"{urllib.parse.quote(version, safe='.+~-')}?arch={arch}")


def _spdx_id(*parts):
    return "SPDXRef-" + "-".join(_ID_CHARS.sub("-", p) for p in parts)


def document(recipe_name, lockfiles, licenses, epoch):
    """The SPDX document (a dict) of ``recipe_name`` from ``lockfiles``
    (``{arch: (lockfile SHA256, [lockfile.Entry])}``) and ``licenses``
    (``{.deb SHA256: copyright text or None}``)."""
    seed = recipe_name + "".join(f"\n{arch} {digest}" for arch, (digest, _)
                                 in sorted(lockfiles.items()))
    namespace = "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_OID, seed))
    packages, relationships, described = [], [], []
    for arch, (digest, entries) in sorted(lockfiles.items()):
        image_id = _spdx_id("Image", recipe_name, arch)
        described.append(image_id)
        packages.append({
            "SPDXID": image_id, "name": f"{recipe_name} ({arch})",
            "downloadLocation": NOASSERTION, "filesAnalyzed": False,
            "licenseConcluded": NOASSERTION, "licenseDeclared": NOASSERTION,
            "copyrightText": NOASSERTION, "primaryPackagePurpose":
            "OPERATING-SYSTEM", "comment": f"lockfile SHA256 {digest}"})
        for entry in sorted(entries, key=lambda e: (e.name, e.version)):
            if entry.stage == STAND_INS_STAGE:
                continue
            package_id = _spdx_id("Package", arch, entry.name,
                                  entry.sha256[:12])
            copyright_text = licenses.get(entry.sha256)
            declared = declared_license(copyright_text) \
                if copyright_text else None
            source = (entry.get("Source") or entry.name).split(" ")[0]
            packages.append({
                "SPDXID": package_id, "name": entry.name,
                "versionInfo": entry.version,
                "downloadLocation": NOASSERTION, "filesAnalyzed": False,
                "checksums": [{"algorithm": "SHA256",
                               "checksumValue": entry.sha256}],
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": purl(entry.name, entry.version,
                                             entry.arch)}],
                "sourceInfo": f"built from source package {source}",
                "licenseConcluded": NOASSERTION,
                "licenseDeclared": declared or NOASSERTION,
                "copyrightText": NOASSERTION})
            relationships.append({"spdxElementId": image_id,
                                  "relationshipType": "CONTAINS",
                                  "relatedSpdxElement": package_id})
    # Every LicenseRef an expression uses is defined in the document.
    refs = sorted({ref for package in packages for ref in _LICENSE_REF.findall(
        package["licenseDeclared"])})
    relationships += [{"spdxElementId": "SPDXRef-DOCUMENT",
                       "relationshipType": "DESCRIBES",
                       "relatedSpdxElement": image_id}
                      for image_id in described]
    return {
        "spdxVersion": SPDX_VERSION, "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT", "name": recipe_name,
        "documentNamespace": namespace,
        "creationInfo": {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                     time.gmtime(epoch)),
            "creators": ["Tool: debostree"]},
        "packages": packages, "relationships": relationships,
        "hasExtractedLicensingInfos": [{
            "licenseId": ref, "name": ref[len("LicenseRef-"):],
            "extractedText": f"The license Debian's copyright files call "
            f"{ref[len('LicenseRef-'):]!r} (see each package's copyright "
            "file)."} for ref in refs]}


def render(doc):
    """The document's bytes: sorted keys, two-space indents, a newline."""
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False)
            + "\n").encode()


def lockfile_digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
