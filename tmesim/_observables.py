"""Observables of a niche-model state: differentiable, computed inside or outside the loop.

``observables(problem, fields, values, step)`` has the signature of
``SaveAt.fn``, so a fit saves exactly what a run file stores. Every measure
is a smooth (or piecewise-linear) function of the fields, so its gradient is
the derivative of what it measures, not zero almost everywhere:

- the tumour body's volume counts each voxel as min(body/φ_packed, 1), its
  occupied share (a ball at the packing fraction gives its exact volume, and
  the radius grows continuously as the front advances through a voxel);
- hypoxia weighs live cells by a linear ramp of pO2 over ±1 mmHg about the
  threshold (for a locally linear pO2 profile, the same share as the hard
  threshold);
- shares are ratios of sums (CSC, debris).
"""

from __future__ import annotations

import jax.numpy as jnp

from ._geometry import equal_volume_radius
from ._model import DRUGS, IMMUNE, STROMA

UM3_PER_MM3 = 1e9
HYPOXIC_HALF_WIDTH = 1.0  # mmHg: half-width of the ramp that counts a cell as hypoxic

OBSERVABLES = {
    "tumor_volume": ("mm^3", "live tumour cell volume (CSC + progenitor), whole organoid"),
    "tumor_radius": ("um", "radius of the equal-volume sphere of the tumour body (live cells and "
                           "debris), each voxel counted as min(body / packing_fraction, 1)"),
    "csc_fraction": ("1", "CSC share of live tumour cells"),
    "hypoxic_fraction": ("1", "share of live tumour cells below o2_hypoxic_threshold "
                              "(ramp of +-1 mmHg)"),
    "necrotic_fraction": ("1", "share of debris in the tumour body (debris / (live + debris))"),
    "min_oxygen": ("mmHg", "lowest pO2 in the domain"),
    "tumor_oxygen": ("mmHg", "mean pO2 seen by live tumour cells"),
    "vessel_density": ("volume fraction", "mean vessel fraction over the domain"),
    **{f"{c}_total": ("mm^3", f"total {c} cell volume") for c in STROMA + IMMUNE},
    **{f"{d}_exposure": ("nM", f"mean {d} level seen by live tumour cells") for d in DRUGS},
}


def _ratio(a, b):
    return a / jnp.maximum(b, 1e-30)


def hypoxic_weight(o2, threshold):
    """1 well below ``threshold``, 0 well above, linear over ±HYPOXIC_HALF_WIDTH mmHg."""
    return jnp.clip(0.5 + (threshold - o2) / (2.0 * HYPOXIC_HALF_WIDTH), 0.0, 1.0)


def body_volume(problem, fields, values):
    """Volume (um³, whole body) of the tumour body: Σ min((T + C + debris)/φ_packed, 1)·voxel."""
    i = problem.table.index
    body = fields[i("tumor")] + fields[i("csc")] + fields[i("debris")]
    occupied = jnp.minimum(body / values["params"]["packing_fraction"], 1.0)
    return jnp.sum(occupied) * problem.grid.voxel_volume * problem.copies


def observables(problem, fields, values, step=None) -> dict:
    """Every observable of ``OBSERVABLES`` for one state (F, X, Y, Z), as scalars."""
    del step
    i = problem.table.index
    vv = problem.grid.voxel_volume * problem.copies / UM3_PER_MM3
    live = fields[i("tumor")] + fields[i("csc")]
    debris = fields[i("debris")]
    o2 = fields[i("oxygen")]
    live_sum = jnp.sum(live)
    hypoxic = hypoxic_weight(o2, values["params"]["o2_hypoxic_threshold"])
    out = {
        "tumor_volume": live_sum * vv,
        "tumor_radius": equal_volume_radius(body_volume(problem, fields, values)),
        "csc_fraction": _ratio(jnp.sum(fields[i("csc")]), live_sum),
        "hypoxic_fraction": _ratio(jnp.sum(live * hypoxic), live_sum),
        "necrotic_fraction": _ratio(jnp.sum(debris), live_sum + jnp.sum(debris)),
        "min_oxygen": jnp.min(o2),
        "tumor_oxygen": _ratio(jnp.sum(o2 * live), live_sum),
        "vessel_density": jnp.mean(fields[i("vessel")]),
    }
    for c in STROMA + IMMUNE:
        out[f"{c}_total"] = jnp.sum(fields[i(c)]) * vv
    for d in DRUGS:
        out[f"{d}_exposure"] = _ratio(jnp.sum(fields[i(d)] * live), live_sum)
    return out
