"""Runs the test binaries cargo built (its JSON messages in argv[1]) two at a time, each
from its package's directory as `cargo test` would, and prints each one's output whole
when it ends, so that two never interleave. Exits non-zero if any failed, naming them."""
import json
import os
import subprocess
import sys
import tempfile
import time

JOBS = int(os.environ.get("GITOPS_AGENT_TEST_JOBS", "2"))
# The longest first, so that the two lanes end together (measured in CI; others after).
LONGEST = ["sync", "agent", "oci_infra", "oci_sources", "install", "crash", "oci_identity",
           "health", "policy_parity", "examples", "drift", "render", "image"]


def binaries(plan):
    out = []
    for line in open(plan):
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("profile", {}).get("test") and msg.get("executable"):
            name = msg["target"]["name"]
            cwd = os.path.dirname(msg["manifest_path"])
            out.append((name, msg["executable"], cwd))
    rank = {n: i for i, n in enumerate(LONGEST)}
    return sorted(out, key=lambda b: rank.get(b[0], len(LONGEST)))


def main():
    queue = binaries(sys.argv[1])
    running, failed = [], []
    started = time.time()
    while queue or running:
        while queue and len(running) < JOBS:
            name, exe, cwd = queue.pop(0)
            log = tempfile.TemporaryFile()
            proc = subprocess.Popen([exe], cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
            running.append((name, exe, proc, log, time.time()))
        time.sleep(0.2)
        for entry in list(running):
            name, exe, proc, log, t0 = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            log.seek(0)
            print(f"     Running {exe} ({name}, {time.time() - t0:.1f}s)", flush=True)
            sys.stdout.buffer.write(log.read())
            sys.stdout.flush()
            if proc.returncode != 0:
                failed.append(name)
    print(f"all test binaries ran in {time.time() - started:.0f}s")
    if failed:
        print("failed: " + ", ".join(failed))
        sys.exit(1)


main()
