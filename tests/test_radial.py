"""The radially symmetric organoid (``tmesim.spheroid``, issue 13): spherical finite volumes
against closed forms, its invariants, its gradient, and the 3D octant it stands for.

Default run (about a minute): closed forms and invariants of the shell operators
(kernels/_radial.py), the initial state's ball, observables of a ball, a gradient
against central differences over two simulated days, and the untreated organoid
of scenarios/untreated_niche.toml over ten days against the 3D octant's series
stored in tests/data/octant_reference.json (made by
tests/data/make_octant_reference.py). ``-m slow`` runs the 3D octant itself.
"""

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tmesim as tm
from tmesim import kernels as K
from tmesim._geometry import shell_fraction

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "data", "octant_reference.json")
FINER = os.path.join(HERE, "data", "octant_reference_36x20um.json")  # 20 um voxels
MIN_PER_DAY = 1440.0


# -- spherical finite volumes ---------------------------------------------------------
def test_shell_geometry_adds_up_to_the_ball():
    grid = tm.RadialGrid(12, 7.0)
    np.testing.assert_allclose(grid.volumes().sum(), 4 * math.pi * (12 * 7.0) ** 3 / 3, rtol=1e-14)
    np.testing.assert_allclose(grid.face_areas()[-1], 4 * math.pi * (12 * 7.0) ** 2, rtol=1e-14)
    np.testing.assert_allclose(grid.centers(), (np.arange(12) + 0.5) * 7.0)
    with pytest.raises(ValueError, match="RadialGrid.n"):
        tm.RadialGrid(2, 7.0)


def steady_sphere(n, radius=200.0, D=1e5, k=10.0, c0=160.0):
    """Steady D∇²c = k c in a ball with c = c0 on its surface, by one backward-Euler step of
    1e12 min (the fixed point of the step is the discrete steady state)."""
    h = radius / n
    c = jnp.zeros((1, n))
    out = K.radial_diffusion_step(c, 1e12, h, jnp.array([D]), jnp.array([k]),
                                  jnp.array([c0]))[0]
    ell = math.sqrt(D / k)
    r = (np.arange(n) + 0.5) * h
    exact = c0 * radius * np.sinh(r / ell) / (r * np.sinh(radius / ell))
    return np.asarray(out), exact


def test_steady_oxygen_in_a_consuming_sphere_is_second_order():
    """c(r) = c0·R·sinh(r/ℓ)/(r·sinh(R/ℓ)), ℓ = √(D/k) (linear uptake, Dirichlet surface):
    the error at the shell centres falls as h² (fitted slope of log error on log h)."""
    ns = (10, 20, 40, 80)
    errors = []
    for n in ns:
        got, exact = steady_sphere(n)
        errors.append(np.max(np.abs(got - exact)) / 160.0)
    slope = np.polyfit(np.log(1.0 / np.array(ns)), np.log(errors), 1)[0]
    assert 1.9 < slope < 2.2, (slope, errors)
    assert errors[-1] < 1e-4


def test_steady_state_is_the_fixed_point_of_a_production_step():
    """A step of 2 min from the discrete steady state leaves it there (to round-off)."""
    got, _ = steady_sphere(30)
    again = K.radial_diffusion_step(jnp.asarray(got)[None], 2.0, 200.0 / 30, jnp.array([1e5]),
                                    jnp.array([10.0]), jnp.array([160.0]))[0]
    np.testing.assert_allclose(again, got, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_far_field_face_equals_the_still_medium_on_the_grid(decay):
    """A ball of 300 um consuming oxygen (10 mmHg/min) in still medium with decay λ out to
    1100 um, the level 160 beyond. On 30 shells of 20 um with the rest of the medium as the
    outer face's far field (``far``): the same steady state as 55 shells holding all of it,
    within 2e-4 of the pO2 drop (what the extended grid's second-order shells leave in the
    500 um beyond; 6e-5 measured at λ = 0). No decay: the closed form
    c(r) = 160 − q a³/(3D)(1/max(r, a) − 1/R_far) − q (a² − r²)/(6D) [r < a], to O(h²)."""
    h, D, q, a, far = 20.0, 1e5, 10.0, 300.0, 1100.0

    def steady(n, far_field):
        r = (np.arange(n) + 0.5) * h
        source = jnp.asarray(np.where(r < a, -q, 0.0))[None]
        out = K.radial_diffusion_step(jnp.full((1, n), 160.0), 1e12, h, jnp.array([D]),
                                      jnp.array([decay]), jnp.array([160.0]), source,
                                      far_field)
        return np.asarray(out[0]), r

    got, r = steady(30, (far, jnp.array([decay])))
    full, _ = steady(round(far / h), None)
    drop = 160.0 - full[0]
    np.testing.assert_allclose(got, full[:30], rtol=0, atol=2e-4 * drop)
    if decay == 0.0:
        exact = (160.0 - q * a**3 / (3 * D) * (1 / np.maximum(r, a) - 1 / far)
                 - np.where(r < a, q * (a**2 - r**2) / (6 * D), 0.0))
        np.testing.assert_allclose(got, exact, rtol=0, atol=2e-3 * drop)
    # a far field inside the domain is the level on the face, exactly
    inside, _ = steady(30, (550.0, jnp.array([decay])))
    np.testing.assert_array_equal(inside, steady(30, None)[0])


def test_spheroid_medium_layer_beyond_the_shells_is_the_far_field():
    """The untreated spheroid (182 um, dt 5 min) in a static well's 860 um unstirred layer
    (the values of the WM983b fit, docs/fits.md, rounded), over 7 days, on 30 shells of
    20 um (600 um: the layer is beyond the shells, the outer face meets it as
    ``Rates.far_field``) against 80 shells holding the layer. What differs is where the
    bulk starts: at R + δ in the far field, within about ``MIXING_LENGTH`` of it on the grid
    (the bulk's relaxation), about ℓR/(δ(R+δ)) ≈ 0.3% of the layer's resistance: surface
    pO2 within 0.3 mmHg (of a 90 mmHg drop), radii within 1 um (arrested, a switch at a
    threshold pO2: within 5 um, a quarter shell)."""
    dt = 5.0
    days = [2.0, 4.0, 7.0]
    got = {}
    for n in (30, 80):
        s = tm.spheroid(n=n, spacing=20.0, radius=182.0, dt=dt, dtype=jnp.float64,
                        overrides={"medium_unstirred_layer": 860.0, "o2_uptake": 700.0,
                                   "o2_proliferation_threshold": 12.0,
                                   "o2_proliferation_shape": 0.02, "necrosis_rate": 1e-3,
                                   "tumor_division_rate": 4.9e-4, "debris_lysis_rate": 5e-5},
                        bounds={"medium_unstirred_layer": (10.0, 1200.0)})
        sol = tm.solve(s.problem, s.values, n_steps=int(day_steps([7.0], dt)[0]),
                       save=tm.SaveAt(day_steps(days, dt), tm.observables))
        got[n] = {k: np.asarray(v) for k, v in sol.saved.items()}
    near, far = got[80], got[30]
    assert 160.0 - near["o2_depth_0"][0] > 60.0  # the layer matters: a deep drop from 160
    np.testing.assert_allclose(far["o2_depth_0"], near["o2_depth_0"], atol=0.3)
    np.testing.assert_allclose(far["tumor_radius"], near["tumor_radius"], atol=1.0)
    np.testing.assert_allclose(far["necrotic_radius"], near["necrotic_radius"], atol=1.0)
    np.testing.assert_allclose(far["arrested_radius"], near["arrested_radius"], atol=5.0)
    assert near["necrotic_radius"][-1] > 100.0  # a core has formed by day 7


def test_diffusion_conserves_mass_with_a_closed_outer_face(rng):
    n, h = 25, 12.0
    vol = tm.RadialGrid(n, h).volumes()
    c = jnp.asarray(rng.random((3, n)))
    D = jnp.asarray(rng.random((3, n)) * 1e4 + 100.0)  # per shell, as ECM-hindered drugs
    zero = jnp.zeros(3)
    new = c
    for _ in range(5):
        new = K.radial_diffusion_step(new, 3.0, h, D, zero)
    np.testing.assert_allclose(np.asarray(new) @ vol, np.asarray(c) @ vol, rtol=1e-13)
    rate = K.radial_diffusion_rate(c, h, D, zero)
    assert np.max(np.abs(np.asarray(rate) @ vol)) < 1e-9 * float(np.asarray(c) @ vol @ np.ones(3))
    # backward Euler is consistent with the explicit operator: (c' − c)/dt → rate as dt → 0
    small = K.radial_diffusion_step(c, 1e-8, h, D, zero)
    np.testing.assert_allclose((small - c) / 1e-8, rate, rtol=1e-5, atol=1e-5)


def random_cells(rng, F, n):
    rho = rng.random((F, n))
    rho = 0.97 * rho / rho.sum(axis=0).max()  # some shells nearly full
    rho[:, -3:] *= 0.1
    return jnp.asarray(rho)


def test_cell_transport_is_conservative_positive_and_volume_bounded(rng):
    """Forward Euler at the step limit, with motility, two drift potentials (one of them a
    crowding pressure of the densities), a carrier Ψ and the speed cap, for 400 steps."""
    F, n, h, speed = 4, 20, 10.0, 2.0
    vol = tm.RadialGrid(n, h).volumes()
    rho = random_cells(rng, F, n)
    mu = jnp.array([0.0, 1.0, 30.0, 120.0])
    chem = jnp.asarray(rng.random((F, n)) * 50.0)
    psi = jnp.asarray(rng.normal(size=n) * 200.0)
    stiffness = 667.0
    dt = K.radial_transport_limit(h, n, 120.0, speed, stiffness)

    def rate(r):
        phi = jnp.sum(r, axis=0)
        push = stiffness * 0.18 * jnp.maximum(phi - 0.8, 0.0) / 0.18
        return K.radial_cell_transport_rate(r, h, mu, (chem, push), 1.0 - phi, speed, psi)

    total = np.asarray(rho) @ vol
    r = rho
    for _ in range(400):
        r = r + dt * rate(r)
        assert float(jnp.min(r)) >= -1e-15
        assert float(jnp.max(jnp.sum(r, axis=0))) <= 1.0 + 1e-12
    np.testing.assert_allclose(np.asarray(r) @ vol, total, rtol=1e-12)
    assert float(jnp.max(jnp.abs(r - rho))) > 1e-3  # it did move


def test_cell_step_limit_is_the_centre_shells():
    """The centre shell empties 3/2 as fast as a slab (h(A₀ + A₁)/(2V₀) = 3/2), so the step
    limit is two thirds of the one-axis Cartesian one; at that step a full centre shell
    pushed out at the full speed just empties."""
    h, n = 10.0, 30
    limit = K.radial_transport_limit(h, n, 60.0, 2.0, 0.0)
    np.testing.assert_allclose(limit, K.transport_limit((h,), 60.0, 2.0, 0.0) / 1.5, rtol=1e-14)
    rho = jnp.zeros((1, n)).at[0, 0].set(1.0)
    phi = -jnp.arange(n, dtype=jnp.float64) * 1e3  # a steep potential: every face at the speed cap
    new = rho + limit * K.radial_cell_transport_rate(rho, h, jnp.array([60.0]), phi, None, 2.0)
    assert abs(float(new[0, 0])) < 1e-12


# -- the spheroid -----------------------------------------------------------------------
def test_initial_ball_is_exact_and_differentiable():
    grid = tm.RadialGrid(30, 10.0)
    vol = jnp.asarray(grid.volumes())
    for R in (3.0, 10.0, 123.4, 299.0):
        v = jnp.sum(shell_fraction(grid, jnp.asarray(R)) * vol)
        np.testing.assert_allclose(v, 4 * math.pi * R**3 / 3, rtol=1e-13)
        dv = jax.grad(lambda R: jnp.sum(shell_fraction(grid, R) * vol))(jnp.asarray(R))
        np.testing.assert_allclose(dv, 4 * math.pi * R**2, rtol=1e-12)
    s = tm.spheroid(n=30, spacing=10.0, radius=123.4, dtype=jnp.float64,
                    immune_medium={"cd8": 0.02})
    f = s.fields
    live = f[s.table.index("tumor")] + f[s.table.index("csc")]
    np.testing.assert_allclose(jnp.sum(live * vol), 0.8 * 4 * math.pi * 123.4**3 / 3, rtol=1e-13)
    layer = 4 * math.pi * ((123.4 + 100.0) ** 3 - 123.4**3) / 3
    np.testing.assert_allclose(jnp.sum(f[s.table.index("cd8")] * vol), 0.02 * layer, rtol=1e-13)


@pytest.mark.parametrize("R", [95.0, 151.0, 207.5])
def test_observables_of_a_ball(R):
    """A packed ball of radius R with a debris core of R/2: tumor_radius within a quarter
    shell (exact here), the necrotic radius likewise, the shadow's radius within a shell,
    and the shell mean of a linear profile exact."""
    h = 10.0
    s = tm.spheroid(n=40, spacing=h, radius=R, dtype=jnp.float64)
    grid = s.grid
    ball, core = shell_fraction(grid, jnp.asarray(R)), shell_fraction(grid, jnp.asarray(R / 2))
    f = s.fields.at[s.table.index("tumor")].set(0.8 * (ball - core))
    f = f.at[s.table.index("csc")].set(0.0).at[s.table.index("debris")].set(0.8 * core)
    r = jnp.asarray(grid.centers())
    f = f.at[s.table.index("oxygen")].set(10.0 + 0.1 * r)
    o = tm.observables(s.problem, f, s.values)
    assert set(o) == set(tm.OBSERVABLES)
    assert abs(float(o["tumor_radius"]) - R) < h / 4
    assert abs(float(o["necrotic_radius"]) - R / 2) < h / 4
    assert abs(math.sqrt(float(o["projected_area"]) * 1e6 / math.pi) - R) < h
    np.testing.assert_allclose(o["o2_depth_50"], 10.0 + 0.1 * (float(o["tumor_radius"]) - 50.0),
                               rtol=1e-12)
    np.testing.assert_allclose(o["necrotic_fraction"], 1 / 8, rtol=1e-12)
    np.testing.assert_allclose(o["dead_cell_volume"], 0.8 * 4 * math.pi * (R / 2) ** 3 / 3e9,
                               rtol=1e-12)


def day_steps(days, dt):
    return jnp.asarray(np.rint(np.asarray(days) * MIN_PER_DAY / dt).astype(int))


def test_treatments_act_on_the_spheroid():
    """A dose into the medium, a medium change that drops the oxygen, a radiotherapy fraction
    and an injection into the unstirred layer all reach the shells."""
    dt = 5.0
    sched = tm.schedule(doses=[("chemo", 0.0, 0.0, 50.0, 0.0, math.inf)],
                        medium_changes=[(144, {**{n: 0.0 for n in tm.SOLUTES}, "oxygen": 20.0})],
                        radiotherapy=[(100, 4.0)], injections=[(50, {"car_t": 0.01})])
    s = tm.spheroid(n=30, spacing=15.0, radius=150.0, dt=dt, dtype=jnp.float64,
                    schedule_values=sched)
    sol = tm.solve(s.problem, s.values, n_steps=288, save=tm.SaveAt(jnp.array([99, 100, 288])))
    assert bool(sol.ok), sol.message(s.problem)
    i = s.table.index
    before, after, end = sol.saved
    vol = s.grid.volumes()
    assert float(after[i("debris")] @ vol) > float(before[i("debris")] @ vol) + 1e5  # a fraction
    assert float(end[i("car_t")] @ vol) > 0
    assert float(end[i("chemo")][0]) > 1.0  # the drug reached the centre
    assert float(end[i("oxygen")][-1]) == pytest.approx(20.0, abs=0.5)  # the new medium


def test_vmap_over_values_equals_a_loop():
    s = tm.spheroid(n=12, spacing=25.0, radius=150.0, dt=20.0, dtype=jnp.float64)
    rates = jnp.array([5e-4, 9e-4])

    def radius(rate):
        v = tm.set_values(s.values, {"tumor_division_rate": rate})
        return tm.solve(s.problem, v, n_steps=72,
                        save=tm.SaveAt(jnp.array([72]), tm.observables)).saved["tumor_radius"][0]

    batched = jax.vmap(radius)(rates)
    np.testing.assert_allclose(batched, [radius(r) for r in rates], rtol=1e-12)
    assert float(batched[1]) > float(batched[0])


def test_failure_is_located_in_a_shell():
    s = tm.spheroid(n=12, spacing=25.0, radius=150.0, dt=20.0, dtype=jnp.float64)
    y0 = s.fields.at[s.table.index("tumor"), 3].set(jnp.nan)
    sol = tm.solve(s.problem, s.values, y0, n_steps=3)
    assert not bool(sol.ok)
    assert re.search(r"at voxel \(\d+,\) \(r = [\d.]+ um\) at step 1 ", sol.message(s.problem))


GRADIENT_PATHS = ("tumor_division_rate", "csc_division_rate", "o2_uptake")


def test_gradient_matches_central_differences():
    """∂(tumor_radius at day 2)/∂x in float64 against central differences at a relative step
    of 1e-6 (the solves are exact: no solver tolerance in the loss), rel. error < 1e-4."""
    dt = 10.0
    s = tm.spheroid(n=20, spacing=20.0, radius=200.0, dt=dt, dtype=jnp.float64)
    save = tm.SaveAt(day_steps([2.0], dt), tm.observables)

    @jax.jit
    def radius(theta):
        v = tm.set_values(s.values, dict(zip(GRADIENT_PATHS, theta)))
        return tm.solve(s.problem, v, n_steps=int(2 * MIN_PER_DAY / dt),
                        save=save).saved["tumor_radius"][0]

    theta = jnp.stack([s.values["params"][k] for k in GRADIENT_PATHS])
    grad = jax.grad(radius)(theta)
    eps = 1e-6 * theta
    shifts = jnp.concatenate([jnp.diag(eps), -jnp.diag(eps)])
    values = jax.vmap(radius)(theta[None] + shifts)
    fd = (values[:3] - values[3:]) / (2 * eps)
    np.testing.assert_allclose(grad * theta, fd * theta, rtol=1e-4)
    assert np.all(np.abs(np.asarray(grad * theta)) > 0.1)  # each moves the radius


def test_gradient_through_the_far_field_matches_central_differences():
    """A 600 um layer around a 200 um spheroid on 20 shells of 20 um (the layer's outer 400
    um are the outer face's far field): ∂(surface pO2 and radius at day 1)/∂(layer, O2
    uptake) against central differences at a relative step of 1e-6, rel. error < 1e-4."""
    dt = 10.0
    s = tm.spheroid(n=20, spacing=20.0, radius=200.0, dt=dt, dtype=jnp.float64,
                    overrides={"medium_unstirred_layer": 600.0})
    save = tm.SaveAt(day_steps([1.0], dt), tm.observables)
    paths = ("medium_unstirred_layer", "o2_uptake")

    @jax.jit
    def seen(theta):
        v = tm.set_values(s.values, dict(zip(paths, theta)))
        out = tm.solve(s.problem, v, n_steps=int(MIN_PER_DAY / dt), save=save).saved
        return jnp.stack([out["o2_depth_0"][0], out["tumor_radius"][0]])

    theta = jnp.stack([s.values["params"][k] for k in paths])
    jac = jax.jacrev(seen)(theta) * theta
    eps = 1e-6 * theta
    up = jax.vmap(seen)(theta[None] + jnp.diag(eps))
    down = jax.vmap(seen)(theta[None] - jnp.diag(eps))
    fd = ((up - down) / (2 * eps[:, None])).T * theta
    np.testing.assert_allclose(jac, fd, rtol=1e-4)
    assert abs(float(jac[0, 0])) > 1.0  # the layer moves the surface pO2 (mmHg)


# -- against the 3D octant ---------------------------------------------------------------
# The untreated organoid of scenarios/untreated_niche.toml (R0 = 200 um) with 40 shells of
# 15 um at dt = 5 min, against the 3D octant of 24³ voxels of 30 um at dt = 2 min
# (docs/radial.md has the series). The tumour radius agrees within 2% at every half day
# (measured: at most 1.6%, at day 10; the octant's 30 um voxels make its body larger:
# the radial model on 30 um shells gives 325.7 um at day 10 like the octant's 325.2, and
# converges to 319.0 um on finer shells). The necrotic radius is compared once the octant's
# core holds a few shells (≥ 60 um, day 7 on), within 7% (measured: at most 6.3%, day 8):
# before that the time the core appears (day 6 in both) decides the relative error, and
# the 2% criterion is not met for it (see docs/radial.md).
RADIAL = dict(n=40, spacing=15.0, radius=200.0, dt=5.0)


def radial_series(**kw):
    kw = RADIAL | kw
    s = tm.spheroid(dtype=jnp.float64, **kw)
    days = np.arange(0.0, 10.0 + 1e-9, 0.5)
    sol = tm.solve(s.problem, s.values, n_steps=int(round(10 * MIN_PER_DAY / kw["dt"])),
                   save=tm.SaveAt(day_steps(days, kw["dt"]), tm.observables))
    assert bool(sol.ok), sol.message(s.problem)
    return {k: np.asarray(v) for k, v in sol.saved.items()}


def compare(radial, octant):
    R3, N3 = np.asarray(octant["tumor_radius"]), np.asarray(octant["necrotic_radius"])
    R, N = radial["tumor_radius"], radial["necrotic_radius"]
    np.testing.assert_allclose(R, R3, rtol=0.02)
    core = N3 >= 60.0
    assert core.sum() >= 5
    np.testing.assert_allclose(N[core], N3[core], rtol=0.07)
    assert np.all(N[N3 < 1.0] < 2.0)  # no core where the octant has none


def test_untreated_organoid_agrees_with_the_stored_octant_series():
    with open(REFERENCE) as fh:
        octant = json.load(fh)["observables"]
    compare(radial_series(), octant)


def test_untreated_organoid_agrees_with_the_finer_octant_series():
    """The 3D octant on 20 um voxels (36^3, tests/data/octant_reference_36x20um.json, 14
    minutes on 2 cores): the 30 um octant's own discretisation was most of the gap. Measured
    at f03f7da: outer radius within 0.39% over the 10 days, necrotic radius within 2.8% once
    the core exceeds 60 um (day 8; 2.1% or less on the other days); tolerances just above."""
    with open(FINER) as fh:
        octant = json.load(fh)["observables"]
    radial = radial_series()
    R3, N3 = np.asarray(octant["tumor_radius"]), np.asarray(octant["necrotic_radius"])
    np.testing.assert_allclose(radial["tumor_radius"], R3, rtol=0.005)
    core = N3 >= 60.0
    assert core.sum() >= 5
    np.testing.assert_allclose(radial["necrotic_radius"][core], N3[core], rtol=0.03)
    assert np.all(radial["necrotic_radius"][N3 < 1.0] < 2.0)


def test_fine_shells_agree_with_the_octant_extrapolated_to_zero_voxel_size():
    """Both discretisations converged: the radial model on 5 um shells at dt = 2 min against
    the octant's 30 and 20 um series extrapolated to h = 0 as second order (Richardson:
    X_20 + (X_20 - X_30)·20²/(30² - 20²)). Second order is what the outer radius shows: the
    extrapolated 318.3 um at day 10 against 318.7 um on 5 um shells, where the 30 and 20 um
    octants give 325.2 and 321.4. Measured at f03f7da: outer radius within 0.11% on every
    half day, necrotic radius within 0.9% on every half day with a core above 20 um (day 6
    on; 0.61% from day 7.5). The issue's criterion is 2%; tolerances 0.3% and 1.5%."""
    with open(REFERENCE) as fh:
        coarse = json.load(fh)["observables"]
    with open(FINER) as fh:
        fine = json.load(fh)["observables"]
    ext = {k: np.asarray(fine[k]) + (np.asarray(fine[k]) - np.asarray(coarse[k])) * 0.8
           for k in ("tumor_radius", "necrotic_radius")}
    radial = radial_series(n=120, spacing=5.0, dt=2.0)
    np.testing.assert_allclose(radial["tumor_radius"], ext["tumor_radius"], rtol=0.003)
    core = ext["necrotic_radius"] >= 20.0
    assert core.sum() >= 9
    np.testing.assert_allclose(radial["necrotic_radius"][core], ext["necrotic_radius"][core],
                               rtol=0.015)
    assert np.all(radial["necrotic_radius"][ext["necrotic_radius"] < 1.0] < 2.0)


def test_necrotic_core_stays_packed_and_converges_with_shell_width():
    """The untreated organoid over 21 days on 10 and 5 um shells: the lysing core stays packed
    and neither radius depends on the shell width. Two defects broke this. Before the
    free-surface term of M18 was kept to the body's edge (``near_outside``), a slight deficit
    deep in the body grew and the core emptied from day 11 (at dt = 5 min: 105.3 against
    99.0 um at day 14). Before angiogenesis was kept out of organoids, VEGF grew vessels from
    nothing; they recruited CD8 cells that expanded on the tumour and killed its rim from
    about day 14, faster on finer shells (dt 2, 5 um: outer radius 328.5 um at day 21
    against 354.9 on 15 um shells). Measured now (dt 5): outer radius within 0.43%, necrotic radius
    within 1.35% (day 10; 0.8% at day 21); the core at 0.998 and 1.000 of packed at day 21."""
    days = [10.0, 14.0, 17.0, 21.0]
    got = {}
    for spacing in (10.0, 5.0):
        s = tm.spheroid(n=int(round(600 / spacing)), spacing=spacing, radius=200.0, dt=5.0,
                        dtype=jnp.float64)
        sol = tm.solve(s.problem, s.values, n_steps=int(21 * MIN_PER_DAY / 5.0),
                       save=tm.SaveAt(day_steps(days, 5.0), tm.observables))
        assert bool(sol.ok)
        i = s.problem.table.index
        f = np.asarray(sol.fields)
        body = f[i("tumor")] + f[i("csc")] + f[i("debris")]
        core = (np.arange(len(body)) + 0.5) * spacing < 100.0
        # no vessels in culture, so no T cells are recruited, though the core makes VEGF
        assert f[i("vegf")].max() > 0.01 and f[i("vessel")].max() == f[i("cd8")].max() == 0.0
        got[spacing] = (np.asarray(sol.saved["tumor_radius"]),
                        np.asarray(sol.saved["necrotic_radius"]), body[core].min() / 0.8)
    np.testing.assert_allclose(got[5.0][0], got[10.0][0], rtol=0.01)
    np.testing.assert_allclose(got[5.0][1], got[10.0][1], rtol=0.02)
    assert np.all(np.diff(got[5.0][1]) > 5.0)  # the core keeps growing
    assert min(got[10.0][2], got[5.0][2]) > 0.98


@pytest.mark.slow
def test_untreated_organoid_agrees_with_the_octant():
    """The 3D octant of the scenario (about 3 minutes on 2 CPU cores) and the radial model."""
    from tmesim._run import build

    sc = tm.load_scenario(os.path.join(HERE, "..", "scenarios", "untreated_niche.toml"))
    setup = build(sc).setup
    days = np.arange(0.0, 10.0 + 1e-9, 0.5)
    sol = tm.solve(setup.problem, setup.values, n_steps=int(round(10 * MIN_PER_DAY / sc.dt)),
                   save=tm.SaveAt(day_steps(days, sc.dt), tm.observables))
    assert bool(sol.ok)
    octant = {k: np.asarray(v) for k, v in sol.saved.items()}
    with open(REFERENCE) as fh:  # the stored series is still what the code computes
        stored = json.load(fh)["observables"]
    np.testing.assert_allclose(octant["tumor_radius"], stored["tumor_radius"], rtol=1e-3)
    compare(radial_series(), octant)
