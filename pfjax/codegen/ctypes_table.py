"""C++ spellings of GIR element types and operations, shared by the CPU and CUDA emitters."""
from __future__ import annotations

import math

from pfjax.gir import DType

STORAGE = {DType.F64: "double", DType.F32: "float", DType.F16: "uint16_t",
           DType.BF16: "uint16_t", DType.I64: "int64_t", DType.I32: "int32_t",
           DType.I16: "int16_t", DType.I8: "int8_t", DType.U64: "uint64_t",
           DType.U32: "uint32_t", DType.U16: "uint16_t", DType.U8: "uint8_t",
           DType.BOOL: "uint8_t"}


def register_type(dtype: DType) -> str:
    """Type of a value while it lives in registers (half floats compute in float)."""
    return "bool" if dtype is DType.BOOL else STORAGE[dtype.compute]


def literal(value, dtype: DType) -> str:
    if dtype is DType.BOOL:
        return "true" if value else "false"
    if dtype.is_float:
        ctype = "double" if dtype is DType.F64 else "float"
        v = float(value)
        if math.isnan(v):
            return f"std::numeric_limits<{ctype}>::quiet_NaN()"
        if math.isinf(v):
            return f"{'-' if v < 0 else ''}std::numeric_limits<{ctype}>::infinity()"
        text = repr(v) if dtype is DType.F64 else f"{v:.9g}"
        if "e" not in text and "." not in text and "n" not in text:
            text += ".0"
        return text if dtype is DType.F64 else text + "f"
    return f"static_cast<{STORAGE[dtype]}>({int(value)}LL)" if dtype.is_signed else \
        f"static_cast<{STORAGE[dtype]}>({int(value)}ULL)"


def load_expr(ptr_index: str, dtype: DType) -> str:
    if dtype is DType.BF16:
        return f"pfjax::math::bf16_to_f32({ptr_index})"
    if dtype is DType.F16:
        return f"pfjax::math::f16_to_f32({ptr_index})"
    if dtype is DType.BOOL:
        return f"({ptr_index} != 0)"
    return ptr_index


def guarded_load(node, expr: str, values: dict[int, str]) -> str:
    """A load that reads only where its guard holds (the C++ conditional never touches
    memory elsewhere: the compiler uses masked loads) and gives its fill value elsewhere."""
    from pfjax.gir import load_guard
    guard = load_guard(node)
    if guard is None:
        return expr
    fill = literal(node.arg.fill, node.dtype if node.dtype is DType.BOOL else node.dtype.compute)
    return f"({values[id(guard)]} ? {expr} : {fill})"


def store_expr(value: str, dtype: DType) -> str:
    if dtype is DType.BF16:
        return f"pfjax::math::f32_to_bf16({value})"
    if dtype is DType.F16:
        return f"pfjax::math::f32_to_f16({value})"
    if dtype is DType.BOOL:
        return f"static_cast<uint8_t>({value})"
    return value


def cast_expr(x: str, src: DType, dst: DType) -> str:
    rt = register_type(dst)
    if dst is DType.BOOL:
        return f"({x} != 0)"
    if dst.is_int and src.is_float:
        return f"pfjax::rt::f2i<{rt}>({x})"
    if dst is DType.BF16:
        return f"pfjax::math::bf16_to_f32(pfjax::math::f32_to_bf16(static_cast<float>({x})))"
    if dst is DType.F16:
        return f"pfjax::math::f16_to_f32(pfjax::math::f32_to_f16(static_cast<float>({x})))"
    if src is DType.BOOL and dst.is_float:
        # a select, not a conversion: g++ then keeps calls in the same `omp simd` loop on
        # their vector variants (with static_cast<float>(bool) it fell back to scalar calls)
        return f"({x} ? {rt}(1) : {rt}(0))"
    return f"static_cast<{rt}>({x})"


# name -> (float32 template, float64 template, integer template, bool template); {0}, {1}
# are operands. None: not available for that kind (the partitioner never asks for it).
_M = "pfjax::math::"
ALU = {
    "neg": ("(-{0})", "(-{0})", "(-{0})", None),
    "abs": ("std::fabs({0})", "std::fabs({0})", "({0} < 0 ? -{0} : {0})", None),
    "sign": (_M + "sign_f32({0})", "({0} != {0} ? {0} : {0} > 0 ? 1.0 : {0} < 0 ? -1.0 : {0})",
             "static_cast<decltype({0})>(({0} > 0) - ({0} < 0))", None),
    "floor": ("std::floor({0})", "std::floor({0})", None, None),
    "ceil": ("std::ceil({0})", "std::ceil({0})", None, None),
    "round_even": (_M + "round_half_even_f32({0})", "std::nearbyint({0})", None, None),
    "round_away": (_M + "round_half_away_f32({0})", "std::round({0})", None, None),
    "sqrt": ("std::sqrt({0})", "std::sqrt({0})", None, None),
    "rsqrt": (_M + "rsqrt_f32({0})", "(1.0 / std::sqrt({0}))", None, None),
    "cbrt": (_M + "cbrt_f32({0})", "std::cbrt({0})", None, None),
    "exp": (_M + "exp_v({0})", "std::exp({0})", None, None),
    "exp2": (_M + "exp2_f32({0})", "std::exp2({0})", None, None),
    "expm1": (_M + "expm1_f32({0})", "std::expm1({0})", None, None),
    "log": (_M + "log_f32({0})", "std::log({0})", None, None),
    "log1p": (_M + "log1p_f32({0})", "std::log1p({0})", None, None),
    "tanh": (_M + "tanh_fast({0})", "std::tanh({0})", None, None),
    "logistic": (_M + "logistic_v({0})", "(1.0 / (1.0 + std::exp(-{0})))", None, None),
    "one_plus_exp2": (_M + "one_plus_exp2({0})", "(1.0 + std::exp2({0}))", None, None),
    "erf": (_M + "erf_fast({0})", "std::erf({0})", None, None),
    "erfc": (_M + "erfc_fast({0})", "std::erfc({0})", None, None),
    "sin": (_M + "sin_f32({0})", "std::sin({0})", None, None),
    "cos": (_M + "cos_f32({0})", "std::cos({0})", None, None),
    "tan": ("std::tan({0})", "std::tan({0})", None, None),
    "is_finite": (_M + "is_finite_f32({0})", "std::isfinite({0})", None, None),
    "not": (None, None, "(~{0})", "(!{0})"),
    "add": ("({0} + {1})", "({0} + {1})", "({0} + {1})", "({0} || {1})"),
    "sub": ("({0} - {1})", "({0} - {1})", "({0} - {1})", None),
    "mul": ("({0} * {1})", "({0} * {1})", "({0} * {1})", "({0} && {1})"),
    "div": ("({0} / {1})", "({0} / {1})", _M + "idiv({0}, {1})", None),
    "rem": ("std::fmod({0}, {1})", "std::fmod({0}, {1})", _M + "irem({0}, {1})", None),
    "max": (_M + "max_f32({0}, {1})",
            "({0} != {0} ? {0} : {1} != {1} ? {1} : {0} > {1} ? {0} : {1})",
            "({0} > {1} ? {0} : {1})", "({0} || {1})"),
    "min": (_M + "min_f32({0}, {1})",
            "({0} != {0} ? {0} : {1} != {1} ? {1} : {0} < {1} ? {0} : {1})",
            "({0} < {1} ? {0} : {1})", "({0} && {1})"),
    "pow": (_M + "pow_f32({0}, {1})", "std::pow({0}, {1})", None, None),
    "atan2": ("std::atan2({0}, {1})", "std::atan2({0}, {1})", None, None),
    "and": (None, None, "({0} & {1})", "({0} && {1})"),
    "or": (None, None, "({0} | {1})", "({0} || {1})"),
    "xor": (None, None, "({0} ^ {1})", "({0} != {1})"),
    "eq": ("({0} == {1})",) * 4,
    "ne": ("({0} != {1})",) * 4,
    "lt": ("({0} < {1})",) * 4,
    "le": ("({0} <= {1})",) * 4,
    "gt": ("({0} > {1})",) * 4,
    "ge": ("({0} >= {1})",) * 4,
}


def alu_expr(name: str, operand_dtype: DType, operands: list[str]) -> str:
    f32, f64, integer, boolean = ALU[name]
    if operand_dtype is DType.BOOL:
        template = boolean
    elif operand_dtype.is_int:
        template = integer
    elif operand_dtype is DType.F64:
        template = f64
    else:
        template = f32
    if template is None:
        raise NotImplementedError(f"no C++ form of {name} for {operand_dtype}")
    return template.format(*operands)


def compute_expr(op, node, src: list[str]) -> str | None:
    """C++ for a computation node (CONST, CAST, ALU, SELECT) given its operands' names;
    None for other ops (loads, indices: each emitter addresses memory its own way)."""
    from pfjax.gir import Op
    if op is Op.CONST:
        return literal(node.arg, node.dtype.compute if node.dtype is not DType.BOOL else node.dtype)
    if op is Op.CAST:
        return cast_expr(src[0], node.src[0].dtype, node.dtype)
    if op is Op.ALU:
        return alu_expr(node.arg, node.src[0].dtype, src)
    if op is Op.SELECT:
        which, *cases = src
        if node.src[0].dtype is DType.BOOL:
            return f"({which} ? {cases[1]} : {cases[0]})"
        expr = cases[-1]
        for k in reversed(range(len(cases) - 1)):
            expr = f"({which} == {k} ? {cases[k]} : {expr})"
        return expr
    return None
