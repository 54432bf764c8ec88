"""Strict numerics for the whole suite: float64 available, no silent dtype promotion."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)
