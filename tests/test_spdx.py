"""SPDX documents from lockfiles (spdx.py, tools/spdx, 'ninja NAME.spdx'),
against a local signed archive: no sandbox, no network."""

import json
import os
import shutil
import subprocess

import pytest
from license_expression import get_spdx_licensing

from conftest import TOP, run_tool
from debarchive import Archive, Server
from debostree import spdx
from helpers import write_recipe

DEP5 = """\
Format: https://example.invalid/copyright-format/1.0/
Upstream-Name: tool

Files: *
Copyright: 2020 Someone
License: GPL-2+ or Artistic

Files: lib/*
Copyright: 2021 Someone Else
License: Expat

Files: doc/*
Copyright: 2021 Someone Else
License: Expat

License: Expat
 Permission is hereby granted...
"""

FREE_FORM = "This package was debianized by someone.\nIt is GPL.\n"


def test_debian_license_names_become_spdx_expressions():
    assert spdx.license_expression("GPL-2+") == "GPL-2.0-or-later"
    assert spdx.license_expression("LGPL-2.1") == "LGPL-2.1-only"
    assert spdx.license_expression("GPL-3.0+") == "GPL-3.0-or-later"
    assert spdx.license_expression("BSD-3-clause") == "BSD-3-Clause"
    assert spdx.license_expression("0BSD") == "0BSD"
    assert spdx.license_expression("GPL-2+ or Artistic") == \
        "(GPL-2.0-or-later OR Artistic-1.0-Perl)"
    assert spdx.license_expression("MIT and Zlib") == "(MIT AND Zlib)"
    assert spdx.license_expression("GPL-2 | BSD-2-clause") == \
        "(GPL-2.0-only OR BSD-2-Clause)"
    assert spdx.license_expression("GPL-3+ with Bison exception") == \
        "LicenseRef-GPL-3--with-Bison-exception"
    assert spdx.license_expression("  ") is None
    # Each Files paragraph's license once, in order; a free-form file says
    # nothing.
    assert spdx.declared_license(DEP5) == \
        "(GPL-2.0-or-later OR Artistic-1.0-Perl) AND MIT"
    assert spdx.declared_license(FREE_FORM) is None
    assert spdx.declared_license("") is None
    assert spdx.purl("libstdc++6", "1:14.2-1", "amd64") == \
        "pkg:deb/debian/libstdc++6@1%3A14.2-1?arch=amd64"


@pytest.fixture
def project(tmp_path, key, no_user_config):
    arc = Archive(tmp_path / "archive", key)
    for arch in ("amd64", "arm64"):
        arc.add("stable", "base-files", "1.0", arch, essential="yes",
                priority="required", files={
                    "usr/share/doc/base-files/copyright": DEP5})
        arc.add("stable", "libc", "2.0", arch, multi_arch="same",
                priority="required", source="glibc (2.0-1)", files={
                    "usr/share/doc/libc/copyright": FREE_FORM})
        arc.add("stable", "tool", "1:3.0~rc1", arch, depends="libc")
    arc.publish()
    server = Server(arc.root)
    arc.url = server.url
    work = tmp_path / "work"
    write_recipe(work / "recipes", "sbom", [
        {"name": "base", "bootstrap": {"variant": "custom",
                                       "packages": ["base-files", "libc"]}},
        {"name": "apps", "install": ["tool"]}], arc, suites=["stable"],
        architectures=["amd64", "arm64"])
    yield work, arc
    server.close()


def configure(work, arc, *extra, env=None):
    result = run_tool([os.path.join(TOP, "configure.py"), "--recipes",
                       "recipes", "--lockfiles", "lockfiles", "--mirror",
                       f"test={arc.url}", *extra], cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    return result


def ninja(work, *targets, env=None):
    result = subprocess.run(["ninja", *targets], cwd=work, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_ninja_writes_a_byte_stable_spdx_document(project, tmp_path):
    work, arc = project
    configure(work, arc)
    updated = ninja(work, "update-lockfiles")
    configure(work, arc)
    assert (work / "lockfiles" / "sbom.amd64.lock").exists(), updated
    output = ninja(work, "sbom.spdx")
    assert "SPDX sbom" in output
    path = work / "build" / "spdx" / "sbom.spdx.json"
    data = path.read_bytes()
    doc = json.loads(data)
    assert doc["spdxVersion"] == "SPDX-2.3"
    assert doc["dataLicense"] == "CC0-1.0"
    assert doc["documentNamespace"].startswith("urn:uuid:")
    packages = {(p["name"], p["SPDXID"].split("-")[2]): p
                for p in doc["packages"] if "versionInfo" in p}
    assert sorted(packages) == sorted((name, arch) for arch in ("amd64", "arm64")
                                      for name in ("base-files", "libc", "tool"))
    for arch in ("amd64", "arm64"):
        lock = (work / "lockfiles" / f"sbom.{arch}.lock").read_text()
        for (name, package_arch), package in packages.items():
            if package_arch != arch:
                continue
            # The .deb's SHA256 as the lockfile pins it.
            sha = package["checksums"][0]["checksumValue"]
            assert f"Package: {name}\n" in lock and f"SHA256: {sha}\n" in lock
            assert package["externalRefs"][0]["referenceLocator"] == \
                spdx.purl(name, package["versionInfo"], arch)
    tool = packages[("tool", "amd64")]
    assert tool["versionInfo"] == "1:3.0~rc1"
    assert tool["externalRefs"][0]["referenceLocator"] == \
        "pkg:deb/debian/tool@1%3A3.0~rc1?arch=amd64"
    assert tool["licenseDeclared"] == "NOASSERTION"  # no copyright file
    assert packages[("libc", "arm64")]["sourceInfo"] == \
        "built from source package glibc"
    assert packages[("libc", "arm64")]["licenseDeclared"] == "NOASSERTION"
    assert packages[("base-files", "amd64")]["licenseDeclared"] == \
        "(GPL-2.0-or-later OR Artistic-1.0-Perl) AND MIT"
    # Every expression is one SPDX's tools read, and every LicenseRef is
    # defined in the document.
    licensing = get_spdx_licensing()
    defined = {info["licenseId"] for info in doc["hasExtractedLicensingInfos"]}
    for package in doc["packages"]:
        if package["licenseDeclared"] == "NOASSERTION":
            continue
        for key in licensing.license_keys(
                licensing.parse(package["licenseDeclared"])):
            assert key in licensing.known_symbols or key in defined, key
    # Each architecture's image contains its packages; the document
    # describes the images.
    contains = {(r["spdxElementId"], r["relatedSpdxElement"])
                for r in doc["relationships"]
                if r["relationshipType"] == "CONTAINS"}
    assert len(contains) == 6
    assert {r["relatedSpdxElement"] for r in doc["relationships"]
            if r["relationshipType"] == "DESCRIBES"} == \
        {"SPDXRef-Image-sbom-amd64", "SPDXRef-Image-sbom-arm64"}

    # Byte-stable: another build directory and pool, the same bytes; a
    # SOURCE_DATE_EPOCH of its own changes the creation time alone.
    other = tmp_path / "other"
    shutil.copytree(work, other, ignore=shutil.ignore_patterns(
        "build", "build.ninja", ".ninja_*"))
    configure(other, arc, "--pool", str(tmp_path / "other-pool"))
    ninja(other, "sbom.spdx")
    assert (other / "build" / "spdx" / "sbom.spdx.json").read_bytes() == data
    os.unlink(other / "build" / "spdx" / "sbom.spdx.json")
    ninja(other, "sbom.spdx", env={"SOURCE_DATE_EPOCH": "1700000000"})
    again = json.loads((other / "build" / "spdx" / "sbom.spdx.json")
                       .read_bytes())
    assert again["creationInfo"]["created"] == "2023-11-14T22:13:20Z"
    again["creationInfo"] = doc["creationInfo"]
    assert again == doc
    # Nothing changed: nothing to do.
    assert "no work to do" in ninja(work, "sbom.spdx")
