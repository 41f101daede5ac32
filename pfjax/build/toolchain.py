"""The system C++ compiler and the flags and headers generated kernels need."""
from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pfjax
from pfjax import config
from pfjax.errors import PfjaxError

CXX_FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-fopenmp-simd",
             "-fno-math-errno", "-fno-trapping-math", "-fwrapv", "-fvisibility=hidden",
             "-Wno-unused-variable")


class ToolchainMissing(PfjaxError):
    pass


@dataclass(frozen=True)
class Toolchain:
    cxx: str
    version: str
    include_dirs: tuple[str, ...]
    headers_digest: str   # contents of every header generated code may include

    def command(self, source: str, output: str, pch_dir: str | None = None) -> list[str]:
        """The compile command; `pch_dir` (first on the include path) holds a precompiled
        pfjax/kernel.h (build.pch), which changes the time taken, not the library."""
        first = [f"-I{pch_dir}"] if pch_dir else []
        return [self.cxx, *CXX_FLAGS, *first, *(f"-I{d}" for d in self.include_dirs), source,
                "-o", output]

    def header_command(self, header: str, output: str) -> list[str]:
        """Precompiles `header` with the kernels' flags (less -shared, which only links)."""
        return [self.cxx, *(f for f in CXX_FLAGS if f != "-shared"),
                *(f"-I{d}" for d in self.include_dirs), "-x", "c++-header", header, "-o", output]

    @property
    def fingerprint(self) -> str:
        """What changes the binary besides the source: used in the cache key."""
        return "|".join([self.version, " ".join(CXX_FLAGS), self.headers_digest, pfjax.__version__])


def pfjax_include_dir() -> Path:
    """Headers shipped from csrc/include: the source tree when present (editable installs
    keep it live), else the copy installed inside the package."""
    candidates = [Path(__file__).resolve().parents[2] / "csrc" / "include"]
    candidates += [Path(p) / "include" for p in pfjax.__path__]
    for c in candidates:
        if (c / "pfjax" / "kernel.h").is_file():
            return c
    raise ToolchainMissing("pfjax runtime headers not found (looked in "
                           + ", ".join(map(str, candidates)) + "); reinstall pfjax")


def _digest(dirs: list[Path], patterns=("*.h",)) -> str:
    h = hashlib.sha256()
    for d in dirs:
        for f in sorted(p for pattern in patterns for p in (d / "pfjax").glob(pattern)):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def probe(path: str, what: str) -> str:
    """`path --version`'s output; ToolchainMissing when the compiler does not run."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        raise ToolchainMissing(f"{what} {path} does not run: {err}") from err
    if out.returncode != 0:
        raise ToolchainMissing(f"{what} {path} does not run: {out.stderr.strip()}")
    return out.stdout.strip()


@functools.lru_cache(maxsize=None)
def _find(cxx: str, jax_include: str) -> Toolchain:
    path = shutil.which(cxx)
    if path is None:
        raise ToolchainMissing(f"C++ compiler {cxx!r} not found (set PFJAX_CXX or install g++)")
    version = probe(path, "C++ compiler").splitlines()[0].strip()
    own = pfjax_include_dir()
    return Toolchain(path, version, (str(own), jax_include), _digest([own]))


def find_toolchain(jax_include: str) -> Toolchain:
    """The configured compiler; raises ToolchainMissing with the reason if unusable."""
    return _find(config.compiler(), jax_include)
