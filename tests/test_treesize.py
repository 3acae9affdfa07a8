"""'ninja NAME/ARCH/size' (treesize.py, tools/size) on branch commits made
as the branch edge makes them (test_publish.Project): no sandbox."""

import os

from conftest import TOP, run_tool
from test_publish import BRANCH, Project

# {name: (version, KiB installed)}
V1 = {"base-files": ("12.4", 100), "libc6": ("2.36-9", 50),
      "old-tool": ("1.0", 80)}
V2 = {"base-files": ("12.4+deb12u1", 100), "libc6": ("2.36-9", 50),
      "new-tool": ("2.0", 80)}


def size(project, *extra):
    result = run_tool([os.path.join(TOP, "tools", "size"), "--repo",
                       project.config.repo, *extra, BRANCH])
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def tree_bytes(root):
    total = count = 0
    for directory, _, names in os.walk(root):
        for name in names:
            total += os.lstat(os.path.join(directory, name)).st_size
            count += 1
    return total, count


def test_size_reports_the_tree_packages_image_and_change(tmp_path):
    project = Project(tmp_path)
    project.build(V1, "one")
    first = size(project, "--image", str(tmp_path / "none.img"))
    total, count = tree_bytes(project.path / "tree1")
    # Installed-Size is in KiB: 100 + 50 + 80.
    assert first[0].endswith(f"in {count} files; 3 packages, 235.5 kB "
                             "installed"), first[0]
    assert f"tree {total} B" in first[0]
    assert first[1] == f"image {tmp_path / 'none.img'}: not built ('ninja none.img')"
    # Directories, largest first, down to three levels.
    directories = first[first.index("largest directories (3 levels):") + 1:
                        first.index("largest packages (installed size):")]
    usr_total, _ = tree_bytes(project.path / "tree1" / "usr")
    assert directories[0].split() == [str(usr_total), "B", "/usr"]
    assert all(d.split()[-1].count("/") <= 3 for d in directories)
    packages = first[first.index("largest packages (installed size):") + 1:]
    assert [p.split()[-1] for p in packages[:3]] == ["base-files", "old-tool",
                                                    "libc6"]
    assert packages[-1] == "since the previous commit: none (the branch's first)"

    project.build(V2, "two")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(3_000_000)
        f.seek(1_000_000)
        f.write(b"x" * 4096)
    second = size(project, "--image", str(image))
    assert second[1].startswith(f"image {image}: 3.0 MB (")
    change = second[second.index(next(line for line in second if line.startswith(
        "since the previous commit "))):]
    # new-tool added, old-tool removed (80 KiB each): installed +0 B.
    total2, count2 = tree_bytes(project.path / "tree2")
    assert change[0].endswith(f"tree +{total2 - total} B ({count2 - count:+d} "
                              "files), installed +0 B"), change
    assert sorted(line.split() for line in change[1:]) == [
        ["+81.9", "kB", "new-tool", "(added)"],
        ["-81.9", "kB", "old-tool", "(removed)"]]
