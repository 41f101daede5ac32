"""The pass pipeline, in order. Each pass maps a kernel to an equivalent kernel."""
from __future__ import annotations

from typing import Callable

from pfjax import gir
from pfjax.passes.collapse import collapse_dims
from pfjax.passes.simplify import simplify

Pass = Callable[[gir.Kernel], gir.Kernel]

# Loads of the same data are already one node (hash-consing), and values that reach no
# store are never visited: CSE and dead-code elimination come with the graph itself.
PIPELINE: list[tuple[str, Pass]] = [
    ("simplify", simplify),
    ("collapse_dims", collapse_dims),
]


def run_passes(kernel: gir.Kernel, debug: bool = False,
               trace: list[tuple[str, gir.Kernel]] | None = None) -> gir.Kernel:
    for name, fn in PIPELINE:
        kernel = fn(kernel)
        if debug:
            try:
                gir.verify(kernel)
            except gir.GirError as err:
                raise gir.GirError(f"after pass {name}: {err}\n{gir.format_kernel(kernel)}") from err
        if trace is not None:
            trace.append((name, kernel))
    return kernel
