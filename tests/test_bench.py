"""The benchmark harness runs end to end on tiny shapes (no timing assertions)."""
import json
import subprocess
import sys

import pytest

import pfjax
import pfjax.bench
from pfjax.bench.workloads import WORKLOADS, minimal_bytes


def test_bench_tiny_all_workloads(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    argv = ["--size", "tiny", "--quick", "--default-allocator", "--no-torch",
            "--json", str(out_json)]
    if not hasattr(pfjax, "fuse"):
        argv.append("--stand-in")
    code, results, report = pfjax.bench.run(argv)

    assert [r.name for r in results] == [w.name for w in WORKLOADS]
    for r in results:
        assert r.check == "ok", (r.name, r.check)
        assert r.ref_ms > 0 and r.fused_ms > 0 and r.reps >= 5
    assert code == 0

    table_rows = [line for line in report.splitlines() if line.startswith("| ")]
    for w in WORKLOADS:
        assert sum(f"| {w.title} | {w.shape('tiny')} |" in line for line in table_rows) == 1
    assert "geometric mean speedup (tiny" in report
    assert "allocator:" in report and "machine:" in report
    assert report in capsys.readouterr().out

    data = json.loads(out_json.read_text())
    assert len(data["results"]) == len(WORKLOADS)
    assert data["ceilings"]["cache"] > 0
    # The side-by-side ceiling kernel ran in every workload's rounds.
    assert all(r["ceiling_gbps"] > 0 for r in data["results"])


def test_bursts_run_untimed_then_timed_calls_per_round():
    from pfjax.bench.harness import Burst, Timing, time_interleaved
    calls = []

    def candidate(name, seconds):
        def run():
            calls.append(name)
            return seconds
        return run

    timing = Timing(min_reps=6, min_time_s=0.0, max_reps=6, warmup=1)
    meds, timed = time_interleaved([candidate("a", 1.0), candidate("b", 2.0)], timing,
                                   "test", Burst(untimed=1, timed=3))
    assert meds == [1.0, 2.0] and timed == 6
    assert calls[:2] == ["a", "b"]  # warm-up
    # Two rounds of 4 calls per candidate, the order rotating each round.
    assert calls[2:] == ["a"] * 4 + ["b"] * 4 + ["b"] * 4 + ["a"] * 4


def test_torch_is_compared_with_pfjax_timed_alone():
    from pfjax.bench.harness import Result, format_report
    rows = [Result("a", "A", "cat", "cache", "4x4", 1 << 20, ref_ms=2.0, fused_ms=1.0,
                   torch_ms=0.6, fused_alone_ms=0.5, ceiling_gbps=2.0, check="ok"),
            Result("b", "B", "cat", "cache", "4x4", 1 << 20, ref_ms=2.0, fused_ms=1.0,
                   torch_ms=0.4, fused_alone_ms=0.8, ceiling_gbps=2.0, check="ok"),
            Result("c", "C", "cat", "cache", "4x4", 1 << 20, ref_ms=2.0, fused_ms=1.0,
                   check="ok")]  # torch.compile failed: nothing to compare
    assert [r.vs_torch() for r in rows] == [pytest.approx(1.2), pytest.approx(0.5), None]
    report = format_report(rows, {"cache": 1.0, "source": "test"}, {}, "glibc defaults",
                           False, True)
    head = next(line for line in report.splitlines() if line.startswith("| workload"))
    assert "| pfjax alone ms | torch.compile / pfjax alone |" in head
    assert "| 0.600 | 87 | 0.500 | 1.20 | ok |" in report
    assert "| - | - | - | - | ok |" in report
    assert "pfjax faster on 1 of 2 workloads, geometric mean 0.77x, lowest 0.50x" in report


def test_bytes_moved_counts_inputs_and_outputs():
    import jax
    w = next(w for w in WORKLOADS if w.name == "adam")
    inputs = w.make_inputs("tiny")
    outputs = jax.jit(w.fn)(*inputs)
    assert minimal_bytes(inputs, outputs) == 7 * 8192 * 4


def test_filter_selects_subset():
    from pfjax.bench.workloads import select
    assert [w.name for w in select("bias_gelu")] == ["bias_gelu_tanh", "bias_gelu_erf",
                                                    "bias_gelu_bf16"]
    assert [w.name for w in select("half precision")] == ["layernorm_bf16", "bias_gelu_bf16",
                                                         "softmax_f16"]
    assert [w.name for w in select("training")] == ["train_step"]
    assert [w.name for w in select("row shapes")] == [
        "sum_of_squares", "softmax_long_rows", "softmax_short_rows", "argmax_short_rows",
        "cross_entropy_short_rows"]


@pytest.mark.parametrize("module", ["reductions", "movement", "half", "rows"])
def test_each_workload_module_imports_first(module):
    """Any workload module can be imported before the others (no import cycle between
    them), and all workloads register."""
    code = (f"import pfjax.bench.{module}; from pfjax.bench.workloads import WORKLOADS; "
            f"print(len(WORKLOADS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) == len(WORKLOADS)
