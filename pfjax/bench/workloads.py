"""The benchmark's workload table.

Each workload is a plain ``jnp`` function plus an input maker, one entry of
``WORKLOADS``.  Later issues add reductions, movement ops and training steps by
appending entries with :func:`register`; the harness needs nothing else.

Sizes:
  tiny   small shapes for the test suite (correctness only)
  cache  cache-resident, ~32 MiB moved (the sizes of BASELINES.md)
  dram   ~512 MiB+ moved (the DRAM shapes of BASELINES.md)
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

SIZES = ("tiny", "cache", "dram")
SEED = 0


def tree_nbytes(tree) -> int:
    return sum(int(x.nbytes) for x in jax.tree_util.tree_leaves(tree))


def minimal_bytes(inputs, outputs) -> int:
    """Each input read once plus each output written once."""
    return tree_nbytes(inputs) + tree_nbytes(outputs)


def _shape_label(shape) -> str:
    if len(shape) == 1 and shape[0] % (1 << 20) == 0:
        return f"{shape[0] >> 20}M"
    return "x".join(str(d) for d in shape)


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark entry.

    name        short id, used by ``--filter`` and in JSON
    title       what the table prints
    category    "elementwise", later "reduction", "movement", "training", ...
    dims        size -> the workload's main shape
    build       (shape, key) -> tuple of positional inputs (fresh random, f32)
    fn          the plain jnp function, called as fn(*inputs)
    torch_fn    optional torch twin, called as torch_fn(*tensors)
    bytes_moved (inputs, outputs) -> minimal bytes for the roofline
    rtol, atol  tolerance of the fused result against jax.jit
    fused       optional (fuse) -> the pfjax version of fn, when pfjax is applied inside
                it (a training step differentiates the fused loss); default fuse(fn)
    """
    name: str
    title: str
    category: str
    dims: dict
    build: Callable
    fn: Callable
    torch_fn: Optional[Callable] = None
    bytes_moved: Callable = minimal_bytes
    rtol: float = 1e-5
    atol: float = 1e-5
    fused: Optional[Callable] = None

    def pfjax_version(self, fuse) -> Callable:
        return self.fused(fuse) if self.fused is not None else fuse(self.fn)

    def make_inputs(self, size: str, seed: int = SEED) -> tuple:
        return tuple(self.build(self.dims[size], jax.random.key(seed)))

    def shape(self, size: str) -> str:
        return _shape_label(self.dims[size])


WORKLOADS: list[Workload] = []


def register(w: Workload) -> Workload:
    if any(o.name == w.name for o in WORKLOADS):
        raise ValueError(f"duplicate workload name {w.name!r}")
    WORKLOADS.append(w)
    return w


def select(pattern: Optional[str] = None) -> list[Workload]:
    if not pattern:
        return list(WORKLOADS)
    p = pattern.lower()
    return [w for w in WORKLOADS if p in w.name.lower() or p in w.title.lower()
            or p in w.category.lower()]


# ---------------------------------------------------------------- elementwise

def _normal(key, shape, scale=1.0):
    return scale * jax.random.normal(key, shape, jnp.float32)


def _build_bias(shape, key):
    kx, kb = jax.random.split(key)
    return _normal(kx, shape), _normal(kb, shape[-1:], 0.1)


def bias_gelu_tanh(x, b):
    return jax.nn.gelu(x + b, approximate=True)


def bias_gelu_erf(x, b):
    return jax.nn.gelu(x + b, approximate=False)


def _torch_bias_gelu(approximate):
    def f(x, b):
        import torch.nn.functional as F
        return F.gelu(x + b, approximate=approximate)
    return f


_GELU_DIMS = {"tiny": (64, 128), "cache": (1024, 4096), "dram": (16384, 4096)}

register(Workload("bias_gelu_tanh", "bias + GELU (tanh)", "elementwise", _GELU_DIMS,
                  _build_bias, bias_gelu_tanh, _torch_bias_gelu("tanh"), rtol=2e-5))
register(Workload("bias_gelu_erf", "bias + GELU (erf)", "elementwise", _GELU_DIMS,
                  _build_bias, bias_gelu_erf, _torch_bias_gelu("none"), rtol=2e-5))


def _build_swiglu(shape, key):
    ka, kb = jax.random.split(key)
    return _normal(ka, shape), _normal(kb, shape)


def swiglu(a, b):
    return jax.nn.silu(a) * b


def _torch_swiglu(a, b):
    import torch.nn.functional as F
    return F.silu(a) * b


register(Workload("swiglu", "SwiGLU silu(a)*b", "elementwise",
                  {"tiny": (64, 128), "cache": (384, 11008), "dram": (6144, 11008)},
                  _build_swiglu, swiglu, _torch_swiglu, rtol=2e-5))


ADAM_LR, ADAM_B1, ADAM_B2, ADAM_EPS, ADAM_STEP = 1e-3, 0.9, 0.999, 1e-8, 10.0


def _build_adam(shape, key):
    kp, km, kv, kg = jax.random.split(key, 4)
    p = _normal(kp, shape)
    m = _normal(km, shape, 0.01)
    v = jax.random.uniform(kv, shape, jnp.float32, 0.0, 1e-4)
    g = _normal(kg, shape, 0.01)
    return p, m, v, g


def adam(p, m, v, g, lr=ADAM_LR, b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS, t=ADAM_STEP):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mhat = m / (1 - b1 ** t)
    vhat = v / (1 - b2 ** t)
    p = p - lr * mhat / (jnp.sqrt(vhat) + eps)
    return p, m, v


def _torch_adam(p, m, v, g, lr=ADAM_LR, b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS,
                t=ADAM_STEP):
    import torch
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mhat = m / (1 - b1 ** t)
    vhat = v / (1 - b2 ** t)
    p = p - lr * mhat / (torch.sqrt(vhat) + eps)
    return p, m, v


register(Workload("adam", "Adam update (3 outputs)", "elementwise",
                  {"tiny": (8192,), "cache": (2 << 20,), "dram": (64 << 20,)},
                  _build_adam, adam, _torch_adam, rtol=2e-5))


# The loss of the cross-entropy workloads (reductions over long rows, row shapes over few
# classes), here so that either module imports it from this one.
def cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def torch_cross_entropy(logits, labels):
    import torch.nn.functional as F
    return F.cross_entropy(logits, labels.long())


def build_logits_and_labels(shape, key):
    kx, kl = jax.random.split(key)
    return _normal(kx, shape, 2.0), jax.random.randint(kl, shape[:1], 0, shape[1], jnp.int32)


# Later workload families register themselves here.
from pfjax.bench import reductions as _reductions  # noqa: E402,F401
from pfjax.bench import movement as _movement  # noqa: E402,F401
from pfjax.bench import half as _half  # noqa: E402,F401
from pfjax.bench import rows as _rows  # noqa: E402,F401
