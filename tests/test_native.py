"""Tests for the compiled module pfjax._native and its wrapper pfjax.machine."""

import math
import sys
import warnings

import pytest

import pfjax.machine as machine

KEYS = {
    "num_cores": int,
    "simd_bytes": int,
    "isa": list,
    "l1d_bytes": int,
    "l2_bytes": int,
    "l3_bytes": int,
    "cache_line_bytes": int,
    "cpu_model": str,
    "page_bytes": int,
}


def check_info(info):
    assert set(KEYS) <= set(info)
    for key, typ in KEYS.items():
        assert isinstance(info[key], typ), (key, info[key])
    assert info["num_cores"] >= 1
    assert info["simd_bytes"] in {8, 16, 32, 64}
    assert all(isinstance(s, str) and s for s in info["isa"])
    for key in ("l1d_bytes", "l2_bytes", "l3_bytes"):
        assert 0 <= info[key] < (1 << 40), (key, info[key])
    if info["l1d_bytes"] and info["l2_bytes"]:
        assert info["l1d_bytes"] <= info["l2_bytes"]
    line = info["cache_line_bytes"]
    assert 16 <= line <= 1024 and line & (line - 1) == 0
    page = info["page_bytes"]
    assert page >= 4096 and page & (page - 1) == 0
    isa = set(info["isa"])
    if info["simd_bytes"] == 64:
        assert "avx512f" in isa
    if info["simd_bytes"] == 32:
        assert "avx2" in isa
    if "avx512bw" in isa:
        assert "avx512f" in isa


@pytest.fixture(scope="module")
def native():
    # The native module must be built: a silent skip here would hide a broken build.
    import pfjax._native as native

    return native


def test_native_machine_info(native):
    info = native.machine_info()
    check_info(info)


def test_native_matches_python_description(native):
    info, py = native.machine_info(), machine._python_machine_info()
    assert info["simd_bytes"] == py["simd_bytes"]
    assert info["page_bytes"] == py["page_bytes"]
    assert info["cpu_model"] == py["cpu_model"]


def test_wrapper_uses_native(native):
    machine.machine_info.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            info = machine.machine_info()
        assert info == native.machine_info()
        assert machine.machine_info() is info  # cached
        assert machine.native_available()
    finally:
        machine.machine_info.cache_clear()


@pytest.mark.parametrize("nontemporal", [False, True])
def test_measure_bandwidth_small(native, nontemporal):
    gbs = native.measure_bandwidth(1 << 20, 2, 3, nontemporal)
    assert isinstance(gbs, float)
    assert math.isfinite(gbs) and gbs > 0


def test_measure_bandwidth_odd_sizes_and_defaults(native):
    # Not a multiple of the vector width; more threads than chunks; default threads.
    assert native.measure_bandwidth(1000, threads=64, repeats=1) > 0
    assert native.measure_bandwidth(4096 + 4, repeats=2) > 0
    gbs = machine.measure_bandwidth(1 << 16, threads=1, repeats=2)
    assert isinstance(gbs, float) and gbs > 0


def test_measure_bandwidth_rejects_bad_arguments(native):
    with pytest.raises(ValueError):
        native.measure_bandwidth(0)
    with pytest.raises(ValueError):
        native.measure_bandwidth(1 << 16, repeats=0)
    with pytest.raises(ValueError):
        native.measure_bandwidth(1 << 16, threads=-1)


@pytest.mark.parametrize("nontemporal", [False, True])
@pytest.mark.parametrize("read_bytes, write_bytes", [
    (1000, 1000), (4 << 20, 0), (64, 3 << 20), (3 << 20, 1 << 10), (40, 100)])
def test_stream_kernel_runs_repeatedly(read_bytes, write_bytes, nontemporal):
    # Odd sizes, more threads than 64-byte lines, read-only, write-heavy.
    k = machine.stream_kernel(read_bytes, write_bytes, threads=64, nontemporal=nontemporal)
    assert k.bytes_moved == read_bytes // 4 * 4 + write_bytes // 4 * 4
    times = [k.run() for _ in range(3)]
    assert all(isinstance(t, float) and math.isfinite(t) and t > 0 for t in times)


def test_stream_kernel_rejects_bad_arguments():
    with pytest.raises(ValueError):
        machine.stream_kernel(0, 0)
    with pytest.raises(ValueError):
        machine.stream_kernel(-64, 128)
    with pytest.raises(ValueError):
        machine.stream_kernel(1 << 16, 0, threads=-1)


def test_fallback_without_native(monkeypatch):
    # A None entry in sys.modules makes `import pfjax._native` raise ImportError.
    monkeypatch.setitem(sys.modules, "pfjax._native", None)
    monkeypatch.setattr(machine, "_warned", False)
    machine.machine_info.cache_clear()
    try:
        assert not machine.native_available()
        with pytest.warns(RuntimeWarning, match="native module pfjax._native was not built"):
            info = machine.machine_info()
        check_info(info)
        # Warned once: a second (uncached) call stays quiet.
        machine.machine_info.cache_clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            machine.machine_info()
        with pytest.raises(RuntimeError, match="pip install -e"):
            machine.measure_bandwidth(1 << 16)
        with pytest.raises(RuntimeError, match="pfjax.machine.stream_kernel needs"):
            machine.stream_kernel(1 << 16, 1 << 16)
    finally:
        machine.machine_info.cache_clear()
