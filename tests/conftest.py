"""Strict numerics for the whole suite: float64 available, no silent dtype promotion.

Compiled programs are also kept in JAX's persistent cache (a directory under the
system's temporary directory), so that the command-line runs the tests start as
subprocesses compile each program once, not once per process.
"""

import os
import tempfile

import jax
import numpy as np
import pytest

_CACHE = os.path.join(tempfile.gettempdir(), f"tmesim-test-jax-cache-{os.getuid()}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)
