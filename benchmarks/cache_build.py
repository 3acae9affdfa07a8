#!/usr/bin/python3
"""Benchmark: the whole default build in a fresh clone, without and with a
warm stage cache (stagecache.py), in the same run.

Without: a fresh clone and build directory, the packages in the pool (the
conservative reference: a machine that has never built fetches them too),
then `ninja cache-push` into a cache directory, ed25519-signed.  With: another
fresh clone and build directory, an empty pool of its own, the cache served
over HTTP on 127.0.0.1; `./configure --cache URL && ninja`.  Target: <= 10%
of the build without.  Prints both totals, what the second build fetched and
built, and where its time went.

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

        second = clone(work, "second")
        env["DEBOSTREE_CACHE_CONFIG"] = read_config
        timed([PYTHON, "configure.py", "--pool", os.path.join(work, "pool"),
               "--cache", url], cwd=second, env=env)
        warm, out = timed(["ninja"] + targets, cwd=second, env=env)
        taken = len(re.findall(r": from the stage cache", out))
        built = len(re.findall(r"\$ unshare", "".join(
            open(os.path.join(d, f)).read()
            for d, _, names in os.walk(os.path.join(second, "build", "logs"))
            for f in names)))
        fetched = len(re.findall(r"\] FETCH ", out))
        same = all(
            subprocess.run(["ostree", f"--repo={first}/build/repo", "rev-parse",
                            ref], capture_output=True, text=True).stdout ==
            subprocess.run(["ostree", f"--repo={second}/build/repo", "rev-parse",
                            ref], capture_output=True, text=True).stdout
            for ref in subprocess.run(
                ["ostree", f"--repo={first}/build/repo", "refs", "exampleos"],
                capture_output=True, text=True).stdout.split())
        print(f"default build in a fresh clone, packages in the pool, no cache: "
              f"{cold:.1f} s; then cache-push: {push:.1f} s "
              f"({pushed.group(1) if pushed else '?'} entries, "
              f"{du(cache_dir) / 1e6:.0f} MB)")
        print(f"the same in another fresh clone, empty pool, the cache over "
              f"HTTP: {warm:.1f} s; ratio {warm / cold:.3f} (target <= 0.10)")
        print(f"  stages taken from the cache: {taken}, stages built: {built}, "
              f"packages fetched: {fetched}; branch commits the same: {same}")
        sums = {}
        for output, (start, end, _) in ninja_log(
                os.path.join(second, "build")).items():
            kind = "probe" if output.endswith(".dd") else kind_of(output)
            sums[kind] = sums.get(kind, 0) + (end - start)
        print("  edge time summed by kind: " + ", ".join(
            f"{k} {v / 1000:.1f} s" for k, v in sorted(
                sums.items(), key=lambda kv: -kv[1])))
    finally:
        if server:
            server.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def du(path):
    return sum(os.lstat(os.path.join(d, f)).st_size
               for d, _, names in os.walk(path) for f in names)


if __name__ == "__main__":
    main()
