"""`python -m pfjax.bench --cuda-report`: the CUDA kernels of every workload, compiled by
nvcc for one architecture (device code only, no GPU needed), with ptxas's registers and
spills per kernel."""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import jax

from pfjax.build.cuda import PtxasReport, find_nvcc, ptxas_report
from pfjax.compile import cuda_sources
from pfjax.jaxext import ffi_include_dir

HEADER = '#include "pfjax/cuda_kernel.cuh"\n'


def workload_sources(workloads, size: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """([(workload, kernel body)], {workload: why it has no CUDA kernel})."""
    out, missing = [], {}
    for w in workloads:
        inputs = jax.eval_shape(lambda w=w: w.make_inputs(size))
        avals = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs]
        for _, src, why in cuda_sources(w.fn, avals):
            if src is None:
                missing[w.name] = why
            else:
                out.append((w.name, src.split(HEADER, 1)[1]))
    return out, missing


def compile_report(sources: list[tuple[str, str]], sm: int = 90
                   ) -> tuple[list[tuple[str, str, PtxasReport | None]], str]:
    """Compile the distinct kernels as one translation unit; per kernel (workload, kernel
    name, ptxas report), and nvcc's output (raises RuntimeError when it fails)."""
    toolchain = find_nvcc(ffi_include_dir())
    bodies = list(dict.fromkeys(body for _, body in sources))
    with tempfile.TemporaryDirectory() as tmp:
        unit = Path(tmp) / "all.cu"
        unit.write_text(HEADER + "\n".join(bodies))
        proc = subprocess.run(toolchain.cubin_command(str(unit), str(Path(tmp) / "all.cubin"), sm),
                              capture_output=True, text=True, timeout=1800)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed:\n{output[-4000:]}")
    reports = ptxas_report(output)
    rows = []
    for workload, body in sources:
        for kernel in re.findall(r"__global__ void __launch_bounds__\([\d, ]+\) (\w+)\(", body):
            found = [r for name, r in reports.items() if kernel in name]
            rows.append((workload, kernel, found[0] if found else None))
    return rows, output


def main(workloads, size: str = "cache") -> int:
    sources, missing = workload_sources(workloads, size)
    rows, _ = compile_report(sources)
    print(f"CUDA kernels of the {size} workloads, nvcc for sm_90 (ptxas -v)\n")
    print("| workload | kernel | registers | spill stores | spill loads | stack |")
    print("|---|---|---|---|---|---|")
    for workload, kernel, r in rows:
        cells = [r.registers, r.spill_stores, r.spill_loads, r.stack_bytes] if r else ["?"] * 4
        print(f"| {workload} | {kernel.split('_kernel')[0].split('_finish')[0][-8:]}"
              f"{'_finish' if kernel.endswith('_finish') else ''} | " + " | ".join(map(str, cells)) + " |")
    for name, why in missing.items():
        print(f"| {name} | no CUDA kernel: {why} | | | | |")
    spills = [r for _, _, r in rows if r and (r.spill_stores or r.spill_loads)]
    return 1 if spills or missing else 0
