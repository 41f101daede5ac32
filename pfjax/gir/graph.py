"""GIR nodes: an immutable, hash-consed instruction-level dataflow graph.

A node is (op, dtype, src, arg, level). Three kinds of primitives, as in the PowerFusion
paper: *parallel* (how the iteration space maps onto groups x units and loop steps),
*data movement* (LOAD / STORE move a strided view of a buffer between named memory
levels) and *computation* (CONST, CAST, ALU, SELECT on values that live at a level).
Equal structure means the same object, so a value loaded twice is one load.
"""
from __future__ import annotations

import enum
import hashlib
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from pfjax.gir.dtypes import DType
from pfjax.gir.target import GLOBAL, LOCAL, REG


class Op(enum.Enum):
    # parallel
    PARALLEL = "parallel"  # src: stores; arg: Parallel
    # data movement
    BUFFER = "buffer"      # arg: Buffer; level: where the buffer lives
    LOAD = "load"          # src: (buffer,); arg: Move
    STORE = "store"        # src: (buffer, value); arg: Move
    # computation
    CONST = "const"        # arg: python scalar
    CAST = "cast"          # src: (x,); the node's dtype is the result type
    ALU = "alu"            # src: operands; arg: operation name (gir.ops.ALU_OPS)
    SELECT = "select"      # src: (which, case0, case1, ...): case[which]
    INDEX = "index"        # arg: space dimension; the iteration index along it (int64)
    REDUCE = "reduce"      # src: (value,); arg: Reduction; constant along the reduced dims


MOVEMENT = {Op.BUFFER, Op.LOAD, Op.STORE}
COMPUTATION = {Op.CONST, Op.CAST, Op.ALU, Op.SELECT, Op.INDEX, Op.REDUCE}
REDUCE_OPS = ("sum", "prod", "max", "min", "and", "or")


@dataclass(frozen=True)
class View:
    """Affine map from the iteration space to buffer elements:
    element(i) = offset + sum(strides[d] * i[d]). A stride of 0 is a broadcast."""
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int = 0

    def __str__(self) -> str:
        return f"[{','.join(map(str, self.shape))}] strides({','.join(map(str, self.strides))})+{self.offset}"

    @property
    def is_contiguous(self) -> bool:
        return self.strides == contiguous_strides(self.shape)


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc if n != 1 else 0)
        acc *= n
    return tuple(reversed(strides))


@dataclass(frozen=True)
class Buffer:
    index: int      # position among the kernel's inputs, outputs or tiles
    role: str       # "in", "out" or "tile"
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.role}{self.index}[{','.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class Move:
    """Move the elements `view` names between two levels. A load may also be *dynamic*:
    its sources then hold an int64 element offset added at run time (dynamic slices,
    interior padding); and *guarded*: its last source is a bool, and elements where it is
    false are not read but take `fill` (the parts of a concatenation or padding that come
    from elsewhere)."""
    src_level: str
    dst_level: str
    view: View
    dynamic: bool = False
    fill: Any = None  # None: unguarded


@dataclass(frozen=True)
class Reduction:
    op: str                 # one of REDUCE_OPS
    dims: tuple[int, ...]   # space dimensions it reduces over


@dataclass(frozen=True)
class Parallel:
    """for chunk in parallel(groups): for step in range(loop): body(vector lanes).
    `space` is the iteration space; `chunk` elements go to one parallel task; the
    innermost dimension is processed `vector` lanes at a time.

    A kernel with reductions has `rdims`: the space dimensions its reductions run over,
    consecutive, followed by at most one kept dimension. Its parallel units are then the
    kept indices (rows), and `chunk` counts units rather than elements. When a kept
    dimension follows the reduced ones, a unit covers `block` indices of it (vector lanes
    of a column reduction)."""
    space: tuple[int, ...]
    chunk: int = 0
    vector: int = 1
    nontemporal: bool = False
    rdims: tuple[int, ...] = ()
    block: int = 1
    split: int = 1   # segments of the reduced rows (column or row style), reduced apart, then combined
    strip: int = 1   # columns per step of a blocked (transposed) traversal, staged at the local level

    @property
    def column_style(self) -> bool:
        return bool(self.rdims) and self.rdims[-1] < len(self.space) - 1

    @property
    def strip_tasks(self) -> bool:
        """A blocked (transposed) traversal whose blocks all hold `block` rows: its tasks
        may then end between strips, a block's elements counted strip by strip (the last
        tasks are shorter than a block, so threads finish closer together)."""
        return (not self.rdims and self.block > 1 and len(self.space) >= 2
                and self.space[-2] % self.block == 0)

    @property
    def units(self) -> int:
        """Parallel units: kept indices, with the trailing kept dimension in blocks."""
        if not self.rdims:
            return self.size
        n = 1
        for d, extent in enumerate(self.space):
            if d in self.rdims:
                continue
            n *= -(-extent // max(1, self.block)) if d == len(self.space) - 1 else extent
        return n * max(1, self.split)

    @property
    def size(self) -> int:
        n = 1
        for d in self.space:
            n *= d
        return n


class Node:
    __slots__ = ("op", "dtype", "src", "arg", "level", "key", "__weakref__")
    _interned: "weakref.WeakValueDictionary[str, Node]" = weakref.WeakValueDictionary()

    op: Op
    dtype: DType
    src: tuple["Node", ...]
    arg: Any
    level: str
    key: str

    def __new__(cls, op: Op, dtype: DType, src: Iterable["Node"] = (), arg: Any = None,
                level: str = REG):
        src = tuple(src)
        h = hashlib.sha256(
            f"{op.value}|{dtype!r}|{level}|{arg!r}|{','.join(s.key for s in src)}".encode())
        key = h.hexdigest()
        node = cls._interned.get(key)
        if node is None:
            node = object.__new__(cls)
            for name, value in (("op", op), ("dtype", dtype), ("src", src), ("arg", arg),
                                ("level", level), ("key", key)):
                object.__setattr__(node, name, value)
            cls._interned[key] = node
        return node

    def __setattr__(self, name, value):
        raise AttributeError("GIR nodes are immutable; use replace()")

    def replace(self, **changes) -> "Node":
        fields = dict(op=self.op, dtype=self.dtype, src=self.src, arg=self.arg, level=self.level)
        fields.update(changes)
        return Node(**fields)

    def __repr__(self) -> str:
        return f"Node({self.op.value}, {self.dtype!r}, arg={self.arg!r}, key={self.key[:8]})"

    # Hash-consing makes identity equal to structural equality.
    __hash__ = object.__hash__


# -- constructors -------------------------------------------------------------------

def buffer(index: int, role: str, dtype: DType, shape: tuple[int, ...]) -> Node:
    return Node(Op.BUFFER, dtype, (), Buffer(index, role, tuple(shape)), GLOBAL)


def load(buf: Node, view: View, level: str = REG, offset: Node | None = None,
         guard: Node | None = None, fill: Any = 0) -> Node:
    src = (buf,) + ((offset,) if offset is not None else ()) + ((guard,) if guard is not None else ())
    move = Move(buf.level, level, view, offset is not None, fill if guard is not None else None)
    return Node(Op.LOAD, buf.dtype, src, move, level)


def load_offset(node: Node) -> Node | None:
    """The run-time element offset of a dynamic load."""
    return node.src[1] if node.op is Op.LOAD and node.arg.dynamic else None


def load_guard(node: Node) -> Node | None:
    """The predicate of a guarded load."""
    return node.src[-1] if node.op is Op.LOAD and node.arg.fill is not None else None


def is_tile_load(node: Node) -> bool:
    return node.op is Op.LOAD and node.src[0].arg.role == "tile"


def reads_back(node: Node) -> bool:
    """A load of what a store of the same kernel wrote (a tile, or a value waiting in an
    output buffer): it runs in a loop after the store's."""
    return node.op is Op.LOAD and len(node.src) == 2 and node.src[1].op is Op.STORE


def tile(index: int, dtype: DType, shape: tuple[int, ...]) -> Node:
    """A scratch buffer at the local level, private to one parallel unit (a row)."""
    return Node(Op.BUFFER, dtype, (), Buffer(index, "tile", tuple(shape)), LOCAL)


def load_tile(written: Node, view: View) -> Node:
    """Read back what the store `written` put in a tile; the store is a source so that
    the order between the two is part of the graph."""
    buf = written.src[0]
    return Node(Op.LOAD, buf.dtype, (buf, written), Move(buf.level, REG, view), REG)


def store(buf: Node, value: Node, view: View) -> Node:
    return Node(Op.STORE, buf.dtype, (buf, value), Move(value.level, buf.level, view), buf.level)


def const(value, dtype: DType) -> Node:
    return Node(Op.CONST, dtype, (), value)


def cast(x: Node, dtype: DType) -> Node:
    return x if x.dtype == dtype else Node(Op.CAST, dtype, (x,), None, x.level)


def alu(name: str, dtype: DType, *operands: Node) -> Node:
    return Node(Op.ALU, dtype, operands, name, operands[0].level if operands else REG)


def select(which: Node, cases: list[Node]) -> Node:
    return Node(Op.SELECT, cases[0].dtype, (which, *cases), None, cases[0].level)


def index(dim: int) -> Node:
    return Node(Op.INDEX, DType.I64, (), dim)


def reduce(op: str, value: Node, dims: tuple[int, ...]) -> Node:
    if op not in REDUCE_OPS:
        raise ValueError(f"unknown reduction {op!r}")
    return Node(Op.REDUCE, value.dtype, (value,), Reduction(op, tuple(dims)), value.level)


def parallel(spec: Parallel, stores: Iterable[Node]) -> Node:
    return Node(Op.PARALLEL, DType.BOOL, tuple(stores), spec, GLOBAL)


# -- traversal ----------------------------------------------------------------------

def toposort(root: Node) -> list[Node]:
    """Every node reachable from root, sources before users, in a deterministic order."""
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for s in reversed(node.src):
            if id(s) not in seen:
                stack.append((s, False))
    return order


def rewrite(root: Node, fn: Callable[[Node], Node | None]) -> Node:
    """Rebuild the graph bottom-up; fn(node with rewritten sources) returns a replacement
    or None to keep it. Applied once per distinct node."""
    done: dict[int, Node] = {}
    for node in toposort(root):
        src = tuple(done[id(s)] for s in node.src)
        new = node if all(a is b for a, b in zip(src, node.src)) else node.replace(src=src)
        out = fn(new)
        done[id(node)] = new if out is None else out
    return done[id(root)]


@dataclass(frozen=True)
class Kernel:
    """A lowered fusion group: the GIR root plus the buffers it binds."""
    root: Node                                # Op.PARALLEL
    inputs: tuple[Node, ...]                  # Op.BUFFER, role "in", in call order
    outputs: tuple[Node, ...]                 # Op.BUFFER, role "out"

    @property
    def name(self) -> str:
        """Names the kernel's code and calling convention: the graph plus every buffer it
        binds (an input the graph never reads still changes the call)."""
        sig = "|".join(f"{b.arg}:{b.dtype!r}" for b in (*self.inputs, *self.outputs))
        return "pfjax_" + hashlib.sha256(f"{self.root.key}|{sig}".encode()).hexdigest()[:20]

    @property
    def parallel(self) -> Parallel:
        return self.root.arg

    def with_root(self, root: Node) -> "Kernel":
        return Kernel(root, self.inputs, self.outputs)
