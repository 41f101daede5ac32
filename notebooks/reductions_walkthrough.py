# %% [markdown]
# # Reductions in one pass: layernorm, softmax and cross-entropy
# Runs top to bottom as a script (`python notebooks/reductions_walkthrough.py`) or as a
# notebook with `# %%` cells. It shows how pfjax turns a normalisation or a softmax into one
# kernel: the loops each row runs, where each reused value lives (registers, a tile at the
# local level, or a re-read that stays in cache), the generated C++, and the time against
# `jax.jit`.

# %%
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pfjax


def layernorm(x, w, b):
    m = x.mean(-1, keepdims=True)
    v = jnp.var(x, -1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(v + 1e-5) * w + b


def cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


x = jax.random.normal(jax.random.key(0), (1024, 4096), jnp.float32)
w = jnp.ones((4096,), jnp.float32)
b = jnp.zeros((4096,), jnp.float32)
labels = jax.random.randint(jax.random.key(1), (1024,), 0, 4096, jnp.int32)

# %% [markdown]
# ## Layernorm: three loops over each row, the row stays in cache
# Loop 0 sums the row, loop 1 sums the squared deviations, loop 2 writes the result.
# `x - mean` is recomputed (one subtraction is cheaper than a tile); `x` is re-read from
# cache because the row fits the local level.

# %%
report = pfjax.explain(layernorm, x, w, b)
gir_line = ("     %", "     store", "     kernel", "     parallel")
print("\n".join(line for line in str(report).splitlines() if not line.startswith(gir_line)))

# %% [markdown]
# ## Softmax: the exponentials go to a tile at the local level
# Recomputing `exp` in the last loop would cost ~16 simple operations per element; the
# reuse pass keeps it in a per-row tile instead (an explicit GIR store/load pair).

# %%
report = pfjax.explain(jax.nn.softmax, x)
for line in str(report).splitlines():
    if "tile" in line or "reused" in line or "re-read" in line:
        print(line)

# %% [markdown]
# ## Cross-entropy: one kernel, the mean over rows combined after the rows
# The label's log-probability is picked in the same loop as the row's other work, and the
# per-row losses are added up in row order by the kernel's finish step.

# %%
report = pfjax.explain(cross_entropy, x, labels)
print(f"{report.num_kernels} kernel(s)")
source = Path(report.groups[0].source_path).read_text()
print(source[source.index("_finish("):][:1200])

# %% [markdown]
# ## Time against jax.jit

# %%
def timeit(f, *args, reps=30):
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


for name, f, args in [("layernorm", layernorm, (x, w, b)), ("softmax", jax.nn.softmax, (x,)),
                      ("cross-entropy", cross_entropy, (x, labels))]:
    ref, fused = timeit(jax.jit(f), *args), timeit(jax.jit(pfjax.fuse(f)), *args)
    print(f"{name:14s} jax.jit {ref:.3f} ms   pfjax {fused:.3f} ms   speedup {ref / fused:.2f}x")
