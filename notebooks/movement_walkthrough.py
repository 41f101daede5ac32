# %% [markdown]
# # Data movement as index maps: RoPE, a transpose, a causal mask, and their CUDA form
# Runs top to bottom as a script (`python notebooks/movement_walkthrough.py`) or as a
# notebook with `# %%` cells. It shows how pfjax fuses slices, concatenations and
# transposes with the computation around them: every value is evaluated at an index map of
# the kernel's iteration space, so movement becomes strided, guarded or staged loads, never
# a copy. At the end, the same GIR is printed as CUDA.

# %%
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import pfjax
from pfjax import gir
from pfjax.compile import cuda_sources


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


x = jax.random.normal(jax.random.key(0), (4, 512, 16, 128), jnp.float32)
angle = jax.random.normal(jax.random.key(1), (512, 1, 128), jnp.float32)
cos, sin = jnp.cos(angle), jnp.sin(angle)


def timed(f, *args, n=20):
    f(*args).block_until_ready()
    start = time.perf_counter()
    for _ in range(n):
        f(*args).block_until_ready()
    return (time.perf_counter() - start) / n * 1e3


# %% [markdown]
# ## RoPE: two slices, a negation, a concatenation, two products: one kernel
# The halves are loads of `x` at shifted maps; the concatenation picks, per element of
# the last dimension, which half it comes from. Each piece is read by a *guarded* load
# (`if %guard else 0` in the GIR below), so memory is touched only where it is selected.

# %%
report = pfjax.explain(rope, x, cos, sin)
(group,) = report.groups
print(gir.format_kernel(group.kernel_before))

# %% [markdown]
# ## The codegen splits each row where the pieces change
# Within `[0, 64)` and `[64, 128)` of the last dimension every comparison with the index
# is constant, so each interval gets its own SIMD loop with plain loads: each output
# element is computed from its own piece only.

# %%
body = Path(group.source_path).read_text().split("_body(")[1].split("PFJAX_EXPORT")[0]
print(body[:2500])

# %%
print(f"RoPE: pfjax {timed(jax.jit(pfjax.fuse(rope)), x, cos, sin):.2f} ms, "
      f"jax.jit {timed(jax.jit(rope), x, cos, sin):.2f} ms")

# %% [markdown]
# ## A transpose goes through a stage tile
# `x.T + b` reads `x` down its columns. The kernel walks blocks of 32 output rows x 128
# columns; each block's source lines are read whole and transposed into a tile at the
# local level (16x16 register transposes), which the row loop then reads contiguously.

# %%
m = jax.random.normal(jax.random.key(2), (1024, 4096), jnp.float32)
bias = jnp.ones((1024,), jnp.float32)
tb = lambda m, b: jax.nn.gelu(m.T + b)
(group,) = pfjax.explain(tb, m, bias).groups
print("schedule:", group.schedule)
print([line.strip() for line in Path(group.source_path).read_text().splitlines() if "stage" in line][:4])
print(f"transpose + bias + GELU: pfjax {timed(jax.jit(pfjax.fuse(tb)), m, bias):.2f} ms, "
      f"jax.jit {timed(jax.jit(tb), m, bias):.2f} ms")

# %% [markdown]
# ## A causal mask built from iotas costs nothing
# The mask is index arithmetic; it is computed inside the softmax's loops instead of
# being written and read back.

# %%
def causal_softmax(s):
    n = s.shape[-1]
    mask = jnp.arange(n)[:, None] >= jnp.arange(n)[None, :]
    return jax.nn.softmax(jnp.where(mask, s * 0.125, -jnp.inf), axis=-1)


scores = jax.random.normal(jax.random.key(3), (16, 512, 512), jnp.float32)
print(str(pfjax.explain(causal_softmax, scores)).splitlines()[0])

# %% [markdown]
# ## The same GIR as CUDA
# The CUDA backend lowers the same kernel (after the same passes, for a CUDA target):
# 4 elements per thread, moved as 16-byte packs where contiguous.

# %%
avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, cos, sin)]
((_, cuda_src, _),) = cuda_sources(rope, avals)
kernel = re.search(r"__global__.*?\n}\n", cuda_src, re.S).group(0)
print(kernel[:2000])
