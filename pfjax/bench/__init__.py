"""pfjax benchmark: ``python -m pfjax.bench`` (see harness.py for options).

Imports lazily so that ``python -m pfjax.bench`` can re-exec with the allocator
settings before jax is loaded.
"""


def main(argv=None) -> int:
    """Run the benchmark with command-line style ``argv``; return the exit code."""
    from pfjax.bench.harness import main as _main
    return _main(argv)


def run(argv=None):
    """Like main, but return (exit code, results, report text)."""
    from pfjax.bench.harness import run as _run
    return _run(argv)
