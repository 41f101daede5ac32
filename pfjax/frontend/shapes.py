"""Reshapes as index maps: shapes that split or merge the dimensions of a common, finer
iteration space.

A row-major shape V *coarsens* a shape F when every V dimension is a run of consecutive F
dimensions (equivalently: V's suffix products are among F's). Then V's index is an affine
function of F's, so a reshape between two coarsenings of the group's space costs no copy:
both sides are read and written through strided views of that space. Two shapes of the
same size can share a space when their suffix products form a divisibility chain.
"""
from __future__ import annotations

import math


def suffix_products(shape) -> list[int]:
    out, acc = [1], 1
    for n in reversed(shape):
        acc *= n
        out.append(acc)
    return out[::-1]  # out[k] = prod(shape[k:])


def groups(coarse, fine) -> list[list[int]] | None:
    """For each dimension of `coarse`, the dimensions of `fine` it spans (None when coarse
    is not a coarsening of fine). Dimensions of extent 1 span nothing."""
    if math.prod(coarse) != math.prod(fine):
        return None
    fp = suffix_products(fine)
    cp = suffix_products(coarse)
    out = []
    for j, n in enumerate(coarse):
        if n == 1:
            out.append([])
            continue
        hi, lo = cp[j], cp[j + 1]
        dims = [k for k in range(len(fine)) if fp[k] <= hi and fp[k + 1] >= lo and fine[k] != 1]
        if math.prod(fine[k] for k in dims) != n or (dims and (fp[dims[0]] != hi or fp[dims[-1] + 1] != lo)):
            return None
        out.append(dims)
    return out


def refine(a, b) -> tuple[int, ...] | None:
    """The coarsest shape both a and b coarsen (a itself when b coarsens a)."""
    a, b = tuple(a), tuple(b)
    if math.prod(a) != math.prod(b):
        return None
    if groups(b, a) is not None:
        return a
    if groups(a, b) is not None:
        return b
    bounds = sorted(set(suffix_products(a)) | set(suffix_products(b)), reverse=True)
    if 0 in bounds:  # empty: no common refinement to speak of (nothing is computed)
        return None
    if any(big % small for big, small in zip(bounds, bounds[1:])):
        return None
    return tuple(big // small for big, small in zip(bounds, bounds[1:]))


def natural_rows(shape, space, dims=None) -> list[tuple[tuple[int, ...], int]] | None:
    """Index-map rows that read a value of `shape` laid over the dimensions `dims` of
    `space` (default: all) in row-major order; None when shape does not coarsen them."""
    dims = list(range(len(space))) if dims is None else list(dims)
    sub = [space[d] for d in dims]
    spans = groups(shape, sub)
    if spans is None:
        return None
    rows = []
    for span in spans:
        coeffs = [0] * len(space)
        stride = 1
        for k in reversed(span):
            coeffs[dims[k]] = stride
            stride *= sub[k]
        rows.append((tuple(coeffs), 0))
    return rows


def split_flat(terms, offset: int, shape, extents) -> list[tuple[tuple[int, ...], int]] | None:
    """Rows reading `shape` at the flat row-major position sum(terms[d] * i_d) + offset,
    where i_d ranges over extents[d]; None when that is not affine (a carry between
    dimensions)."""
    strides = suffix_products(shape)[1:]
    coeffs = [[0] * len(terms) for _ in shape]
    reach = [0] * len(shape)
    offs = []
    rem = offset
    for k, s in enumerate(strides):
        offs.append(rem // s)
        rem %= s
    for d, c in enumerate(terms):
        if c == 0 or extents[d] == 1:
            continue
        ks = [k for k, s in enumerate(strides) if shape[k] != 1 and c % s == 0 and c // s < shape[k]]
        if not ks:
            return None
        k = ks[0]
        coeffs[k][d] = c // strides[k]
        reach[k] += c // strides[k] * (extents[d] - 1)
    if any(offs[k] + reach[k] >= max(1, shape[k]) for k in range(len(shape)) if reach[k]):
        return None
    return [(tuple(coeffs[k]), offs[k]) for k in range(len(shape))]
