"""Reduction workloads of the benchmark (shapes from ../shared/BASELINES.md).

Each function is written the way users write it (jnp / jax.nn); each torch twin is the
same computation for the optional torch.compile column.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pfjax.bench.workloads import (Workload, build_logits_and_labels, cross_entropy, register,
                                   torch_cross_entropy)

EPS = 1e-5


def _normal(key, shape, scale=1.0, shift=0.0):
    return shift + scale * jax.random.normal(key, shape, jnp.float32)


def _row_params(shape, key):
    kx, kw, kb = jax.random.split(key, 3)
    return _normal(kx, shape), _normal(kw, shape[-1:], 0.1, 1.0), _normal(kb, shape[-1:], 0.1)


def layernorm(x, w, b):
    m = jnp.mean(x, -1, keepdims=True)
    v = jnp.var(x, -1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(v + EPS) * w + b


def _torch_layernorm(x, w, b):
    import torch.nn.functional as F
    return F.layer_norm(x, x.shape[-1:], w, b, EPS)


def rmsnorm(x, w):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + EPS) * w


def _torch_rmsnorm(x, w):
    import torch
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + EPS) * w


def softmax(x):
    return jax.nn.softmax(x, axis=-1)


def _torch_softmax(x):
    return x.softmax(-1)


def scale_mask_softmax(x, mask):
    return jax.nn.softmax(jnp.where(mask, x * 0.125, -1e9), axis=-1)


def _torch_scale_mask_softmax(x, mask):
    import torch
    return torch.where(mask, x * 0.125, -1e9).softmax(-1)


def residual_layernorm(x, r, w, b):
    s = x + r
    return s, layernorm(s, w, b)


def _torch_residual_layernorm(x, r, w, b):
    s = x + r
    return s, _torch_layernorm(s, w, b)


def log_softmax(x):
    return jax.nn.log_softmax(x, axis=-1)


def _torch_log_softmax(x):
    return x.log_softmax(-1)


def logsumexp(x):
    return jax.nn.logsumexp(x, axis=-1)


def _torch_logsumexp(x):
    return x.logsumexp(-1)



def column_sum(x):
    return jnp.sum(x, 0)


def _torch_column_sum(x):
    return x.sum(0)


def column_mean_var(x):
    return jnp.mean(x, 0), jnp.var(x, 0)


def softmax_columns(x):
    return jax.nn.softmax(x, axis=0)


def _torch_softmax_columns(x):
    return x.softmax(0)


def _torch_column_mean_var(x):
    return x.mean(0), x.var(0, unbiased=False)


def batchnorm_apply(x, mean, var, g, b):
    return (x - mean) * jax.lax.rsqrt(var + EPS) * g + b


def _torch_batchnorm_apply(x, mean, var, g, b):
    import torch
    return (x - mean) * torch.rsqrt(var + EPS) * g + b


def _build_x(shape, key):
    return (_normal(key, shape, 2.0),)


def _build_mask(shape, key):
    kx, km = jax.random.split(key)
    s = shape[-1]
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((s, s), bool)), (1, s, s))
    return _normal(kx, shape, 2.0), mask


def _build_residual(shape, key):
    k1, k2 = jax.random.split(key)
    x, w, b = _row_params(shape, k1)
    return x, _normal(k2, shape), w, b


def _build_rms(shape, key):
    return _row_params(shape, key)[:2]


def _build_bn(shape, key):
    kx, ks = jax.random.split(key)
    x = _normal(kx, shape, 2.0, 1.0)
    c = shape[-1]
    km, kv, kg, kb = jax.random.split(ks, 4)
    return (x, _normal(km, (c,), 0.1, 1.0), jax.random.uniform(kv, (c,), jnp.float32, 1.0, 5.0),
            _normal(kg, (c,), 0.1, 1.0), _normal(kb, (c,), 0.1))


_ROWS = {"tiny": (64, 256), "cache": (1024, 4096), "dram": (16384, 4096)}
_COLS = {"tiny": (512, 32), "cache": (16384, 256), "dram": (262144, 256)}
_VOCAB = {"tiny": (16, 1000), "cache": (128, 32000), "dram": (2048, 32000)}

register(Workload("layernorm_wide", "layernorm", "reduction",
                  {"tiny": (32, 128), "cache": (4096, 1024), "dram": (65536, 1024)},
                  _row_params, layernorm, _torch_layernorm, rtol=1e-4, atol=1e-4))
register(Workload("layernorm", "layernorm", "reduction", _ROWS,
                  _row_params, layernorm, _torch_layernorm, rtol=1e-4, atol=1e-4))
register(Workload("rmsnorm", "RMSNorm", "reduction", _ROWS, _build_rms, rmsnorm,
                  _torch_rmsnorm, rtol=1e-4, atol=1e-4))
register(Workload("softmax", "softmax", "reduction", _ROWS, _build_x, softmax,
                  _torch_softmax, rtol=1e-4, atol=1e-6))
register(Workload("scale_mask_softmax", "scale+mask+softmax", "reduction",
                  {"tiny": (4, 64, 64), "cache": (16, 512, 512), "dram": (64, 1024, 1024)},
                  _build_mask, scale_mask_softmax, _torch_scale_mask_softmax,
                  rtol=1e-4, atol=1e-6))
register(Workload("residual_layernorm", "residual add + layernorm (2 outputs)", "reduction",
                  _ROWS, _build_residual, residual_layernorm, _torch_residual_layernorm,
                  rtol=1e-4, atol=1e-4))
register(Workload("log_softmax", "log-softmax", "reduction", _VOCAB, _build_x, log_softmax,
                  _torch_log_softmax, rtol=1e-4, atol=1e-4))
register(Workload("logsumexp", "logsumexp", "reduction", _VOCAB, _build_x, logsumexp,
                  _torch_logsumexp, rtol=1e-4, atol=1e-4))
register(Workload("cross_entropy", "cross-entropy (mean over rows)", "reduction", _VOCAB,
                  build_logits_and_labels, cross_entropy, torch_cross_entropy, rtol=1e-4,
                  atol=1e-4))
register(Workload("column_sum", "column sum", "reduction", _COLS, _build_x, column_sum,
                  _torch_column_sum, rtol=1e-4, atol=1e-3))
register(Workload("column_mean_var", "column mean + var", "reduction", _COLS, _build_x,
                  column_mean_var, _torch_column_mean_var, rtol=1e-4, atol=1e-4))
register(Workload("softmax_columns", "softmax over axis 0", "reduction",
                  {"tiny": (512, 64), "cache": (4096, 1024), "dram": (65536, 1024)}, _build_x,
                  softmax_columns, _torch_softmax_columns, rtol=1e-4, atol=1e-6))
register(Workload("batchnorm_apply", "batchnorm apply", "reduction", _COLS, _build_bn,
                  batchnorm_apply, _torch_batchnorm_apply, rtol=1e-4, atol=1e-4))


# ---------------------------------------------------------------- training step

def _train_loss(x, r, w, b, labels):
    h = jax.nn.gelu(layernorm(x + r, w, b))
    return cross_entropy(h, labels)


def train_step(x, r, w, b, labels):
    """value_and_grad of residual + layernorm + GELU + softmax cross-entropy."""
    return jax.value_and_grad(_train_loss, argnums=(0, 2, 3))(x, r, w, b, labels)


def _torch_train_step(x, r, w, b, labels):
    import torch
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    h = torch.nn.functional.gelu(_torch_layernorm(x + r, w, b))
    loss = torch_cross_entropy(h, labels)
    gx, gw, gb = torch.autograd.grad(loss, (x, w, b))
    return loss, (gx, gw, gb)


def _build_train(shape, key):
    k1, k2 = jax.random.split(key)
    x, r, w, b = _build_residual(shape, k1)
    return x, r, w, b, jax.random.randint(k2, shape[:1], 0, shape[1], jnp.int32)


def _fused_train_step(fuse):
    # As users write it: the loss is fused, the training step differentiates it.
    return lambda *args: jax.value_and_grad(fuse(_train_loss), argnums=(0, 2, 3))(*args)


register(Workload("train_step", "training step: value_and_grad(residual+LN+GELU+CE)",
                  "training", {"tiny": (32, 128), "cache": (1024, 4096), "dram": (8192, 4096)},
                  _build_train, train_step, _torch_train_step, rtol=1e-4, atol=1e-5,
                  fused=_fused_train_step))
