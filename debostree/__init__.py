"""debostree: build Debian-based OSTree images from YAML recipes and lockfiles.

The package is a library of small modules, each owning one concern; the
top-level ``configure.py``, ``stages/`` and ``tools/`` are thin command-line
front ends over it.
"""
