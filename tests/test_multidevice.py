"""Fused functions on 4 CPU devices (a subprocess, since the device count is fixed at start)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np, pfjax
from jax.sharding import NamedSharding, PartitionSpec as P

mesh = jax.make_mesh((4,), ("b",))
f = lambda x, b: jax.nn.gelu(x + b) * 2.0 - x
fused = pfjax.fuse(f)
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 129)).astype(np.float32)
b = rng.standard_normal((129,)).astype(np.float32)
want = np.asarray(jax.jit(f)(x, b))
xs = jax.device_put(x, NamedSharding(mesh, P("b")))
bs = jax.device_put(b, NamedSharding(mesh, P()))

# shard_map: each device runs the fused kernel on its own rows
sm = jax.jit(jax.shard_map(fused, mesh=mesh, in_specs=(P("b"), P()), out_specs=P("b")))
np.testing.assert_allclose(np.asarray(sm(xs, bs)), want, rtol=2e-6, atol=1e-6)
assert "custom_call @pfjax_" in sm.lower(xs, bs).as_text()

# sharded jit: the batch sharding is kept, nothing is gathered
jitted = jax.jit(fused)
out = jitted(xs, bs)
np.testing.assert_allclose(np.asarray(out), want, rtol=2e-6, atol=1e-6)
assert "all-gather" not in jitted.lower(xs, bs).compile().as_text()
assert out.sharding.spec[0] == "b", out.sharding
print("OK")
"""


def test_shard_map_and_sharded_jit(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
