"""The pass pipeline, in order. Each pass maps a kernel to an equivalent kernel."""
from __future__ import annotations

from typing import Callable

from pfjax import gir
from pfjax.passes.collapse import collapse_dims
from pfjax.passes.logistic import logistic_products_to_divisions, tanh_to_logistic
from pfjax.passes.moments import one_pass_moments
from pfjax.passes.order import input_order
from pfjax.passes.reciprocal import per_unit_reciprocal
from pfjax.passes.reuse import keep_reused
from pfjax.passes.simplify import simplify

Pass = Callable[[gir.Kernel, gir.Target], gir.Kernel]

# Loads of the same data are already one node (hash-consing), and values that reach no
# store are never visited: CSE and dead-code elimination come with the graph itself.
PIPELINE: list[tuple[str, Pass]] = [
    ("simplify", lambda k, t: simplify(k)),
    ("logistic", lambda k, t: tanh_to_logistic(k)),
    ("logistic_products", lambda k, t: logistic_products_to_divisions(k)),
    ("input_order", lambda k, t: input_order(k)),
    ("collapse_dims", lambda k, t: collapse_dims(k)),
    ("reciprocal", lambda k, t: per_unit_reciprocal(k)),
    ("moments", one_pass_moments),
    ("reuse", keep_reused),
]


def run_passes(kernel: gir.Kernel, target: gir.Target | None = None, debug: bool = False,
               trace: list[tuple[str, gir.Kernel]] | None = None) -> gir.Kernel:
    target = target or gir.cpu_target({})
    for name, fn in PIPELINE:
        kernel = fn(kernel, target)
        if debug:
            try:
                gir.verify(kernel)
            except gir.GirError as err:
                raise gir.GirError(f"after pass {name}: {err}\n{gir.format_kernel(kernel)}") from err
        if trace is not None:
            trace.append((name, kernel))
    return kernel
