"""Shared test setup: one compile cache for the whole run, fresh random inputs."""
from __future__ import annotations

import os
import tempfile
import zlib

import numpy as np
import pytest

# One cache per test run (reused by every test, fresh for every run), set before pfjax
# compiles anything. A developer can point PFJAX_TEST_CACHE_DIR at a persistent one.
# pytest-xdist's workers inherit the run's cache from the controller's environment.
if not os.environ.get("PFJAX_TEST_CACHE_DIR"):
    os.environ["PFJAX_TEST_CACHE_DIR"] = tempfile.mkdtemp(prefix="pfjax-test-cache-")
os.environ["PFJAX_CACHE_DIR"] = os.environ["PFJAX_TEST_CACHE_DIR"]


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's name: fresh values per test, reproducible."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)
