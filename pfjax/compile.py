"""The pipeline for one traced signature: partition, lower, optimise, generate, build.

`plan()` runs it and returns everything `pfjax.explain` reports and everything the fused
function needs to run: the rewritten program as a list of evaluation steps.
"""
from __future__ import annotations

import concurrent.futures
import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable



from pfjax import config, gir, jaxext
from pfjax.build import ToolchainMissing, build, find_toolchain, pch
from pfjax.codegen import emit_kernel
from pfjax.errors import CompileError, PfjaxWarning
from pfjax.frontend import Group, LoweringError, bytes_moved, lower_group, partition, trace
from pfjax.frontend.partition import Partition
from pfjax.frontend.program import Eqn, Lit, Program, Var, bind_eqn
from pfjax.machine import cuda_device_info, machine_info
from pfjax.passes import run_passes
from pfjax.schedule import Schedule, apply, choose

log = logging.getLogger("pfjax")
DISPATCH_SOURCE = '#include "pfjax/dispatch_impl.h"\n'
_warned: set[str] = set()


def warn_once(kind: str, message: str) -> None:
    if kind not in _warned:
        _warned.add(kind)
        warnings.warn(message, PfjaxWarning, stacklevel=3)


_target: gir.Target | None = None


def target() -> gir.Target:
    global _target
    if _target is None:
        _target = gir.cpu_target(machine_info())
    return _target


@dataclass(eq=False)
class GroupPlan:
    group: Group
    jaxpr: object                        # ClosedJaxpr of the group's equations
    kernel_before: gir.Kernel | None = None
    passes: list[tuple[str, gir.Kernel]] = field(default_factory=list)
    kernel: gir.Kernel | None = None     # after passes and schedule
    schedule: Schedule | None = None
    source: str | None = None
    source_path: str | None = None
    ref: jaxext.KernelRef | None = None  # None: XLA runs the group
    problem: str | None = None           # why the group runs with XLA, if it does
    cuda_problem: str | None = None      # why it has no CUDA kernel (on a GPU machine)


@dataclass(eq=False)
class Plan:
    program: Program
    consts: list
    partition: Partition
    groups: list[GroupPlan]
    steps: list[Callable]


def _group_inputs(group: Group, read) -> list:
    return [a.val if isinstance(a, Lit) else read(a) for a in group.inputs]


def run_group_eqns(group: Group, args: list) -> list:
    """Evaluate a group's own equations (its jaxpr is traced from this)."""
    env = {(id(a) if isinstance(a, Lit) else a.id): v for a, v in zip(group.inputs, args)}

    def read(atom):
        if isinstance(atom, Lit):
            return env.get(id(atom), atom.val)
        return env[atom.id]

    for eqn in [*group.recomputed, *group.eqns]:
        for v, value in zip(eqn.outvars, bind_eqn(eqn, [read(a) for a in eqn.invars])):
            env[v.id] = value
    return [env[v.id] for v in group.outputs]


def _lower_and_generate(gp: GroupPlan, tgt: gir.Target) -> None:
    try:
        kernel = lower_group(gp.group)
    except LoweringError as err:
        gp.problem = str(err)
        return
    gp.kernel_before = kernel
    kernel = run_passes(kernel, tgt, debug=config.debug(), trace=gp.passes)
    gp.schedule = choose(kernel, tgt)
    gp.kernel = apply(kernel, gp.schedule)
    gp.source = emit_kernel(gp.kernel)


def _build_all(plans: list[GroupPlan], tgt: gir.Target) -> None:
    todo = [gp for gp in plans if gp.source is not None]
    if not todo:
        return
    sources: dict[str, str] = {}
    for gp in todo:
        sources.setdefault(gp.kernel.name, gp.source)
    # One include at the top: g++ takes the precompiled header there only (build.pch), and
    # a second include would look for the header beside it
    source = pch.INCLUDE + "\n".join(sources[name].replace(pch.INCLUDE, "", 1)
                                      for name in sorted(sources))
    try:
        toolchain = find_toolchain(jaxext.ffi_include_dir())
        if len(sources) > 0:
            log.info("pfjax: building %d kernel(s)", len(sources))
        # In a fresh cache the dispatch library (7 s on a Zen 3 VM: XLA's FFI headers) is
        # compiled beside the precompiled header and the kernels, not before them.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pfjax-build") as pool:
            dispatch = pool.submit(build, DISPATCH_SOURCE, toolchain, tgt.key)
            lib = build(source, toolchain, tgt.key)
            jaxext.set_dispatch_library(str(dispatch.result()))
        jaxext.register_library(str(lib), sorted(sources))
    except ToolchainMissing as err:
        warn_once("toolchain", f"pfjax: no usable C++ compiler ({err}); XLA runs these functions unfused")
        for gp in todo:
            gp.problem = f"no compiler: {err}"
        return
    except CompileError as err:
        warn_once("compile:" + str(err.source_path),
                  f"pfjax: kernel compilation failed; XLA runs the group instead. "
                  f"Source kept at {err.source_path}.\n{err.output[-2000:]}")
        for gp in todo:
            gp.problem = f"compilation failed (source: {err.source_path})"
        return
    for gp in todo:
        gp.ref = jaxext.KernelRef(gp.kernel.name)
        gp.source_path = str(lib.parent / "kernel.cc")


def _cuda_body(source: str) -> str:
    return source.split('#include "pfjax/cuda_kernel.cuh"\n', 1)[1]


def _build_cuda(plans: list[GroupPlan]) -> None:
    """Where JAX runs on an NVIDIA GPU: the same groups as CUDA kernels (the GIR as lowered,
    through the same passes for the CUDA target), built by nvcc through the same cache and
    registered for platform CUDA. Without a GPU nothing happens; without nvcc, or for a
    kernel the CUDA codegen does not handle, XLA runs the group on the GPU (said once)."""
    info = jaxext.gpu_info()
    if info is None:
        return
    info = {**info, **(cuda_device_info() or {})}  # the runtime knows shared memory and L2
    from pfjax.build.cuda import find_nvcc
    from pfjax.codegen.cuda import CudaUnsupported, emit_cuda_kernel
    tgt = gir.cuda_target(info)
    sources: dict[str, str] = {}
    names: dict[int, str] = {}
    for k, gp in enumerate(plans):
        if gp.kernel_before is None:
            continue
        try:
            kernel = run_passes(lower_group(gp.group, "cuda"), tgt)
            sources.setdefault(kernel.name, _cuda_body(emit_cuda_kernel(kernel)))
            names[k] = kernel.name
        except CudaUnsupported as err:
            gp.cuda_problem = f"CUDA codegen: {err}"
    if not sources:
        return
    unit = '#include "pfjax/cuda_kernel.cuh"\n' + "\n".join(sources[n] for n in sorted(sources))
    try:
        toolchain = find_nvcc(jaxext.ffi_include_dir(), info.get("sm"))
        lib = build(unit, toolchain, tgt.key)
        jaxext.register_cuda_library(str(lib), sorted(sources))
    except ToolchainMissing as err:
        warn_once("nvcc", f"pfjax: {err}; XLA runs these functions on the GPU unfused")
        return
    except CompileError as err:
        warn_once("cuda:" + str(err.source_path),
                  f"pfjax: CUDA kernel compilation failed; XLA runs the group instead. "
                  f"Source kept at {err.source_path}.\n{err.output[-2000:]}")
        return
    for k, name in names.items():
        gp = plans[k]
        gp.ref = jaxext.KernelRef(gp.ref.target if gp.ref else "", cuda=name)


def _schedule_steps(program: Program, plans: list[GroupPlan]) -> list[Callable]:
    """Order ungrouped equations and group calls so that every value exists before use."""
    member = {id(e) for gp in plans for e in gp.group.eqns}
    items = []  # (first index, input var ids, output vars, step)
    for i, eqn in enumerate(program.eqns):
        if id(eqn) not in member:
            items.append((i, [a.id for a in eqn.invars if isinstance(a, Var)], eqn.outvars,
                          _eqn_step(eqn)))
    index = {id(e): i for i, e in enumerate(program.eqns)}
    for gp in plans:
        first = min(index[id(e)] for e in gp.group.eqns)
        items.append((first, [a.id for a in gp.group.inputs if isinstance(a, Var)],
                      gp.group.outputs, _group_step(gp)))
    items.sort(key=lambda t: t[0])
    ready = {v.id for v in program.invars}
    steps, pending = [], items
    while pending:
        for k, (_, ins, outs, step) in enumerate(pending):
            if all(v in ready for v in ins):
                steps.append(step)
                ready.update(v.id for v in outs)
                del pending[k]
                break
        else:
            raise RuntimeError("pfjax internal error: fused program has a cycle")
    return steps


def _eqn_step(eqn: Eqn) -> Callable:
    def step(read, write):
        for v, value in zip(eqn.outvars, bind_eqn(eqn, [read(a) for a in eqn.invars])):
            write(v, value)
    return step


def _group_step(gp: GroupPlan) -> Callable:
    def step(read, write):
        outs = jaxext.bind_fused(_group_inputs(gp.group, read), gp.jaxpr, gp.ref)
        for v, value in zip(gp.group.outputs, outs):
            write(v, value)
    return step


def plan(fun: Callable, avals: list) -> Plan:
    program, consts = trace(fun, avals)
    tgt = target()
    for absorb in (True, False):
        part = partition(program, absorb=absorb)
        plans = []
        for group in part.groups:
            in_avals = [a.aval for a in group.inputs]
            jaxpr = jaxext.make_closed_jaxpr(lambda *xs, g=group: run_group_eqns(g, list(xs)), in_avals)
            gp = GroupPlan(group, jaxpr)
            _lower_and_generate(gp, tgt)
            plans.append(gp)
        if all(gp.kernel is not None for gp in plans):
            break
    _build_all(plans, tgt)
    _build_cuda(plans)
    return Plan(program, consts, part, plans, _schedule_steps(program, plans))


def group_bytes(gp: GroupPlan) -> tuple[int, int]:
    """(fused, unfused) bytes of a group; the fused figure from its kernel's loads where
    it has one (a kernel that reads a slice of an input moves only that slice)."""
    fused, unfused = bytes_moved(gp.group)
    return (fused if gp.kernel is None else gir.global_bytes(gp.kernel)), unfused



def cuda_sources(fun: Callable, avals: list, program: Program | None = None
                 ) -> list[tuple[Group, str | None, str | None]]:
    """(group, CUDA source, reason it has none) for each fusion group of `fun`: the same
    GIR after the same passes, for the CUDA target (compile-only checks need no GPU)."""
    from pfjax.codegen.cuda import CudaUnsupported, emit_cuda_kernel
    if program is None:
        program, _ = trace(fun, avals)
    tgt = gir.cuda_target()
    out = []
    for group in partition(program).groups:
        try:
            kernel = run_passes(lower_group(group, "cuda"), tgt)
            out.append((group, emit_cuda_kernel(kernel), None))
        except (LoweringError, CudaUnsupported) as err:
            out.append((group, None, str(err)))
    return out
