"""First look on an NVIDIA GPU: does a fused function run as a pfjax CUDA kernel, and does
it give XLA GPU's answer? Prints what it finds and a traceback where it breaks."""
import re
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import pfjax
from pfjax import jaxext
from pfjax.machine import cuda_device_info

print("backend", jax.default_backend(), jax.devices())
print("gpu_info", jaxext.gpu_info(), "runtime", cuda_device_info())


def gelu_bias(x, b):
    return jax.nn.gelu(x + b)


def ln(x):
    m = x.mean(-1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5)


x = jax.random.normal(jax.random.key(0), (256, 1024), jnp.float32)
b = jax.random.normal(jax.random.key(1), (1024,), jnp.float32)
for name, f, args in (("gelu_bias", gelu_bias, (x, b)), ("layernorm", ln, (x,))):
    try:
        report = pfjax.explain(f, *args)
        for g in report.groups:
            print(name, "group: ref", g.ref, "cuda_problem", g.cuda_problem)
        fused = jax.jit(pfjax.fuse(f))
        hlo = fused.lower(*args).as_text()
        print(name, "custom calls:", sorted(set(re.findall(r"pfjax_[0-9a-f]{20}", hlo))))
        got, want = fused(*args), jax.jit(f)(*args)
        print(name, "max abs err", float(np.max(np.abs(np.asarray(got) - np.asarray(want)))))
    except Exception:
        traceback.print_exc()
