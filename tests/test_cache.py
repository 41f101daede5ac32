"""The disk cache across processes, corrupt entries, PFJAX_DISABLE, and a missing compiler."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pfjax

REPO = Path(__file__).resolve().parents[1]

# The child computes a fixed function on fixed inputs, checks it against jax.jit, and
# prints one JSON line: build stats, number of kernels, PfjaxWarnings, max error.
CHILD = textwrap.dedent("""
    import json, os, warnings
    import numpy as np
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import jax, jax.numpy as jnp
        import pfjax, pfjax.build
        from pfjax.api import explain

        def f(x, b):
            h = jax.nn.gelu(x + b) * 1.5
            return h, jnp.where(h > 0.1, jnp.exp(-h), h * h)

        rng = np.random.default_rng(1234)
        x = rng.standard_normal((7, 13)).astype(np.float32)
        b = rng.standard_normal((13,)).astype(np.float32)
        err = 0.0
        for _ in range(2):  # a second call must not warn again
            got, want = pfjax.fuse(f)(x, b), jax.jit(f)(x, b)
            err = max(err, *(float(np.max(np.abs(np.asarray(g) - np.asarray(w))))
                             for g, w in zip(got, want)))
        g2 = pfjax.fuse(lambda x: jnp.tanh(x) * 3.0 - 1.0)(x)
        err = max(err, float(np.max(np.abs(np.asarray(g2) - (np.tanh(x) * 3.0 - 1.0)))))
        kernels = None if os.environ.get("PFJAX_DISABLE") else explain(f, x, b).num_kernels
    pw = [str(w.message) for w in caught if issubclass(w.category, pfjax.PfjaxWarning)]
    print("RESULT " + json.dumps({"stats": dict(pfjax.build.stats), "kernels": kernels,
                                  "pfjax_warnings": pw, "err": err}))
""")


def child_env(cache_dir, **extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PFJAX_CACHE_DIR"] = str(cache_dir)
    env.pop("PFJAX_DISABLE", None)
    env.pop("PFJAX_FORCE_RECOMPILE", None)
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


def parse(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return json.loads(lines[0][len("RESULT "):])


def run_child(cache_dir, **extra):
    proc = subprocess.run([sys.executable, "-c", CHILD], env=child_env(cache_dir, **extra),
                          capture_output=True, text=True, timeout=300)
    return parse(proc)


def kernel_libraries(cache_dir):
    return sorted(Path(cache_dir).glob("??/*/kernel.so"))


def test_second_process_compiles_nothing(tmp_path):
    first = run_child(tmp_path)
    assert first["err"] < 1e-5
    assert first["kernels"] >= 1
    assert first["stats"]["compiles"] >= 1
    assert first["pfjax_warnings"] == []
    second = run_child(tmp_path)
    assert second["err"] < 1e-5
    assert second["kernels"] >= 1
    assert second["stats"]["compiles"] == 0
    assert second["stats"]["hits"] >= 1
    assert second["stats"]["rebuilt_corrupt"] == 0


def test_concurrent_processes_fresh_cache(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], env=child_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append(parse(subprocess.CompletedProcess(p.args, p.returncode, out, err)))
    for r in results:
        assert r["err"] < 1e-5
        assert r["kernels"] >= 1
        assert r["pfjax_warnings"] == []
        assert r["stats"]["rebuilt_corrupt"] == 0
    # no temporary build directories are left behind, and every entry is complete
    root = Path(tmp_path)
    assert not [p for p in root.glob("??/.*") if p.is_dir()]
    for lib in kernel_libraries(root):
        assert (lib.parent / "meta.json").exists() and (lib.parent / "kernel.cc").exists()


def test_corrupt_entries_are_rebuilt(tmp_path):
    run_child(tmp_path)
    libs = kernel_libraries(tmp_path)
    assert len(libs) >= 2  # the dispatch library and the kernels
    # garbage bytes, a truncated library, a missing meta.json: all rebuilt, none loaded
    libs[0].write_bytes(b"\x7fELF this is not a shared library" + os.urandom(64))
    libs[1].write_bytes(libs[1].read_bytes()[:100])
    for lib in libs[2:]:
        (lib.parent / "meta.json").unlink()
    again = run_child(tmp_path)
    assert again["stats"]["rebuilt_corrupt"] >= 2
    assert again["stats"]["compiles"] >= 2
    assert again["err"] < 1e-5
    assert again["kernels"] >= 1
    # the rebuilt entries are valid again: a third process compiles nothing
    third = run_child(tmp_path)
    assert third["stats"]["compiles"] == 0 and third["stats"]["rebuilt_corrupt"] == 0


def test_missing_compiler_warns_once_and_falls_back(tmp_path):
    r = run_child(tmp_path / "cache", PFJAX_CXX="/nonexistent/g++")
    assert r["err"] < 1e-5
    assert len(r["pfjax_warnings"]) == 1, r["pfjax_warnings"]
    assert "compiler" in r["pfjax_warnings"][0]
    assert r["kernels"] == 0
    assert r["stats"]["compiles"] == 0


def test_disable_gives_plain_xla(tmp_path, monkeypatch, rng):
    def f(x):
        return jnp.tanh(x) * 2.0 + jnp.exp(-x)

    x = rng.standard_normal((7, 13)).astype(np.float32)
    fused = pfjax.fuse(f)
    assert "custom_call @pfjax_" in jax.jit(fused).lower(x).as_text()
    monkeypatch.setenv("PFJAX_DISABLE", "1")
    text = jax.jit(pfjax.fuse(f)).lower(x).as_text()
    assert "pfjax" not in text
    assert "custom_call" not in text
    np.testing.assert_allclose(pfjax.fuse(f)(x), jax.jit(f)(x), rtol=2e-6, atol=1e-6)
    # an eager call of an already-planned fused function honours the switch too (a
    # jax.jit trace made before the switch is JAX's cache, not re-traced)
    np.testing.assert_allclose(fused(x), jax.jit(f)(x), rtol=2e-6, atol=1e-6)


def test_disable_in_subprocess(tmp_path):
    r = run_child(tmp_path, PFJAX_DISABLE="1")
    assert r["err"] < 1e-5
    assert r["stats"]["compiles"] == 0
    assert r["pfjax_warnings"] == []
    assert not kernel_libraries(tmp_path)


def precompiled_headers(cache_dir):
    return sorted(Path(cache_dir).glob("pch/*/pfjax/kernel.h.gch"))


def kernel_libraries_with_header(cache_dir):
    """The kernels' libraries (not the dispatch library, which does not include it)."""
    return [lib for lib in kernel_libraries(cache_dir)
            if '#include "pfjax/kernel.h"' in (lib.parent / "kernel.cc").read_text()]


def test_kernels_compile_with_the_precompiled_header(tmp_path):
    r = run_child(tmp_path)
    assert r["err"] < 1e-5 and r["pfjax_warnings"] == []
    (gch,) = precompiled_headers(tmp_path)
    include = f"-I{gch.parent.parent}"
    kernels = kernel_libraries_with_header(tmp_path)
    assert kernels
    for lib in kernels:
        assert include in json.loads((lib.parent / "meta.json").read_text())["command"]
        assert _takes_precompiled_header(lib)


def _takes_precompiled_header(lib: Path) -> bool:
    cmd = json.loads((lib.parent / "meta.json").read_text())["command"]
    assert cmd[-2] == "-o"
    probe = [*cmd[:-3], str(lib.parent / "kernel.cc"), "-H", "-fsyntax-only"]
    out = subprocess.run(probe, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # g++ -H marks a precompiled header it takes with "!" (and one it rejects with "x")
    return any(line.startswith("! ") and line.endswith("kernel.h.gch")
               for line in out.stderr.splitlines())


def test_several_kernels_in_one_library_take_the_precompiled_header(rng):
    def f(x, w):
        h = jnp.tanh(x * 2.0) @ w  # two fusion groups around the matmul
        return jax.nn.softmax(h + 1.0, axis=-1)

    x = rng.standard_normal((16, 32)).astype(np.float32)
    w = rng.standard_normal((32, 24)).astype(np.float32)
    np.testing.assert_allclose(pfjax.fuse(f)(x, w), jax.jit(f)(x, w), rtol=2e-5, atol=1e-6)
    e = pfjax.explain(f, x, w)
    paths = {g.source_path for g in e.groups}
    assert len(e.groups) == 2 and len(paths) == 1  # one library
    source = Path(next(iter(paths))).read_text()
    assert source.count('#include "pfjax/kernel.h"') == 1
    assert _takes_precompiled_header(Path(next(iter(paths))).parent / "kernel.so")


def test_bad_precompiled_header_is_replaced(tmp_path):
    run_child(tmp_path)
    (gch,) = precompiled_headers(tmp_path)
    gch.write_bytes(gch.read_bytes()[:100_000])  # truncated: g++ stops on it
    kernels = kernel_libraries_with_header(tmp_path)
    assert len(kernels) >= 2
    for lib in kernels:  # compiled again, the first with the bad header
        shutil.rmtree(lib.parent)
    again = run_child(tmp_path)
    assert again["err"] < 1e-5 and again["pfjax_warnings"] == []
    assert again["stats"]["compiles"] == len(kernels)
    # removed after the first kernel that failed with it, then built again for the next
    (rebuilt,) = precompiled_headers(tmp_path)
    assert rebuilt.stat().st_size > 100_000


def test_precompiled_header_can_be_turned_off(tmp_path):
    r = run_child(tmp_path, PFJAX_PCH="0")
    assert r["err"] < 1e-5 and r["stats"]["compiles"] >= 1
    assert not precompiled_headers(tmp_path)
    for lib in kernel_libraries(tmp_path):
        cmd = json.loads((lib.parent / "meta.json").read_text())["command"]
        assert not any("pch" in c for c in cmd)


def test_old_precompiled_headers_are_pruned(tmp_path):
    from pfjax.build import pch
    dirs = []
    for age in range(6):
        d = tmp_path / f"digest{age}"
        (d / "pfjax").mkdir(parents=True)
        os.utime(d, (1e9 - age * 1000, 1e9 - age * 1000))
        dirs.append(d)
    (tmp_path / "digest0.lock").write_text("")
    pch._prune(tmp_path, keep=dirs[5])  # the one just built, however old its directory
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["digest0", "digest0.lock", "digest1", "digest2", "digest5"]


def test_kernels_compile_when_the_header_does_not_precompile(tmp_path):
    # a compiler that refuses to precompile headers (and compiles everything else)
    cxx = tmp_path / "gxx"
    cxx.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = c++-header ] && exit 1; done\n'
                   'exec g++ "$@"\n')
    cxx.chmod(0o755)
    r = run_child(tmp_path / "cache", PFJAX_CXX=str(cxx))
    assert r["err"] < 1e-5 and r["pfjax_warnings"] == []
    assert r["stats"]["compiles"] >= 2
    assert not precompiled_headers(tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("pch/*/pfjax/.kernel.h.*"))  # no temporaries
