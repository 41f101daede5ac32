"""Run the workloads: pfjax.fuse vs jax.jit (vs torch.compile where installed).

Every timing is a ratio measured side by side in one process: pfjax and jax.jit run
interleaved on the same inputs after warm-up, and medians are reported together with
the fraction of the memory-bandwidth ceiling (minimal bytes). The ceiling is a kernel
that reads and writes as many bytes as the workload, timed in the same rounds.

At the cache-resident size each candidate runs a burst per round: one untimed call
that brings its inputs back into cache (the other candidate's working set has just
evicted them), then timed calls, so that "cache-resident" holds as it does for the
ceiling. torch.compile is timed apart, after the JAX pair: its OpenMP workers spin for
milliseconds after each call and slowed whatever ran next on the two cores, and XLA's
pool did the same to it. Timed alone, a candidate's input stays hot in the shared cache
from burst to burst, where in the interleaved rounds the other candidates' working sets
evict it (on a 2-core Zen 3 VM a 16 MiB read ran 0.26-0.35 ms back to back and 0.6-0.9
ms for several calls after a 3 ms pause): so pfjax is timed alone as well, right before
torch.compile, and the two are compared like for like ("pfjax alone").
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
import traceback
from typing import Callable, Optional

import numpy as np
import jax
import jax.numpy as jnp

import pfjax
from pfjax.bench import ceiling as ceil_mod
from pfjax.bench.workloads import SIZES, Workload, select, tree_nbytes

STAND_IN_NOTE = ("STAND-IN: pfjax.fuse is not available; the 'pfjax' columns are "
                 "plain jax.jit of the unfused function")


def _to_torch(torch, x):
    """A JAX array as a torch CPU tensor (bf16 through its bits: numpy has no bfloat16)."""
    a = np.array(x)
    if a.dtype == jnp.bfloat16:
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _from_torch(torch, t):
    t = t.detach()
    if t.dtype == torch.bfloat16:  # exactly, through float32
        return t.float().numpy().astype(jnp.bfloat16)
    return t.numpy()


def log(msg: str) -> None:
    print(f"[pfjax.bench] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Timing:
    min_reps: int
    min_time_s: float
    max_reps: int
    warmup: int


@dataclasses.dataclass(frozen=True)
class Burst:
    """Calls per candidate and round: `untimed` first (to warm the caches), then `timed`."""
    untimed: int
    timed: int


# Cache-resident inputs must be in cache when a timed call starts; DRAM-sized ones never are.
BURSTS = {"cache": Burst(1, 3), "tiny": Burst(1, 3), "dram": Burst(0, 1)}


FULL = Timing(min_reps=50, min_time_s=1.0, max_reps=5000, warmup=5)
QUICK = Timing(min_reps=5, min_time_s=0.1, max_reps=200, warmup=2)


@dataclasses.dataclass
class Result:
    name: str
    title: str
    category: str
    size: str
    shape: str
    bytes: int
    ref_ms: Optional[float] = None
    fused_ms: Optional[float] = None
    torch_ms: Optional[float] = None
    fused_alone_ms: Optional[float] = None  # timed as torch.compile is: alone, not interleaved
    ceiling_gbps: Optional[float] = None  # its stream kernel, timed in the same rounds
    reps: int = 0
    check: str = "not run"          # "ok", "MISMATCH: ...", "ERROR: ..."
    torch_check: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.check == "ok"

    def speedup(self) -> Optional[float]:
        if self.ref_ms and self.fused_ms:
            return self.ref_ms / self.fused_ms
        return None

    def vs_torch(self) -> Optional[float]:
        """torch.compile's time over pfjax's, both timed alone (> 1: pfjax is faster)."""
        if self.torch_ms and self.fused_alone_ms:
            return self.torch_ms / self.fused_alone_ms
        return None

    def gbps(self, ms: Optional[float]) -> Optional[float]:
        return self.bytes / (ms * 1e-3) / 1e9 if ms else None


# ------------------------------------------------------------------ helpers

def get_fuse(stand_in: bool):
    fuse = getattr(pfjax, "fuse", None)
    if fuse is not None:
        return fuse, False
    if not stand_in:
        raise SystemExit("pfjax.fuse is not available; pass --stand-in to benchmark "
                         "the harness with an identity stand-in")
    return (lambda f: f), True


def compare(ref_out, out, rtol: float, atol: float) -> str:
    """'ok' or a MISMATCH message."""
    r_leaves, r_tree = jax.tree_util.tree_flatten(ref_out)
    o_leaves, o_tree = jax.tree_util.tree_flatten(out)
    if r_tree != o_tree:
        return f"MISMATCH: output structure {o_tree} != {r_tree}"
    for i, (r, o) in enumerate(zip(r_leaves, o_leaves)):
        r, o = np.asarray(r), np.asarray(o)
        if r.shape != o.shape or r.dtype != o.dtype:
            return f"MISMATCH: output {i} is {o.dtype}{list(o.shape)}, want {r.dtype}{list(r.shape)}"
        try:
            np.testing.assert_allclose(o, r, rtol=rtol, atol=atol)
        except AssertionError:
            err = np.abs(o.astype(np.float64) - r.astype(np.float64))
            bad = np.count_nonzero(~(err <= atol + rtol * np.abs(r)))
            return (f"MISMATCH: output {i}: {bad}/{r.size} elements outside "
                    f"rtol={rtol} atol={atol}, max abs err {np.nanmax(err):.3g}")
    return "ok"


def _torch():
    try:
        import torch
        return torch
    except Exception:
        return None


def _run_once(f, args, sync) -> float:
    t0 = time.perf_counter()
    out = f(*args)
    sync(out)
    dt = time.perf_counter() - t0
    del out
    return dt


def _run_batch(f, args, sync, n: int) -> float:
    out = None
    t0 = time.perf_counter()
    for _ in range(n):
        out = f(*args)
    sync(out)  # one stream: the last call done means all are
    dt = time.perf_counter() - t0
    del out
    return dt / n


# On a GPU a call returns before its kernels ran, and Python's dispatch of one call takes
# about as long as a cache-sized kernel: calls are enqueued back to back and synced once.
GPU_BATCH = 20


def timed_call(f, args, sync) -> Callable[[], float]:
    """A candidate for time_interleaved: seconds per call of f (one synced call on the
    CPU; on a GPU the mean of GPU_BATCH calls enqueued back to back)."""
    if jax.default_backend() == "gpu":
        return lambda: _run_batch(f, args, sync, GPU_BATCH)
    return lambda: _run_once(f, args, sync)


def time_interleaved(cands: list[Callable[[], float]], timing: Timing, label: str,
                     burst: Burst = Burst(0, 1)) -> tuple[list, int]:
    """cands: callables that run once and return their seconds. Warm up each, then run
    them in rounds (rotating the order each round), each candidate `burst.untimed`
    calls and then `burst.timed` timed ones; return the median seconds of each and the
    timed calls per candidate."""
    warm = [[c() for _ in range(timing.warmup)] for c in cands]
    per_call = statistics.mean(min(w) for w in warm)
    reps = max(timing.min_reps, min(timing.max_reps, math.ceil(timing.min_time_s / per_call)))
    rounds = math.ceil(reps / burst.timed)
    log(f"{label}: timing {rounds} rounds of {burst.untimed} untimed + {burst.timed} timed "
        f"calls each (~{per_call * 1e3:.3g} ms/call)")
    times = [[] for _ in cands]
    k = len(cands)
    for i in range(rounds):
        for j in range(k):
            c = (i + j) % k
            for _ in range(burst.untimed):
                cands[c]()
            times[c].extend(cands[c]() for _ in range(burst.timed))
    return [statistics.median(t) for t in times], rounds * burst.timed


def side_by_side_ceilings(read_bytes: int, write_bytes: int) -> list:
    """The ceiling for one workload: kernels that read and write as many bytes as it
    does, with plain and with non-temporal stores (the faster one counts), run in the
    same rounds; none without the native module or on a GPU (whose ceiling is its copy,
    measured up front)."""
    if jax.default_backend() == "gpu":
        return []
    try:
        return [ceil_mod.stream_kernel(read_bytes, write_bytes, nontemporal=nt)
                for nt in (False, True)]
    except (RuntimeError, ValueError):
        return []


# ------------------------------------------------------------------ prebuild

def _prebuild_one(name: str, size: str) -> str:
    # Tracing under jit plans the fused groups and builds their kernels into the cache.
    from pfjax.bench.workloads import WORKLOADS
    w = next(w for w in WORKLOADS if w.name == name)
    avals = jax.eval_shape(lambda: w.make_inputs(size))
    t0 = time.perf_counter()
    jax.jit(w.pfjax_version(pfjax.fuse)).lower(*avals)
    return f"{size} {name}: built in {time.perf_counter() - t0:.1f} s"


def prebuild(workloads, sizes, jobs: int) -> None:
    """Build every workload's kernels into the disk cache with `jobs` processes, so that
    the timed run finds them there (nvcc takes seconds per kernel library). The workers
    do not take the GPU's memory up front; a failure here is left for the timed run to
    report."""
    import concurrent.futures
    import multiprocessing
    import os
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # inherited by workers
    ctx = multiprocessing.get_context("spawn")
    log(f"prebuilding {len(workloads) * len(sizes)} workload kernels with {jobs} processes")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        futs = [pool.submit(_prebuild_one, w.name, s) for s in sizes for w in workloads]
        for f in concurrent.futures.as_completed(futs):
            try:
                log(f.result())
            except Exception as e:
                log(f"prebuild failed: {type(e).__name__}: {str(e)[:300]}")


# ------------------------------------------------------------------ one workload

def run_workload(w: Workload, size: str, fuse, timing: Timing, torch=None) -> Result:
    label = f"{size} {w.name}"
    log(f"{label}: making inputs {w.shape(size)}")
    inputs = jax.block_until_ready(w.make_inputs(size))
    ref = jax.jit(w.fn)
    log(f"{label}: compiling + running jax.jit")
    ref_out = jax.block_until_ready(ref(*inputs))
    res = Result(w.name, w.title, w.category, size, w.shape(size),
                 int(w.bytes_moved(inputs, ref_out)))
    read_bytes, write_bytes = tree_nbytes(inputs), tree_nbytes(ref_out)
    cands = {"ref": timed_call(ref, inputs, jax.block_until_ready)}
    torch_cand = None
    try:
        log(f"{label}: compiling + running pfjax.fuse")
        fused = jax.jit(w.pfjax_version(fuse))
        out = jax.block_until_ready(fused(*inputs))
        res.check = compare(ref_out, out, w.rtol, w.atol)
        del out
        cands["fused"] = timed_call(fused, inputs, jax.block_until_ready)
    except Exception as e:
        res.check = f"ERROR: {type(e).__name__}: {e}".splitlines()[0]
        log(f"{label}: pfjax.fuse failed:\n{traceback.format_exc()}")
    if res.check != "ok":
        log(f"{label}: !!! {res.check}")

    if torch is not None and w.torch_fn is not None:
        try:
            log(f"{label}: compiling torch.compile")
            t_in = tuple(_to_torch(torch, x) for x in inputs)
            tf = torch.compile(w.torch_fn)
            t_out = tf(*t_in)
            res.torch_check = compare(ref_out, jax.tree_util.tree_map(
                lambda t: _from_torch(torch, t), t_out), max(w.rtol, 1e-4), max(w.atol, 1e-5))
            del t_out
            torch_cand = timed_call(tf, t_in, lambda o: None)  # torch CPU is synchronous
        except Exception as e:
            res.torch_check = f"ERROR: {type(e).__name__}: {e}".splitlines()[0]
            log(f"{label}: torch.compile failed: {res.torch_check}")
    del ref_out

    burst = BURSTS[size]
    ceiling_kernels = side_by_side_ceilings(read_bytes, write_bytes)
    for i, k in enumerate(ceiling_kernels):
        cands[f"ceiling{i}"] = k.run
    meds, res.reps = time_interleaved(list(cands.values()), timing, label, burst)
    ms = {k: m * 1e3 for k, m in zip(cands, meds)}
    res.ref_ms, res.fused_ms = ms["ref"], ms.get("fused")
    if ceiling_kernels:
        res.ceiling_gbps = max(k.bytes_moved / ms[f"ceiling{i}"] / 1e6
                               for i, k in enumerate(ceiling_kernels))
    del ceiling_kernels
    if torch_cand is not None:
        # pfjax alone first: torch's OpenMP workers spin on after its last call
        if "fused" in cands and res.ok:
            res.fused_alone_ms = time_interleaved([cands["fused"]], timing, f"{label} pfjax alone",
                                                  burst)[0][0] * 1e3
        res.torch_ms = time_interleaved([torch_cand], timing, f"{label} torch.compile",
                                        burst)[0][0] * 1e3
    return res


# ------------------------------------------------------------------ report

def _f(x, fmt):
    return "-" if x is None else format(x, fmt)


def geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def format_report(results, ceilings, machine, allocator, stand_in, has_torch) -> str:
    lines = []
    if stand_in:
        lines += [f"**{STAND_IN_NOTE}**", ""]
    lines.append(f"Bandwidth ceiling ({ceilings['source']}), best of a few passes at the "
                 f"start: cache-resident {_f(ceilings['cache'], '.1f')} GB/s, DRAM "
                 f"{_f(ceilings.get('dram'), '.1f')} GB/s"
                 + (f" (plain {_f(ceilings.get('dram_plain'), '.1f')}, non-temporal "
                    f"{_f(ceilings.get('dram_nontemporal'), '.1f')})"
                    if ceilings.get("dram_nontemporal") else ""))
    if any(r.ceiling_gbps for r in results):
        lines.append("Each workload's % of ceiling is against a kernel that reads and writes "
                     "as many bytes as it does (no arithmetic), timed in the same rounds: "
                     "the median of the faster of plain and non-temporal stores (column "
                     "'ceiling GB/s').")
    for size in SIZES:
        rows = [r for r in results if r.size == size]
        if not rows:
            continue
        ceil = ceilings["dram"] if size == "dram" else ceilings["cache"]
        lines += ["", f"### {size} (ceiling {_f(ceil, '.1f')} GB/s at the start)", ""]
        ref = "XLA GPU (jax.jit)" if jax.default_backend() == "gpu" else "jax.jit"
        head = ["workload", "shape", "pfjax ms", f"{ref} ms", "speedup", "pfjax GB/s",
                "ceiling GB/s", "% of ceiling", f"{ref} % of ceiling"]
        if has_torch:
            head += ["torch.compile ms", "torch.compile % of ceiling", "pfjax alone ms",
                     "torch.compile / pfjax alone"]
        head.append("check")
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            c = r.ceiling_gbps or ceil
            pct = lambda ms: _f(r.gbps(ms) / c * 100 if ms and c else None, ".0f")
            cells = [r.title, r.shape, _f(r.fused_ms, ".3f"), _f(r.ref_ms, ".3f"),
                     _f(r.speedup(), ".2f"), _f(r.gbps(r.fused_ms), ".1f"), _f(c, ".1f"),
                     pct(r.fused_ms), pct(r.ref_ms)]
            if has_torch:
                cells += [_f(r.torch_ms, ".3f"), pct(r.torch_ms), _f(r.fused_alone_ms, ".3f"),
                          _f(r.vs_torch(), ".2f")]
            cells.append("ok" if r.ok else f"**{r.check}**")
            lines.append("| " + " | ".join(cells) + " |")
        g = geomean(r.speedup() for r in rows if r.ok)
        lines += ["", f"geometric mean speedup ({size}, {sum(r.ok for r in rows)} "
                      f"matching workloads): {_f(g, '.2f') + 'x' if g else 'n/a'}"]
        vs = [r.vs_torch() for r in rows if r.ok and r.vs_torch()]
        if vs:
            lines.append(f"torch.compile vs pfjax, both timed alone: pfjax faster on "
                         f"{sum(v > 1 for v in vs)} of {len(vs)} workloads, geometric mean "
                         f"{geomean(vs):.2f}x, lowest {min(vs):.2f}x")
        categories = list(dict.fromkeys(r.category for r in rows))
        if len(categories) > 1:
            for cat in categories:
                cg = geomean(r.speedup() for r in rows if r.ok and r.category == cat)
                low = min((r.speedup() for r in rows if r.ok and r.category == cat), default=None)
                lines.append(f"- {cat}: geometric mean {_f(cg, '.2f')}x, lowest {_f(low, '.2f')}x")
    lines += ["", f"machine: {machine.get('cpu_model')}, {machine.get('num_cores')} cores, "
                  f"simd {machine.get('simd_bytes')} bytes ({machine.get('source', 'pfjax.machine')})",
              f"allocator: {allocator}",
              f"jax {jax.__version__}, pfjax.fuse: {'STAND-IN (identity)' if stand_in else 'yes'}"]
    return "\n".join(lines)


# ------------------------------------------------------------------ entry point

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m pfjax.bench", description=__doc__)
    p.add_argument("--size", choices=SIZES + ("all",), action="append",
                   help="cache, dram, tiny or all (=cache+dram); repeatable; "
                        "default cache and dram")
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--filter", default=None, help="only workloads whose name contains this")
    p.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    p.add_argument("--default-allocator", action="store_true",
                   help="do not re-exec with the warm glibc malloc settings")
    p.add_argument("--stand-in", action="store_true",
                   help="if pfjax.fuse is missing, use identity (labelled STAND-IN)")
    p.add_argument("--no-torch", action="store_true", help="skip torch.compile even if installed")
    p.add_argument("--prebuild", type=int, default=0, metavar="N",
                   help="first build every kernel into the cache with N processes")
    p.add_argument("--cuda-report", action="store_true",
                   help="compile every workload's CUDA kernels with nvcc (no GPU needed) and "
                        "print registers and spills per kernel, instead of timing")
    return p.parse_args(argv)


def run(argv=None) -> tuple[int, list, str]:
    """Run the benchmark; return (exit code, results, report text)."""
    args = parse_args(argv)
    sizes = args.size or ["cache", "dram"]
    if "all" in sizes:
        sizes = [s for s in sizes if s != "all"] + ["cache", "dram"]
    sizes = [s for s in SIZES if s in sizes]
    workloads = select(args.filter)
    if not workloads:
        raise SystemExit(f"no workload matches --filter {args.filter!r}")
    if args.cuda_report:
        from pfjax.bench import cuda_report
        return cuda_report.main(workloads, sizes[0]), [], ""
    fuse, stand_in = get_fuse(args.stand_in)
    if stand_in:
        log(STAND_IN_NOTE)
    if args.prebuild > 0:
        prebuild(workloads, sizes, args.prebuild)
    timing = QUICK if args.quick else FULL
    torch = None if args.no_torch else _torch()
    allocator = ceil_mod.allocator_settings()
    log(f"allocator: {allocator}")

    machine = ceil_mod.machine_info()
    ceilings = ceil_mod.measure_ceilings("dram" in sizes, args.quick, log)
    log(f"ceiling: cache {ceilings['cache']:.1f} GB/s, DRAM {_f(ceilings['dram'], '.1f')} GB/s")

    results = []
    for size in sizes:
        for w in workloads:
            results.append(run_workload(w, size, fuse, timing, torch))
    report = format_report(results, ceilings, machine, allocator, stand_in, torch is not None)
    print()
    print(report, flush=True)
    if args.json:
        data = {"machine": machine, "allocator": allocator, "ceilings": ceilings,
                "fuse": "stand-in" if stand_in else "pfjax.fuse", "quick": args.quick,
                "jax": jax.__version__,
                "results": [dict(dataclasses.asdict(r), speedup=r.speedup(),
                                 vs_torch=r.vs_torch()) for r in results],
                "geomean_speedup": {s: geomean(r.speedup() for r in results
                                               if r.size == s and r.ok) for s in sizes}}
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2, default=str)
        log(f"wrote {args.json}")
    bad = [r for r in results if not r.ok]
    if bad:
        log(f"!!! {len(bad)} workload(s) did not match: " + ", ".join(
            f"{r.size} {r.name}" for r in bad))
    return (1 if bad else 0), results, report


def main(argv=None) -> int:
    return run(argv)[0]
