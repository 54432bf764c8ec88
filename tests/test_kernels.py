"""Kernels against their plain references, dense solves and invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tmesim.kernels as K
from helpers import face_bc

SPACING = (20.0, 15.0, 10.0)
BC_CASES = {
    "no-flux": "nnnnnn",
    "dirichlet": "dddddd",
    "mixed": "dnndnd",
    "periodic-x": "ppdndn",
    "all-periodic": "pppppp",
}


@pytest.mark.parametrize("case", list(BC_CASES))
def test_rate_matches_ghost_cell_reference(case, rng):
    kinds = BC_CASES[case]
    c = jnp.asarray(rng.uniform(0.0, 2.0, (2, 7, 6, 5)))
    bc = face_bc(kinds, values=[1.0, 2.0, 0.5, 0.0, 3.0, 1.5],
                 fluxes=[0.1, -0.2, 0.0, 0.3, 0.05, 0.0], n_channels=2)
    D = jnp.asarray([1e3, 2.5e2])
    lam = jnp.asarray([0.1, 0.0])
    fast = K.diffusion_rate(c, SPACING, D, lam, bc)
    ref = K.diffusion_rate_reference(c, SPACING, D, lam, bc)
    np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-9)
    # gradients of a scalar of the rate agree too
    w = jnp.asarray(rng.normal(size=c.shape))
    g_fast = jax.grad(lambda x: jnp.sum(w * K.diffusion_rate(x, SPACING, D, lam, bc)))(c)
    g_ref = jax.grad(lambda x: jnp.sum(w * K.diffusion_rate_reference(x, SPACING, D, lam, bc)))(c)
    np.testing.assert_allclose(g_fast, g_ref, rtol=1e-12, atol=1e-9)


def test_variable_coefficient_matches_direct_sum(rng):
    """Face-averaged D against an explicit loop over faces (no-flux box)."""
    c = rng.uniform(size=(1, 5, 4, 3))
    Dv = rng.uniform(10.0, 100.0, size=(1, 5, 4, 3))
    h = 10.0
    expected = np.zeros_like(c)
    for axis in (1, 2, 3):
        n = c.shape[axis]
        for i in range(n - 1):
            a = [slice(None)] * 4
            b = [slice(None)] * 4
            a[axis], b[axis] = i, i + 1
            flux = 0.5 * (Dv[tuple(a)] + Dv[tuple(b)]) * (c[tuple(b)] - c[tuple(a)]) / h**2
            expected[tuple(a)] += flux
            expected[tuple(b)] -= flux
    got = K.diffusion_rate(jnp.asarray(c), (h, h, h), jnp.asarray(Dv), jnp.zeros(1),
                           face_bc("nnnnnn"))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_rkl2_scan_matches_stage_by_stage_reference(rng):
    c = jnp.asarray(rng.uniform(size=(1, 8, 6, 5)))
    bc = face_bc("dnnndd", values=[1.0] * 6)
    D, lam = jnp.asarray([1e5]), jnp.asarray([0.1])
    for s in (2, 5, 9):
        fast = K.rkl2_step(c, 0.01, SPACING, D, lam, bc, s)
        ref = K.rkl2_step_reference(c, 0.01, lambda y: K.diffusion_rate(y, SPACING, D, lam, bc), s)
        np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-12)


def _rkl1_reference(c, dt, rate, stages):
    table, mu1 = K.rkl1_coefficients(stages)
    prev2, prev = c, c + mu1 * dt * rate(c)
    for mu, nu, mu_t, _ in table:
        prev2, prev = prev, mu * prev + nu * prev2 + mu_t * dt * rate(prev)
    return prev


@pytest.mark.parametrize("method, case, variable", [
    ("rkl2", "mixed", False), ("rkl2", "periodic-x", True), ("rkl2", "dirichlet", True),
    ("rkl1", "mixed", True), ("rkl2", "periodic-x", False), ("rkl1", "dirichlet", False)])
def test_rkl_reverse_rule_matches_autodiff_of_the_reference(method, case, variable, rng):
    """The stages' hand-written pullback (the symmetric operator applied to the
    cotangent) against JAX's reverse mode through the plain stage-by-stage
    reference: cotangents of the state, D, a per-voxel decay and source, and
    every face's Dirichlet value and Neumann flux, with pinned voxels. D one value
    per channel (the pairings written by hand) or per voxel (through JAX)."""
    kinds = BC_CASES[case]
    shape = (2, 7, 6, 5)
    c = jnp.asarray(rng.uniform(0.5, 2.0, shape))
    D = jnp.asarray(rng.uniform(50.0, 200.0, shape) if variable else [150.0, 80.0])
    decay = jnp.asarray(rng.uniform(0.0, 0.2, shape))
    source = jnp.asarray(rng.uniform(0.0, 0.1, shape))
    value = jnp.asarray(rng.uniform(0.0, 3.0, (6, 2)))
    flux = jnp.asarray(rng.uniform(-0.2, 0.2, (6, 2)))
    pinned = jnp.asarray(rng.uniform(size=shape[1:]) < 0.1)
    w = jnp.asarray(rng.normal(size=shape))
    dt, stages = 0.5, 7
    step = K.rkl2_step if method == "rkl2" else K.rkl1_step
    reference = K.rkl2_step_reference if method == "rkl2" else _rkl1_reference

    def bc_of(value, flux):
        return face_bc(kinds, values=list(value), fluxes=list(flux), n_channels=2)

    def fast(*args):
        c, D, decay, source, value, flux = args
        y = step(c, dt, SPACING, D, decay, bc_of(value, flux), stages, pinned, source)
        return jnp.sum(w * y + 0.1 * y**2)

    def slow(*args):
        c, D, decay, source, value, flux = args
        bc = bc_of(value, flux)
        y = reference(c, dt, lambda y: K.diffusion_rate(y, SPACING, D, decay, bc, pinned, source),
                      stages)
        return jnp.sum(w * y + 0.1 * y**2)

    args = (c, D, decay, source, value, flux)
    np.testing.assert_allclose(fast(*args), slow(*args), rtol=1e-13)
    got = jax.grad(fast, argnums=range(6))(*args)
    want = jax.grad(slow, argnums=range(6))(*args)
    for name, a, b in zip(("c", "D", "decay", "source", "value", "flux"), got, want):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12 * float(jnp.max(jnp.abs(b))),
                                   err_msg=name)


def test_rkl_stability_limits():
    """RKL2 with s stages is stable up to dt·ρ = (s²+s−2)/2; RKL1 up to s²+s."""
    assert K.rkl2_stages(0.01, 3000.0) == 8  # oxygen, h = 20 um: dt·ρ = 30
    assert K.rkl1_stages(0.01, 3000.0) == 5
    c = jnp.zeros((1, 16, 3, 3)).at[0, 8].set(1.0)  # sharp spike excites the stiffest mode
    bc = face_bc("nnnnnn")
    D, lam = jnp.asarray([1e5]), jnp.asarray([0.0])
    rho = K.spectral_radius((20.0, 20.0, 20.0), 1e5)
    dt = 0.98 * 35.0 / rho  # inside the s = 8 bound
    run = jax.jit(lambda y: jax.lax.fori_loop(
        0, 200, lambda i, y: K.rkl2_step(y, dt, (20.0, 20.0, 20.0), D, lam, bc, 8), y))
    y = run(c)
    assert float(jnp.max(jnp.abs(y))) <= 1.0
    np.testing.assert_allclose(float(jnp.sum(y)), 9.0, rtol=1e-12)  # one plane of 3 x 3


def _dense_tridiag(a, b, c, periodic=False):
    m = np.diag(b) + np.diag(a[1:], -1) + np.diag(c[:-1], 1)
    if periodic:
        m[0, -1], m[-1, 0] = a[0], c[-1]
    return m


@pytest.mark.parametrize("periodic", [False, True])
def test_thomas_matches_dense_solve(periodic, rng):
    n, batch = 12, 5
    a = -rng.uniform(0.1, 1.0, (n, batch))
    c = -rng.uniform(0.1, 1.0, (n, batch))
    b = 2.5 + rng.uniform(size=(n, batch))
    d = rng.normal(size=(n, batch))
    solve = K.thomas_cyclic if periodic else K.thomas
    x = np.asarray(solve(*(jnp.asarray(v) for v in (a, b, c, d))))
    for j in range(batch):
        m = _dense_tridiag(a[:, j], b[:, j], c[:, j], periodic)
        np.testing.assert_allclose(x[:, j], np.linalg.solve(m, d[:, j]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("periodic", [False, True])
def test_thomas_derivatives_match_a_dense_solve(periodic, rng):
    """Reverse mode (one transposed Thomas solve, ``lax.custom_linear_solve``) and forward
    mode against autodiff of a dense LU solve, for all four inputs; the lower coefficient
    shared by every line (shape (n, 1)) to check the broadcast's cotangent."""
    n, batch = 9, 3
    a = jnp.asarray(-rng.uniform(0.1, 1.0, (n, 1)))
    c = jnp.asarray(-rng.uniform(0.1, 1.0, (n, batch)))
    b = jnp.asarray(2.5 + rng.uniform(size=(n, batch)))
    d = jnp.asarray(rng.normal(size=(n, batch)))
    w = jnp.asarray(rng.normal(size=(n, batch)))
    solve = K.thomas_cyclic if periodic else K.thomas

    def dense(a, b, c, d):
        a = jnp.broadcast_to(a, d.shape)
        cols = []
        for j in range(d.shape[1]):
            m = jnp.diag(b[:, j]) + jnp.diag(a[1:, j], -1) + jnp.diag(c[:-1, j], 1)
            if periodic:
                m = m.at[0, -1].set(a[0, j]).at[-1, 0].set(c[-1, j])
            cols.append(jnp.linalg.solve(m, d[:, j]))
        return jnp.stack(cols, axis=1)

    def loss(f, *args):
        return jnp.sum(w * f(*args) ** 2)

    args = (a, b, c, d)
    got = jax.grad(lambda *x: loss(solve, *x), argnums=(0, 1, 2, 3))(*args)
    want = jax.grad(lambda *x: loss(dense, *x), argnums=(0, 1, 2, 3))(*args)
    for g, r in zip(got, want):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    tangents = tuple(jnp.asarray(rng.normal(size=x.shape)) for x in args)
    _, jvp = jax.jvp(lambda *x: loss(solve, *x), args, tangents)
    want_jvp = sum(jnp.vdot(r, t) for r, t in zip(want, tangents))
    np.testing.assert_allclose(jvp, want_jvp, rtol=1e-10)


def test_thomas_shared_coefficients_broadcast(rng):
    """Coefficients shared by every line (shape (n, 1)) give the per-line answer."""
    n = 10
    a, c = -np.ones((n, 1)), -np.ones((n, 1))
    b = 3.0 * np.ones((n, 1))
    d = rng.normal(size=(n, 7))
    x = K.thomas(jnp.asarray(a), jnp.asarray(b), jnp.asarray(c), jnp.asarray(d))
    m = _dense_tridiag(a[:, 0], b[:, 0], c[:, 0])
    np.testing.assert_allclose(x, np.linalg.solve(m, d), rtol=1e-12)


@pytest.mark.parametrize("kinds, shape", [("dnnddn", (16, 24, 20)), ("nnppdd", (32, 5, 17)),
                                          ("pppppp", (12, 20, 8))])
def test_lod_constant_coefficients_match_thomas(kinds, shape, rng):
    """Per-channel D and decay take the SPIKE blocks (no scan, no transpose): the same
    solve as the Thomas path to round-off, at small and production steps.

    Axes of 16, 24 (blocks of 12), 20, 32, 5, 12 and 8 go by blocks (5, 12 and 8 in
    one block, periodic for 12 and 8); 17 (no divisor in 4..32) falls back to Thomas.
    An all-false pinned mask forces Thomas everywhere.
    """
    F = 3
    c = jnp.asarray(rng.uniform(size=(F,) + shape))
    D, lam = jnp.asarray([1e5, 1e3, 50.0]), jnp.asarray([0.1, 0.0, 2.0])
    bc = face_bc(kinds, values=[2.0, 1.0, 0.5, 0.0, 3.0, 1.5], fluxes=[1.0, -2.0, 0.0, 0.5, 0.0, 0.0],
                 n_channels=F)
    fast = jax.jit(lambda dt: K.lod_step(c, dt, (20.0, 15.0, 25.0), D, lam, bc))
    thomas = jax.jit(lambda dt: K.lod_step(c, dt, (20.0, 15.0, 25.0), D, lam, bc,
                                           jnp.zeros(shape, bool)))
    for dt in (0.01, 2.0):
        want = thomas(dt)
        np.testing.assert_allclose(fast(dt), want, rtol=1e-12, atol=1e-12 * float(jnp.max(want)))


@pytest.mark.parametrize("kinds", ["nnnnnn", "dnnnpp", "ddppnn", "ppnnpp"])
def test_lod_step_is_backward_euler_along_x(kinds, rng):
    """On a field varying along x only, one LOD step is one 1D backward-Euler solve.

    The y and z faces are no-flux or periodic, which keep the field constant in
    y and z, so their sweeps only apply the decay share dt·λ/3; the x sweep is
    compared with a dense solve of the x operator built from ``diffusion_rate``
    (Dirichlet values 2 and 1; the periodic case exercises ``thomas_cyclic``).
    """
    n, h, dt, D, lam = 9, 20.0, 0.05, 1e4, 0.3
    c = jnp.asarray(np.broadcast_to(rng.uniform(size=(1, n, 1, 1)), (1, n, 3, 3)).copy())
    values = [2.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    bc = face_bc(kinds, values=values)
    got = K.lod_step(c, dt, (h, h, h), jnp.asarray([D]), jnp.asarray([lam]), bc)

    def x_rate(field, vals):
        r = K.diffusion_rate(jnp.asarray(field), (h, h, h), jnp.asarray([D]), jnp.zeros(1),
                             face_bc(kinds, values=vals))
        return np.asarray(r)[0, :, 1, 1]

    operator = np.zeros((n, n))
    for i in range(n):
        unit = np.zeros((1, n, 3, 3))
        unit[0, i] = 1.0
        operator[:, i] = x_rate(unit, [0.0] * 6)
    source = x_rate(np.zeros((1, n, 3, 3)), values)
    k = dt * lam / 3
    x = np.linalg.solve((1 + k) * np.eye(n) - dt * operator,
                        np.asarray(c)[0, :, 1, 1] + dt * source) / (1 + k) ** 2
    np.testing.assert_allclose(np.asarray(got)[0], np.broadcast_to(x[:, None, None], (n, 3, 3)),
                               rtol=1e-12)


@pytest.mark.parametrize("method", ["euler", "rkl1", "rkl2", "lod", "implicit"])
def test_diffusion_conserves_mass_with_no_flux(method, rng):
    c = jnp.asarray(rng.uniform(size=(2, 10, 9, 8)))
    bc = face_bc("nnnnnn", n_channels=2)
    D, lam = jnp.asarray([1e5, 1e3]), jnp.zeros(2)
    h = (20.0, 20.0, 20.0)
    dt = 0.9 * K.euler_limit(h, 1e5) if method == "euler" else 0.01
    y = c
    for _ in range(5):
        if method == "euler":
            y = K.explicit_step(y, dt, h, D, lam, bc)
        elif method == "lod":
            y = K.lod_step(y, dt, h, D, lam, bc)
        elif method == "implicit":  # exact for the exact solve; the sum of CG's residual here
            y = K.implicit_step(y, dt, h, D, lam, bc, rtol=1e-14)
        else:
            step = K.rkl1_step if method == "rkl1" else K.rkl2_step
            y = step(y, dt, h, D, lam, bc, 8)
    np.testing.assert_allclose(jnp.sum(y, axis=(1, 2, 3)), jnp.sum(c, axis=(1, 2, 3)), rtol=1e-13)


IMPLICIT_CASES = [  # (face kinds, shape, variable D, pinned voxels)
    ("dnndnd", (7, 6, 5), True, True),
    ("ppdndn", (7, 6, 5), False, True),
    ("pppppp", (6, 5, 4), True, False),
    ("dddddd", (9, 2, 3), False, False),
]


def _implicit_problem(kinds, shape, variable, pinned, rng):
    bc = face_bc(kinds, values=[1.0, 2.0, 0.5, 0.0, 3.0, 1.5],
                 fluxes=[0.1, -0.2, 0.0, 0.3, 0.05, 0.0], n_channels=2)
    c = jnp.asarray(rng.uniform(0.5, 1.5, (2,) + shape))
    D = (jnp.asarray(rng.uniform(1e2, 1e5, (2,) + shape)) if variable
         else jnp.asarray([1e5, 3e3]))
    lam = jnp.asarray(rng.uniform(0.0, 50.0, (2,) + shape))
    source = jnp.asarray(rng.uniform(0.0, 5.0, (2,) + shape))
    mask = jnp.asarray(rng.uniform(size=shape) < 0.1) if pinned else None
    return c, D, lam, bc, mask, source


@pytest.mark.parametrize("kinds, shape, variable, pinned", IMPLICIT_CASES)
def test_implicit_step_is_backward_euler(kinds, shape, variable, pinned, rng):
    """c' − dt·rate(c') = c for the explicit operator, at dt·ρ ≈ 3000; pinned voxels exact."""
    c, D, lam, bc, mask, source = _implicit_problem(kinds, shape, variable, pinned, rng)
    dt = 2.0
    y = K.implicit_step(c, dt, SPACING, D, lam, bc, mask, source)
    residual = y - dt * K.diffusion_rate(y, SPACING, D, lam, bc, mask, source) - c
    # the solve stops at ‖r‖ ≤ 1e-10 ‖b‖ per channel, b = c + dt·rate(0) its right-hand
    # side; r is CG's recursive residual, which drifts from the true one by rounding
    b = c + dt * K.diffusion_rate(jnp.zeros_like(c), SPACING, D, lam, bc, mask, source)
    norms = jnp.sqrt(jnp.sum(residual**2, axis=(1, 2, 3)) / jnp.sum(b**2, axis=(1, 2, 3)))
    assert float(jnp.max(norms)) <= 2e-10
    if pinned:
        np.testing.assert_array_equal(jnp.where(mask, y - c, 0.0), 0.0)


def _dense_backward_euler(c, dt, D, lam, bc, mask, source):
    """The same step by a dense LU solve: the rate is affine in c."""
    def rate(y):
        return K.diffusion_rate(y, SPACING, D, lam, bc, mask, source)

    n = c.size
    J = jax.jacfwd(lambda y: rate(y.reshape(c.shape)).ravel())(jnp.zeros(n, c.dtype))
    b = c.ravel() + dt * rate(jnp.zeros_like(c)).ravel()
    return jnp.linalg.solve(jnp.eye(n) - dt * J, b).reshape(c.shape)


@pytest.mark.parametrize("kinds, shape, variable, pinned", IMPLICIT_CASES[:2])
def test_implicit_step_gradients_match_a_dense_solve(kinds, shape, variable, pinned, rng):
    """Reverse mode (implicit differentiation: one CG solve for the cotangent) and forward
    mode against autodiff of LU, for the state, D, the per-voxel loss and the source."""
    c, D, lam, bc, mask, source = _implicit_problem(kinds, shape, variable, pinned, rng)
    w = jnp.asarray(rng.normal(size=c.shape))
    dt = 2.0

    def loss(step, c, D, lam, source):
        return jnp.sum(w * step(c, dt, D, lam, bc, mask, source) ** 2)

    def ours(*a):
        return K.implicit_step(a[0], a[1], SPACING, *a[2:])

    args = (c, D, lam, source)
    got = jax.grad(lambda *a: loss(ours, *a), argnums=(0, 1, 2, 3))(*args)
    want = jax.grad(lambda *a: loss(_dense_backward_euler, *a), argnums=(0, 1, 2, 3))(*args)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-7, atol=1e-9 * float(jnp.max(jnp.abs(r))))
    tangent = jnp.asarray(rng.normal(size=c.shape))
    _, jvp = jax.jvp(lambda y: loss(ours, y, D, lam, source), (c,), (tangent,))
    np.testing.assert_allclose(jvp, jnp.vdot(want[0], tangent), rtol=1e-7)


def test_implicit_iterations_do_not_grow_with_the_grid_or_the_step():
    """The multigrid-preconditioned CG reaches 1e-8 in about the same number of
    iterations from 16³ to 64³ and from dt·ρ = 10 to 1e5 (an RKL2 step needs
    √(dt·ρ) stages), with a consuming ball inside and Dirichlet faces."""
    from tmesim.kernels._multigrid import backward_euler_system, pcg

    counts = []
    for n in (16, 32, 64):
        x = (np.arange(n) + 0.5) / n - 0.5
        ball = (x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) < 0.09
        lam = jnp.asarray(np.where(ball, 100.0, 0.1)[None])
        for dt in (0.001, 0.1, 10.0):
            c = jnp.ones((1, n, n, n))
            m, rhs = backward_euler_system(c, dt, (20.0,) * 3, jnp.asarray([1e5]), lam,
                                           face_bc("dddddd", values=[1.0] * 6))
            counts.append(int(pcg(m, rhs, jnp.zeros_like(rhs), 1e-8, 100)[1]))
    assert max(counts) <= 14, counts


def test_variable_coefficient_conserves_mass(rng):
    c = jnp.asarray(rng.uniform(size=(1, 8, 8, 8)))
    Dv = jnp.asarray(rng.uniform(1e2, 1e4, size=(1, 8, 8, 8)))
    bc = face_bc("nnnnnn")
    for step in (lambda y: K.explicit_step(y, 0.005, (20.0,) * 3, Dv, jnp.zeros(1), bc),
                 lambda y: K.lod_step(y, 0.5, (20.0,) * 3, Dv, jnp.zeros(1), bc)):
        y = step(c)
        np.testing.assert_allclose(float(jnp.sum(y)), float(jnp.sum(c)), rtol=1e-13)
        assert not np.allclose(y, c)


def test_pinned_voxels_hold_their_value(rng):
    c = jnp.asarray(rng.uniform(size=(1, 9, 9, 9)))
    pinned = jnp.asarray(rng.uniform(size=(9, 9, 9)) < 0.2)
    bc = face_bc("dddddd", values=[1.0] * 6)
    D, lam = jnp.asarray([1e5]), jnp.asarray([0.1])
    h = (20.0,) * 3
    for y in (K.explicit_step(c, 5e-4, h, D, lam, bc, pinned),
              K.rkl2_step(c, 0.01, h, D, lam, bc, 8, pinned),
              K.rkl1_step(c, 0.01, h, D, lam, bc, 6, pinned),
              K.lod_step(c, 0.01, h, D, lam, bc, pinned)):
        np.testing.assert_array_equal(np.asarray(y)[0][np.asarray(pinned)],
                                      np.asarray(c)[0][np.asarray(pinned)])
        assert not np.allclose(np.asarray(y)[0][~np.asarray(pinned)],
                               np.asarray(c)[0][~np.asarray(pinned)])


# -- cell transport --------------------------------------------------------

def _transport_setup(rng, n_species=2):
    rho = rng.uniform(0.0, 1.0, (n_species, 10, 9, 8))
    rho[:, rng.uniform(size=(10, 9, 8)) < 0.3] = 0.0  # empty voxels next to full ones
    rho *= 0.999 / max(1.0, rho.sum(axis=0).max())
    phi = rng.normal(0.0, 50.0, (n_species, 10, 9, 8)) * 40.0  # strong drift, um²/min
    return jnp.asarray(rho), jnp.asarray(phi)


def _max_speed(phi, h):
    return max(float(jnp.max(jnp.abs(jnp.diff(phi, axis=a)))) / h for a in (1, 2, 3))


@pytest.mark.parametrize("periodic", [(False, False, False), (True, False, True)])
def test_cell_transport_conserves_and_stays_in_bounds(periodic, rng):
    rho, phi = _transport_setup(rng)
    h = 10.0
    mu = jnp.asarray([50.0, 5.0])
    dt = K.transport_limit((h, h, h), 50.0, _max_speed(phi, h))
    total0 = jnp.sum(rho, axis=(1, 2, 3))
    for _ in range(30):
        room = 1.0 - jnp.sum(rho, axis=0)
        rho = rho + dt * K.cell_transport_rate(rho, (h, h, h), mu, phi, room, periodic)
        assert float(jnp.min(rho)) >= 0.0
        assert float(jnp.max(jnp.sum(rho, axis=0))) <= 1.0 + 1e-12
    np.testing.assert_allclose(jnp.sum(rho, axis=(1, 2, 3)), total0, rtol=1e-12)


def test_cell_transport_without_drift_or_room_is_diffusion(rng):
    """Single species, no potential, no exclusion: the 7-point no-flux Laplacian."""
    rho = jnp.asarray(rng.uniform(size=(1, 6, 5, 4)))
    got = K.cell_transport_rate(rho, (10.0,) * 3, jnp.asarray([30.0]))
    ref = K.diffusion_rate(rho, (10.0,) * 3, jnp.asarray([30.0]), jnp.zeros(1), face_bc("nnnnnn"))
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("periodic", [(False, False, False), (False, True, True)])
def test_cell_transport_on_a_one_voxel_axis(periodic, rng):
    """A grid one voxel thick along z (a 2D slab) moves cells as the same field repeated
    along z: no flux through z, however the axis is closed."""
    rho, phi = _transport_setup(rng)
    rho, phi = rho[..., :1], phi[..., :1]
    room = 1.0 - jnp.sum(rho, axis=0)
    args = ((10.0,) * 3, jnp.asarray([50.0, 5.0]))
    got = K.cell_transport_rate(rho, *args, phi, room, periodic, 2.0, phi[0])
    thick = [jnp.repeat(a, 3, axis=-1) for a in (rho, phi, room)]
    ref = K.cell_transport_rate(thick[0], *args, thick[1], thick[2], periodic, 2.0, thick[1][0])
    assert got.shape == rho.shape
    np.testing.assert_allclose(got, ref[..., 1:2], rtol=1e-12, atol=1e-14)


TRANSPORT_VJP_CASES = [  # potential, room, max speed, carrier, periodic, motility per voxel
    ("none", False, None, False, (False,) * 3, False),
    ("none", True, 2.0, True, (True, False, True), False),
    ("full", True, None, False, (False,) * 3, True),
    ("full", False, 2.0, True, (False,) * 3, False),
    ("pair", True, 2.0, True, (True, False, True), True),
    ("pair", True, 2.0, False, (False,) * 3, False),
]


@pytest.mark.parametrize("pot, room_on, speed, carrier_on, periodic, voxel_mu",
                         TRANSPORT_VJP_CASES)
def test_cell_transport_reverse_rule_is_autodiff_of_the_pass(pot, room_on, speed, carrier_on,
                                                             periodic, voxel_mu, rng):
    """The cell transport's hand-written reverse rule gives what JAX's autodiff of the same
    pass gives, ties included (potentials and carrier flat over half the voxels: upwinding
    and clips at exact ties, where JAX takes slope 1/2, and |v| at 0, slope 1), for every
    input: densities, motility, each part of the potential, room and carrier (float64;
    measured within 1.5e-15 of the largest entry over 192 combinations of these options)."""
    F, shape = 3, (5, 4, 6)

    def field(size, scale):
        a = rng.normal(size=size) * scale
        return jnp.asarray(np.where(rng.random(size) < 0.5, 0.0, a))

    rho = jnp.asarray(rng.random((F,) + shape) * 0.2)
    mu = jnp.asarray(rng.random((F,) + shape if voxel_mu else F) * 10.0)
    phi = {"none": None, "full": field((F,) + shape, 60.0),
           "pair": (field((F,) + shape, 60.0), field(shape, 60.0))}[pot]
    room = jnp.asarray(1.0 - rng.random(shape) * 0.5) if room_on else None
    carrier = field(shape, 60.0) if carrier_on else None
    spacing = (10.0, 12.0, 9.0)

    def ours(rho, mu, phi, room, carrier):
        return K.cell_transport_rate(rho, spacing, mu, phi, room, periodic, speed, carrier)

    def plain(rho, mu, phi, room, carrier):  # the same pass, differentiated by JAX
        from tmesim.kernels import _transport as T

        parts = None if phi is None else tuple(
            x[None] if x.ndim == 3 else x for x in (phi if isinstance(phi, tuple) else (phi,)))
        return T._rate(rho, spacing, T._per_channel(mu, 4), parts, room, periodic, speed,
                       carrier)

    args = (rho, mu, phi, room, carrier)
    np.testing.assert_array_equal(ours(*args), plain(*args))
    g = jnp.asarray(rng.normal(size=rho.shape))
    got, want = (jax.tree_util.tree_leaves(jax.jit(lambda *a, f=f: jax.vjp(f, *a)[1](g))(*args))
                 for f in (ours, plain))
    assert len(got) == len(want) == 2 + (pot != "none") * (1 + (pot == "pair")) + room_on \
        + carrier_on
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * float(jnp.max(jnp.abs(b))))


def test_cell_transport_is_upwind():
    """A uniform drift in +x moves mass only downstream."""
    rho = jnp.zeros((1, 8, 3, 3)).at[0, 3].set(0.5)
    phi = -jnp.broadcast_to(jnp.arange(8.0)[None, :, None, None], (1, 8, 3, 3)) * 100.0
    rate = K.cell_transport_rate(rho, (10.0,) * 3, jnp.zeros(1), phi)
    r = np.asarray(rate)[0, :, 1, 1]
    assert r[3] < 0 and r[4] > 0
    np.testing.assert_array_equal(r[[0, 1, 2, 5, 6, 7]], 0.0)


def test_carrier_moves_packed_cells_conservatively_and_positively():
    """Bulk motion (``carrier``): a packed block (φ = 0.8, room 0.2) moves with u = −∇Ψ
    as fast as a loose one would (not slowed by room), mass is conserved to
    round-off and densities stay in [0, 1] under the step limit."""
    n, h = 16, 10.0
    x = (np.arange(n) + 0.5) * h
    rho = np.zeros((2, n, 4, 4))
    rho[0, 4:8] = 0.5
    rho[1, 4:8] = 0.3
    rho = jnp.asarray(rho)
    psi = jnp.broadcast_to(jnp.asarray(-0.5 * x)[:, None, None], (n, 4, 4))  # u = 0.5 um/min
    dt = 0.9 * K.transport_limit((h, h, h), 0.0, 1.0)
    c = rho
    steps = int(round(40.0 / dt))
    for _ in range(steps):
        phi = c.sum(0)
        c = c + dt * K.cell_transport_rate(c, (h, h, h), jnp.zeros(2), None, 1.0 - phi,
                                           (False, False, False), 1.0, psi)
    np.testing.assert_allclose(float(c.sum()), float(rho.sum()), rtol=1e-12)
    assert float(c.min()) >= 0.0 and float(c.sum(0).max()) <= 1.0 + 1e-12
    profile = np.asarray(c.sum(0))[:, 0, 0]
    centre = float((profile * x).sum() / profile.sum())
    # exact but for what upwind smearing has put in the last voxel (at the wall,
    # where nothing moves on): 2e-5 of the distance, measured
    np.testing.assert_allclose(centre - 60.0, 0.5 * steps * dt, rtol=1e-4)
