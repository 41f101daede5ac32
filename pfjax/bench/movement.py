"""Data-movement workloads of the benchmark (shapes from ../shared/BASELINES.md): slices,
concatenation, transposes and padding fused with the computation around them."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pfjax.bench.workloads import Workload, register


def _normal(key, shape):
    return jax.random.normal(key, shape, jnp.float32)


def rope(x, cos, sin):
    """Rotary embedding as users write it: split halves by slicing, rotate, concatenate."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def _torch_rope(x, cos, sin):
    import torch
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def _build_rope(shape, key):
    b, s, h, d = shape
    kx, kc = jax.random.split(key)
    angle = _normal(kc, (s, 1, d))
    return _normal(kx, shape), jnp.cos(angle), jnp.sin(angle)


def head_reshuffle(x):
    """(B, S, H, D) -> (B, H, S, D) with the attention scale."""
    return jnp.transpose(x, (0, 2, 1, 3)) * (x.shape[-1] ** -0.5)


def _torch_head_reshuffle(x):
    return (x.permute(0, 2, 1, 3) * (x.shape[-1] ** -0.5)).contiguous()


def transpose_bias_gelu(x, b):
    return jax.nn.gelu(x.T + b)


def _torch_transpose_bias_gelu(x, b):
    import torch
    return torch.nn.functional.gelu(x.T + b, approximate="tanh").contiguous()


def _build_tbg(shape, key):
    k1, k2 = jax.random.split(key)
    return _normal(k1, shape), _normal(k2, shape[:1])


def concat_elementwise(a, b):
    return jnp.concatenate([a + b, a * b, jnp.maximum(a, b)], axis=-1)


def _torch_concat_elementwise(a, b):
    import torch
    return torch.cat([a + b, a * b, torch.maximum(a, b)], dim=-1)


def pad_relu(x):
    return jax.nn.relu(jnp.pad(x, ((1, 1), (8, 8))) * 2.0 - 0.5)


def _torch_pad_relu(x):
    import torch
    return torch.relu(torch.nn.functional.pad(x, (8, 8, 1, 1)) * 2.0 - 0.5)


def mean_transposed(x):
    """A reduction over a transposed, shifted view: the mean over axis 0 of (x - 1).T."""
    return jnp.mean(jnp.transpose(x - 1.0), axis=0)


def _torch_mean_transposed(x):
    return (x - 1.0).T.mean(dim=0)


def _build_two(shape, key):
    k1, k2 = jax.random.split(key)
    return _normal(k1, shape), _normal(k2, shape)


def _build_one(shape, key):
    return (_normal(key, shape),)


_HEADS = {"tiny": (2, 16, 4, 32), "cache": (4, 512, 16, 128), "dram": (16, 2048, 16, 128)}
_MATRIX = {"tiny": (64, 96), "cache": (1024, 4096), "dram": (16384, 4096)}

register(Workload("rope", "rotary embedding (RoPE)", "movement", _HEADS, _build_rope, rope,
                  _torch_rope))
register(Workload("head_reshuffle", "transpose (B,S,H,D)->(B,H,S,D) + scale", "movement",
                  _HEADS, _build_one, head_reshuffle, _torch_head_reshuffle))
register(Workload("transpose_bias_act", "transpose + bias + GELU (tanh)", "movement",
                  _MATRIX, _build_tbg, transpose_bias_gelu, _torch_transpose_bias_gelu,
                  rtol=1e-4, atol=1e-5))
register(Workload("concat_elementwise", "concatenate 3 elementwise results", "movement",
                  {"tiny": (64, 96), "cache": (1024, 1024), "dram": (8192, 4096)},
                  _build_two, concat_elementwise, _torch_concat_elementwise))
register(Workload("pad_relu", "pad + elementwise", "movement", _MATRIX, _build_one, pad_relu,
                  _torch_pad_relu))
register(Workload("mean_transposed", "mean over axis 0 of (x - 1).T", "movement", _MATRIX,
                  _build_one, mean_transposed, _torch_mean_transposed, rtol=1e-4, atol=1e-4))
