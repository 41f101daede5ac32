"""The user-facing API: `pfjax.fuse` and `pfjax.explain`."""
from __future__ import annotations

import functools
import threading
from typing import Callable

import jax

from pfjax import config, jaxext
from pfjax.compile import Plan, plan
from pfjax.frontend.program import evaluate


def _avals(flat: list) -> list:
    avals = []
    for k, x in enumerate(flat):
        try:
            avals.append(jax.typeof(x))
        except TypeError:
            raise TypeError(
                f"pfjax.fuse: argument leaf {k} has type {type(x).__name__}, which is not an "
                f"array; pass arrays (or Python scalars), or mark the argument with "
                f"static_argnums") from None
    return avals


class Fused:
    """A function whose memory-bound chains run as generated kernels; one plan per
    argument signature (shapes, dtypes, pytree structure, static arguments)."""

    def __init__(self, fun: Callable, jit: bool = True, static_argnums: tuple[int, ...] = ()):
        self.fun = fun
        self.jit = jit
        self.static_argnums = tuple(static_argnums)
        self._cache: dict = {}
        self._lock = threading.Lock()
        # Name and docs only: merging fun.__dict__ would copy the attributes of a Fused
        # that fun wraps (jax.grad(fuse(f)) carries them via functools.wraps), replacing
        # self.fun with the inner function.
        functools.update_wrapper(self, fun, updated=())

    def _split(self, args, kwargs):
        static = tuple((i, args[i]) for i in self.static_argnums if i < len(args))
        dynamic = tuple(a for i, a in enumerate(args) if i not in self.static_argnums)
        flat, tree = jax.tree_util.tree_flatten((dynamic, kwargs))
        return static, flat, tree

    def _rebuild(self, static, tree, flat):
        dynamic, kwargs = jax.tree_util.tree_unflatten(tree, flat)
        args, it = [], iter(dynamic)
        fixed = dict(static)
        for i in range(len(dynamic) + len(fixed)):
            args.append(fixed[i] if i in fixed else next(it))
        return args, kwargs

    def plan_for(self, *args, **kwargs) -> tuple[Plan, Callable, list]:
        static, flat, tree = self._split(args, kwargs)
        avals = _avals(flat)
        key = (static, tree, tuple((a.shape, a.dtype, getattr(a, "weak_type", False)) for a in avals))
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                out_tree = []

                def flat_fun(*xs):
                    a, kw = self._rebuild(static, tree, list(xs))
                    out, otree = jax.tree_util.tree_flatten(self.fun(*a, **kw))
                    out_tree.append(otree)
                    return out

                p = plan(flat_fun, avals)

                def run(*xs):
                    return evaluate(p.program, [*p.consts, *xs], p.steps)

                entry = (p, jax.jit(run) if self.jit else run, out_tree[0])
                self._cache[key] = entry
        p, run, otree = entry
        return p, (lambda: jax.tree_util.tree_unflatten(otree, run(*flat))), flat

    def __call__(self, *args, **kwargs):
        if config.disabled():
            return self.fun(*args, **kwargs)
        _, call, _ = self.plan_for(*args, **kwargs)
        return call()


def fuse(fun: Callable | None = None, *, jit: bool = True, static_argnums=()) -> Callable:
    """Fuse the memory-bound chains of `fun` into generated kernels.

    Use bare (`@pfjax.fuse`) or with options (`@pfjax.fuse(jit=False)`). Works outside
    and inside `jax.jit`; the result always equals `fun`'s, fused or not.
    jit: run the rewritten function as one jitted computation when called eagerly.
    static_argnums: positions of non-array arguments (hashable), as in jax.jit.
    """
    if fun is None:
        return functools.partial(fuse, jit=jit, static_argnums=static_argnums)
    if isinstance(static_argnums, int):
        static_argnums = (static_argnums,)
    return Fused(fun, jit=jit, static_argnums=tuple(static_argnums))


def explain(fun: Callable, *args, **kwargs):
    """What pfjax does with `fun` on these arguments: a printable report."""
    from pfjax.report import Report
    fused = fun if isinstance(fun, Fused) else Fused(fun)
    p, _, _ = fused.plan_for(*args, **kwargs)
    return Report(p)


# vmap of a fused group fuses the batched group again.
jaxext.set_refuse(lambda f: fuse(f, jit=False))
