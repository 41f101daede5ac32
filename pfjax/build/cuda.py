"""nvcc: the CUDA toolchain, used through the same content-addressed cache as g++."""
from __future__ import annotations

import functools
import os
import re
import shutil
from dataclasses import dataclass

import pfjax
from pfjax.build.toolchain import ToolchainMissing, _digest, pfjax_include_dir, probe

ARCHS = (80, 90)  # A100, H100; the device's own is added when a GPU is present
NVCC_FLAGS = ("-O3", "-std=c++17", "--expt-relaxed-constexpr", "-x", "cu", "-shared",
              "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden")


@dataclass(frozen=True)
class CudaToolchain:
    nvcc: str
    version: str
    include_dirs: tuple[str, ...]
    headers_digest: str
    archs: tuple[int, ...] = ARCHS

    def gencode(self) -> list[str]:
        out = []
        for sm in self.archs:
            out += ["-gencode", f"arch=compute_{sm},code=sm_{sm}"]
        return out

    def command(self, source: str, output: str) -> list[str]:
        return [self.nvcc, *NVCC_FLAGS, *self.gencode(), *(f"-I{d}" for d in self.include_dirs),
                source, "-o", output]

    def cubin_command(self, source: str, output: str, sm: int = 90) -> list[str]:
        """Device code only, with ptxas's register and spill report (compile-only checks)."""
        return [self.nvcc, "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-x", "cu",
                "-cubin", f"-arch=sm_{sm}", "-Xptxas", "-v",
                *(f"-I{d}" for d in self.include_dirs), source, "-o", output]

    @property
    def fingerprint(self) -> str:
        return "|".join([self.version, " ".join(NVCC_FLAGS), " ".join(self.gencode()),
                         self.headers_digest, pfjax.__version__])


@functools.lru_cache(maxsize=None)
def _find(nvcc: str, jax_include: str, archs: tuple[int, ...]) -> CudaToolchain:
    path = shutil.which(nvcc)
    if path is None:
        raise ToolchainMissing(f"nvcc not found ({nvcc!r}; set PFJAX_NVCC or install the "
                               "CUDA toolkit): the CUDA backend is off, CPU is unaffected")
    version = probe(path, "nvcc").splitlines()[-1]
    own = pfjax_include_dir()
    return CudaToolchain(path, version, (str(own), jax_include), _digest([own], ("*.h", "*.cuh")),
                         archs)


def find_nvcc(jax_include: str, device_sm: int | None = None) -> CudaToolchain:
    """nvcc with -gencode for sm_80, sm_90 and the device's own architecture."""
    archs = tuple(sorted(set(ARCHS) | ({device_sm} if device_sm else set())))
    return _find(os.environ.get("PFJAX_NVCC", "nvcc"), jax_include, archs)


@dataclass(frozen=True)
class PtxasReport:
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int


def ptxas_report(output: str) -> dict[str, PtxasReport]:
    """Per-kernel registers and spills from `-Xptxas -v` output."""
    reports: dict[str, PtxasReport] = {}
    current = None
    stack = spill_st = spill_ld = 0
    for line in output.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line) or \
            re.search(r"Function properties for (\w+)", line)
        if m:
            current = m.group(1)
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            stack, spill_st, spill_ld = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            reports[current] = PtxasReport(int(m.group(1)), spill_st, spill_ld, stack)
    return reports
