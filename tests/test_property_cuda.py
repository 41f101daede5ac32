"""Property-based: random movement / elementwise / reduction programs, lowered to CUDA and
run on emulated threads (pfjax/cuda_emulation.h), give what `jax.jit` gives."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pfjax.codegen.cuda_split as split
import pfjax.codegen.cuda_threadrows as threadrows
from pfjax.compile import cuda_sources
from pfjax.frontend import partition, trace
from tests.test_cuda_emulation import run_emulated
from tests.test_property_movement import build, programs
from tests.test_property_reductions import COMBINE, PRE, REDUCE
from tests.test_property_reductions import build as build_reduction


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


# Shapes that reach each CUDA form (with its thresholds made small): rows of a few hundred
# elements or tall columns are cut into chunks; rows of up to 32 take a thread each.
FORM_SHAPES = {"chunks": [(2, 5000), (3, 2600), (400, 3), (1200, 5), (2, 1100, 2)],
               "thread rows": [(40, 9), (33, 7), (50, 2, 3), (20, 31)],
               "blocks": [(4, 9), (1, 33), (17, 1), (3, 5, 7)]}


@st.composite
def reduction_programs(draw):
    form = draw(st.sampled_from(sorted(FORM_SHAPES)))
    shape = draw(st.sampled_from(FORM_SHAPES[form]))
    rank = len(shape)
    if form == "thread rows":  # short rows: the trailing dimensions
        axes = draw(st.sampled_from([(rank - 1,)] + ([(1, 2)] if rank == 3 else [])))
    else:
        axes = draw(st.sampled_from([(rank - 1,), (0,), tuple(range(rank))]
                                    + ([(1,), (0, rank - 1), (1, 2)] if rank >= 3 else [])))
    pre = draw(st.lists(st.sampled_from(sorted(PRE)), max_size=2))
    reds = draw(st.lists(st.sampled_from(sorted(REDUCE)), min_size=1, max_size=2))
    combine = draw(st.sampled_from(sorted(COMBINE)))
    post = draw(st.lists(st.sampled_from(sorted(PRE)), max_size=1))
    return form, (shape, axes, pre, reds, combine, post)


@settings(max_examples=16, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(prog=reduction_programs(), seed=st.integers(0, 2**31 - 1), nan=st.booleans())
def test_random_reduction_programs_on_emulated_cuda(prog, seed, nan, tmp_path):
    """Random reductions (any axes, broadcast back, NaN) through each CUDA form: rows and
    columns cut into chunks, a thread per row, a block per row (the thresholds that pick
    a form are made small so that these shapes reach it)."""
    form, (shape, axes, pre, reds, combine, post) = prog
    f = build_reduction(axes, pre, reds, combine, post)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    if nan and x.size > 2:
        x.reshape(-1)[x.size // 2] = np.nan
    program, _ = trace(f, [jax.ShapeDtypeStruct(shape, np.float32)])
    assume(len(partition(program).groups) == 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(split, "MIN_CHUNK", 2 if form == "chunks" else 1 << 40)
        mp.setattr(split, "WANT_BLOCKS", 1 << 20)
        mp.setattr(threadrows, "MIN_UNITS", 1 if form == "thread rows" else 1 << 40)
        (_, src, _), = cuda_sources(f, [jax.ShapeDtypeStruct(shape, np.float32)], program)
        assume(src is not None)  # a form the CUDA codegen declines: XLA runs it (said once)
        group, outs = run_emulated(f, [x], tmp_path, program)
    by_var = {v.id: g for v, g in zip(group.outputs, outs)}  # the group's own output order
    got = [by_var.get(getattr(v, "id", None)) for v in program.outvars]
    assume(all(g is not None for g in got))
    want = jax.jit(f)(x)
    msg = f"{form}: shape={shape} axes={axes} pre={pre} reductions={reds} combine={combine} post={post}"
    assert len(got) == len(want), msg
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert g.shape == w.shape, msg
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=msg)
        finite = np.abs(w[np.isfinite(w)])
        scale = float(finite.max()) if finite.size else 1.0
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * max(scale, 1.0), equal_nan=True,
                                   err_msg=msg)
