"""Geometries of the niche model: an organoid in medium and a tissue block.

A geometry splits into a static ``NicheProblem`` (grid, boundary kinds,
species, the transport plan sized from the value bounds, the vessel pattern
of a tissue) and a float pytree of values (``Setup.values``): the model
parameters, transport coefficients, medium levels, the initial state's
scalars and the treatment schedule. The initial fields are built from the
values inside the compiled program (``NicheProblem.initial_state``), so the
initial radius and CSC share are differentiable and batchable like any rate.

values = {
    "params":    {name: scalar}  every row of ``tmesim.PARAMETERS``
    "diffusion": {field: scalar} um²/min (cells: motility); solutes and cells
    "decay":     {solute: scalar} 1/min
    "medium":    {solute: scalar} organoid: the first medium's levels
                 (oxygen mmHg, others nM); empty for a tissue
    "initial":   {"radius_um", "csc_fraction", ...} organoid: plus the
                 co-culture cells seeded in the unstirred layer (volume fraction);
                 tissue: plus "vessel_density" and "stroma"
    "schedule":  treatments (``tmesim.schedule``)
}
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ._grid import Dirichlet, Grid, Neumann, Periodic, RadialGrid
from ._model import (
    DEFAULT_DECAY,
    DEFAULT_DIFFUSION,
    DRUGS,
    IMMUNE,
    MAX_CELL_SPEED,
    ORGANOID_MEDIUM_O2,
    SOLUTES,
    STROMA,
    NicheReaction,
    integrate,
    niche_species,
    pressure_flux,
    pressure_stiffness,
    radial_distance,
    radiotherapy,
)
from ._parameters import Bounds, check_bounds, default_parameters, within_bounds
from ._solve import Problem
from ._species import SpeciesTable
from ._stepper import RadialStepper, StaticArray, Stepper
from ._treatment import drug_levels, events_at, inject, medium_levels, schedule

TISSUE_O2 = 38.0  # mmHg: PhysiCell's physioxic tissue level, the tissue's initial oxygen
STROMA_SHARES = {"fibroblast": 0.75, "msc": 0.05, "m1": 0.12, "cd8": 0.05, "treg": 0.03}
TISSUE_ECM = 0.3  # relative ECM density of the stroma around the tumour
CO_CULTURE = STROMA + IMMUNE  # cells that can be seeded in an organoid's medium


def ball_fraction(grid: Grid, radius, centre=None, sub: int = 4):
    """Volume fraction (X, Y, Z) of each voxel inside a sphere, continuous in the radius.

    sub³ samples per voxel; each counts min(1, max(0, (R − r)/δ + 1/2)),
    δ = h/sub, so the fraction (and the ball's volume, within 1% of 4πR³/3
    once R spans a few voxels) changes smoothly with R and ``jax.grad``
    through it is exact. centre: (x, y, z) in um, the domain centre by default.
    Works on a traced radius. On a ``RadialGrid``: ``shell_fraction`` (exact).
    """
    if isinstance(grid, RadialGrid):
        return shell_fraction(grid, radius)
    centre = [e / 2 for e in grid.extent] if centre is None else centre
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    delta = min(grid.spacing) / sub
    radius = jnp.asarray(radius)
    dtype = radius.dtype if jnp.issubdtype(radius.dtype, jnp.floating) else jnp.float32
    # The distances are computed by the program from per-axis constants (n_a, sub): as
    # whole-grid NumPy constants they were sub² copies of 4 fields, 4.3 GB at 256³. In
    # float64 where enabled, so that a float32 r is the correctly rounded distance.
    wide = jnp.float64 if jax.config.jax_enable_x64 else dtype
    axes = [jnp.asarray((grid.centers(a)[:, None] + offsets[None, :] * grid.spacing[a]
                         - centre[a]) ** 2, wide) for a in range(3)]  # squared, per axis
    total = 0.0
    for i in range(sub):
        for j in range(sub):
            r2 = (axes[0][:, i, None, None, None] + axes[1][None, :, j, None, None]
                  + axes[2][None, None, :, :])
            r = jnp.sqrt(r2).astype(dtype)
            inside = jnp.clip((radius - r) / delta + 0.5, 0.0, 1.0)
            total = total + jnp.sum(inside, axis=-1)
    return total / sub**3


def shell_fraction(grid: RadialGrid, radius):
    """Volume fraction (n,) of each shell inside the ball of ``radius`` (um), exactly:
    (clip(R, r_in, r_out)³ − r_in³)/(r_out³ − r_in³); continuous and differentiable in R
    (traced R allowed), and Σ fraction · V_i = 4πR³/3 while R ≤ n h."""
    radius = jnp.asarray(radius)
    dtype = radius.dtype if jnp.issubdtype(radius.dtype, jnp.floating) else jnp.float32
    r = grid.faces()
    lo, hi = jnp.asarray(r[:-1], dtype), jnp.asarray(r[1:], dtype)
    inside = jnp.clip(radius, lo, hi)
    return (inside**3 - lo**3) / jnp.asarray(r[1:] ** 3 - r[:-1] ** 3, dtype)


@dataclass(frozen=True)
class NicheProblem(Problem):
    """The static structure of a niche-model run (hashable: a jit static argument).

    geometry: "organoid" or "tissue"; octant: the organoid's centre sits at
    the x-, y-, z- corner (mirror faces) and the grid holds one eighth;
    bounds: the value bounds the plan was sized from; vessel_pattern: the
    tissue's vessel map with mean 1 (scaled by ``initial.vessel_density``).
    """

    grid: Grid
    table: SpeciesTable
    stepper: Stepper
    bounds: Bounds
    geometry: str = "organoid"
    octant: bool = True
    vessel_pattern: StaticArray | None = None
    _channels: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "_channels", {n: i for i, n in enumerate(self.table.names)})

    @property
    def copies(self) -> int:
        """Copies of the grid in the whole body: 8 for an organoid octant."""
        return 8 if self.geometry == "organoid" and self.octant else 1

    @property
    def centre(self):
        return (0.0, 0.0, 0.0) if self.copies == 8 else None

    @property
    def radial(self) -> bool:
        """A radially symmetric organoid (``tmesim.spheroid``: a ``RadialGrid`` of shells)."""
        return isinstance(self.grid, RadialGrid)

    # -- geometry: what the observables and the initial state ask of the grid ----
    def ball(self, radius):
        """Volume fraction of each voxel (shell) inside the ball of ``radius`` about the centre."""
        return ball_fraction(self.grid, radius, self.centre)

    def integrate(self, x):
        """∫ x dV over the whole body (um³ · x's unit): the octant's copies counted."""
        return integrate(x, self.grid, self.copies)

    def mean(self, x):
        """Mean of x over the domain (by volume)."""
        if self.radial:
            return self.integrate(x) / float(np.sum(self.grid.volumes()))
        return jnp.mean(x)

    def distance(self, dtype):
        """Distance (um) of every voxel (shell) centre from the organoid's centre."""
        return radial_distance(self.grid, self.copies == 8, dtype)

    def projected_area(self, occ):
        """Area (um²) of the body's shadow along z, each column covered as far as its most
        occupied voxel. A column at distance s from the axis of a radially symmetric body
        meets the shells r ≥ s, the most occupied of them (the equatorial one, r = s, for a
        body fuller inside): A = ∫ 2π s · max_{r ≥ s} occ(r) ds, each shell's ring
        π(r_out² − r_in²) times the running maximum from outside. On a Cartesian grid:
        Σ over columns of max_z(occ)·h_x·h_y (an octant's shadow is a quarter)."""
        if self.radial:
            r = self.grid.faces()
            ring = jnp.asarray(math.pi * (r[1:] ** 2 - r[:-1] ** 2), occ.dtype)
            return jnp.sum(jax.lax.cummax(occ, axis=0, reverse=True) * ring)
        hx, hy, _ = self.grid.spacing
        shadow = jnp.max(occ, axis=2)
        return jnp.sum(shadow) * hx * hy * (4.0 if self.copies == 8 else 1.0)

    def below(self, field, *thresholds):
        """Share of each voxel (shell) where ``field`` is below each of ``thresholds`` (a tuple,
        one share array per threshold), the field interpolated within the voxel, so that
        the marked region's volume moves continuously with the front.

        On a ``RadialGrid`` the field is the C1 cubic Hermite interpolant through the shell
        centres (slopes by central differences; mirrored at r = 0, extended by its last
        slope beyond the last centre), and each half shell counts its volume below the
        threshold, the front found by Newton's method on its segment (the interpolant taken
        as monotone within a half shell: two crossings inside one are counted as one):
        exact for a profile quadratic in r, and the region's volume is continuously
        differentiable in the field's values, so a fit's Hessian sees no kink as a front
        passes a shell (placing each shell's front from its own value and slope left gaps
        and overlaps between shells: WM983b's negative eigenvalue, docs/fits.md). On a
        Cartesian grid the field is linear across the voxel (its slope from
        ``jnp.gradient``): the voxel's share of the values f ± Δ/2 below the threshold,
        Δ = Σ_a h_a |∂_a f| (the field's change across the voxel along its gradient), exact
        for a plane front normal to an axis, and the volume of a plane front's region for
        any direction (the ramp is symmetric). A flat field is below or not as a whole."""
        tiny = jnp.asarray(1e-30, field.dtype)
        if self.radial:
            h = self.grid.spacing[0]
            c = jnp.asarray(self.grid.centers(), field.dtype)
            r = jnp.asarray(self.grid.faces(), field.dtype)
            f = field
            # C1 cubic Hermite interpolant through the centres: slopes by central differences,
            # mirrored at r = 0 (f(-c0) = f(c0)), extended by its last slope past the last centre
            m = jnp.concatenate([(f[1:2] - f[:1]) / (2 * h), (f[2:] - f[:-2]) / (2 * h),
                                 (f[-1:] - f[-2:-1]) / h])
            # segment k joins knots k-1 and k (k = 0: the mirror segment -c0..c0; k = n: the
            # linear extension): start, values and slopes at both ends
            x0 = jnp.concatenate([-c[:1], c])
            y0 = jnp.concatenate([f[:1], f])
            d0 = jnp.concatenate([-m[:1], m])
            y1 = jnp.concatenate([f, f[-1:] + m[-1:] * h])
            d1 = jnp.concatenate([m, m[-1:]])
            width = jnp.concatenate([2 * c[:1], jnp.full(len(c), h, field.dtype)])

            def p(k, x):  # the interpolant on segment k, and its slope
                t = (x - x0[k]) / width[k]
                w = width[k]
                a, b, da, db = y0[k], y1[k], d0[k] * w, d1[k] * w
                t2, t3 = t * t, t * t * t
                val = ((2 * t3 - 3 * t2 + 1) * a + (t3 - 2 * t2 + t) * da
                       + (-2 * t3 + 3 * t2) * b + (t3 - t2) * db)
                der = ((6 * t2 - 6 * t) * a + (3 * t2 - 4 * t + 1) * da
                       + (-6 * t2 + 6 * t) * b + (3 * t2 - 2 * t) * db) / w
                return val, der

            n = len(c)
            inner = jnp.arange(n)       # shell i's inner half [r_i, c_i] lies on segment i
            outer = jnp.arange(1, n + 1)  # its outer half [c_i, r_i+1] on segment i + 1

            def part(k, a, b, threshold):
                pa, pb = p(k, a)[0], p(k, b)[0]
                d = pb - pa
                safe = jnp.where(jnp.abs(d) > tiny, d, tiny)
                x = jnp.clip(a + (threshold - pa) / safe * (b - a), a, b)
                for _ in range(4):  # Newton on the cubic, from the chord's crossing
                    val, der = p(k, x)
                    der = jnp.where(jnp.abs(der) > tiny, der, tiny)
                    x = jnp.clip(x - (val - threshold) / der, a, b)
                low = jnp.where(d > 0, a, x)
                high = jnp.where(d > 0, x, b)
                flat = jnp.where(pa < threshold, b**3 - a**3, 0.0 * a)
                return jnp.where(jnp.abs(d) > tiny, high**3 - low**3, flat)

            def share(threshold):
                vol = (part(inner, r[:-1], c, threshold) + part(outer, c, r[1:], threshold))
                return vol / (r[1:] ** 3 - r[:-1] ** 3)
        else:
            change = sum(h * jnp.abs(g) for h, g in
                         zip(self.grid.spacing, jnp.gradient(field, *self.grid.spacing)))
            change = jnp.maximum(change, tiny)

            def share(threshold):
                return jnp.clip(0.5 + (threshold - field) / change, 0.0, 1.0)
        return tuple(share(t) for t in thresholds)

    def shell_mean(self, field, radius):
        """Mean of ``field`` on the sphere of ``radius`` (um) about the centre: voxels (shell
        centres) weighted by a hat of half-width h in their distance from it (continuous in
        radius; on shells, linear interpolation between the two nearest centres)."""
        h = min(self.grid.spacing)
        w = jnp.maximum(1.0 - jnp.abs(self.distance(field.dtype) - radius) / h, 0.0)
        return jnp.sum(w * field) / jnp.maximum(jnp.sum(w), 1e-30)

    # -- values -------------------------------------------------------------
    def check_values(self, values, where: str = "values") -> None:
        check_bounds(values, self.bounds, where)

    def values_ok(self, values):
        return within_bounds(values, self.bounds)

    def initial_state(self, values):
        """The initial fields (F, X, Y, Z) from the values (traced; differentiable in them)."""
        init, p = values["initial"], values["params"]
        dtype = jnp.result_type(init["radius_um"])
        ball = self.ball(init["radius_um"]).astype(dtype)
        out = {"tumor": p["packing_fraction"] * ball * (1.0 - init["csc_fraction"]),
               "csc": p["packing_fraction"] * ball * init["csc_fraction"]}
        outside = 1.0 - ball
        if self.geometry == "organoid":
            out["oxygen"] = jnp.full(self.grid.shape, values["medium"]["oxygen"], dtype)
            layer = self.layer(values, ball)
            for name in CO_CULTURE:
                out[name] = init[name] * layer
        else:
            pattern = jnp.asarray(self.vessel_pattern.array, dtype)
            out["vessel"] = jnp.minimum(pattern * init["vessel_density"], p["vessel_max"])
            for name, share in STROMA_SHARES.items():
                out[name] = init["stroma"] * share * outside
            out["ecm"] = TISSUE_ECM * outside
            out["oxygen"] = jnp.full(self.grid.shape, TISSUE_O2, dtype)
        zero = jnp.zeros(self.grid.shape, dtype)
        return jnp.stack([jnp.broadcast_to(out.get(n, zero), self.grid.shape).astype(dtype)
                          for n in self.table.names])

    def inputs(self, values, k):
        """The stepper's parameters at step k: transport arrays, boundary levels, plasma levels."""
        dtype = jnp.result_type(values["params"]["o2_uptake"])
        t = jnp.asarray(k).astype(dtype) * self.stepper.dt
        p = dict(values["params"])
        sched = values["schedule"]
        dosed = drug_levels(sched["dose"], t)
        for j, drug in enumerate(DRUGS):
            p[f"plasma_{drug}"] = p[f"plasma_{drug}"] + dosed[j]
        names = self.table.names
        zero = jnp.zeros((), dtype)
        diffusion = jnp.stack([values["diffusion"].get(n, zero) for n in names])
        decay = jnp.stack([values["decay"].get(n, zero) for n in names])
        level = jnp.zeros(len(names), dtype)
        extra = {}
        if values["medium"]:
            initial = jnp.stack([values["medium"][n] for n in SOLUTES])
            medium = medium_levels(initial, sched["medium"], k)
            solutes = np.array([self._channels[n] for n in SOLUTES])
            drugs = np.array([self._channels[d] for d in DRUGS])
            level = level.at[solutes].set(medium).at[drugs].add(dosed)
            extra["bulk_level"] = level  # the well-mixed medium (``medium_exchange``)
        return {"diffusion": diffusion, "decay": decay, **extra,
                "boundary_value": jnp.broadcast_to(level, (6, len(names))),
                "boundary_flux": jnp.zeros((6, len(names)), dtype), **p}

    def layer(self, values, ball=None):
        """The organoid's initial unstirred layer, ball(R0 + δ) − ball(R0) (X, Y, Z): where
        co-cultured cells settle and injected cells go. In the well-mixed bulk beyond
        it, what they secrete would be washed out, and a uniform seeding of the
        whole medium would put more cells in a larger box."""
        radius = values["initial"]["radius_um"]
        if ball is None:
            ball = self.ball(radius)
        outer = self.ball(radius + values["params"]["medium_unstirred_layer"])
        return (outer - ball).astype(ball.dtype)

    def event_aux(self, values):
        """Where injected cells go: an organoid's initial unstirred layer (1 inside it), a
        tissue's vessels (mean 1)."""
        if self.geometry == "organoid":
            return self.layer(values)
        site = self.initial_state(values)[self._channels["vessel"]]
        return site / jnp.maximum(jnp.mean(site), 1e-30)

    def has_event(self, values, k):
        dose, amount = events_at(values["schedule"], k)
        return (dose != 0) | jnp.any(amount != 0)  # NaN counts: the guard must see it

    def apply_events(self, fields, values, k, aux):
        """Radiotherapy fractions, then injections, scheduled for step k."""
        dose, amount = events_at(values["schedule"], k)
        fields = radiotherapy(fields, self.table, values["params"], dose)
        return inject(fields, self.table, amount, aux)


@partial(jax.jit, static_argnums=0)
def initial_fields(problem: Problem, values):
    """``problem.initial_state(values)``, compiled once per problem."""
    return problem.initial_state(values)


@dataclass(frozen=True)
class Setup:
    """A problem and its values: ``tmesim.solve(setup.problem, setup.values, ...)``."""

    problem: NicheProblem
    values: dict

    @property
    def grid(self) -> Grid:
        return self.problem.grid

    @property
    def table(self) -> SpeciesTable:
        return self.problem.table

    @property
    def stepper(self) -> Stepper:
        return self.problem.stepper

    @property
    def fields(self):
        """The initial fields (F, X, Y, Z), before any event of step 0."""
        return initial_fields(self.problem, self.values)

    def field(self, name):
        return self.fields[self.table.index(name)]


def _checked(mapping, known, what: str) -> dict:
    unknown = set(mapping or {}) - set(known)
    if unknown:
        raise KeyError(f"{what}: unknown field(s) {sorted(unknown)}; expected some of "
                       f"{', '.join(known)}")
    return dict(mapping or {})


def _build(grid, geometry, octant, values, bounds, dt, dtype, pattern=None) -> Setup:
    radial = isinstance(grid, RadialGrid)
    # a spheroid's outer face is the medium, as an organoid octant's outer faces are
    boundary = (Neumann(), Dirichlet(0.0)) * 3 if radial else grid.boundary
    table = niche_species(boundary if geometry == "organoid" else None, bounds)
    reaction = NicheReaction(grid, table.names, octant, medium=geometry == "organoid")
    stepper = (RadialStepper if radial else Stepper)(
        grid, table, dt, reaction, cell_speed=MAX_CELL_SPEED, pressure=pressure_flux,
        pressure_stiffness=pressure_stiffness(bounds))
    problem = NicheProblem(grid, table, stepper, bounds, geometry, octant,
                           None if pattern is None else StaticArray(pattern))
    values = jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), values)
    problem.check_values(values, f"{geometry}(...)")
    return Setup(problem, values)


def _common_values(overrides, diffusion, dtype) -> dict:
    diffusion = _checked(diffusion, DEFAULT_DIFFUSION, "diffusion")
    return {
        "params": default_parameters(dtype, **(overrides or {})),
        "diffusion": DEFAULT_DIFFUSION | diffusion,
        "decay": dict(DEFAULT_DECAY),
        "schedule": schedule(),
    }


class MediumLayerWarning(UserWarning):
    """An organoid's unstirred medium layer reaches past its box's medium faces."""


def organoid(n=32, spacing=20.0, radius=100.0, csc_fraction=0.05, dt=1.0, octant=True,
             medium=None, immune_medium=None, overrides=None, dtype=jnp.float32, diffusion=None,
             bounds=None, schedule_values=None) -> Setup:
    """An organoid (spheroid) in medium: no vessels; solutes and drugs from the medium.

    octant: simulate one eighth (the organoid's centre at the x-, y-, z- corner,
    those faces mirror planes); otherwise the organoid sits in the box centre.
    The other faces are the medium (Dirichlet: oxygen 160 mmHg, ``medium``
    values for the rest); it is well mixed at those levels beyond an unstirred
    layer of ``medium_unstirred_layer`` um around the organoid
    (``medium_exchange``), so where the box ends does not matter as long as
    it holds the organoid and its layer (a ``MediumLayerWarning`` where it
    does not at the start, and from ``tmesim run`` once the organoid has grown
    past it; ``spheroid`` holds any layer). Initial
    cells: a ball of ``radius`` um at the packing fraction (0.8) with a
    ``csc_fraction`` share of CSCs.
    immune_medium: {"cd8": 0.02, ...} seeds cells in the unstirred layer around
    the organoid (``NicheProblem.layer``), where co-cultured cells settle
    (co-culture). overrides: parameter values; diffusion: coefficients;
    bounds: {path: (lower, upper)} overriding the default bounds (the plan is
    sized from them); schedule_values: treatments (``tmesim.schedule``).
    """
    faces = (Neumann(), Dirichlet(0.0)) * 3 if octant else (Dirichlet(0.0),) * 6
    grid = Grid((n, n, n), spacing, faces)
    fits = medium_faces(n, spacing, octant)
    setup = _organoid(grid, fits, octant, radius, csc_fraction, dt, medium, immune_medium,
                      overrides, dtype, diffusion, bounds, schedule_values)
    layer = float(setup.values["params"]["medium_unstirred_layer"])
    if radius + layer > fits:
        warnings.warn("the organoid " + layer_cut(radius, layer, fits), MediumLayerWarning,
                      stacklevel=2)
    return setup


def medium_faces(n: int, spacing: float, octant: bool) -> float:
    """How far from an organoid's centre (um) its box's medium faces are."""
    return n * spacing if octant else n * spacing / 2


def layer_cut(radius: float, layer: float, fits: float) -> str:
    """The ``MediumLayerWarning``'s text after "the organoid" (at the start) or "by day
    d the organoid has grown" (in a run): its radius and layer against the box's faces."""
    return (f"(radius {radius:g} um) and its unstirred layer "
            f"(medium_unstirred_layer = {layer:g} um) reach {radius + layer:g} um from its "
            f"centre, past the box's medium faces at {fits:g} um: the medium is at its bulk "
            f"level on those faces, so the layer is in effect at most {fits - radius:g} um "
            "thick and the results depend on the box (more so as the organoid grows). "
            "Enlarge the box to hold the radius and the layer, or use a spheroid "
            "(geometry.kind = \"spheroid\": its outer face holds any layer)")


def spheroid(n=40, spacing=15.0, radius=100.0, csc_fraction=0.05, dt=2.0, medium=None,
             immune_medium=None, overrides=None, dtype=jnp.float32, diffusion=None,
             bounds=None, schedule_values=None) -> Setup:
    """A spherical organoid as a radially symmetric body: ``organoid``'s model in n shells.

    The same species, processes, medium, values, bounds and treatments as
    ``organoid`` (the same keyword arguments, less ``octant``), on a
    ``RadialGrid`` of n shells of ``spacing`` um (the domain's radius is
    n·spacing; its outer face is the medium, as the octant's outer faces; an
    unstirred layer reaching beyond it is the face's far field, so the
    domain need only hold the spheroid).
    Spherical finite volumes (docs/radial.md): one exact tridiagonal solve per
    solute per step, cell transport through the shells' faces. Use it where
    the organoid stays spherical (calibration of growth curves and radii):
    about 200 times cheaper than a 24³ octant. ``tmesim.solve``,
    ``tmesim.observables``, ``set_values``, bounds, ``jax.grad``/``vmap`` work
    on it as on the organoid. Good values: spacing 10-15 um, dt 2 min (5 min: radii
    within 0.2% of dt = 2 by day 21, docs/radial.md).
    """
    grid = RadialGrid(n, spacing)
    return _organoid(grid, n * grid.spacing[0], False, radius, csc_fraction, dt, medium,
                     immune_medium, overrides, dtype, diffusion, bounds, schedule_values)


def _organoid(grid, fits, octant, radius, csc_fraction, dt, medium, immune_medium, overrides,
              dtype, diffusion, bounds, schedule_values) -> Setup:
    if not 0 < radius < fits:
        where = (f"spheroid domain of radius {fits:g} um" if isinstance(grid, RadialGrid)
                 else f"{grid.extent[0]} um box")
        raise ValueError(f"organoid radius {radius} um does not fit in the {where}")
    medium = _checked(medium, SOLUTES, "medium")
    seeded = _checked(immune_medium, CO_CULTURE, "immune_medium")
    values = _common_values(overrides, diffusion, dtype)
    values["medium"] = {s: 0.0 for s in SOLUTES} | {"oxygen": ORGANOID_MEDIUM_O2} | medium
    values["initial"] = {"radius_um": radius, "csc_fraction": csc_fraction} | {
        c: seeded.get(c, 0.0) for c in CO_CULTURE}
    if schedule_values is not None:
        values["schedule"] = schedule_values
    extra = {"medium.oxygen": (0.0, 200.0, "lin"),
             **{f"medium.{s}": (0.0, 1e5, "lin") for s in SOLUTES if s != "oxygen"},
             "initial.radius_um": (min(grid.spacing) / 2, fits, "lin"),
             "initial.csc_fraction": (0.0, 1.0, "logit"),
             **{f"initial.{c}": (0.0, 1.0, "lin") for c in CO_CULTURE}}
    b = Bounds.default(extra).override(bounds or {})
    return _build(grid, "organoid", octant, values, b, dt, dtype)


def tissue(n=32, spacing=20.0, radius=100.0, csc_fraction=0.05, dt=1.0, vessel_spacing=60.0,
           vessel_density=0.03, stroma=0.3, seed=0, periodic=False, overrides=None,
           dtype=jnp.float32, diffusion=None, bounds=None, schedule_values=None) -> Setup:
    """A tissue block (in vivo niche): vessels inside as sources, no-flux (or periodic) faces.

    Vessels: a random set of voxels (one per ``vessel_spacing``³ on average,
    from ``seed``), smoothed over their neighbours, scaled to a mean
    ``vessel_density`` and capped at ``vessel_max``; stroma: fibroblasts, MSCs,
    M1 macrophages, CD8 and Tregs filling a ``stroma`` fraction outside the
    tumour ball of ``radius`` (at the centre), ECM 0.3 there.
    overrides, diffusion, bounds, schedule_values: as for ``organoid``.
    """
    grid = Grid((n, n, n), spacing, Periodic() if periodic else Neumann())
    if not 0 < radius < n * spacing / 2:
        raise ValueError(f"tumour radius {radius} um does not fit in the {n * spacing} um box")
    rng = np.random.default_rng(seed)
    vessels = (rng.random(grid.shape) < (spacing / vessel_spacing) ** 3).astype(float)
    smooth = vessels.copy()
    for ax in range(3):
        smooth += 0.5 * (np.roll(vessels, 1, ax) + np.roll(vessels, -1, ax))
    pattern = smooth / smooth.mean() if smooth.mean() > 0 else smooth
    values = _common_values(overrides, diffusion, dtype)
    values["medium"] = {}
    values["initial"] = {"radius_um": radius, "csc_fraction": csc_fraction,
                         "vessel_density": vessel_density, "stroma": stroma}
    if schedule_values is not None:
        values["schedule"] = schedule_values
    extra = {"initial.radius_um": (min(grid.spacing) / 2, n * spacing / 2, "lin"),
             "initial.csc_fraction": (0.0, 1.0, "logit"),
             "initial.vessel_density": (0.0, 0.2, "lin"),
             "initial.stroma": (0.0, 1.0, "lin")}
    b = Bounds.default(extra).override(bounds or {})
    return _build(grid, "tissue", False, values, b, dt, dtype, pattern)
