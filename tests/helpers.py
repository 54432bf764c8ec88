"""Small builders shared by the tests."""

import contextlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import tmesim.kernels as K


def face_bc(kinds, values=None, fluxes=None, n_channels=1, dtype=jnp.float64):
    """Per-axis BC tuple for the kernels from six face kinds: 'n', 'd' or 'p'."""
    values = values or [0.0] * 6
    fluxes = fluxes or [0.0] * 6
    faces = [
        K.FaceBC(
            jnp.full(n_channels, 1.0 if k == "d" else 0.0, dtype),
            jnp.full(n_channels, values[i], dtype),
            jnp.full(n_channels, fluxes[i], dtype),
        )
        for i, k in enumerate(kinds)
    ]
    return tuple(
        None if kinds[2 * a] == "p" else (faces[2 * a], faces[2 * a + 1]) for a in range(3)
    )


def fitted_order(hs, errors):
    """Slope of log(error) against log(h) by least squares."""
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


@contextlib.contextmanager
def held_open(path):
    """Another process holds ``path`` open for writing with h5py (as a live run does)."""
    hold = ("import h5py, sys; f = h5py.File(sys.argv[1], 'r+'); "
            "print('open', flush=True); sys.stdin.read()")
    writer = subprocess.Popen([sys.executable, "-c", hold, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "open\n"
        yield
    finally:
        writer.communicate("")
