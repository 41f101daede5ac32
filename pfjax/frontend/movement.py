"""Lowering rules of the data-movement primitives.

Each reads its operand at a transformed index map, so a transpose, slice or reversal is a
strided view and costs no copy. Concatenation and padding select per element which piece
(or the padding value) an output element comes from; each piece is read under a guard that
holds only where it is selected, so every output element is read once and written once.
Dynamic slices add their run-time start to the map.
"""
from __future__ import annotations

from pfjax import gir
from pfjax.gir import DType
from pfjax.frontend.indexing import IndexMap
from pfjax.frontend.rules import gir_dtype, rule

I64 = DType.I64


def _i64(value: int) -> gir.Node:
    return gir.const(int(value), I64)


def _cmp(op: str, a: gir.Node, b: gir.Node) -> gir.Node:
    return gir.alu(op, DType.BOOL, a, b)


def _all(conds: list[gir.Node]) -> gir.Node | None:
    out = None
    for c in conds:
        out = c if out is None else gir.alu("and", DType.BOOL, out, c)
    return out


def _scalar(lw, atom, imap: IndexMap) -> gir.Node:
    """A rank-0 operand (a start index, a padding value): read the same everywhere."""
    return lw.read(atom, IndexMap((), imap.space_rank))


@rule("transpose")
def _transpose(lw, eqn, imap):
    (x,) = eqn.invars
    perm = eqn.params["permutation"]
    inverse = [0] * len(perm)
    for d, p in enumerate(perm):  # output dim d is operand dim p
        inverse[p] = d
    return [lw.read(x, imap.pick(inverse))]


@rule("slice")
def _slice(lw, eqn, imap):
    (x,) = eqn.invars
    start = eqn.params["start_indices"]
    strides = eqn.params["strides"] or (1,) * len(start)
    return [lw.read(x, imap.affine([(d, strides[d], start[d]) for d in range(len(start))]))]


@rule("rev")
def _rev(lw, eqn, imap):
    (x,) = eqn.invars
    shape = x.aval.shape
    dims = set(eqn.params["dimensions"])
    return [lw.read(x, imap.affine([(d, -1, shape[d] - 1) if d in dims else (d, 1, 0)
                                    for d in range(len(shape))]))]


@rule("tile")
def _tile(lw, eqn, imap):
    # out[i] = x[i mod n] along each repeated dimension: the remainder is added at run time.
    (x,) = eqn.invars
    shape = x.aval.shape
    reps = eqn.params["reps"]
    rank = len(shape)
    lead = len(reps) - rank  # reps may prepend new leading dimensions
    spec = [(lead + d, 0 if reps[lead + d] != 1 else 1, 0) for d in range(rank)]
    at = imap.affine(spec)
    for d in range(rank):
        if reps[lead + d] != 1:
            where = lw.index_value(imap, lead + d)
            at = at.shifted(d, gir.alu("rem", I64, where, _i64(shape[d])))
    return [lw.read(x, at)]


@rule("iota")
def _iota(lw, eqn, imap):
    return [gir.cast(lw.index_value(imap, eqn.params["dimension"]), gir_dtype(eqn.outvars[0].aval))]


def _select_pieces(lw, where: gir.Node, pieces, total: int) -> gir.Node:
    """The value of a concatenation along `where` (the output index along its axis):
    pieces are (operand, map it is read at, lo, hi), covering [0, total) in order. Each is
    read under a guard that holds only on its own range, so memory is read once."""
    value = None
    for x, at, lo, hi in pieces:
        conds = ([_cmp("ge", where, _i64(lo))] if lo > 0 else []) + \
            ([_cmp("lt", where, _i64(hi))] if hi < total else [])
        guard = _all(conds)
        v = lw.read(x, at.guarded(guard) if guard is not None else at)
        value = v if value is None else gir.select(_cmp("ge", where, _i64(lo)), [value, v])
    return value


@rule("concatenate")
def _concatenate(lw, eqn, imap):
    dim = eqn.params["dimension"]
    pieces, start = [], 0
    for x in eqn.invars:
        n = x.aval.shape[dim]
        if n:
            at = imap.affine([(d, 1, -start if d == dim else 0) for d in range(len(x.aval.shape))])
            pieces.append((x, at, start, start + n))
        start += n
    return [_select_pieces(lw, lw.index_value(imap, dim), pieces, start)]


@rule("stack")
def _stack(lw, eqn, imap):
    # A new axis: element k along it is operand k (a concatenation of pieces of one).
    axis = eqn.params["axis"]
    rank = len(eqn.outvars[0].aval.shape)
    at = imap.pick([d for d in range(rank) if d != axis])
    pieces = [(x, at, k, k + 1) for k, x in enumerate(eqn.invars)]
    return [_select_pieces(lw, lw.index_value(imap, axis), pieces, len(pieces))]


@rule("pad")
def _pad(lw, eqn, imap):
    x, padding_value = eqn.invars
    spec, conds, quotients = [], [], {}
    for d, (lo, hi, interior) in enumerate(eqn.params["padding_config"]):
        n = x.aval.shape[d]
        where = lw.index_value(imap, d) if lo > 0 or hi > 0 or interior else None
        if interior == 0:  # negative lo / hi crop: no condition on that side
            spec.append((d, 1, -lo))
            conds += ([_cmp("ge", where, _i64(lo))] if lo > 0 else []) + \
                ([_cmp("lt", where, _i64(lo + n))] if hi > 0 else [])
            continue
        # Interior padding: the operand index (i - lo) / (interior + 1) is not affine; it
        # is added at run time and read where (i - lo) is a non-negative multiple of the step.
        step = _i64(interior + 1)
        t = gir.alu("sub", I64, where, _i64(lo))
        quotients[d] = gir.alu("div", I64, t, step)
        conds += [_cmp("ge", t, _i64(0)), _cmp("eq", gir.alu("rem", I64, t, step), _i64(0)),
                  _cmp("lt", quotients[d], _i64(n))]
        spec.append((d, 0, 0))
    at = imap.affine(spec)
    for d, q in quotients.items():
        at = at.shifted(d, q)
    guard = _all(conds)
    if guard is None:
        return [lw.read(x, at)]
    pad = gir.cast(_scalar(lw, padding_value, imap), gir_dtype(eqn.outvars[0].aval))
    return [gir.select(guard, [pad, lw.read(x, at.guarded(guard))])]


def _starts(lw, eqn, imap, atoms, shape, sizes) -> list[int | gir.Node]:
    """Start indices clamped so the window fits (XLA's semantics): python ints when known
    at trace time, else int64 GIR values."""
    out = []
    for atom, n, size in zip(atoms, shape, sizes):
        v = _scalar(lw, atom, imap)
        hi = max(0, n - size)
        if v.op is gir.Op.CONST:
            out.append(int(min(max(int(v.arg), 0), hi)))
            continue
        v = gir.cast(v, I64)
        out.append(gir.alu("min", I64, gir.alu("max", I64, v, _i64(0)), _i64(hi)))
    return out


def _offset_map(imap: IndexMap, starts, sign: int) -> IndexMap:
    """Rows shifted by sign * start (constant starts fold into the affine part)."""
    at = imap.affine([(d, 1, sign * s if isinstance(s, int) else 0) for d, s in enumerate(starts)])
    for d, s in enumerate(starts):
        if not isinstance(s, int):
            at = at.shifted(d, s if sign > 0 else gir.alu("neg", I64, s))
    return at


@rule("dynamic_slice")
def _dynamic_slice(lw, eqn, imap):
    x, *start_atoms = eqn.invars
    sizes = eqn.params["slice_sizes"]
    starts = _starts(lw, eqn, imap, start_atoms, x.aval.shape, sizes)
    return [lw.read(x, _offset_map(imap, starts, 1))]


@rule("dynamic_update_slice")
def _dynamic_update_slice(lw, eqn, imap):
    x, update, *start_atoms = eqn.invars
    sizes = update.aval.shape
    starts = _starts(lw, eqn, imap, start_atoms, x.aval.shape, sizes)
    conds = []
    for d, (s, size) in enumerate(zip(starts, sizes)):
        if size == x.aval.shape[d]:
            continue  # the window spans the whole dimension
        where = lw.index_value(imap, d)
        lo = _i64(s) if isinstance(s, int) else s
        hi = _i64(s + size) if isinstance(s, int) else gir.alu("add", I64, s, _i64(size))
        conds += [_cmp("ge", where, lo), _cmp("lt", where, hi)]
    if 0 in sizes:
        return [lw.read(x, imap)]
    inside = _all(conds)
    at = _offset_map(imap, starts, -1)
    if inside is None:
        return [lw.read(update, at)]
    return [gir.select(inside, [lw.read(x, imap), lw.read(update, at.guarded(inside))])]
