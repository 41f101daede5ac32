"""A precompiled pfjax/kernel.h per C++ toolchain, shared by every kernel compile.

Parsing the runtime headers is most of a kernel's compile: on a Zen 3 VM with g++ 12 a
file with only `#include "pfjax/kernel.h"` takes 1.5 s at -O3 and a softmax kernel 1.7 s;
with the header precompiled the kernel takes 0.85 s, and its code is the same byte for
byte. The header is precompiled once per toolchain fingerprint (compiler, flags, header
contents) and target into <cache>/pch/<digest>/pfjax/kernel.h.gch, under a lock and
renamed into place, with the kernels' flags (less -shared). That directory comes first on
the include path: g++ takes the .gch in place of the header when it is valid for the
flags and ignores it otherwise. A kernel that does not compile with it is compiled again
without; when that succeeds and g++'s error named the precompiled header (a truncated
file stops g++ instead of being ignored), the .gch is removed and rebuilt on the next
compile. GCC only (clang's precompiled headers work differently); PFJAX_PCH=0 turns it
off.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from pfjax import config
from pfjax.build.toolchain import Toolchain

log = logging.getLogger("pfjax")

HEADER = Path("pfjax") / "kernel.h"
INCLUDE = f'#include "{HEADER.as_posix()}"\n'  # generated kernels' first line of code
KEEP = 4  # precompiled headers kept in a cache
# Directories whose build failed in this process: not tried again per kernel.
_failed: set[str] = set()
STALE_SECONDS = 600  # a temporary file this old was left by a process that died building


def _is_gcc(toolchain: Toolchain) -> bool:
    version = toolchain.version.lower()
    return "clang" not in version and ("g++" in version or "gcc" in version)


def pch_root(toolchain: Toolchain, target_key: str) -> Path:
    """The include directory that holds pfjax/kernel.h.gch for this toolchain and target
    (-march=native differs between machines that share a cache, and with it the header's
    preprocessed ISA branches)."""
    parts = [toolchain.fingerprint, target_key, *toolchain.command("kernel.cc", "kernel.so")]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    return config.cache_dir() / "pch" / digest


def includes_header(source: str) -> bool:
    return INCLUDE in source


def _wanted(toolchain) -> bool:
    return isinstance(toolchain, Toolchain) and config.precompiled_header() \
        and _is_gcc(toolchain)


def precompiled_dir(toolchain, target_key: str) -> Path | None:
    """The include directory with a usable kernel.h.gch (built now if missing), or None
    where there is none: another compiler, PFJAX_PCH=0, or its build failed."""
    if not _wanted(toolchain):
        return None
    root = pch_root(toolchain, target_key)
    if not (root / f"{HEADER}.gch").is_file() and str(root) not in _failed:
        _build_or_fail(toolchain, root)
    return root if (root / f"{HEADER}.gch").is_file() else None


def _build_or_fail(toolchain: Toolchain, root: Path) -> None:
    try:
        _build(toolchain, root, root / f"{HEADER}.gch")
    except OSError as err:  # a compiler error, a full or read-only disk
        _failed.add(str(root))
        log.warning("pfjax: precompiling the kernel header failed (kernels compile "
                    "without it): %s", err)


def _build(toolchain: Toolchain, root: Path, gch: Path) -> None:
    from pfjax.build.cache import locked  # (the cache module imports this one)
    with locked(root.with_suffix(".lock")):
        if gch.is_file():  # another process built it while we waited
            return
        gch.parent.mkdir(parents=True, exist_ok=True)
        for old in gch.parent.glob(".kernel.h.*.gch"):
            try:
                if time.time() - old.stat().st_mtime > STALE_SECONDS:
                    old.unlink()
            except OSError:  # another process took it first
                pass
        fd, tmp = tempfile.mkstemp(prefix=".kernel.h.", suffix=".gch", dir=gch.parent)
        os.close(fd)
        try:
            header = _header_path(toolchain)
            log.info("pfjax: precompiling %s (once per compiler, flags and pfjax version)",
                     header)
            proc = subprocess.run(toolchain.header_command(str(header), tmp),
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise OSError(proc.stderr.strip()[-2000:])
            os.replace(tmp, gch)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    _prune(root.parent, keep=root)


def _prune(parent: Path, keep: Path) -> None:
    """Old headers (other flags, compilers, pfjax versions) beyond the newest KEEP go: each
    is about 43 MB. One still in use is rebuilt by its next compile."""
    def age(d: Path) -> float:
        try:
            return d.stat().st_mtime
        except OSError:  # another process removed it
            return 0.0
    others = sorted((d for d in parent.iterdir() if d.is_dir() and d != keep), key=age,
                    reverse=True)
    for d in others[KEEP - 1:]:
        shutil.rmtree(d, ignore_errors=True)


def discard(root: Path) -> None:
    """Remove a precompiled header that made a good kernel fail to compile."""
    log.warning("pfjax: the precompiled header in %s is unusable; removed (rebuilt on the "
                "next compile)", root)
    shutil.rmtree(root, ignore_errors=True)


def _header_path(toolchain: Toolchain) -> Path:
    for d in toolchain.include_dirs:
        if (Path(d) / HEADER).is_file():
            return Path(d) / HEADER
    raise FileNotFoundError(f"{HEADER} not in {toolchain.include_dirs}")  # an OSError
