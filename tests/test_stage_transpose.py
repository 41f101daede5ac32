"""pfjax::rt::stage_transpose against numpy: whole 16 x 16 register blocks, masked edge
blocks, short rows packed back to back or with gaps, in both directions, for 4-byte and
2-byte elements (8 x 8 blocks in 128-bit registers). Built natively and for AVX2
(x86-64-v3: 8 x 8 register blocks), so both forms are checked on AVX-512 machines."""
from __future__ import annotations

import ctypes
import itertools
import subprocess

import numpy as np
import pytest

from tests.test_math_header import FLAGS, INCLUDE, _gxx

SOURCE = r"""
#include "pfjax/kernel.h"
extern "C" void stage(float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                      int64_t cols, int64_t rows) {
  pfjax::rt::stage_transpose(dst, dst_stride, src, src_stride, cols, rows);
}
extern "C" void stage16(uint16_t* dst, int64_t dst_stride, const uint16_t* src,
                        int64_t src_stride, int64_t cols, int64_t rows) {
  pfjax::rt::stage_transpose(dst, dst_stride, src, src_stride, cols, rows);
}
"""


@pytest.fixture(scope="module", params=["native", "x86-64-v3"])
def stage(request, tmp_path_factory):
    if _gxx() is None:
        pytest.skip("g++ not on PATH")
    from pfjax.machine import machine_info
    if request.param != "native" and "avx2" not in machine_info().get("isa", ()):
        pytest.skip("the machine has no AVX2")
    d = tmp_path_factory.mktemp("stage_transpose")
    (d / "stage.cc").write_text(SOURCE)
    flags = [f if f != "-march=native" else f"-march={request.param}" for f in FLAGS]
    subprocess.run([_gxx(), *flags, "-I", INCLUDE, str(d / "stage.cc"), "-o", str(d / "stage.so")],
                   check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(d / "stage.so"))
    for fn in (lib.stage, lib.stage16):
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                       ctypes.c_int64, ctypes.c_int64]
    return {4: lib.stage, 2: lib.stage16}


def _check(stage, rng, cols, rows, src_stride, dst_stride, itemsize):
    """dst[tt * dst_stride + jj] = src[jj * src_stride + tt] for jj < cols, tt < rows;
    everything else in dst is left alone, nothing outside src's rows is needed."""
    bits = np.uint32 if itemsize == 4 else np.uint16
    src = rng.integers(0, np.iinfo(bits).max, max(1, cols * src_stride), dtype=bits, endpoint=True)
    dst = np.full(max(1, rows * dst_stride) + 16, np.iinfo(bits).max, bits)
    want = dst.copy()
    for jj, tt in itertools.product(range(cols), range(rows)):
        want[tt * dst_stride + jj] = src[jj * src_stride + tt]
    stage[itemsize](dst.ctypes.data, dst_stride, src.ctypes.data, src_stride, cols, rows)
    np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize("itemsize", [4, 2])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 8, 16, 17, 33])
@pytest.mark.parametrize("cols", [1, 5, 16, 40, 512])
def test_short_rows_staged_in(stage, rng, rows, cols, itemsize):
    # rows of the input packed back to back and with a gap
    _check(stage, rng, cols, rows, rows, cols, itemsize)
    _check(stage, rng, cols, rows, rows + 3, cols + 5, itemsize)


@pytest.mark.parametrize("itemsize", [4, 2])
@pytest.mark.parametrize("cols", [1, 2, 3, 4, 7, 8, 16, 17])
@pytest.mark.parametrize("rows", [1, 5, 16, 40, 512])
def test_short_rows_staged_out(stage, rng, rows, cols, itemsize):
    # back into packed rows of `cols` elements, from a stage
    _check(stage, rng, cols, rows, 512, cols, itemsize)
    _check(stage, rng, cols, rows, 515, cols + 1, itemsize)


@pytest.mark.parametrize("itemsize", [4, 2])
@pytest.mark.parametrize("cols, rows", [(8, 8), (32, 512), (64, 512), (24, 40), (67, 131)])
def test_whole_register_blocks(stage, rng, cols, rows, itemsize):
    # strips of a blocked transpose: many whole 8 x 8 (16 x 16) blocks, source rows far apart
    _check(stage, rng, cols, rows, 4096, cols, itemsize)
