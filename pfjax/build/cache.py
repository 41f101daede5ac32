"""Content-addressed, multi-process-safe cache of compiled kernel libraries.

Layout: <cache>/<key[:2]>/<key>/{kernel.cc, kernel.so, meta.json}. An entry is built in a
temporary directory next to it and renamed into place under a per-key file lock; an entry
whose library does not match the digest in meta.json is rebuilt, never loaded.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from pfjax import config
from pfjax.build import pch
from pfjax.build.toolchain import Toolchain
from pfjax.errors import CompileError

log = logging.getLogger("pfjax")

# Counters for this process (tests and `explain` read them).
stats = {"compiles": 0, "hits": 0, "rebuilt_corrupt": 0}


def cache_key(source: str, toolchain: Toolchain, target_key: str) -> str:
    h = hashlib.sha256()
    for part in (source, " ".join(toolchain.command("kernel.cc", "kernel.so")),
                 toolchain.fingerprint, target_key):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _valid(entry: Path) -> bool:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        return meta.get("sha256") == _sha(entry / "kernel.so")
    except (OSError, ValueError):
        return False


@contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(source: str, toolchain: Toolchain, target_key: str) -> Path:
    """Path of the compiled library for `source`, compiling it if no valid entry exists."""
    key = cache_key(source, toolchain, target_key)
    root = config.cache_dir()
    entry = root / key[:2] / key
    force = config.force_recompile()
    if not force and _valid(entry):
        stats["hits"] += 1
        return entry / "kernel.so"
    with locked(root / key[:2] / f"{key}.lock"):
        if not force and _valid(entry):  # another process built it while we waited
            stats["hits"] += 1
            return entry / "kernel.so"
        if entry.exists():
            stats["rebuilt_corrupt"] += 0 if force else 1
            if not force:
                log.warning("pfjax: cache entry %s is corrupt; rebuilding", entry)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=entry.parent))
        try:
            src = tmp / "kernel.cc"
            src.write_text(source)
            pch_dir = pch.precompiled_dir(toolchain, target_key) \
                if pch.includes_header(source) else None
            cmd = toolchain.command(str(src), str(tmp / "kernel.so"), pch_dir and str(pch_dir))
            log.info("pfjax: compiling %s", entry)
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 and pch_dir is not None:
                # without the precompiled header: if that compiles, the header was bad
                cmd = toolchain.command(str(src), str(tmp / "kernel.so"))
                first = proc.stdout + proc.stderr
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode == 0 and (str(pch_dir) in first or "PCH file" in first
                                             or "precompiled header" in first):
                    pch.discard(pch_dir)
            if proc.returncode != 0:
                failed = root / "failed" / f"{key}.cc"
                failed.parent.mkdir(parents=True, exist_ok=True)
                failed.write_text(source)
                raise CompileError(cmd, proc.stdout + proc.stderr, str(failed))
            (tmp / "meta.json").write_text(json.dumps({
                "sha256": _sha(tmp / "kernel.so"), "command": cmd,
                "compiler": toolchain.version, "seconds": round(time.perf_counter() - start, 3),
            }, indent=1))
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    stats["compiles"] += 1
    return entry / "kernel.so"
