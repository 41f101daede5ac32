"""All of pfjax's switches, read from the environment each time they are needed."""
from __future__ import annotations

import os
from pathlib import Path


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def disabled() -> bool:
    """PFJAX_DISABLE=1: no fusion, the function runs with plain XLA."""
    return _flag("PFJAX_DISABLE")


def debug() -> bool:
    """PFJAX_DEBUG=1: verify GIR after every pass."""
    return _flag("PFJAX_DEBUG")


def force_recompile() -> bool:
    """PFJAX_FORCE_RECOMPILE=1: ignore cached kernels (they are rebuilt and replaced)."""
    return _flag("PFJAX_FORCE_RECOMPILE")


def cache_dir() -> Path:
    """PFJAX_CACHE_DIR, else $XDG_CACHE_HOME/pfjax, else ~/.cache/pfjax."""
    if os.environ.get("PFJAX_CACHE_DIR"):
        return Path(os.environ["PFJAX_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pfjax"


def precompiled_header() -> bool:
    """PFJAX_PCH=0: compile each kernel without the precompiled runtime header (build.pch)."""
    return os.environ.get("PFJAX_PCH", "1").strip().lower() not in ("0", "false", "no", "off")


def compiler() -> str:
    """PFJAX_CXX, else CXX, else g++."""
    return os.environ.get("PFJAX_CXX") or os.environ.get("CXX") or "g++"


def nontemporal() -> str:
    """PFJAX_NONTEMPORAL=auto|0|1: streaming stores as the cost model decides, never, always."""
    value = os.environ.get("PFJAX_NONTEMPORAL", "auto").strip().lower()
    return {"0": "never", "false": "never", "off": "never", "1": "always", "true": "always",
            "on": "always"}.get(value, "auto")
