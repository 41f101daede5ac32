# %% [markdown]
# # pfjax walkthrough: from a jnp function to a fused kernel
# Runs top to bottom as a script (`python notebooks/fusion_walkthrough.py`) or as a
# notebook in any editor that understands `# %%` cells. It shows what pfjax does with a
# bias + GELU + residual block: the groups it finds, the GIR before and after the passes,
# the generated C++, and the time against `jax.jit` of the same function.

# %%
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pfjax


def block(x, b, r):
    h = jax.nn.gelu(x + b) + r
    return h, jax.nn.silu(h)


key = jax.random.key(0)
x = jax.random.normal(key, (1024, 4096), jnp.float32)
b = jax.random.normal(jax.random.key(1), (4096,), jnp.float32)
r = jax.random.normal(jax.random.key(2), (1024, 4096), jnp.float32)

# %% [markdown]
# ## What pfjax sees

# %%
report = pfjax.explain(block, x, b, r)
print(report)

# %% [markdown]
# ## The generated source of the first group

# %%
source = report.groups[0].source_path
print(Path(source).read_text()[:3000] if source else "no kernel (no compiler?)")

# %% [markdown]
# ## Same answer, side by side timing

# %%
ref = jax.jit(block)
fused = jax.jit(pfjax.fuse(block))
for a, e in zip(fused(x, b, r), ref(x, b, r)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=2e-5, atol=2e-5)


def median_ms(fn, n=50):
    jax.block_until_ready(fn(x, b, r))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn(x, b, r))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


t_ref, t_fused = median_ms(ref), median_ms(fused)
print(f"jax.jit {t_ref:.3f} ms, pfjax {t_fused:.3f} ms, speedup {t_ref / t_fused:.2f}x")
