"""Differentiable observables on analytic shapes: a ball of tumour cells at the packing
fraction, a debris core, a linear pO2 profile; and their gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tmesim as tm

R = 200.0  # um: ball radius; the octant box is 16 voxels of 20 um = 320 um
R_CORE = 120.0  # um: debris core
SETUP = tm.organoid(n=16, spacing=20.0, radius=R, dt=5.0, dtype=jnp.float64)
PACKED = float(SETUP.values["params"]["packing_fraction"])


def state(radius=R, core=0.0, csc=0.1, o2=None):
    """Live cells at the packing fraction in a ball, debris in its core, CSC share ``csc``."""
    g = SETUP.grid
    ball = tm.ball_fraction(g, radius, (0.0, 0.0, 0.0))
    inner = tm.ball_fraction(g, core, (0.0, 0.0, 0.0)) if core else jnp.zeros(g.shape)
    fields = {n: jnp.zeros(g.shape) for n in SETUP.table.names}
    fields["tumor"] = PACKED * (ball - inner) * (1.0 - csc)
    fields["csc"] = PACKED * (ball - inner) * csc
    fields["debris"] = PACKED * inner
    fields["oxygen"] = jnp.full(g.shape, 100.0) if o2 is None else o2
    return jnp.stack([fields[n] for n in SETUP.table.names])


def obs(fields, values=SETUP.values):
    return tm.observables(SETUP.problem, fields, values)


def test_ball_volume_radius_and_shares():
    o = obs(state(core=R_CORE))
    ball = 4.0 / 3.0 * math.pi * R**3
    # voxel sampling: the ball's volume within 0.1%
    np.testing.assert_allclose(o["tumor_radius"], R, rtol=1e-3)
    live = PACKED * (ball - 4.0 / 3.0 * math.pi * R_CORE**3) / 1e9
    np.testing.assert_allclose(o["tumor_volume"], live, rtol=3e-3)
    np.testing.assert_allclose(o["csc_fraction"], 0.1, rtol=1e-12)
    np.testing.assert_allclose(o["necrotic_fraction"], (R_CORE / R) ** 3, rtol=5e-3)


def test_hypoxic_share_of_a_linear_profile():
    """pO2 = 2 + 0.1·r mmHg: below 15 mmHg within r = 130 um, so the hypoxic share of a
    uniform ball is (130/200)³ = 0.2746; the threshold smeared over a voxel is symmetric
    about it, so on a linear profile it counts the same share (measured 0.2791)."""
    g = SETUP.grid
    r = np.sqrt(sum(x**2 for x in g.mesh()))
    o = obs(state(o2=jnp.asarray(2.0 + 0.1 * r)))
    np.testing.assert_allclose(o["hypoxic_fraction"], (130.0 / R) ** 3, rtol=0.02)
    np.testing.assert_allclose(o["min_oxygen"], 2.0 + 0.1 * r.min(), rtol=1e-12)


@pytest.mark.parametrize("name, expected", [
    ("tumor_radius", 1.0),  # dR/dR
    ("tumor_volume", 4.0 * math.pi * R**2 * PACKED / 1e9),  # d(0.8·4πR³/3)/dR, in mm³/um
    ("projected_area", 2.0 * math.pi * R / 1e6),  # d(πR²)/dR, in mm²/um
])
def test_gradient_wrt_initial_radius(name, expected):
    """Through the initial state built from the values (smooth ball) and the observable."""
    def of_radius(radius):
        values = tm.set_values(SETUP.values, {"initial.radius_um": radius})
        return obs(tm.start_state(SETUP.problem, values), values)[name]

    g = jax.grad(of_radius)(jnp.asarray(R))
    np.testing.assert_allclose(g, expected, rtol=0.02)
    h = 1e-3
    fd = (of_radius(R + h) - of_radius(R - h)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-5)


def test_hypoxic_share_moves_with_the_threshold():
    """d(share)/d(threshold) on the linear profile: 3 r_h² /(R³ · 0.1 mmHg/um) = 0.0634/mmHg.

    The threshold smeared over one voxel samples this surface term with the 20 um voxels
    that the front cuts: measured 0.0679, within 10%; exact against the finite difference."""
    g = SETUP.grid
    r = np.sqrt(sum(x**2 for x in g.mesh()))
    fields = state(o2=jnp.asarray(2.0 + 0.1 * r))

    def share(threshold):
        values = tm.set_values(SETUP.values, {"o2_hypoxic_threshold": threshold})
        return obs(fields, values)["hypoxic_fraction"]

    d = jax.grad(share)(jnp.asarray(15.0))
    np.testing.assert_allclose(d, 3 * 130.0**2 / R**3 / 0.1, rtol=0.1)
    np.testing.assert_allclose(d, (share(15.0 + 1e-4) - share(15.0 - 1e-4)) / 2e-4, rtol=1e-6)


# -- what experiments report: radii of marked regions, shadow, dead cells, pO2 at depth
H = SETUP.grid.spacing[0]
RADIAL = np.sqrt(sum(x**2 for x in SETUP.grid.mesh()))


def test_radii_of_a_ball_with_a_debris_core_within_a_quarter_voxel():
    o = obs(state(core=R_CORE))
    assert abs(float(o["tumor_radius"]) - R) < H / 4
    assert abs(float(o["necrotic_radius"]) - R_CORE) < H / 4
    assert abs(float(o["viable_rim"]) - (R - R_CORE)) < H / 4
    dead = PACKED * 4.0 / 3.0 * math.pi * R_CORE**3 / 1e9
    np.testing.assert_allclose(o["dead_cell_volume"], dead, rtol=3e-3)


@pytest.mark.parametrize("name, o2, expected", [
    # pimonidazole: below 10 mmHg inside r = 80 um on pO2 = 2 + 0.1·r
    ("hypoxic_radius", 2.0 + 0.1 * RADIAL, 80.0),
    # arrest: oxygen factor of division (O2 − 5)/155 below 0.1, pO2 below 20.5 mmHg,
    # inside r = 150 um on pO2 = 0.5·r − 54.5 (measured 150.6; pimonidazole 80.8)
    ("arrested_radius", 0.5 * RADIAL - 54.5, 150.0),
])
def test_threshold_radii_of_a_linear_profile_within_a_quarter_voxel(name, o2, expected):
    o = obs(state(o2=jnp.asarray(np.maximum(o2, 0.0))))
    assert abs(float(o[name]) - expected) < H / 4, float(o[name])


@pytest.mark.parametrize("geometry", ["organoid", "spheroid"])
def test_threshold_radius_moves_continuously_with_a_steep_front(geometry):
    """pO2 = 10 + 5·(r − a) mmHg, steeper than any fixed ramp in pO2: the pimonidazole
    radius (below 10 mmHg) is a, for a swept across one voxel, and d(radius)/da = 1.

    On shells the front of a profile linear in r is exact (1e-9). On the octant a
    spherical front cuts the voxels at every angle: measured within 0.7 um of a and
    slope 0.94-1.06 over the sweep. A ramp of ±1 mmHg (0.4 um here) gave steps of a
    whole shell (radius off by up to 8 um, slope 0 or 50) and slope 0 at 10 of 11 points
    on the octant: that is what this guards."""
    s = (SETUP if geometry == "organoid" else
         tm.spheroid(n=16, spacing=20.0, radius=R, dt=5.0, dtype=jnp.float64))
    g, names = s.grid, s.table.names
    r = RADIAL if geometry == "organoid" else g.centers()
    ball = s.problem.ball(R)

    def radius(a):
        f = {n: jnp.zeros(g.shape) for n in names}
        f["tumor"] = PACKED * ball
        f["oxygen"] = 10.0 + 5.0 * (jnp.asarray(r) - a)
        return tm.observables(s.problem, jnp.stack([f[n] for n in names]), s.values)[
            "hypoxic_radius"]

    fronts = 130.0 + np.linspace(0.0, H, 11)
    got = np.array([float(radius(a)) for a in fronts])
    slope = np.array([float(jax.grad(radius)(jnp.asarray(a))) for a in fronts])
    if geometry == "spheroid":
        # the region's radius: smooth at zero volume below a quarter shell (0.002 um
        # above the plain radius here)
        want = jax.vmap(lambda a: tm.region_radius(4 * math.pi * a ** 3 / 3, H / 4))
        np.testing.assert_allclose(got, want(jnp.asarray(fronts)), rtol=1e-9)
        np.testing.assert_allclose(slope, jax.vmap(jax.grad(lambda a: tm.region_radius(
            4 * math.pi * a ** 3 / 3, H / 4)))(jnp.asarray(fronts)), rtol=1e-9)
        np.testing.assert_allclose(got, fronts, atol=0.003)
        np.testing.assert_allclose(slope, 1.0, atol=1e-4)
    else:
        np.testing.assert_allclose(got, fronts, atol=1.0)  # 1/20 voxel
        np.testing.assert_allclose(slope, 1.0, atol=0.1)


def test_region_radius_is_smooth_where_the_region_appears():
    """A region's equal-volume radius (necrotic, arrested, hypoxic) at volume V: 0 at
    V = 0 with the finite slope 1/(π r0²) (the plain cube root's is infinite, a cusp in a
    fit's NLL where a core forms), increasing, and the plain radius r plus
    r0³/(3r²) − r0⁴/r³ to leading order: within 0.012 um from r = 50 um at r0 = 5 um."""
    r0 = 5.0
    f = jax.jit(lambda v: tm.region_radius(v, r0))
    df = jax.jit(jax.grad(lambda v: tm.region_radius(v, r0)))
    assert float(f(0.0)) == 0.0
    assert float(df(0.0)) == pytest.approx(1 / (math.pi * r0 ** 2), rel=1e-12)
    v = np.concatenate([[0.0], np.geomspace(1e-3, 1e9, 200)])
    assert np.all(np.diff(np.asarray(jax.vmap(f)(v))) > 0)
    assert np.all(np.isfinite(np.asarray(jax.vmap(df)(v))))
    for r in (50.0, 130.0, 400.0):
        got = float(f(4 * math.pi * r ** 3 / 3))
        assert got - r == pytest.approx(r0 ** 3 / (3 * r ** 2) - r0 ** 4 / r ** 3, rel=0.01)
        assert 0 < got - r <= 0.012


def test_projected_area_of_a_ball_and_its_fold_change():
    o = obs(state())
    assert abs(math.sqrt(float(o["projected_area"]) * 1e6 / math.pi) - R) < H / 4
    np.testing.assert_allclose(o["projected_area_fold"], 1.0, rtol=2 * (H / 4) / R)
    values = tm.set_values(SETUP.values, {"initial.radius_um": R / 2})
    np.testing.assert_allclose(obs(state(), values)["projected_area_fold"], 4.0, rtol=0.02)


def test_o2_at_depth_on_a_linear_profile():
    """The shell mean of pO2 = 2 + 0.1·r at r = R − d: a hat of ±h in r weights
    outer voxels more (r²), a bias of about h²/(3r)·0.1 mmHg/um, under 0.1 mmHg here
    (depths that reach within two voxels of the centre see no sphere, only voxels)."""
    o = obs(state(o2=jnp.asarray(2.0 + 0.1 * RADIAL)))
    for d in tm.PROFILE_DEPTHS:
        if R - d < 2 * H:
            continue
        np.testing.assert_allclose(o[f"o2_depth_{d:g}"], 2.0 + 0.1 * (R - d), atol=0.15)


def test_o2_at_depth_and_the_radial_profile_follow_a_moving_ball():
    """pO2 = 2 + 0.1·r: the radial profile reads it at each radius r plus the shell mean's
    bias 0.1·h²/(3r) (above; measured within 0.003 mmHg of it from 60 to 280 um), and the
    surface pO2 of a ball of radius R moves with R at 0.1 mmHg/um, AD against the closed
    form and against central differences."""
    o2 = jnp.asarray(2.0 + 0.1 * RADIAL)
    radii = np.array([60.0, 100.0, 150.0, 200.0, 250.0, 280.0])
    profile = tm.radial_profile(SETUP.problem, state(o2=o2), "oxygen", radii)
    np.testing.assert_allclose(profile, 2.0 + 0.1 * radii + 0.1 * H**2 / (3 * radii), atol=0.01)

    def surface(radius):
        return obs(state(radius=radius, o2=o2))["o2_depth_0"]

    g = jax.grad(surface)(jnp.asarray(R))
    np.testing.assert_allclose(g, 0.1, rtol=0.02)
    h = 1e-3
    np.testing.assert_allclose(g, (surface(R + h) - surface(R - h)) / (2 * h), rtol=1e-5)


def test_necrotic_radius_gradient_wrt_the_core():
    """d(necrotic radius)/d(core radius) = 1 for a packed debris core, AD against FD."""
    def radius(core):
        return obs(state(core=core))["necrotic_radius"]

    g = jax.grad(radius)(jnp.asarray(R_CORE))
    np.testing.assert_allclose(g, 1.0, rtol=0.05)
    fd = (radius(R_CORE + 1e-3) - radius(R_CORE - 1e-3)) / 2e-3
    np.testing.assert_allclose(g, fd, rtol=1e-5)


def test_a_front_through_curved_shells_moves_smoothly():
    """On shells, the volume below a threshold T of a curved profile and its derivative in
    T against the closed forms, fronts r* from 121 to 499 um over 30 shells of 20 um (not
    at a shell centre, where the two half shells meet):

    - f = r²: the cubic interpolant holds it exactly (V and dV/dT within 1e-9);
    - f = 5 + 100 (r/300)⁴: dV/dT = π r*³/(T − 5) within 3% (measured 1.8%, RMS 0.4%)
      and V within 0.2% (measured 0.13%). Each shell placing its own front from its value
      and central slope gave dV/dT errors up to 100% (gaps where no front moved: kinks a
      fit's Hessian straddled), RMS 14%, and V errors up to 2.7%."""
    s = tm.spheroid(n=30, spacing=20.0, radius=150.0, dtype=jnp.float64)
    c = jnp.asarray(s.grid.centers())
    faces = s.grid.faces()
    shells = jnp.asarray(4 * math.pi / 3 * (faces[1:] ** 3 - faces[:-1] ** 3))
    fronts = np.linspace(121.0, 499.0, 190)  # odd um: never a centre (odd multiples of 10)

    def check(f, threshold, dvdt, rtol_slope, rtol_volume):
        def volume(t):
            return jnp.sum(s.problem.below(f, t)[0] * shells)

        t = jnp.asarray(threshold)
        np.testing.assert_allclose(jax.vmap(volume)(t), 4 * math.pi * fronts ** 3 / 3,
                                   rtol=rtol_volume)
        np.testing.assert_allclose(jax.vmap(jax.grad(volume))(t), dvdt, rtol=rtol_slope)

    check(c ** 2, fronts ** 2, 2 * math.pi * fronts, 1e-9, 1e-9)
    check(5 + 100 * (c / 300) ** 4, 5 + 100 * (fronts / 300) ** 4,
          math.pi * fronts ** 3 / (100 * (fronts / 300) ** 4), 0.03, 0.002)
