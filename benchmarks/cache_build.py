#!/usr/bin/python3
"""Benchmark: the whole default build in a fresh clone, without and with a
warm stage cache (stagecache.py), in the same run.

Without: a fresh clone and build directory, the packages in the pool and
imported in its import store (a machine that has built before), then
`ninja cache-push` into a cache directory, ed25519-signed.  With: another
fresh clone and build directory with the same pool, the cache served over
HTTP on 127.0.0.1; `./configure --cache URL && ninja`.  Target: <= 10% of
the build without.  Then once more with an empty pool of its own (a machine
that has never built; the build without the cache would fetch and import
every package too), and once with the cache read as a directory (a cache
volume that CI mounts or restores) and an empty pool.  Prints the totals, what each build with the cache
fetched and built, and where its time went.

    benchmarks/cache_build.py [TARGET...]     (default: ninja's defaults)
"""

import base64
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

from common import PYTHON, TOP, kind_of, ninja_log, timed


class Quiet(http.server.SimpleHTTPRequestHandler):
    """A static server as the ones a cache is served by (a web server, an
    object store): connections kept open between requests (Python's
    default, HTTP/1.0, is a connection per object), and each response sent
    as it is written (Nagle's algorithm would hold every one back for the
    client's delayed acknowledgement, 40 ms)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass


def keys(directory):
    """An ed25519 key pair as ostree's files (see README, Publishing)."""
    pem = os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", pem],
                   check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-outform", "DER", "-in", pem],
                         check=True, capture_output=True).stdout
    public = subprocess.run(["openssl", "pkey", "-outform", "DER", "-pubout",
                             "-in", pem], check=True,
                            capture_output=True).stdout[-32:]
    secret = os.path.join(directory, "secret.key")
    with open(secret, "w") as f:
        f.write(base64.b64encode(der[-32:] + public).decode() + "\n")
    public_path = os.path.join(directory, "public.key")
    with open(public_path, "w") as f:
        f.write(base64.b64encode(public).decode() + "\n")
    return secret, public_path


def clone(work, name):
    checkout = os.path.join(work, name)
    subprocess.run(["git", "clone", "-q", TOP, checkout], check=True)
    return checkout


def main():
    targets = sys.argv[1:]
    work = tempfile.mkdtemp(prefix="bench-cache-")
    pool = os.path.join(TOP, "build", "pool")
    cache_dir = os.path.join(work, "cache")
    secret, public = keys(work)
    push_config = os.path.join(work, "push.yaml")
    with open(push_config, "w") as f:
        f.write(f"push: {cache_dir}\ned25519-key: {secret}\n")
    read_config = os.path.join(work, "read.yaml")
    with open(read_config, "w") as f:
        f.write(f"ed25519-public-key: {public}\n")
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    server = None
    try:
        first = clone(work, "first")
        env["DEBOSTREE_CACHE_CONFIG"] = push_config
        timed([PYTHON, "configure.py", "--pool", pool], cwd=first, env=env)
        timed(["ninja", "fetch"], cwd=first, env=env)  # a warm pool
        cold, _ = timed(["ninja"] + targets, cwd=first, env=env)
        push, out = timed(["ninja", "cache-push"], cwd=first, env=env)
        pushed = re.search(r"cache-push: (\d+) new entries", out)
        handler = functools.partial(Quiet, directory=cache_dir)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"

        env["DEBOSTREE_CACHE_CONFIG"] = read_config
        print(f"default build in a fresh clone, packages in the pool, no "
              f"cache: {cold:.1f} s; then cache-push: {push:.1f} s "
              f"({pushed.group(1) if pushed else '?'} entries, "
              f"{du(cache_dir) / 1e6:.0f} MB)")
        for name, clone_pool, source, what in (
                ("second", pool, url, "over HTTP and the same pool"),
                ("third", os.path.join(work, "pool"), url,
                 "over HTTP and an empty pool"),
                ("fourth", os.path.join(work, "pool4"), cache_dir,
                 "as a directory (a CI cache volume) and an empty pool")):
            checkout = clone(work, name)
            timed([PYTHON, "configure.py", "--pool", clone_pool, "--cache",
                   source], cwd=checkout, env=env)
            warm, out = timed(["ninja"] + targets, cwd=checkout, env=env)
            report_warm(first, checkout, out, warm, cold, what)
    finally:
        if server:
            server.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def du(path):
    return sum(os.lstat(os.path.join(d, f)).st_size
               for d, _, names in os.walk(path) for f in names)


def report_warm(first, checkout, out, warm, cold, what):
    taken = len(re.findall(r": from the stage cache", out))
    logs = os.path.join(checkout, "build", "logs")
    built = sum("$ unshare" in open(os.path.join(d, f)).read()
                for d, _, names in os.walk(logs) for f in names)
    fetched = len(re.findall(r"\] FETCH ", out))

    def refs(repo):
        heads = subprocess.run(["ostree", f"--repo={repo}", "refs",
                                "exampleos"], capture_output=True,
                               text=True).stdout.split()
        return {h: subprocess.run(["ostree", f"--repo={repo}", "rev-parse",
                                   "exampleos/" + h], capture_output=True,
                                  text=True).stdout for h in heads}

    same = refs(f"{first}/build/repo") == refs(f"{checkout}/build/repo")
    print(f"a fresh clone with the cache {what}: {warm:.1f} s; "
          f"ratio {warm / cold:.3f} (target <= 0.10)")
    print(f"  stages taken from the cache: {taken}, stages built: {built}, "
          f"packages fetched: {fetched}; branch commits the same: {same}")
    sums, counted = {}, set()
    for output, (start, end, command) in ninja_log(
            os.path.join(checkout, "build")).items():
        if (start, end, command) in counted:
            continue  # another output of an edge already counted
        counted.add((start, end, command))
        kind = "probe" if output.endswith((".dd", ".probe.json")) \
            else kind_of(output)
        sums[kind] = sums.get(kind, 0) + (end - start)
    print("  edge time summed by kind: " + ", ".join(
        f"{k} {v / 1000:.1f} s" for k, v in sorted(
            sums.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
