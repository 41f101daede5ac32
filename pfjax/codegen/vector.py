"""Which loops the CPU emitters also write over pfjax::vf16 (csrc/include/pfjax/vec.h).

In a `#pragma omp simd` loop g++ reaches the AVX-512 exp and logistic through the
vector-function ABI: a call per vector, with the loop's live vectors spilled around it;
erfc_fast's clamps and selects it if-converts into long mask sequences; math.h's log
splits exponent and mantissa with a dozen integer operations where AVX-512 has getexp and
getmant. It gives a reduction one vector accumulator: a chain of dependent adds. And it
converts half-precision floats in software. Such loops are written a second time over
explicit 16-lane vectors, where the functions inline as straight AVX-512 code, a
reduction keeps several accumulators and halves convert in hardware (the scalar loop then
only takes the remainder). The expression text is the scalar one: vf16's operators and
math overloads mirror ctypes_table's spellings.
"""
from __future__ import annotations

from pfjax import gir
from pfjax.codegen.ctypes_table import literal, register_type
from pfjax.gir import Op

VECTOR_CALLS = {"exp", "logistic", "erfc", "log", "log1p", "one_plus_exp2"}
# Calls through the vector ABI (declare simd) and their inline scalar twins (fastmath.h)
_TAIL_CALLS = {"pfjax::math::exp_v(": "pfjax::math::exp_tail(",
               "pfjax::math::logistic_v(": "pfjax::math::logistic_tail(",
               "pfjax::math::exp_minus_max(": "pfjax::math::exp_minus_max_tail("}
VECTOR_LOOPS = True
# Independent accumulators of a vf16 reduction loop without calls (with calls: 2; the
# calls' own latency already overlaps vectors).
VECTOR_WAYS = 4
VECTOR_ALU = {"add", "sub", "mul", "div", "neg", "max", "min", "rsqrt", "sqrt", "abs"} | VECTOR_CALLS
# float32 ops whose scalar spelling is a std:: function (not overloadable for vf16)
_VECTOR_STD = {"sqrt": "pfjax::sqrt({0})", "abs": "pfjax::abs({0})"}
# float32 operands, bool result (a pfjax::vb16 lane mask)
VECTOR_COMPARE = {"eq", "ne", "lt", "le", "gt", "ge", "is_finite"}
# bool operands and result (ctypes_table spells them with C++'s logical operators)
VECTOR_LOGIC = {"not", "and", "or", "xor", "add", "mul", "max", "min", "eq", "ne"}


# Types whose values a vf16 loop holds as float lanes: float32, and the half-precision
# floats, which compute in float32 (DType.compute) and only convert at loads, stores and
# casts (pfjax::load_bf16, store_f16, round_bf16, ...).
VECTOR_FLOATS = (gir.DType.F32, gir.DType.BF16, gir.DType.F16)
_HALF = {gir.DType.BF16: "bf16", gir.DType.F16: "f16"}


def vector_node_ok(n: gir.Node) -> bool:
    """A value node of a vf16 loop: float arithmetic (VECTOR_FLOATS), or a bool predicate
    (a compare, logic on predicates) that only selects between float values."""
    floats, boolean = VECTOR_FLOATS, gir.DType.BOOL
    if n.op is Op.CONST:
        return n.dtype in floats or n.dtype is boolean
    if n.op is Op.SELECT:
        return n.dtype in floats and n.src[0].dtype is boolean
    if n.op is Op.CAST:  # bool -> float is a select of 1 and 0; float -> bool is != 0
        kinds = {n.dtype, n.src[0].dtype}
        return kinds <= {*floats, boolean} and kinds != {boolean}
    if n.op is not Op.ALU:
        return False
    operands = {s.dtype for s in n.src}
    if n.dtype in floats:
        # all float lanes: a half value kept in a float32 tile (softmax's exponentials)
        # meets half operands here, as in the scalar loop's float arithmetic
        return n.arg in VECTOR_ALU and operands <= set(floats)
    if n.dtype is boolean:
        return (n.arg in VECTOR_COMPARE and len(operands) == 1 and operands <= set(floats)) or \
            (n.arg in VECTOR_LOGIC and operands == {boolean})
    return False


def vector_body_ok(body: list[gir.Node], lane_stride, streams: bool = False,
                   row_index=None) -> bool:
    """The loop body is float arithmetic of VECTOR_ALU (and bool predicates selecting
    between float values) on contiguous loads and stores of VECTOR_FLOATS (lane_stride(node)
    gives an access's step per lane; loads may also be uniform), with an exp, logistic or
    erfc or a reduction in it, half-precision loads or stores, or stores that `streams`
    (non-temporal stores straight from registers): it has a pfjax::vf16 form worth
    writing. Given `row_index` (true for an INDEX node that is the same along the loop),
    values computed from such indices alone (a padded row's guard) are per-row scalars of
    any type; a load guarded by one reads whole vectors or none, and one offset by one
    (interior padding, a dynamic slice) reads from there."""
    worth = streams
    per_row: set[int] = set()
    for n in body:
        if n.op in (Op.BUFFER, Op.PARALLEL):
            continue
        if row_index is not None and _per_row(n, per_row, row_index, lane_stride):
            per_row.add(id(n))
            continue
        if n.op is Op.REDUCE:
            if n.dtype not in VECTOR_FLOATS or n.arg.op not in ("sum", "max", "min"):
                return False
            worth = True
            continue
        if n.op in (Op.LOAD, Op.STORE):
            kinds = VECTOR_FLOATS + (gir.DType.BOOL,) if n.op is Op.LOAD else VECTOR_FLOATS
            # contiguous, or (loads) the same for every lane: a uniform scalar
            guard, offset = gir.load_guard(n), gir.load_offset(n)
            guarded_ok = guard is not None and id(guard) in per_row and n.dtype in VECTOR_FLOATS
            if n.dtype not in kinds or (n.arg.dynamic and id(offset) not in per_row) \
                    or (n.arg.fill is not None and not guarded_ok) \
                    or lane_stride(n) not in ((0, 1) if n.op is Op.LOAD else (1,)):
                return False
            # half types convert in a few instructions here, against a dozen integer
            # operations each way in the scalar loop (f16 x * 2 + y: 0.5x -> 1.7x XLA)
            worth |= n.dtype in _HALF and lane_stride(n) == 1
        elif not vector_node_ok(n):
            return False
        worth |= n.op is Op.ALU and n.arg in VECTOR_CALLS
    return worth


def _per_row(n: gir.Node, per_row: set[int], row_index, lane_stride) -> bool:
    """A value of the row, not of the lane: a constant, an index the loop does not walk, a
    plain load that does not move along it (a dynamic slice's start), or arithmetic,
    compares, casts and selects on such values."""
    if n.op is Op.INDEX:
        return row_index(n)
    if n.op is Op.CONST:
        return True
    if n.op is Op.LOAD:
        return not n.arg.dynamic and n.arg.fill is None and lane_stride(n) == 0
    return n.op in (Op.ALU, Op.CAST, Op.SELECT) and \
        all(id(s) in per_row for s in n.src if s.op is not Op.BUFFER)


def vector_uniform(n: gir.Node, uniform: set[int], local: dict[int, str], lane_stride) -> bool:
    """The value is the same in every lane of a vf16 loop: a constant, a load that does
    not move along the lane, or computed from such values and per-unit ones only."""
    if n.op is Op.CONST:
        return True
    if n.op is Op.LOAD:
        return lane_stride(n) == 0
    return all(id(s) in uniform or id(s) not in local for s in n.src if s.op is not Op.BUFFER)


def vector_expr(n: gir.Node, operand) -> str | None:
    """The vf16 spelling of a node whose scalar one cannot be overloaded: a C++ conditional
    (a select, a bool -> float cast) or a std:: function. operand(node) names a value.
    None: the scalar spelling serves."""
    if n.op is Op.SELECT:
        return f"pfjax::select({operand(n.src[0])}, {operand(n.src[2])}, {operand(n.src[1])})"
    if n.op is Op.ALU and n.arg in _VECTOR_STD and n.dtype in VECTOR_FLOATS:
        return _VECTOR_STD[n.arg].format(operand(n.src[0]))
    if n.op is Op.CAST and n.src[0].dtype is gir.DType.BOOL:
        return f"pfjax::select({operand(n.src[0])}, 1.0f, 0.0f)"
    if n.op is Op.CAST and n.dtype in VECTOR_FLOATS and n.src[0].dtype in VECTOR_FLOATS:
        # to a half type: rounded to it; to float32 or a wider half: exact, the same lanes
        widening = n.dtype is gir.DType.F32 or n.dtype is n.src[0].dtype
        return operand(n.src[0]) if widening else \
            f"pfjax::round_{_HALF[n.dtype]}({operand(n.src[0])})"
    return None


def vector_decl(n: gir.Node, name: str, uniform: bool, scalar, element, operand) -> str:
    """Declaration of a node's value in a vf16 loop. scalar() gives its scalar expression
    (what a uniform value keeps), element() the element a non-uniform load reads,
    operand(node) another value's name. Bools are pfjax::vb16 lane masks."""
    boolean = n.dtype is gir.DType.BOOL
    if uniform:
        return f"const {register_type(n.dtype)} {name} = {scalar()};"
    kind = "pfjax::vb16" if boolean else "pfjax::vf16"
    if n.op is Op.LOAD:
        load = f"pfjax::load_{_HALF[n.dtype]}" if n.dtype in _HALF else f"{kind}::load"
        guard = gir.load_guard(n)
        if guard is not None:  # a per-row guard (vector_body_ok): whole vectors or none
            fill = literal(n.arg.fill, n.dtype.compute)
            return f"const {kind} {name} = {operand(guard)} ? {load}(&{element()}) : {kind}({fill});"
        return f"const {kind} {name} = {load}(&{element()});"
    return f"const {kind} {name} = {vector_expr(n, operand) or scalar()};"


def stored_value(store: gir.Node) -> gir.Node:
    """The value a vf16 store of `store` writes: a cast to the stored half type is left to
    the store's own rounding (rounding twice to the same type gives the same bits, and the
    round trip back to float lanes in between is dead code then)."""
    value = store.src[1]
    if store.dtype in _HALF and value.op is Op.CAST and value.dtype is store.dtype \
            and value.src[0].dtype in VECTOR_FLOATS:
        return value.src[0]
    return value


def vector_store(value: str, uniform: bool, target: str, stream: bool = False,
                 dtype: gir.DType = gir.DType.F32) -> str:
    """Store of a vf16 value (a uniform one broadcast) at the element `target` of a dtype
    array; `stream`: a non-temporal store (target 64-byte aligned for float32, 32 for the
    half types)."""
    vector = f"pfjax::vf16({value})" if uniform else value
    if dtype in _HALF:
        return f"pfjax::{'stream' if stream else 'store'}_{_HALF[dtype]}({vector}, &{target});"
    return f"({vector}).{'stream' if stream else 'store'}(&{target});"


# Whole vectors of a streamed store leave registers as non-temporal stores where the
# block's destination is 64-byte aligned, the rest through the staging tile: staging
# costs a store and a load more per element at the local level (x * 2 + y: 1.17x on
# 2 threads). Flag k is decided once per block.
def direct_flag(k: int, block_start: str) -> str:
    """Declares direct{k}: the streamed store's block starts at address `block_start`."""
    return f"const bool direct{k} = reinterpret_cast<uintptr_t>({block_start}) % 64 == 0;"


def vector_streamed_store(k: int, value: str, uniform: bool, target: str, staged: str | None,
                          dtype: gir.DType = gir.DType.F32) -> list[str]:
    """Store k of a streamed output: straight out at `target` where direct{k}, else into
    the staging tile's element `staged` (None: a plain store at `target`)."""
    return [f"if (direct{k}) {vector_store(value, uniform, target, True, dtype)}",
            f"else {vector_store(value, uniform, staged or target, False, dtype)}"]


def scalar_tail(lines: list[str], start: int) -> None:
    """Rewrite lines[start:], the scalar remainder after a vf16 loop, to call the inline
    scalar twins of the vector-ABI functions: a call left anywhere in the kernel's
    function slowed the vf16 loop itself (fastmath.h, exp_tail)."""
    for i in range(start, len(lines)):
        for call, twin in _TAIL_CALLS.items():
            lines[i] = lines[i].replace(call, twin)
