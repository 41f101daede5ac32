"""Row shapes at the edges of the benchmark: few very long rows (a loss summed over a whole
array, a softmax over 3 rows of a million) and very short ones (a router's softmax and
argmax over 8 experts, a classifier's loss over 10 classes). A category of their own ("row shapes"), so that the reduction
category stays the workloads of BASELINES.md.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pfjax.bench.workloads import (Workload, build_logits_and_labels, cross_entropy, register,
                                   torch_cross_entropy)

_WHOLE = {"tiny": (64, 256), "cache": (1024, 4096), "dram": (16384, 4096)}
_LONG = {"tiny": (3, 40000), "cache": (3, 1400000), "dram": (3, 22000000)}
_SHORT = {"tiny": (4096, 8), "cache": (524288, 8), "dram": (8388608, 8)}
_CLASSES = {"tiny": (4096, 10), "cache": (393216, 10), "dram": (6291456, 10)}


def _build_one(shape, key):
    return (jax.random.normal(key, shape, jnp.float32),)


def sum_of_squares(x):
    return jnp.sum(x * x)


def _torch_sum_of_squares(x):
    return (x * x).sum()


def softmax(x):
    return jax.nn.softmax(x, axis=-1)


def _torch_softmax(x):
    return x.softmax(-1)


def argmax(x):
    return jnp.argmax(x, axis=-1).astype(jnp.int32)


def _torch_argmax(x):
    return x.argmax(-1).int()


register(Workload("sum_of_squares", "sum of squares of a whole array", "row shapes", _WHOLE,
                  _build_one, sum_of_squares, _torch_sum_of_squares, rtol=1e-5, atol=1e-2))
register(Workload("softmax_long_rows", "softmax over 3 long rows", "row shapes", _LONG,
                  _build_one, softmax, _torch_softmax, rtol=1e-5, atol=1e-9))
register(Workload("softmax_short_rows", "softmax over 8 (router)", "row shapes", _SHORT,
                  _build_one, softmax, _torch_softmax, rtol=1e-5, atol=1e-6))
register(Workload("argmax_short_rows", "argmax over 8 (router)", "row shapes", _SHORT,
                  _build_one, argmax, _torch_argmax, rtol=0, atol=0))
register(Workload("cross_entropy_short_rows", "cross-entropy over 10 classes (mean)",
                  "row shapes", _CLASSES, build_logits_and_labels, cross_entropy,
                  torch_cross_entropy, rtol=1e-4, atol=1e-4))
