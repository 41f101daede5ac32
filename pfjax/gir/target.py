"""Target descriptions: memory levels and parallel units of a machine.

The same description drives the cost model, the passes and codegen, so that GIR stays one
IR for every backend; only the numbers and the level names' meaning differ.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryLevel:
    name: str              # "global", "local" or "reg"
    capacity_bytes: int    # per parallel unit that owns it (global: whole machine)
    bandwidth_gbps: float  # sustained read+write bandwidth, an estimate
    scope: str             # who shares it: "device", "group" or "unit"


@dataclass(frozen=True)
class Target:
    name: str
    backend: str            # "cpu" or "cuda"
    levels: tuple[MemoryLevel, ...]
    groups: int             # CPU: threads; CUDA: resident blocks
    lanes: int              # units per group: CPU SIMD lanes of float32; CUDA threads
    vector_bytes: int       # widest vector load/store
    isa: tuple[str, ...] = ()

    def level(self, name: str) -> MemoryLevel:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(f"target {self.name} has no memory level {name!r}")

    @property
    def key(self) -> str:
        """Everything that changes generated code for this target."""
        return f"{self.name}|{self.backend}|{self.vector_bytes}|{self.groups}|{','.join(self.isa)}"


GLOBAL, LOCAL, REG = "global", "local", "reg"


def cpu_target(info: dict) -> Target:
    """CPU target from machine facts (pfjax.machine.machine_info()).

    A group is a thread, its units are SIMD lanes; the local level is a per-thread buffer
    sized to stay in L2 (half of it, leaving room for the streams passing through).
    """
    simd = int(info.get("simd_bytes") or 16)
    l2 = int(info.get("l2_bytes") or (1 << 20))
    cores = max(1, int(info.get("num_cores") or 1))
    return Target(
        name="cpu-" + ("avx512" if simd >= 64 else "avx2" if simd >= 32 else "sse"),
        backend="cpu",
        levels=(
            MemoryLevel(GLOBAL, 1 << 40, float(info.get("dram_gbps") or 30.0), "device"),
            MemoryLevel(LOCAL, l2 // 2, float(info.get("cache_gbps") or 60.0), "group"),
            MemoryLevel(REG, 32 * simd, 1e4, "unit"),
        ),
        groups=cores,
        lanes=simd // 4,
        vector_bytes=simd,
        isa=tuple(sorted(info.get("isa") or ())),
    )
