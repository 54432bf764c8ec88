"""Oxygen in a consuming tumour spheroid: the first real run of tmesim.

A spheroid of radius R (cell volume fraction 1 inside, the partial fraction
of each boundary voxel at the edge) sits in medium held at 38 mmHg on every
face of the box. Oxygen diffuses (D = 1e5 um²/min), decays (0.1/min) and is
taken up by cells at 10/min per unit volume fraction, PhysiCell's defaults
(shared/data/physicell_default_parameters.csv). The run reports the central
oxygen and the radii of the hypoxic (< 15 mmHg) and necrotic-threshold
(< 5 mmHg) regions as they approach steady state.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from ._grid import Dirichlet, Grid
from ._species import Species, SpeciesTable
from ._stepper import Rates, Stepper, simulate

OXYGEN_D = 1e5  # um²/min, PhysiCell/BioFVM default
OXYGEN_DECAY = 0.1  # 1/min, PhysiCell/BioFVM default
OXYGEN_MEDIUM = 38.0  # mmHg, PhysiCell Dirichlet boundary (physioxia)
UPTAKE = 10.0  # 1/min per unit cell volume fraction, PhysiCell default
HYPOXIC = 15.0  # mmHg, PhysiCell o2_hypoxic_threshold
NECROTIC = 5.0  # mmHg, PhysiCell o2_necrosis_threshold


def sphere_fraction(grid: Grid, radius: float, sub: int = 4, centre=None) -> np.ndarray:
    """Volume fraction of each voxel inside a sphere (sub³ samples per voxel).

    centre: (x, y, z) in um; the domain centre by default.
    """
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    centre = [e / 2 for e in grid.extent] if centre is None else centre
    axes = [grid.centers(a) - centre[a] for a in range(3)]
    frac = np.zeros(grid.shape)
    for ox in offsets:
        for oy in offsets:
            for oz in offsets:
                x = axes[0] + ox * grid.spacing[0]
                y = axes[1] + oy * grid.spacing[1]
                z = axes[2] + oz * grid.spacing[2]
                r2 = x[:, None, None] ** 2 + y[None, :, None] ** 2 + z[None, None, :] ** 2
                frac += r2 <= radius**2
    return frac / sub**3


def _uptake(fields, params, t):
    return Rates().lose("oxygen", params["uptake"] * fields["tumor"])


def equal_volume_radius(mask: np.ndarray, grid: Grid, copies: int = 1) -> float:
    """Radius (um) of the sphere with the volume of the voxels in ``mask``.

    copies: 8 when the grid holds one octant of a body centred on its corner.
    """
    volume = float(np.sum(mask)) * grid.voxel_volume * copies
    return (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)


def radius_below(oxygen: np.ndarray, grid: Grid, threshold: float) -> float:
    """Equal-volume radius (um) of the region where oxygen < threshold."""
    return equal_volume_radius(oxygen < threshold, grid)


def run_oxygen_spheroid(
    radius=250.0, n=96, spacing=10.0, t_end=5.0, dt=0.01, save_every_min=0.5,
    dtype=jnp.float32, progress=print,
):
    """Run the spheroid; returns a dict of arrays and numbers (see ``write_hdf5``)."""
    if not 0 < radius < n * spacing / 2:
        raise ValueError(f"radius {radius} um does not fit in a box of {n * spacing} um")
    grid = Grid((n, n, n), spacing, Dirichlet(OXYGEN_MEDIUM))
    table = SpeciesTable((
        Species("oxygen", diffusion=OXYGEN_D, decay=OXYGEN_DECAY, units="mmHg",
                initial=OXYGEN_MEDIUM, uptake=UPTAKE),
        Species("tumor", kind="matrix", units="volume fraction"),
    ))
    stepper = Stepper(grid, table, dt, _uptake)
    cells = sphere_fraction(grid, radius)
    fields = jnp.stack([jnp.full(grid.shape, OXYGEN_MEDIUM, dtype), jnp.asarray(cells, dtype)])
    params = table.default_params(grid, dtype) | {"uptake": jnp.asarray(UPTAKE, dtype)}
    save_every = max(1, round(save_every_min / dt))
    n_saves = max(1, round(t_end / (save_every * dt)))
    progress(f"grid {n}^3 x {spacing} um, dt {dt} min, plan: {'; '.join(stepper.describe())}")
    snaps, times = [], []
    state, t, t0 = fields, 0.0, time.perf_counter()
    for k in range(n_saves):
        state, _ = simulate(stepper, state, params, save_every, t0=t)
        state = jax.block_until_ready(state)
        t += save_every * dt
        oxygen = np.asarray(state[0])
        snaps.append(oxygen)
        times.append(t)
        elapsed = time.perf_counter() - t0
        eta = elapsed / (k + 1) * (n_saves - k - 1)
        progress(f"t = {t:6.2f} min  centre O2 = {oxygen[n // 2, n // 2, n // 2]:6.2f} mmHg  "
                 f"hypoxic radius = {radius_below(oxygen, grid, HYPOXIC):5.1f} um  "
                 f"[{elapsed:5.1f} s, eta {eta:5.1f} s]")
    ell = math.sqrt(OXYGEN_D / UPTAKE)
    oxygen = snaps[-1]
    return {
        "grid": grid, "table": table, "stepper": stepper, "cells": cells,
        "time": np.array(times), "oxygen": np.stack(snaps),
        "centre_oxygen": float(oxygen[n // 2 - 1:n // 2 + 1, n // 2 - 1:n // 2 + 1,
                                      n // 2 - 1:n // 2 + 1].mean()),
        "infinite_medium_centre_oxygen": OXYGEN_MEDIUM / math.cosh(radius / ell),
        "hypoxic_radius": radius_below(oxygen, grid, HYPOXIC),
        "necrotic_threshold_radius": radius_below(oxygen, grid, NECROTIC),
        "radius": radius, "dt": dt, "wall_s": time.perf_counter() - t0,
    }


def write_hdf5(path, result, command_line: str) -> None:
    """Self-describing HDF5: /meta, /grid, /time, /fields/<name> (time, x, y, z), /observables."""
    import h5py

    from . import __version__

    grid = result["grid"]
    with h5py.File(path, "w") as f:
        meta = f.create_group("meta")
        meta.attrs["tmesim_version"] = __version__
        meta.attrs["jax_version"] = jax.__version__
        meta.attrs["device"] = str(jax.devices()[0])
        meta.attrs["command"] = command_line
        meta.attrs["scenario"] = "oxygen in a consuming spheroid (PhysiCell oxygen defaults)"
        meta.attrs["plan"] = "; ".join(result["stepper"].describe())
        g = f.create_group("grid")
        g.attrs["shape"] = grid.shape
        g.attrs["spacing_um"] = grid.spacing
        g.attrs["boundary"] = [repr(b) for b in grid.boundary]
        t = f.create_dataset("time", data=result["time"])
        t.attrs["units"] = "min"
        ox = f.create_dataset("fields/oxygen", data=result["oxygen"],
                              chunks=(1,) + grid.shape, compression="gzip")
        ox.attrs["units"] = "mmHg"
        cells = f.create_dataset("fields/tumor", data=result["cells"][None],
                                 chunks=(1,) + grid.shape, compression="gzip")
        cells.attrs["units"] = "volume fraction"
        obs = f.create_group("observables")
        for key in ("centre_oxygen", "infinite_medium_centre_oxygen", "hypoxic_radius",
                    "necrotic_threshold_radius", "radius"):
            obs.attrs[key] = result[key]
