"""Readable text form of a GIR kernel."""
from __future__ import annotations

from pfjax.gir.graph import Kernel, Node, Op, is_tile_load, load_guard, load_offset, toposort


def format_kernel(kernel: Kernel) -> str:
    par = kernel.parallel
    lines = [f"kernel {kernel.name}",
             f"  parallel space=({','.join(map(str, par.space))}) chunk={par.chunk} "
             f"vector={par.vector}" + (" nontemporal" if par.nontemporal else "")
             + (f" reduce_dims={par.rdims}" if par.rdims else "")
             + (f" block={par.block}" if par.block > 1 else "")
             + (f" strip={par.strip}" if par.block > 1 and not par.rdims else "")
             + (f" split={par.split}" if par.split > 1 else "")]
    names: dict[int, str] = {}
    for node in toposort(kernel.root):
        if node.op is Op.PARALLEL:
            continue
        if node.op is Op.BUFFER:
            names[id(node)] = f"%{node.arg.role}{node.arg.index}"
            lines.append(f"  {names[id(node)]} = buffer {node.dtype}[{','.join(map(str, node.arg.shape))}] @{node.level}")
            continue
        srcs = " ".join(names[id(s)] for s in node.src)
        if node.op is Op.STORE:
            buf, val = (names[id(s)] for s in node.src)
            names[id(node)] = f"{buf}!"
            lines.append(f"  store.{node.arg.src_level}.{node.arg.dst_level} {buf}{node.arg.view} <- {val}")
            continue
        name = f"%{len(names)}"
        names[id(node)] = name
        if is_tile_load(node):
            text = f"load.{node.arg.src_level}.{node.arg.dst_level} {names[id(node.src[0])]}"
        elif node.op is Op.LOAD:
            text = f"load.{node.arg.src_level}.{node.arg.dst_level} {names[id(node.src[0])]}{node.arg.view}"
            if load_offset(node) is not None:
                text += f" +{names[id(load_offset(node))]}"
            if load_guard(node) is not None:
                text += f" if {names[id(load_guard(node))]} else {node.arg.fill!r}"
        elif node.op is Op.CONST:
            text = f"const {node.arg!r}"
        elif node.op is Op.CAST:
            text = f"cast {srcs}"
        elif node.op is Op.ALU:
            text = f"{node.arg} {srcs}"
        elif node.op is Op.SELECT:
            text = f"select {srcs}"
        elif node.op is Op.REDUCE:
            text = f"reduce.{node.arg.op} {srcs} dims={node.arg.dims}"
        elif node.op is Op.INDEX:
            text = f"index {node.arg}"
        else:
            text = f"{node.op.value} {srcs} {node.arg!r}"
        lines.append(f"  {name} = {text} : {node.dtype} @{node.level}")
    return "\n".join(lines)
