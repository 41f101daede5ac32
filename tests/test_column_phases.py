"""Column reductions with several loops over many rows run in row order, one phase per
loop (codegen/cpu_phased): each unit a segment of whole rows, the per-column partials
combined in segment order between phases. Checked against XLA on shapes that take this
plan on any CPU (a block of 64 columns over 5000 rows is 1.28 MB, more than half of any
L2 we build for), with NaN, +-inf and underflowing columns, odd row counts (the last
segment short), under grad and vmap, and built without AVX-512."""
from __future__ import annotations

import ctypes
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import pfjax

from kernel_abi import aligned, build_without_avx512, needs_x86_gxx, phases

PHASED = "phases). Do not edit."


def _columns(rng, rows, cols):
    """Random columns with a NaN, +inf, -inf, all -inf, -0/+0 and exps that underflow."""
    x = rng.standard_normal((rows, cols)).astype(np.float32) * 3
    x[17, 5], x[3, 6], x[:, 7] = np.nan, np.inf, -np.inf
    x[11, 9] = -np.inf
    x[:, 8] = 0.0
    x[::2, 8] = -0.0
    x[:, 10] = rng.standard_normal(rows).astype(np.float32) - 200.0
    return x


def _sources(f, *args):
    return [Path(g.source_path).read_text() for g in pfjax.explain(f, *args).groups]


PROGRAMS = {
    "softmax": lambda x: jax.nn.softmax(x, axis=0),
    "log-softmax": lambda x: jax.nn.log_softmax(x, axis=0),
    "logsumexp": lambda x: jax.nn.logsumexp(x, axis=0),
    "centred and scaled": lambda x: (x - x.mean(0)) / (x.std(0) + 1.0),
    "max then masked sum": lambda x: jnp.sum(jnp.where(x > x.max(0) - 1.0, x, 0.0), 0),
}


@pytest.mark.parametrize("rows, cols", [(5000, 48), (4133, 32)])
def test_softmax_exponentials_wait_in_the_output(rng, rows, cols):
    """Each exponential of a phased softmax over axis 0 is computed once: the sum's phase
    stores it in the output (a unit's tile would not fit the local level), the last phase
    reads it back and scales it in place; explain says where it waits. The GIR after the
    passes, run by the interpreter, gives XLA's answer too."""
    from pfjax import gir
    from pfjax.compile import plan
    from pfjax.frontend import lower_group
    from pfjax.passes.pipeline import run_passes

    f = PROGRAMS["softmax"]
    x = _columns(rng, rows, cols)
    want = np.asarray(jax.jit(f)(x))
    np.testing.assert_allclose(np.asarray(jax.jit(pfjax.fuse(f))(x)), want, rtol=2e-5, atol=2e-6)
    report = str(pfjax.explain(f, x))
    assert "out0 (exp): written in loop 1 and kept there, at the global level" in report
    (src,) = _sources(f, x)
    sum_phase, last_phase = src.split("_body1(")[1].split("_body2(")
    assert "exp_v" in sum_phase and re.search(r"\bout0\[[^]]*\] = ", sum_phase)
    last_phase = last_phase.split("PFJAX_EXPORT")[0]
    assert "exp_v" not in last_phase and re.search(r"= out0\[", last_phase)
    # every phase prefetches the rows it reads two rows ahead
    ahead = f"+ {2 * cols * 4}, 0, 3);"
    bodies = re.findall(r"_body\d\(.*?\n}\n", src, re.S)
    assert len(bodies) == 3 and all(ahead in body for body in bodies)
    p = plan(f, [jax.core.ShapedArray(x.shape, jnp.float32)])
    kernel = run_passes(lower_group(p.groups[0].group))
    assert any(gir.reads_back(n) and n.src[0].arg.role == "out" for n in gir.toposort(kernel.root))
    (got,) = gir.interp.run(kernel, [x])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("rows, cols", [(5000, 48), (4133, 32)])
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_phased_column_reductions_match_xla(rng, name, rows, cols):
    f = PROGRAMS[name]
    x = _columns(rng, rows, cols)
    if name in ("centred and scaled", "max then masked sum"):
        x = np.nan_to_num(x, nan=1.5, posinf=4.0, neginf=-4.0)  # finite statistics
    got = jax.jit(pfjax.fuse(f))(x)
    want = jax.jit(f)(x)
    # (x - mean over a column near -200: one ulp of the mean, 1.5e-5, moves the result
    # by half that)
    atol = 2e-5 if name == "centred and scaled" else 2e-6
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=atol,
                                   err_msg=name)
    assert any(PHASED in s for s in _sources(f, x)), name


def test_phased_column_softmax_under_vmap_and_grad(rng):
    x = rng.standard_normal((4200, 32)).astype(np.float32)
    w = rng.standard_normal((4200, 32)).astype(np.float32)

    def loss(x):
        return jnp.sum(jax.nn.softmax(x, axis=0) * w)

    got = jax.jit(jax.grad(pfjax.fuse(loss)))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jit(jax.grad(loss))(x)),
                               rtol=2e-5, atol=1e-7)
    check_grads(pfjax.fuse(loss), (x,), order=1, modes=("rev",), atol=2e-2, rtol=2e-2)
    xb = np.stack([x, -x])
    f = pfjax.fuse(lambda x: jax.nn.softmax(x, axis=0))
    np.testing.assert_allclose(np.asarray(jax.vmap(f)(xb)),
                               np.asarray(jax.vmap(lambda x: jax.nn.softmax(x, axis=0))(xb)),
                               rtol=2e-6, atol=1e-8)


def test_few_rows_keep_column_blocks(rng):
    """A block that stays at the local level between loops is read again from there:
    no phases for 300 rows."""
    x = rng.standard_normal((300, 128)).astype(np.float32)
    assert not any(PHASED in s for s in _sources(PROGRAMS["softmax"], x))


@needs_x86_gxx
@pytest.mark.parametrize("stream, shift", [(0, 0), (1, 0), (1, 1)])
def test_phased_column_softmax_built_without_avx512(tmp_path, rng, monkeypatch, stream, shift):
    """The phases built for AVX2, run through their descriptor with units handed out in
    uneven ranges, match XLA; streamed (PFJAX_NONTEMPORAL=1: the output is too small for
    the cost model to stream) the exponentials waiting in the output go past the cache
    where a row starts on a line (shift 0), and through it where none does (shift: the
    output one element off)."""
    if stream:
        monkeypatch.setenv("PFJAX_NONTEMPORAL", "1")
    x = _columns(rng, 5000, 48)
    f = PROGRAMS["softmax"]
    (group,) = pfjax.explain(f, x).groups
    source = Path(group.source_path)
    text = source.read_text()
    assert PHASED in text
    sum_phase = text.split("_body1(")[1].split("_body2(")[0]
    assert bool(re.search(r"if \(stream && [^\n]*\.stream\(&out0\[", sum_phase)) == bool(stream)
    info = build_without_avx512(source, tmp_path / "avx2.so")
    assert info.num_phases == 3 and bool(info.can_stream) == bool(stream)
    xin, out = aligned(x.size), aligned(x.size + 16)[shift:shift + x.size]
    scratch = aligned(info.scratch_bytes // 4 + 16)
    xin[:] = x.reshape(-1)
    ins = (ctypes.c_void_p * 1)(xin.ctypes.data)
    outs = (ctypes.c_void_p * 2)(out.ctypes.data, scratch.ctypes.data)
    cuts = sorted({0, 1, info.total // 3, info.total - 1, info.total})
    for body, finish in phases(info):
        for lo, hi in zip(cuts, cuts[1:]):
            body(ins, outs, lo, hi, stream)
        if finish is not None:
            finish(ins, outs)
    np.testing.assert_allclose(out.reshape(x.shape), np.asarray(jax.jit(f)(x)),
                               rtol=2e-6, atol=1e-7)
