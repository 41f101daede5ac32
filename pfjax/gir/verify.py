"""Structural checks of a kernel; run after every pass when PFJAX_DEBUG is set."""
from __future__ import annotations

from pfjax.gir.graph import Kernel, Op, toposort
from pfjax.gir.loops import loop_nest
from pfjax.gir.ops import alu_op


class GirError(ValueError):
    pass


def verify(kernel: Kernel) -> None:
    root = kernel.root
    if root.op is not Op.PARALLEL:
        raise GirError(f"kernel root must be parallel, got {root.op}")
    space = root.arg.space
    rdims = root.arg.rdims
    if any(not 0 <= d < len(space) for d in rdims) or list(rdims) != sorted(set(rdims)):
        raise GirError(f"reduced dimensions {rdims} do not fit space {space}")
    nest = loop_nest(kernel) if rdims else None
    for node in toposort(root):
        kept = set(range(len(space))) - set(rdims)
        if node.op is Op.REDUCE and set(node.arg.dims) not in (set(rdims), kept):
            raise GirError(f"reduction over {node.arg.dims}, kernel reduces over {rdims}")
        if node.op is Op.STORE and nest is not None and nest.full[id(node.src[1])] \
                and any(node.arg.view.strides[d] == 0 and space[d] > 1 for d in rdims):
            raise GirError(f"store {node.arg.view} writes a varying value to one element")
        if node.op is Op.PARALLEL:
            if node is not root:
                raise GirError("nested parallel nodes are not supported")
            if any(s.op is not Op.STORE for s in node.src):
                raise GirError("parallel node sources must be stores")
        elif node.op in (Op.LOAD, Op.STORE):
            view = node.arg.view
            if view.shape != space or len(view.strides) != len(space):
                raise GirError(f"{node.op.value} view {view} does not cover space {space}")
            buf = node.src[0]
            if buf.op is not Op.BUFFER:
                raise GirError(f"{node.op.value} must address a buffer")
            size = 1
            for d in buf.arg.shape:
                size *= d
            # A non-empty space must stay inside the buffer (dynamic and guarded loads
            # are checked at run time by their offset and guard).
            if all(space) and not (node.op is Op.LOAD and (node.arg.dynamic or node.arg.fill is not None)):
                last = view.offset + sum(max(0, s * (n - 1)) for s, n in zip(view.strides, space))
                first = view.offset + sum(min(0, s * (n - 1)) for s, n in zip(view.strides, space))
                if first < 0 or last >= size:
                    raise GirError(f"{node.op.value} view {view} leaves buffer {buf.arg}")
            if node.op is Op.STORE and node.src[1].dtype.compute != buf.dtype.compute:
                raise GirError(f"store of {node.src[1].dtype} into {buf.dtype} buffer")
        elif node.op is Op.ALU:
            op = alu_op(node.arg)
            if len(node.src) != op.arity:
                raise GirError(f"{node.arg} takes {op.arity} operands, got {len(node.src)}")
        elif node.op is Op.SELECT and len(node.src) < 3:
            raise GirError("select needs a selector and at least two cases")
