"""Lower one fusion group to a GIR kernel."""
from __future__ import annotations

import numpy as np

from pfjax import gir
from pfjax.frontend.indexing import IndexMap
from pfjax.frontend.partition import Group
from pfjax.frontend.program import Atom, Eqn, Lit, Var
from pfjax.frontend.rules import RULES, gir_dtype


class LoweringError(Exception):
    """A group could not be lowered; carries the equation that failed."""


class Lowerer:
    def __init__(self, group: Group):
        self.group = group
        self.space = group.space
        self.buffers: dict[int, gir.Node] = {}
        for k, atom in enumerate(group.inputs):
            self.buffers[id(atom) if isinstance(atom, Lit) else atom.id] = gir.buffer(
                k, "in", gir_dtype(atom.aval), tuple(atom.aval.shape))
        # var id -> (equation, output index) for everything computed inside the loop
        self.producers: dict[int, tuple[Eqn, int]] = {}
        for eqn in [*group.recomputed, *group.eqns]:
            self._add_producer(eqn)
        self.memo: dict[tuple[int, IndexMap], list[gir.Node]] = {}

    def _add_producer(self, eqn: Eqn) -> None:
        for k, v in enumerate(eqn.outvars):
            self.producers[v.id] = (eqn, k)
        if eqn.body is not None:
            for inner in eqn.body.eqns:
                self._add_producer(inner)

    def read(self, atom: Atom, imap: IndexMap) -> gir.Node:
        if isinstance(atom, Lit) and np.ndim(atom.val) == 0:
            return gir.const(np.asarray(atom.val).item(), gir_dtype(atom.aval))
        key = id(atom) if isinstance(atom, Lit) else atom.id
        if key in self.producers:
            eqn, k = self.producers[key]
            return self.evaluate(eqn, imap)[k]
        if key not in self.buffers:
            raise LoweringError(f"value {atom} is neither an input nor computed in the group")
        buf = self.buffers[key]
        return gir.load(buf, imap.view(atom.aval.shape, self.space))

    def evaluate(self, eqn: Eqn, imap: IndexMap) -> list[gir.Node]:
        memo_key = (id(eqn), imap)
        if memo_key not in self.memo:
            if eqn.body is not None:
                out = [self.read(a, imap) for a in eqn.body.outvars]
            else:
                try:
                    out = RULES[eqn.name](self, eqn, imap)
                except Exception as err:  # keep the equation in the message
                    raise LoweringError(f"lowering {eqn}: {err}") from err
            self.memo[memo_key] = out
        return self.memo[memo_key]


def lower_group(group: Group) -> gir.Kernel:
    lw = Lowerer(group)
    space = tuple(group.space)
    identity = IndexMap.identity(len(space))
    outputs, stores = [], []
    for k, var in enumerate(group.outputs):
        dtype = gir_dtype(var.aval)
        buf = gir.buffer(k, "out", dtype, space)
        value = gir.cast(lw.read(var, identity), dtype)
        outputs.append(buf)
        stores.append(gir.store(buf, value, identity.view(space, space)))
    inputs = tuple(lw.buffers[id(a) if isinstance(a, Lit) else a.id] for a in group.inputs)
    return gir.Kernel(gir.parallel(gir.Parallel(space), stores), inputs, tuple(outputs))
