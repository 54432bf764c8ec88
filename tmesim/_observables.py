"""Observables of a niche-model state: differentiable, computed inside or outside the loop.

``observables(problem, fields, values, step)`` has the signature of
``SaveAt.fn``, so a fit saves exactly what a run file stores. Every measure
is a smooth (or piecewise-linear) function of the fields, so its gradient is
the derivative of what it measures, not zero almost everywhere:

- the tumour body (live cells and debris) counts each voxel as
  min(body/φ_packed, 1), its occupied share (a ball at the packing fraction
  gives its exact volume, and the radius grows continuously as the front
  advances through a voxel);
- the necrotic region weighs each occupied voxel by its debris share, so a
  packed debris core counts its exact volume (and its radius moves
  smoothly with it; a threshold on the share, ramped or not, made the
  derivative a sampling of the voxels that happen to straddle it: 0.67 for
  a ramp over shares 0.25-0.75, measured);
- a region that an experiment marks by a threshold on pO2 (arrested:
  division nearly stopped; hypoxic: pimonidazole binds; the hypoxic share)
  weighs each occupied voxel by its share below the threshold with the
  field linear across the voxel (``NicheProblem.below``): the threshold is
  smeared over one voxel whatever the profile's slope, so the region's
  volume moves continuously as the front crosses a voxel. A ramp of fixed
  width in pO2 (±1 mmHg, or ±0.05 in the division factor) was narrower
  than a voxel where the profile is steep: the arrested radius of the
  WM983b fit stepped by whole shells, its derivative a sampling of the
  shells that happened to straddle the ramp;
- radii are equal-volume sphere radii of those regions (what a confocal slice
  through the centre of a spherical organoid shows);
- shares are ratios of sums (CSC, debris).

The definitions, with the experiment each one stands for, are in
docs/observables.md.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from ._model import (
    BODY,
    DRUGS,
    IMMUNE,
    O2_ONSET,
    STROMA,
    equal_volume_radius,
    occupied_share,
    region_radius,
)

UM3_PER_MM3 = 1e9
UM2_PER_MM2 = 1e6
PIMONIDAZOLE_O2 = 10.0  # mmHg: pimonidazole adducts form below about this pO2 (hypoxic_radius)
ARREST_LEVEL = 0.1  # arrested where the oxygen factor of division is below this (arrested_radius)
REGION_SMOOTHING = 0.25  # regions that can vanish are smooth at zero volume below this
#                          share of the finest spacing (``region_radius``'s r0)
PROFILE_DEPTHS = (0.0, 50.0, 100.0, 200.0)  # um below the outer radius: o2_depth_<d>

OBSERVABLES = {
    "tumor_volume": ("mm^3", "live tumour cell volume (CSC, progenitor and drug-damaged), "
                             "whole organoid"),
    "tumor_radius": ("um", "radius of the equal-volume sphere of the tumour body (live cells and "
                           "debris), each voxel counted as min(body / packing_fraction, 1)"),
    "csc_fraction": ("1", "CSC share of live tumour cells"),
    "hypoxic_fraction": ("1", "share of live tumour cells below o2_hypoxic_threshold "
                              "(smeared over one voxel)"),
    "necrotic_fraction": ("1", "share of debris in the tumour body (debris / (live + debris))"),
    "necrotic_radius": ("um", "equal-volume radius of the necrotic region: occupied voxels "
                              "weighted by their debris share debris / (live + debris); "
                              "smooth at zero volume (region_radius)"),
    "arrested_radius": ("um", "equal-volume radius of the proliferation-arrested region (FUCCI): "
                              "occupied voxels where the oxygen factor of division is below 0.1 "
                              "(smeared over one voxel); includes the necrotic core; smooth at "
                              "zero volume (region_radius)"),
    "hypoxic_radius": ("um", "equal-volume radius of the pimonidazole-positive region: occupied "
                             "voxels below 10 mmHg (smeared over one voxel); smooth at zero "
                             "volume (region_radius)"),
    "viable_rim": ("um", "tumor_radius - necrotic_radius"),
    "projected_area": ("mm^2", "area of the organoid's shadow along z (brightfield image): each "
                               "column counts its most occupied voxel's share"),
    "projected_area_fold": ("1", "projected_area over that of the initial ball, pi R0^2"),
    "dead_cell_volume": ("mm^3", "debris volume, whole organoid (dead-cell stain such as PI)"),
    **{f"o2_depth_{d:g}": ("mmHg", f"mean pO2 on the sphere {d:g} um inside tumor_radius "
                                   "(shell of one voxel)") for d in PROFILE_DEPTHS},
    "min_oxygen": ("mmHg", "lowest pO2 in the domain"),
    "tumor_oxygen": ("mmHg", "mean pO2 seen by live tumour cells"),
    "vessel_density": ("volume fraction", "mean vessel fraction over the domain"),
    **{f"{c}_total": ("mm^3", f"total {c} cell volume") for c in STROMA + IMMUNE},
    **{f"{d}_exposure": ("nM", f"mean {d} level seen by live tumour cells") for d in DRUGS},
}


def _ratio(a, b):
    return a / jnp.maximum(b, 1e-30)


def arrest_o2(p):
    """The pO2 below which the oxygen factor of division g (``proliferation_o2``) is below
    ARREST_LEVEL: g = x/(K + (1 − K)x) is increasing in x, g = L at x = L·K/(1 − L(1 − K)),
    and x = w·softplus(u/w) (``proliferation_onset``) at u = x + w·log(1 − exp(−x/w)),
    u = (O2 − threshold)/(reference − threshold)."""
    k, level = p["o2_proliferation_shape"], ARREST_LEVEL
    x = level * k / (1.0 - level * (1.0 - k))
    low = p["o2_proliferation_threshold"]
    span = p["o2_reference"] - low
    w = O2_ONSET / span
    return low + span * (x + w * jnp.log(-jnp.expm1(-x / w)))


def occupied(problem, fields, values):
    """Occupied share of every voxel (``_model.occupied_share``), (X, Y, Z) or (n,) shells."""
    i = problem.table.index
    return occupied_share({n: fields[i(n)] for n in BODY},
                          values["params"])


def projected_area(problem, occ):
    """Area (um²) of the body's shadow along z (``NicheProblem.projected_area``).

    A column is covered as far as its most occupied voxel is (for a ball, the
    one at the equator, whose occupied share is the share of the column's
    footprint inside the ball's outline); the column's summed thickness would
    count a footprint barely touched by the outline as covered, because a
    sphere's chord grows as the square root of the depth inside its edge. An
    octant's shadow is a quarter of the whole one (z = 0 is its equator); a
    radially symmetric body's is ∫ 2π s · occ ds over the equatorial shells.
    """
    return problem.projected_area(occ)


def shell_mean(problem, field, radius):
    """Mean of ``field`` on the sphere of ``radius`` (um) about the centre: voxels
    weighted by a hat of half-width h in their distance from it (continuous in radius)."""
    return problem.shell_mean(field, radius)


def radial_profile(problem, fields, name, radii):
    """``name``'s shell means (``shell_mean``) at each of ``radii`` (um): a radial profile."""
    f = fields[problem.table.index(name)]
    return jnp.stack([shell_mean(problem, f, r) for r in radii])


def observables(problem, fields, values, step=None) -> dict:
    """Every observable of ``OBSERVABLES`` for one state (F, X, Y, Z) or (F, n) shells, as scalars.

    Integrals, means and shadows come from the problem's geometry
    (``NicheProblem.integrate``, ``mean``, ``projected_area``, ``shell_mean``), so a
    3D grid and a radially symmetric one give the same quantities.
    """
    del step
    i = problem.table.index
    integral = problem.integrate
    live = fields[i("tumor")] + fields[i("csc")] + fields[i("damaged")]  # alive, PI-negative
    debris = fields[i("debris")]
    o2 = fields[i("oxygen")]
    live_sum = integral(live)
    p = values["params"]
    hypoxic, arrested, pimonidazole = problem.below(
        o2, p["o2_hypoxic_threshold"], arrest_o2(p), PIMONIDAZOLE_O2)
    occ = occupied(problem, fields, values)
    radius = equal_volume_radius(integral(occ))
    # regions that can vanish: smooth at zero volume below a quarter of the finest spacing
    r0 = REGION_SMOOTHING * min(problem.grid.spacing)
    necrotic = occ * _ratio(debris, live + debris)
    necrotic_radius = region_radius(integral(necrotic), r0)
    arrested = occ * arrested
    pimonidazole = occ * pimonidazole
    area = projected_area(problem, occ)
    debris_sum = integral(debris)
    out = {
        "tumor_volume": live_sum / UM3_PER_MM3,
        "tumor_radius": radius,
        "necrotic_radius": necrotic_radius,
        "arrested_radius": region_radius(integral(arrested), r0),
        "hypoxic_radius": region_radius(integral(pimonidazole), r0),
        "viable_rim": radius - necrotic_radius,
        "projected_area": area / UM2_PER_MM2,
        "projected_area_fold": area / (math.pi * values["initial"]["radius_um"] ** 2),
        "dead_cell_volume": debris_sum / UM3_PER_MM3,
        "csc_fraction": _ratio(integral(fields[i("csc")]), live_sum),
        "hypoxic_fraction": _ratio(integral(live * hypoxic), live_sum),
        "necrotic_fraction": _ratio(debris_sum, live_sum + debris_sum),
        "min_oxygen": jnp.min(o2),
        "tumor_oxygen": _ratio(integral(o2 * live), live_sum),
        "vessel_density": problem.mean(fields[i("vessel")]),
    }
    for d in PROFILE_DEPTHS:
        out[f"o2_depth_{d:g}"] = shell_mean(problem, o2, radius - d)
    for c in STROMA + IMMUNE:
        out[f"{c}_total"] = integral(fields[i(c)]) / UM3_PER_MM3
    for d in DRUGS:
        out[f"{d}_exposure"] = _ratio(integral(fields[i(d)] * live), live_sum)
    return out
