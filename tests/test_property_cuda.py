"""Property-based: random movement / elementwise / reduction programs, lowered to CUDA and
run on emulated threads (pfjax/cuda_emulation.h), give what `jax.jit` gives."""
from __future__ import annotations

import jax
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pfjax.frontend import partition, trace
from tests.test_cuda_emulation import run_emulated
from tests.test_property_movement import build, programs


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(prog=programs(), seed=st.integers(0, 2**31 - 1))
def test_random_programs_on_emulated_cuda(prog, seed, tmp_path):
    shape, steps, reduce = prog
    f = build(steps, reduce)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    program, _ = trace(f, [jax.ShapeDtypeStruct(shape, np.float32)])
    assume(len(partition(program).groups) == 1)
    _, (got,) = run_emulated(f, [x], tmp_path)
    want = np.asarray(jax.jit(f)(x))
    np.testing.assert_allclose(got, want, rtol=5e-5, atol=5e-5, equal_nan=True,
                               err_msg=f"shape={shape} steps={steps} reduce={reduce}")
