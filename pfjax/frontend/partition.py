"""Partitioning: group fusable equations into kernels that move fewer bytes than apart.

Producers and consumers over the same iteration space join one group unless that would
create a cycle through an equation outside it; siblings over the same space that read a
common input merge afterwards. Small values that are cheap to recompute (broadcasts,
converts, scalar arithmetic) are recomputed inside a consumer's loop instead of being
read from memory. Every equation left out gets a reason, for `pfjax.explain`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pfjax.frontend.program import Atom, Eqn, Lit, Program, Var
from pfjax.frontend.shapes import groups, refine
from pfjax.frontend.rules import (CHEAP_TO_RECOMPUTE, MOVEMENT, REDUCTIONS, RULES,
                                  TRANSCENDENTAL, cannot_lower, take_along_axis, unit_reshape)
from pfjax.gir.dtypes import BY_NAME

_MOVEMENT_ONLY = {"broadcast_in_dim", "convert_element_type", "copy", "copy_p", "reshape",
                  "squeeze", *MOVEMENT}


# A group's iteration space: a shape, and the axes its reductions run over (None: none).
Space = tuple[tuple[int, ...], "tuple[int, ...] | None"]


def eqn_space(eqn: Eqn) -> Space:
    if eqn.body is None and eqn.name in REDUCTIONS:
        return tuple(eqn.invars[0].aval.shape), tuple(sorted(eqn.params["axes"]))
    if eqn.body is None and eqn.name == "gather":  # picks along a row: reduces over it
        return tuple(eqn.invars[0].aval.shape), (take_along_axis(eqn),)
    if eqn.body is None and eqn.name in ("reshape", "squeeze"):  # must fit both shapes
        fine = refine(eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape)
        return (fine if fine is not None else tuple(eqn.outvars[0].aval.shape)), None
    return tuple(eqn.outvars[0].aval.shape), None


def is_unit_shape(shape: tuple[int, ...], space: Space) -> bool:
    """A per-unit value of a reduction space: its kept dimensions (coarsened or not),
    with the reduced ones dropped or kept as 1."""
    full, axes = space
    if not axes:
        return False
    kept = tuple(n for d, n in enumerate(full) if d not in axes and n != 1)
    return groups(tuple(n for n in shape if n != 1), kept) is not None


def _axes_in(space: Space, fine: tuple[int, ...]) -> tuple[int, ...] | None:
    shape, axes = space
    if axes is None or tuple(shape) == fine:
        return axes
    spans = groups(shape, fine)
    return tuple(sorted(k for d in axes for k in spans[d]))


def _is_final(a: Space, b: Space) -> bool:
    """b reduces a per-unit value of row-style reduction space a over all its units (the
    mean of per-row losses): one kernel combines it after its units are done."""
    shape, axes = b
    return bool(a[1]) and axes is not None and len(a[0]) - 1 in a[1] \
        and is_unit_shape(shape, a) and set(axes) >= {d for d, n in enumerate(shape) if n != 1}


def join(a: Space, b: Space) -> Space | None:
    """The space of a group holding work over both spaces, if one kernel can."""
    if a[0] == b[0] and (a[1] is None or b[1] is None or a[1] == b[1]):
        return a[0], a[1] if a[1] is not None else b[1]
    for x, y in ((a, b), (b, a)):
        if y[1] is None and (is_unit_shape(y[0], x) or (x[1] and y[0] == ())):
            return x
        if _is_final(x, y):
            return x
    fine = refine(a[0], b[0])  # a reshape between the two: iterate over the finer space
    if fine is None:
        return None
    ax, bx = _axes_in(a, fine), _axes_in(b, fine)
    if ax is not None and bx is not None and ax != bx or ax == () or bx == ():
        return None
    return fine, ax if ax is not None else bx


@dataclass(eq=False)
class Group:
    space: tuple[int, ...]
    axes: tuple[int, ...] | None = None                   # reduced axes of the space
    eqns: list[Eqn] = field(default_factory=list)        # members, in program order
    recomputed: list[Eqn] = field(default_factory=list)  # outside producers recomputed inside
    inputs: list[Atom] = field(default_factory=list)
    outputs: list[Var] = field(default_factory=list)

    @property
    def size(self) -> int:
        return math.prod(self.space)


@dataclass
class Partition:
    groups: list[Group]
    left_out: list[tuple[Eqn, str]]  # equations not fused, with the reason


def _nbytes(aval) -> int:
    return math.prod(aval.shape) * np.dtype(aval.dtype).itemsize


def why_not_fusable(eqn: Eqn) -> str | None:
    if eqn.body is not None:
        for inner in eqn.body.eqns:
            reason = why_not_fusable(inner)
            if reason:
                return f"{eqn.name} body: {reason}"
    elif eqn.name not in RULES:
        return f"no fusion rule for primitive '{eqn.name}'"
    elif cannot_lower(eqn):
        return cannot_lower(eqn)
    for atom in [*eqn.invars, *eqn.outvars]:
        dtype = getattr(atom.aval, "dtype", None)
        if dtype is None or not hasattr(atom.aval, "shape"):
            return f"operand {atom} is not an array"
        if np.dtype(dtype).name not in BY_NAME:
            return f"dtype {np.dtype(dtype).name} is not supported"
    shapes = {tuple(v.aval.shape) for v in eqn.outvars}
    if len(shapes) != 1:
        return "outputs of different shapes"
    return None


def _is_transcendental(eqn: Eqn) -> bool:
    if eqn.body is not None:
        return any(_is_transcendental(e) for e in eqn.body.eqns)
    return eqn.name in TRANSCENDENTAL


def partition(program: Program, absorb: bool = True) -> Partition:
    """Fusion groups of `program`. With `absorb`, small groups feeding one larger group are
    computed inside it (through broadcasts and reshapes); the caller retries without when
    that makes a group impossible to lower."""
    eqns = program.eqns
    reasons: dict[int, str] = {}
    producer: dict[int, int] = {}
    for i, eqn in enumerate(eqns):
        for v in eqn.outvars:
            producer[v.id] = i
        reason = why_not_fusable(eqn)
        if reason:
            reasons[i] = reason

    group_of: dict[int, int] = {}
    spaces: list[tuple[int, ...]] = []
    # var id -> bitmask of the groups it depends on. A group runs as one kernel, so what
    # it produces depends on everything any of its members reads.
    dep: dict[int, int] = {}
    gdep: dict[int, int] = {}

    def deps_of(eqn):
        m = 0
        for a in eqn.invars:
            if isinstance(a, Var):
                m |= dep.get(a.id, 0)
        return m

    for i, eqn in enumerate(eqns):
        if i in reasons:
            m = deps_of(eqn)
            for v in eqn.outvars:
                dep[v.id] = m
            continue
        space = eqn_space(eqn)
        candidates = []
        for a in eqn.invars:
            if isinstance(a, Var) and a.id in producer and producer[a.id] in group_of:
                g = group_of[producer[a.id]]
                if join(spaces[g], space) and g not in candidates:
                    candidates.append(g)
        chosen = None
        for g in list(candidates):
            if _column_style(space) and spaces[g][1] is None:
                candidates.remove(g)  # see _merge_siblings: only sole producers join
        for g in candidates:
            cyclic = any(isinstance(a, Var) and dep.get(a.id, 0) >> g & 1
                         and group_of.get(producer.get(a.id, -1)) != g for a in eqn.invars)
            if not cyclic:
                chosen = g
                break
        if chosen is None:
            chosen = len(spaces)
            spaces.append(space)
        spaces[chosen] = join(spaces[chosen], space)
        group_of[i] = chosen
        m = deps_of(eqn) | (1 << chosen)
        if m & ~gdep.get(chosen, 0) and gdep.get(chosen):
            # The group now waits on more: what it produced earlier does too.
            gdep[chosen] = gdep[chosen] | m
            dep = _var_deps(eqns[:i + 1], group_of)
        else:
            gdep[chosen] = gdep.get(chosen, 0) | m
            for v in eqn.outvars:
                dep[v.id] = gdep[chosen]

    program_outs = {a.id for a in program.outvars if isinstance(a, Var)}
    group_of = _merge_siblings(eqns, group_of, spaces, producer, program_outs, absorb)
    return _finish(program, eqns, group_of, spaces, reasons, producer)



def _var_deps(eqns, group_of) -> dict[int, int]:
    """var id -> bitmask of the groups it depends on, through any path; a group's results
    depend on everything its members read (it runs as one kernel)."""
    gdep: dict[int, int] = {}
    while True:
        dep: dict[int, int] = {}
        changed = False
        for i, eqn in enumerate(eqns):
            m = 0
            for a in eqn.invars:
                if isinstance(a, Var):
                    m |= dep.get(a.id, 0)
            if i in group_of:
                g = group_of[i]
                m |= 1 << g
                if m & ~gdep.get(g, 0):
                    gdep[g] = gdep.get(g, 0) | m
                    changed = True
                m = gdep[g]
            for v in eqn.outvars:
                dep[v.id] = m
        if not changed:
            return dep


def _can_merge(a: int, b: int, eqns, group_of, producer, dep) -> bool:
    """Merging is legal unless a value outside both groups sits on a path between them."""
    both = (1 << a) | (1 << b)
    for i, g in group_of.items():
        if g != a and g != b:
            continue
        for u in eqns[i].invars:
            if isinstance(u, Var) and group_of.get(producer.get(u.id, -1)) not in (a, b) \
                    and dep.get(u.id, 0) & both:
                return False
    return True


def _feeds_only(eqns, group_of, producer, program_outs) -> dict[int, int | None]:
    """group -> the one group that reads its results (None: several, or the program)."""
    feeds: dict[int, int | None] = {}
    for i, eqn in enumerate(eqns):
        for a in eqn.invars:
            if isinstance(a, Var) and a.id in producer:
                h = group_of.get(producer[a.id])
                if h is not None and h != group_of.get(i):
                    g = group_of.get(i)
                    feeds[h] = g if feeds.get(h, g) == g else None
    for v in program_outs:
        h = group_of.get(producer.get(v, -1))
        if h is not None:
            feeds[h] = None
    return feeds


def _absorb(x: int, y: int, spaces, feeds, moved: set[tuple[int, int]],
            cheap: set[int]) -> Space | None:
    """An elementwise group whose results only one group reads is computed inside that
    group's loop instead when it is much smaller (a weight or a per-column statistic being
    prepared), when that group reads it through data movement (a slice, transpose,
    concatenation or padding of it: each of its elements is then computed about once), or
    when it is only cheap index arithmetic (a causal mask from iotas)."""
    for small, big in ((x, y), (y, x)):
        if feeds.get(small) == big and spaces[small][1] is None and (
                8 * math.prod(spaces[small][0]) <= math.prod(spaces[big][0])
                or (small, big) in moved or small in cheap):
            return spaces[big]
    return None


def _column_style(space: Space) -> bool:
    shape, axes = space
    return bool(axes) and len(shape) - 1 not in axes


def _column_blocked(x: int, y: int, spaces, feeds) -> bool:
    """A column reduction walks its rows with strided, column-block accesses: good for
    reading, poor for heavy elementwise work with results of its own. An elementwise group
    joins it only when the reduction is the sole reader of its results."""
    for col, other in ((x, y), (y, x)):
        if _column_style(spaces[col]) and spaces[other][1] is None \
                and spaces[other][0] == spaces[col][0] and feeds.get(other) != col:
            return True
    return False


def _merge_siblings(eqns, group_of, spaces, producer, program_outs, absorb) -> dict[int, int]:
    """Merge groups over the same space that feed each other (an equation can join only
    one producer's group in the first pass) or read a common input, when legal."""
    while True:
        dep = _var_deps(eqns, group_of)
        pairs: list[tuple[int, int]] = []
        readers: dict[int, set[int]] = {}
        moved: set[tuple[int, int]] = set()  # (producer group, group moving its data)
        cheap = set(group_of.values()) - {g for i, g in group_of.items() if not _cheap(eqns[i])}
        for i, eqn in enumerate(eqns):
            if i not in group_of:
                continue
            g = group_of[i]
            for a in eqn.invars:
                if not isinstance(a, Var):
                    continue
                h = group_of.get(producer.get(a.id, -1))
                if h is not None and h != g:
                    pairs.append((min(g, h), max(g, h)))
                    if eqn.name in MOVEMENT:
                        moved.add((h, g))
                elif h is None or h != g:
                    readers.setdefault(a.id, set()).add(g)
        for gs in readers.values():
            gs = sorted(gs)
            pairs += [(x, y) for k, x in enumerate(gs) for y in gs[k + 1:]]
        sole_reader = _feeds_only(eqns, group_of, producer, program_outs)
        feeds = {g: h for g, h in sole_reader.items() if h is not None and absorb}
        pairs += [(min(g, h), max(g, h)) for g, h in feeds.items()]
        for x, y in dict.fromkeys(pairs):
            if _column_blocked(x, y, spaces, sole_reader):
                continue
            joined = join(spaces[x], spaces[y]) or _absorb(x, y, spaces, feeds, moved, cheap)
            if joined and _can_merge(x, y, eqns, group_of, producer, dep):
                group_of = {i: (x if g == y else g) for i, g in group_of.items()}
                spaces[x] = joined
                break
        else:
            return group_of


def _finish(program, eqns, group_of, spaces, reasons, producer) -> Partition:
    users: dict[int, set[int]] = {}
    for i, eqn in enumerate(eqns):
        for a in eqn.invars:
            if isinstance(a, Var):
                users.setdefault(a.id, set()).add(i)
    program_outs = {a.id for a in program.outvars if isinstance(a, Var)}

    members: dict[int, list[int]] = {}
    for i, g in sorted(group_of.items()):
        members.setdefault(g, []).append(i)

    # Phase 1 decides which groups are worth a kernel, recomputing only values no group
    # computes; phase 2 may then recompute values of groups that were dropped. A value
    # computed by a kept group is never recomputed elsewhere (its inputs may be internal).
    unfusable = set(reasons)
    candidates: list[tuple[Group, set[int]]] = []
    for g, idx in sorted(members.items()):
        group = Group(spaces[g][0], spaces[g][1], [eqns[i] for i in idx])
        inside = set(idx)
        for i in idx:
            for v in eqns[i].outvars:
                if v.id in program_outs or users.get(v.id, set()) - inside:
                    group.outputs.append(v)
        candidates.append((group, inside))
    # Groups whose results only the pieces of a split read are computed inside those
    # pieces' kernels: their readers are judged with them recomputed (a lone slice of
    # exp(x) is then a kernel, not "only data movement").
    dissolved: set[int] = set()
    for group, inside in candidates:
        _collect_inputs(group, eqns, inside, producer, unfusable | set(group_of))
        if group.outputs and not _not_worth_it(group) and _read_only_through_movement(
                group, inside, users, program_outs, eqns, group_of):
            dissolved.update(inside)
    kept: list[tuple[Group, set[int]]] = []
    for group, inside in candidates:
        if inside <= dissolved:
            for i in inside:
                reasons[i] = "computed inside the kernels that read it through data movement"
            continue
        group.inputs = []
        _collect_inputs(group, eqns, inside, producer,
                        unfusable | (set(group_of) - dissolved), dissolved=dissolved)
        why_not = _not_worth_it(group)
        if why_not or not group.outputs:
            for i in inside:
                reasons[i] = why_not or "result unused"
            continue
        kept.append((group, inside))
    kept_members = set().union(*(inside for _, inside in kept)) if kept else set()
    groups: list[Group] = []
    # A value that depends on a group (through anything) cannot be recomputed inside it.
    dep = _var_deps(eqns, {i: k for k, (_, inside) in enumerate(kept) for i in inside})
    for k, (group, inside) in enumerate(kept):
        group.inputs, group.recomputed = [], []
        _collect_inputs(group, eqns, inside, producer, unfusable | kept_members,
                        lambda atom, k=k: not dep.get(atom.id, 0) >> k & 1, dissolved)
        groups.append(group)
    left_out = [(eqns[i], reasons[i]) for i in sorted(reasons)]
    return Partition(groups, left_out)


def _read_only_through_movement(group: Group, inside, users, program_outs, eqns,
                                group_of) -> bool:
    """An elementwise group whose results several other groups read, all through data
    movement (the pieces of a split): each reader computes the part it reads instead."""
    if group.axes is not None or any(v.id in program_outs for v in group.outputs):
        return False
    readers = set()
    for v in group.outputs:
        for u in users.get(v.id, set()) - inside:
            if eqns[u].name not in MOVEMENT or u not in group_of:
                return False
            readers.add(group_of[u])
    return len(readers) > 1


def _collect_inputs(group: Group, eqns, inside: set[int], producer, blocked: set[int],
                    acyclic=lambda atom: True, dissolved: set[int] = frozenset()) -> None:
    """Inputs of the group; small cheap producers outside it are recomputed instead."""
    seen: set[int] = set()
    recomputed: set[int] = set()

    def visit(atom: Atom):
        if isinstance(atom, Lit):
            if np.ndim(atom.val) != 0 and not any(a is atom for a in group.inputs):
                group.inputs.append(atom)
            return
        if atom.id in seen:
            return
        seen.add(atom.id)
        i = producer.get(atom.id)
        if i is not None and i not in inside and i not in blocked and (i in dissolved or (
                _cheap(eqns[i]) and math.prod(atom.aval.shape) < group.size)) and acyclic(atom):
            if i not in recomputed:
                recomputed.add(i)
                for a in eqns[i].invars:
                    visit(a)
            return
        if i is None or i not in inside:
            group.inputs.append(atom)

    for i in sorted(inside):
        for a in eqns[i].invars:
            visit(a)
    group.recomputed = [eqns[i] for i in sorted(recomputed)]


def _cheap(eqn: Eqn) -> bool:
    if eqn.name in ("reshape", "squeeze"):
        return unit_reshape(eqn)  # other reshapes need a matching iteration space
    return eqn.body is None and eqn.name in CHEAP_TO_RECOMPUTE


def _not_worth_it(group: Group) -> str | None:
    if not group.space:
        return "scalar computation: left to XLA"
    if group.size == 0:
        return None
    if group.axes is not None and any(group.space[d] != 1 for d in group.axes):
        return None  # a reduction kernel reads its input once, however short the chain
    work = [e for e in group.eqns if e.name not in _MOVEMENT_ONLY]
    if not work and not group.recomputed:
        return "only data movement: left to XLA"
    if len(work) <= 1 and not any(_is_transcendental(e) for e in group.eqns) \
            and len(group.eqns) + len(group.recomputed) <= 1:
        return "single cheap op: nothing to gain, left to XLA"
    return None


def bytes_moved(group: Group) -> tuple[int, int]:
    """(fused, unfused) bytes: each input read once and each output written once, vs every
    equation reading its operands and writing its results."""
    fused = sum(_nbytes(a.aval) for a in group.inputs if isinstance(a, Var) or np.ndim(a.val))
    fused += sum(_nbytes(v.aval) for v in group.outputs)
    unfused = 0
    for eqn in [*group.recomputed, *group.eqns]:
        unfused += sum(_nbytes(a.aval) for a in eqn.invars if isinstance(a, Var))
        unfused += sum(_nbytes(v.aval) for v in eqn.outvars)
    return fused, unfused
