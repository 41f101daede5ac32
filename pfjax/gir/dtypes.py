"""Element types known to GIR, independent of JAX or numpy naming."""
from __future__ import annotations

import enum


class DType(enum.Enum):
    # value: (name, bytes, kind) where kind is 'f' float, 'i' signed, 'u' unsigned, 'b' bool
    F64 = ("float64", 8, "f")
    F32 = ("float32", 4, "f")
    F16 = ("float16", 2, "f")
    BF16 = ("bfloat16", 2, "f")
    I64 = ("int64", 8, "i")
    I32 = ("int32", 4, "i")
    I16 = ("int16", 2, "i")
    I8 = ("int8", 1, "i")
    U64 = ("uint64", 8, "u")
    U32 = ("uint32", 4, "u")
    U16 = ("uint16", 2, "u")
    U8 = ("uint8", 1, "u")
    BOOL = ("bool", 1, "b")

    @property
    def itemsize(self) -> int:
        return self.value[1]

    @property
    def is_float(self) -> bool:
        return self.value[2] == "f"

    @property
    def is_int(self) -> bool:
        return self.value[2] in "iu"

    @property
    def is_signed(self) -> bool:
        return self.value[2] == "i"

    @property
    def is_bool(self) -> bool:
        return self.value[2] == "b"

    @property
    def compute(self) -> "DType":
        """The type arithmetic is done in: half-precision floats compute in float32."""
        return DType.F32 if self in (DType.F16, DType.BF16) else self

    def __repr__(self) -> str:
        return self.value[0]

    __str__ = __repr__


BY_NAME = {d.value[0]: d for d in DType}


def dtype_from_name(name: str) -> DType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise TypeError(f"GIR has no element type {name!r}") from None
