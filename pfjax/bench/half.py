"""Half-precision workloads of the benchmark: bf16 / f16 storage with float32 compute, as
mixed-precision models run them. A category of their own ("half precision"), so that the
float32 categories stay comparable with earlier runs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pfjax.bench.workloads import Workload, register

EPS = 1e-5
_ROWS = {"tiny": (64, 256), "cache": (1024, 4096), "dram": (16384, 4096)}


def _half(key, shape, dtype, scale=1.0, shift=0.0):
    return (shift + scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def _build_ln(shape, key):
    kx, kw, kb = jax.random.split(key, 3)
    return (_half(kx, shape, jnp.bfloat16), _half(kw, shape[-1:], jnp.bfloat16, 0.1, 1.0),
            _half(kb, shape[-1:], jnp.bfloat16, 0.1))


def layernorm_bf16(x, w, b):
    """bf16 in and out, statistics and arithmetic in float32."""
    h = x.astype(jnp.float32)
    m = jnp.mean(h, -1, keepdims=True)
    v = jnp.var(h, -1, keepdims=True)
    return ((h - m) * jax.lax.rsqrt(v + EPS) * w.astype(jnp.float32)
            + b.astype(jnp.float32)).astype(x.dtype)


def _torch_layernorm_bf16(x, w, b):
    import torch.nn.functional as F
    return F.layer_norm(x.float(), x.shape[-1:], w.float(), b.float(), EPS).to(x.dtype)


def _build_bias(shape, key):
    kx, kb = jax.random.split(key)
    return _half(kx, shape, jnp.bfloat16), _half(kb, shape[-1:], jnp.bfloat16, 0.1)


def bias_gelu_bf16(x, b):
    return jax.nn.gelu(x + b, approximate=True)


def _torch_bias_gelu_bf16(x, b):
    import torch.nn.functional as F
    return F.gelu(x + b, approximate="tanh")


def _build_f16(shape, key):
    return (_half(key, shape, jnp.float16, 2.0),)


def softmax_f16(x):
    return jax.nn.softmax(x, axis=-1)


def _torch_softmax_f16(x):
    return x.softmax(-1)


register(Workload("layernorm_bf16", "layernorm, bf16 (float32 statistics)", "half precision",
                  _ROWS, _build_ln, layernorm_bf16, _torch_layernorm_bf16, rtol=1e-2,
                  atol=1e-2))
register(Workload("bias_gelu_bf16", "bias + GELU (tanh), bf16", "half precision", _ROWS,
                  _build_bias, bias_gelu_bf16, _torch_bias_gelu_bf16, rtol=1e-2, atol=1e-2))
register(Workload("softmax_f16", "softmax, f16", "half precision", _ROWS, _build_f16,
                  softmax_f16, _torch_softmax_f16, rtol=2e-3, atol=1e-4))
