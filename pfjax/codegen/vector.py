"""Which loops the CPU emitters also write over pfjax::vf16 (csrc/include/pfjax/vec.h).

In a `#pragma omp simd` loop g++ reaches the AVX-512 exp and logistic through the
vector-function ABI: a call per vector, with the loop's live vectors spilled around it;
erfc_fast's clamps and selects it if-converts into long mask sequences. Loops that call
them are written a second time over explicit 16-lane vectors, where the same functions
inline as straight AVX-512 code (the scalar loop then only takes the remainder). The expression text
is the scalar one: vf16's operators and math overloads mirror ctypes_table's spellings.
"""
from __future__ import annotations

from pfjax import gir
from pfjax.gir import Op

VECTOR_CALLS = {"exp", "logistic", "erfc"}
VECTOR_LOOPS = True
VECTOR_ALU = {"add", "sub", "mul", "div", "neg", "max", "min", "rsqrt"} | VECTOR_CALLS


def vector_body_ok(body: list[gir.Node], lane_stride) -> bool:
    """The loop body is float32 arithmetic of VECTOR_ALU on contiguous loads and stores
    (lane_stride(node) gives an access's step per lane; loads may also be uniform), with
    an exp or logistic in it: it has a pfjax::vf16 form."""
    calls = False
    for n in body:
        if n.op in (Op.BUFFER, Op.PARALLEL):
            continue
        if n.op is Op.REDUCE:
            if n.dtype is not gir.DType.F32 or n.arg.op not in ("sum", "max", "min"):
                return False
            continue
        if n.dtype is not gir.DType.F32:
            return False
        if n.op in (Op.LOAD, Op.STORE):
            # contiguous, or (loads) the same for every lane: a uniform scalar
            if n.arg.dynamic or n.arg.fill is not None or gir.load_guard(n) is not None \
                    or lane_stride(n) not in ((0, 1) if n.op is Op.LOAD else (1,)):
                return False
        elif n.op is Op.ALU:
            if n.arg not in VECTOR_ALU:
                return False
            calls |= n.arg in VECTOR_CALLS
        elif n.op is not Op.CONST:
            return False
    return calls


def vector_uniform(n: gir.Node, uniform: set[int], local: dict[int, str], lane_stride) -> bool:
    """The value is the same in every lane of a vf16 loop: a constant, a load that does
    not move along the lane, or computed from such values and per-unit ones only."""
    if n.op is Op.CONST:
        return True
    if n.op is Op.LOAD:
        return lane_stride(n) == 0
    return all(id(s) in uniform or id(s) not in local for s in n.src if s.op is not Op.BUFFER)




def vector_decl(n: gir.Node, name: str, expr: str, uniform: bool) -> str:
    """Declaration of a node's value in a vf16 loop, given its scalar expression (for a
    load: the element it reads)."""
    if uniform:
        return f"const float {name} = {expr};"
    if n.op is Op.LOAD:
        return f"const pfjax::vf16 {name} = pfjax::vf16::load(&{expr});"
    return f"const pfjax::vf16 {name} = {expr};"


def vector_store(value: str, uniform: bool, target: str) -> str:
    """Store of a vf16 value (a uniform one broadcast) at the element `target`."""
    return f"({f'pfjax::vf16({value})' if uniform else value}).store(&{target});"
