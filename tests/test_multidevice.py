"""Fused functions on 4 CPU devices (a subprocess, since the device count is fixed at start).

Under shard_map each device runs the kernels on its own shard. Under a jit that XLA
partitions, a group whose leading dimension is a row dimension runs its kernel on each
device's rows (no all-gather, outputs keep the row sharding); other groups are left to XLA.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np, pfjax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

KERNEL = 'custom_call_target="pfjax_'
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 129)).astype(np.float32)
b = rng.standard_normal((129,)).astype(np.float32)
g = rng.standard_normal((129,)).astype(np.float32)


def close(got, want, tol=2e-5):
    for o, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(o), np.asarray(w), rtol=tol, atol=tol)


def sharded_jit(mesh, f, args, specs, fused=None, tol=2e-5):
    # Runs `fused` (default pfjax.fuse(f)) under jit on sharded inputs; checks it against
    # jax.jit(f) and returns (compiled HLO text, outputs).
    args = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs)]
    jitted = jax.jit(fused or pfjax.fuse(f))
    out = jitted(*args)
    close(out, jax.jit(f)(*args), tol)
    return jitted.lower(*args).compile().as_text(), out


def layernorm(x, g, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(v + 1e-5) * g + b


gelu = lambda x, b: jax.nn.gelu(x + b) * 2.0 - x

# Explicit mesh axes (jax.make_mesh's default): shardings are known at lowering and row
# groups split. Auto axes (decided later by Shardy): groups stay with XLA, never gathered.
for mesh in (jax.make_mesh((4,), ("b",)),
             jax.make_mesh((4,), ("b",), axis_types=(AxisType.Auto,))):
    explicit = mesh.axis_types[0] == AxisType.Explicit
    # shard_map: each device runs the fused kernel on its own rows
    xs = jax.device_put(x, NamedSharding(mesh, P("b")))
    bs = jax.device_put(b, NamedSharding(mesh, P()))
    sm = jax.jit(jax.shard_map(pfjax.fuse(gelu), mesh=mesh, in_specs=(P("b"), P()),
                               out_specs=P("b")))
    close(sm(xs, bs), jax.jit(gelu)(x, b))
    assert "custom_call @pfjax_" in sm.lower(xs, bs).as_text()

    # sharded jit, elementwise with a replicated bias: a kernel per device, rows kept
    hlo, out = sharded_jit(mesh, gelu, (x, b), (P("b"), P()))
    assert (KERNEL in hlo) == explicit and "all-gather" not in hlo, hlo
    assert out.sharding.spec[0] == "b", out.sharding

    # sharded jit, a row reduction (layernorm over the last axis): a kernel per device
    hlo, out = sharded_jit(mesh, layernorm, (x, g, b), (P("b"), P(), P()))
    assert (KERNEL in hlo) == explicit and "all-gather" not in hlo, hlo
    assert out.sharding.spec[0] == "b", out.sharding

    # Columns sharded: not a row split, so XLA runs it, ungathered.
    hlo, out = sharded_jit(mesh, gelu, (x[:, :128], b[:128]), (P(None, "b"), P()))
    assert KERNEL not in hlo and "all-gather" not in hlo, hlo

# The sharded dimension is the one reduced (a column sum of rows split over devices):
# the group cannot run per shard, so XLA runs it (partial sums + all-reduce), unfused.
mesh = jax.make_mesh((4,), ("b",))
hlo, _ = sharded_jit(mesh, lambda x: jnp.sum(jnp.exp(x), axis=0), (x,), (P("b"),))
assert KERNEL not in hlo and "all-gather" not in hlo, hlo

# value_and_grad of a fused layernorm loss under sharded jit: the row-wise forward and
# backward groups run per shard; the sums over rows (the loss, the gradients of g and b)
# run with XLA (partial sums + all-reduce).
loss = lambda x, g, b: jnp.sum(layernorm(x, g, b) ** 2)
vg = lambda f: jax.value_and_grad(f, argnums=(0, 1, 2))
hlo, (value, grads) = sharded_jit(mesh, vg(loss), (x, g, b), (P("b"), P(), P()),
                                  fused=vg(pfjax.fuse(loss)), tol=1e-3)
assert KERNEL in hlo and "all-gather" not in hlo, hlo
assert grads[0].sharding.spec[0] == "b", grads[0].sharding
print("OK")
"""


def test_shard_map_and_sharded_jit(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
