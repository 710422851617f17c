#!/usr/bin/env python3
"""Regenerates the locks of the platform's two Python environments from PyPI.

    python3.11 scripts/lock-python-envs.py

- scripts/kernel-env/requirements.in -> scripts/kernel-env/requirements.txt
- scripts/tools-env/requirements.in -> scripts/tools-env/requirements.txt, where packages the
  kernel's lock also has take the kernel's versions (one jupyter_client, one IPython).

pip's own resolver picks the versions (`pip install --dry-run --ignore-installed --report`,
wheels only), and each lock lists every package of the closure with the sha256 of the one wheel
chosen for Linux x86_64 (manylinux, glibc 2.36 or older: Debian bookworm, which this machine and
the image run) and CPython 3.11. Markers are evaluated by the running interpreter, so this runs
only on CPython 3.11 on Linux x86_64.
"""

import json
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
# The newest glibc the wheels may need: Debian bookworm's, as in python:3.11-slim-bookworm.
GLIBC_MINOR = 36

HEADERS = {
    "kernel-env": """\
# The kernel's environment: what user code imports, in every kernel pod and in `make test`'s
# kernels. Generated from requirements.in by scripts/lock-python-envs.py: do not edit.
# Every package of the closure, pinned, with the sha256 of its wheel for Linux x86_64
# (manylinux, glibc <= 2.{glibc}) and CPython 3.11 only: what this machine and the image run.
# Install with: pip install --require-hashes --no-deps -r requirements.txt
""",
    "tools-env": """\
# The platform's tools (tests and benchmarks, never in a pod). Generated from requirements.in
# by scripts/lock-python-envs.py: do not edit. Packages the kernel's lock has too take its
# versions. Every package of the closure, pinned, with the sha256 of its wheel for Linux x86_64
# (manylinux, glibc <= 2.{glibc}) and CPython 3.11 only.
# Install with: pip install --require-hashes --no-deps -r requirements.txt
""",
}


def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(requirements, constraints=None):
    """[(name, version, sha256)] of the closure of `requirements`, as pip resolves it."""
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(GLIBC_MINOR, 16, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--dry-run", "--ignore-installed", "--report", str(report),
            "--only-binary=:all:", "--target", str(Path(tmp) / "target"),
            "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
            "-r", str(requirements),
        ]
        for p in platforms:
            cmd += ["--platform", p]
        if constraints:
            cmd += ["-c", str(constraints)]
        subprocess.run(cmd, check=True)
        installs = json.loads(report.read_text())["install"]
    locked = []
    for item in installs:
        meta = item["metadata"]
        archive = item["download_info"].get("archive_info", {})
        sha = archive.get("hashes", {}).get("sha256")
        if not sha and archive.get("hash", "").startswith("sha256="):
            sha = archive["hash"].removeprefix("sha256=")
        if not sha:
            sys.exit(f"lock: no sha256 for {meta['name']} {meta['version']}")
        locked.append((normalise(meta["name"]), meta["version"], sha))
    return sorted(locked)


def write_lock(env, locked):
    lines = [HEADERS[env].format(glibc=GLIBC_MINOR)]
    for name, version, sha in locked:
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{sha}\n")
    (SCRIPTS / env / "requirements.txt").write_text("".join(lines))
    print(f"lock: {env}: {len(locked)} packages")


def main():
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        sys.exit("lock: run with CPython 3.11 (the environments' interpreter)")
    if sys.platform != "linux" or platform.machine() != "x86_64":
        sys.exit("lock: run on Linux x86_64 (markers are evaluated here)")
    kernel = resolve(SCRIPTS / "kernel-env/requirements.in")
    write_lock("kernel-env", kernel)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as pins:
        pins.writelines(f"{name}=={version}\n" for name, version, _ in kernel)
        pins.flush()
        tools = resolve(SCRIPTS / "tools-env/requirements.in", constraints=pins.name)
    write_lock("tools-env", tools)


if __name__ == "__main__":
    main()
