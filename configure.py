#!/usr/bin/python3
"""./configure: read recipes and lockfiles, write build.ninja.

Validates every recipe and lockfile first; on bad input prints one line
naming the file, line and key, and exits with status 2 without touching
build.ninja.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from debostree import configure  # noqa: E402
from debostree.errors import cli_main  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="configure", description="Write build.ninja from recipes/*.yaml "
        "and lockfiles/.")
    parser.add_argument("--builddir", default="build",
                        help="build directory (default: build)")
    parser.add_argument("--mirror", action="append", default=[],
                        metavar="NAME=URL",
                        help="URL of the archive named NAME in recipes "
                        "(repeatable; default: the host's apt sources)")
    parser.add_argument("--pool", help="directory of downloaded .debs, which "
                        "several checkouts may share (default: BUILDDIR/pool)")
    parser.add_argument("--recipes",
                        help="directory of recipes (default: recipes/ beside "
                        "configure.py)")
    parser.add_argument("--lockfiles",
                        help="directory of lockfiles (default: lockfiles/ "
                        "beside configure.py)")
    parser.add_argument("--no-native-helpers", dest="native_helpers",
                        action="store_false",
                        help="run every program of a foreign bootstrap under "
                        "qemu-user, even those the host has in the same "
                        "version (see README, Foreign architectures)")
    parser.add_argument("--cache", metavar="URL",
                        help="stage cache to read stages from: an http(s):// "
                        "or file:// URL or a directory (default: "
                        "$DEBOSTREE_CACHE, else 'url' in the cache "
                        "configuration file; see README, Stage cache)")
    parser.add_argument("--cache-push", metavar="DIR",
                        help="directory 'ninja cache-push' adds the built "
                        "stages to (default: 'push' in the cache "
                        "configuration file)")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    configure.configure(args, argv)


if __name__ == "__main__":
    cli_main(main)
