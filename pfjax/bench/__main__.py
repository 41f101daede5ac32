"""``python -m pfjax.bench``: re-exec with warm glibc malloc settings, then run.

At DRAM sizes every fresh output buffer of 32 MiB or more is a new mmap with glibc's
defaults (see BASELINES.md), so unless MALLOC_MMAP_MAX_ is already set, or
PFJAX_BENCH_NO_REEXEC is set, or --default-allocator is given, the process restarts
itself with MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=64 GiB.
"""
import os
import sys

from pfjax.bench.ceiling import ALLOCATOR_ENV


def _maybe_reexec(argv):
    if ("--default-allocator" in argv or "MALLOC_MMAP_MAX_" in os.environ
            or "PFJAX_BENCH_NO_REEXEC" in os.environ):
        return
    env = dict(os.environ, **ALLOCATOR_ENV, PFJAX_BENCH_NO_REEXEC="1")
    print("[pfjax.bench] re-exec with " + " ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items()),
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "pfjax.bench", *argv], env)


if __name__ == "__main__":
    _maybe_reexec(sys.argv[1:])
    from pfjax.bench import main
    sys.exit(main(sys.argv[1:]))
