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
    sized to stay in L2 (half of it, leaving room for the streams passing through). With
    AVX2 or AVX-512 the lanes are the 16 of the vectors the code generator writes
    (pfjax::vf16: one AVX-512 register, or two AVX2 ones), so that both machines get the
    same loops.
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
        lanes=16 if simd >= 32 else simd // 4,
        vector_bytes=simd,
        isa=tuple(sorted(info.get("isa") or ())),
    )


# Named default when no GPU is present: an H100 SXM (sm_90).
H100 = {"name": "h100", "sm": 90, "sms": 132, "shared_per_block": 48 * 1024,
        "l2_bytes": 50 << 20, "dram_gbps": 3000.0}


def cuda_target(info: dict | None = None) -> Target:
    """CUDA target from device facts (multiprocessors, shared memory per block, L2), or the
    named H100 default. A group is a block of 256 threads, its units are the threads; the
    local level is the block's shared memory (the default 48 KiB a launch gets without
    opting in)."""
    info = {**H100, **(info or {})}
    return Target(
        name=f"cuda-sm{info['sm']}",
        backend="cuda",
        levels=(
            MemoryLevel(GLOBAL, 1 << 40, float(info["dram_gbps"]), "device"),
            MemoryLevel(LOCAL, int(info["shared_per_block"]), 20 * float(info["dram_gbps"]), "group"),
            MemoryLevel(REG, 255 * 4, 1e6, "unit"),
        ),
        groups=int(info["sms"]) * 8,
        lanes=256,
        vector_bytes=16,
        isa=(f"sm_{info['sm']}",),
    )
