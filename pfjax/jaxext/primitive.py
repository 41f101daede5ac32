"""The fused-group primitive: a JAX primitive that carries its group's jaxpr.

Abstract evaluation comes from the jaxpr. On CPU, lowering emits the group's FFI custom
call when a compiled kernel is registered for it, and inlines the jaxpr otherwise, so
results never depend on whether fusion happened; under a jit that XLA partitions over
several devices, groups that split by rows run per device (partitioning.py). JVP and
batching apply JAX's own transformation to the inner jaxpr and fuse the result again
through the hook the API installs (`set_refuse`): vmap, jvp and grad of a fused function
run fused kernels. This package (jaxext) is the only place that touches JAX internals.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Callable

import jax
from jax.extend import core as jcore
from jax._src import dispatch, sharding_impls
from jax._src.interpreters import ad, partial_eval as pe
from jax.interpreters import batching, mlir

from pfjax.jaxext import partitioning

fused_p = jcore.Primitive("pfjax_fused")
fused_p.multiple_results = True


@dataclass(frozen=True)
class KernelRef:
    """Names registered FFI targets; None in params means 'run the jaxpr with XLA'.
    `target` is the CPU kernel (empty when there is none), `cuda` the CUDA one."""
    target: str
    cuda: str | None = None


_refuse: Callable | None = None


def set_refuse(fn: Callable) -> None:
    """fn(function, avals) -> function fused again (installed by pfjax.api)."""
    global _refuse
    _refuse = fn


def bind_fused(args, jaxpr: jcore.ClosedJaxpr, kernel: KernelRef | None):
    return fused_p.bind(*args, jaxpr=jaxpr, kernel=kernel)


@functools.lru_cache(maxsize=256)
def _jitted(jaxpr: jcore.ClosedJaxpr, kernel: KernelRef | None):
    return jax.jit(lambda *a: fused_p.bind(*a, jaxpr=jaxpr, kernel=kernel))


def _impl(*args, jaxpr, kernel):
    # Eager binds (pfjax.fuse(jit=False) called outside jit) compile once per group.
    return _jitted(jaxpr, kernel)(*args)


def _abstract_eval(*avals, jaxpr, kernel):
    return jaxpr.out_avals


def _lower_inline(ctx, *args, jaxpr, kernel):
    return mlir.lower_fun(jcore.jaxpr_as_fun(jaxpr), multiple_results=True)(ctx, *args)


def _partitioned_by_xla(ctx) -> bool:
    """True when XLA's SPMD partitioner will split this computation: an opaque custom
    call would then be gathered onto every device, so the group is split by rows
    (partitioning.py) or left to XLA. Inside shard_map (all axes manual) each device runs
    the kernel on its own shard."""
    axis_ctx = ctx.module_context.axis_context
    if isinstance(axis_ctx, sharding_impls.ShardingContext):
        return axis_ctx.num_devices > 1
    if isinstance(axis_ctx, sharding_impls.SPMDAxisContext):
        return set(axis_ctx.manual_axes) != set(axis_ctx.mesh.axis_names)
    return False


def _for_export(ctx) -> bool:
    """jax.export: the artifact must not reference kernels that exist only in this
    process's cache, so fused groups are exported as their plain XLA equations."""
    return bool(getattr(ctx.module_context.lowering_parameters, "for_export", False))


def _lower_cpu(ctx, *args, jaxpr, kernel):
    if kernel is None or not kernel.target or _for_export(ctx):
        return _lower_inline(ctx, *args, jaxpr=jaxpr, kernel=kernel)
    if _partitioned_by_xla(ctx):
        # Sharded jit: a group split by rows runs a kernel per device on its own rows.
        outs = partitioning.lower_by_rows(
            ctx, args, jaxpr, lambda *a: bind_fused(a, jaxpr, kernel), _refuse)
        return outs if outs is not None else _lower_inline(ctx, *args, jaxpr=jaxpr, kernel=kernel)
    out_types = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in jaxpr.out_avals]
    call = jax.ffi.ffi_call(kernel.target, out_types)
    return mlir.lower_fun(lambda *a: call(*a, kernel=kernel.target), multiple_results=True)(ctx, *args)


def _lower_cuda(ctx, *args, jaxpr, kernel):
    # The group's CUDA kernel, launched on the stream XLA hands its FFI handler.
    if kernel is None or kernel.cuda is None or _partitioned_by_xla(ctx) or _for_export(ctx):
        return _lower_inline(ctx, *args, jaxpr=jaxpr, kernel=kernel)
    out_types = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in jaxpr.out_avals]
    call = jax.ffi.ffi_call(kernel.cuda, out_types)
    return mlir.lower_fun(lambda *a: call(*a), multiple_results=True)(ctx, *args)


def _fused_call(closed: jcore.ClosedJaxpr, args):
    """Evaluate a jaxpr with its memory-bound chains fused again (unfused if no hook)."""
    fun = jcore.jaxpr_as_fun(closed)
    return (_refuse(fun) if _refuse is not None else fun)(*args)


# Values the tangent part reads back from the primal part: results of reductions and
# gathers (a whole row or more per element, expensive to redo) and a few per-row
# transcendentals. Everything else the tangent part recomputes from the primal inputs in
# its own kernels: a full-size residual costs a write and a read of main memory, while
# recomputing an elementwise chain (tanh of a GELU, the exp of a softmax) costs only
# arithmetic in a kernel that reads the same inputs anyway.
_SAVED = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax",
                    "argmin", "gather", "rsqrt", "log", "cumsum", "cumlogsumexp", "cummax",
                    "cummin", "cumprod"})


def _save_policy(prim, *avals, **params) -> bool:
    return prim.name in _SAVED


def _jvp(primals, tangents, *, jaxpr, kernel):
    # JAX's JVP of the group, unzipped into the primal part (outputs + residuals) and the
    # tangent part (linear in the tangents); each runs as fused kernels. Under grad the
    # primal part stays known and the tangent part is transposed by _transpose.
    nonzero = [type(t) is not ad.Zero for t in tangents]
    jvp_jaxpr, out_nonzero = ad.jvp_jaxpr(jaxpr, nonzero, instantiate=False)
    n_out, n_tan = len(jaxpr.out_avals), sum(nonzero)
    unknown_in = [False] * len(primals) + [True] * n_tan
    unknown_out = [False] * n_out + [True] * sum(out_nonzero)
    known, staged, out_unknowns, out_inst, num_res = pe.partial_eval_jaxpr_custom(
        jvp_jaxpr.jaxpr, unknown_in, unknown_in, unknown_out, unknown_out, _save_policy)
    known_outs = _fused_call(jcore.ClosedJaxpr(known, jvp_jaxpr.consts), list(primals))
    known_vals = known_outs[:len(known_outs) - num_res]
    residuals = known_outs[len(known_outs) - num_res:]
    # The staged jaxpr returns every unknown or instantiated output; keep the unknown ones.
    staged_outs = [i for i, (u, inst) in enumerate(zip(out_unknowns, out_inst)) if u or inst]
    wanted = [j for j, i in enumerate(staged_outs) if out_unknowns[i]]
    staged_fun = jcore.jaxpr_as_fun(jcore.ClosedJaxpr(staged, jvp_jaxpr.consts))
    tangent_in = [t for t in tangents if type(t) is not ad.Zero]
    tangent_part = jax.make_jaxpr(lambda *a: [staged_fun(*a)[j] for j in wanted])(
        *residuals, *tangent_in)
    unknown_vals = _fused_call(tangent_part, [*residuals, *tangent_in])
    known_it, unknown_it = iter(known_vals), iter(unknown_vals)
    outs = [next(unknown_it) if u else next(known_it) for u in out_unknowns]
    primal_out, tangent_nz = outs[:n_out], iter(outs[n_out:])
    tangent_out = [next(tangent_nz) if nz else ad.Zero(a.to_tangent_aval())
                   for nz, a in zip(out_nonzero, jaxpr.out_avals)]
    return primal_out, tangent_out


def _transpose(cts, *args, jaxpr, kernel):
    # The group is linear in its undefined inputs (it is a tangent part from _jvp):
    # transpose it with JAX and fuse the transposed computation again.
    undefined = [ad.is_undefined_primal(a) for a in args]
    lin_avals = [a.aval for a, u in zip(args, undefined) if u]
    known = [a for a, u in zip(args, undefined) if not u]
    cts = [ad.instantiate_zeros(ct) for ct in cts]
    fun = jcore.jaxpr_as_fun(jaxpr)

    def transposed(known_vals, cts):
        def linear(*lin):
            it_known, it_lin = iter(known_vals), iter(lin)
            return fun(*[next(it_lin) if u else next(it_known) for u in undefined])
        structs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in lin_avals]
        return jax.linear_transpose(linear, *structs)(list(cts))

    run = (lambda k, c: _refuse(transposed)(k, c)) if _refuse is not None else transposed
    ct_lin = iter(run(known, cts))
    return [next(ct_lin) if u else None for u in undefined]


def _batch(args, dims, *, jaxpr, kernel):
    fun = jax.vmap(jcore.jaxpr_as_fun(jaxpr),
                   in_axes=tuple(dims))  # unbatched operands come as None
    if _refuse is not None:
        fun = _refuse(fun)
    outs = fun(*args)
    return outs, [0] * len(outs)


fused_p.def_impl(_impl)
# custom_partitioning (sharded jit, above) needs the concrete devices at lowering time.
dispatch.prim_requires_devices_during_lowering.add(fused_p)
fused_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(fused_p, _lower_inline)
mlir.register_lowering(fused_p, _lower_cpu, platform="cpu")
mlir.register_lowering(fused_p, _lower_cuda, platform="cuda")
ad.primitive_jvps[fused_p] = _jvp
ad.primitive_transposes[fused_p] = _transpose
batching.primitive_batchers[fused_p] = _batch


# -- FFI registration -----------------------------------------------------------------
# Every kernel's custom-call target is the one dispatch handler; its `kernel` attribute
# names the kernel, whose descriptor the dispatch library looks up.

_libraries: dict[str, ctypes.CDLL] = {}
_registered: dict[str, str] = {}  # kernel name -> the library its descriptor comes from
_dispatch: ctypes.CDLL | None = None


def set_dispatch_library(path: str) -> None:
    global _dispatch
    if _dispatch is None:
        _dispatch = ctypes.CDLL(path)
        _dispatch.pfjax_register_kernel.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        _dispatch.pfjax_register_kernel.restype = ctypes.c_int


def register_library(path: str, targets: list[str]) -> None:
    """Load a compiled kernel library once and register its kernels for the CPU."""
    if _dispatch is None:
        raise RuntimeError("pfjax: dispatch library not loaded")
    lib = _libraries.get(path)
    if lib is None:
        lib = _libraries[path] = ctypes.CDLL(path)
    for name in targets:
        if _registered.get(name) == path:
            continue
        # A name is the kernel's GIR: a second library for it holds code generated
        # differently (a code generation switch flipped in this process). The dispatcher
        # looks the name up at each call, so the newest library's code runs from then on.
        info = getattr(lib, name + "_info")
        info.restype = ctypes.c_void_p
        if _dispatch.pfjax_register_kernel(name.encode(), info()) != 0:
            raise RuntimeError(f"pfjax: kernel {name} in {path} has a different ABI version")
        if name not in _registered:
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(_dispatch.pfjax_dispatch),
                                        platform="cpu")
        _registered[name] = path


_registered_cuda: set[str] = set()


def register_cuda_library(path: str, targets: list[str]) -> None:
    """Load a compiled CUDA kernel library once; each kernel exports its own handler."""
    lib = _libraries.get(path)
    if lib is None:
        lib = _libraries[path] = ctypes.CDLL(path)
    for name in targets:
        if name not in _registered_cuda:
            handler = getattr(lib, name + "_ffi")
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="CUDA")
            _registered_cuda.add(name)


def gpu_info() -> dict | None:
    """Facts the CUDA target needs about the default GPU, or None without one."""
    try:
        if jax.default_backend() != "gpu":
            return None
        dev = jax.devices()[0]
    except RuntimeError:
        return None
    info = {}
    if getattr(dev, "core_count", None):
        info["sms"] = int(dev.core_count)
    cc = getattr(dev, "compute_capability", None)
    if cc:
        major, _, minor = str(cc).partition(".")
        info["sm"] = int(major) * 10 + int(minor or 0)
    info["name"] = getattr(dev, "device_kind", "gpu")
    return info


def is_registered(name: str) -> bool:
    return name in _registered


def make_closed_jaxpr(fun: Callable, avals) -> jcore.ClosedJaxpr:
    return jax.make_jaxpr(fun)(*[jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=getattr(a, "weak_type", False))
                                 for a in avals])


def ffi_include_dir() -> str:
    return jax.ffi.include_dir()
