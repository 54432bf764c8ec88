"""jit, vmap, dtypes, gradients and input validation."""

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
import tmesim.kernels as K

import tmesim as tm


TRACES = []


def _problem():
    boundary = {"x-": tm.Dirichlet(38.0), "x+": tm.Neumann(0.5)}
    grid = tm.Grid((10, 8, 6), 20.0, boundary)
    table = tm.SpeciesTable((
        tm.Species("oxygen", diffusion=1e5, decay=0.1, units="mmHg", initial=38.0, uptake=20.0),
        tm.Species("vegf", diffusion=1e3, decay=0.1, boundary=tm.Neumann(), units="nM"),
        tm.Species("tumor", kind="cell", diffusion=5.0, units="volume fraction"),
    ))

    def uptake(f, params, t):
        TRACES.append(1)  # runs at trace time only: counts compilations
        return (tm.Rates().lose("oxygen", params["uptake"] * f["tumor"])
                .produce("vegf", jnp.where(f["oxygen"] < 15.0, 0.01 * f["tumor"], 0.0)))

    stepper = tm.Stepper(grid, table, 0.01, uptake)
    params = table.default_params(grid, jnp.float64) | {"uptake": jnp.asarray(10.0)}
    rng = np.random.default_rng(3)
    fields = np.concatenate([np.full((1,) + grid.shape, 38.0),
                             rng.uniform(0, 1, (1,) + grid.shape),
                             0.5 * rng.uniform(0, 1, (1,) + grid.shape)])
    return stepper, params, jnp.asarray(fields)


def test_plan_uses_each_method():
    stepper, _, _ = _problem()
    assert stepper.describe() == ["rkl2 x8: oxygen", "euler: vegf", "cell: tumor"]


def test_jit_equals_no_jit():
    stepper, params, fields = _problem()
    eager = fields
    for _ in range(3):
        eager = stepper.step(eager, params)
    jitted, _ = tm.simulate(stepper, fields, params, 3)
    np.testing.assert_allclose(jitted, eager, rtol=1e-13, atol=1e-12)


def test_snapshots_are_the_states_at_save_points():
    stepper, params, fields = _problem()
    final, snaps = tm.simulate(stepper, fields, params, 6, save_every=2)
    assert snaps.shape == (3,) + fields.shape
    two, _ = tm.simulate(stepper, fields, params, 2)
    np.testing.assert_allclose(snaps[0], two, rtol=1e-13)
    np.testing.assert_array_equal(snaps[-1], final)


def test_vmap_equals_loop():
    stepper, params, fields = _problem()
    uptakes = jnp.asarray([2.0, 10.0, 20.0])

    def run(u):
        return tm.simulate(stepper, fields, params | {"uptake": u}, 4)[0]

    batched = jax.vmap(run)(uptakes)
    for i, u in enumerate(uptakes):
        np.testing.assert_allclose(batched[i], run(u), rtol=1e-13, atol=1e-12)


def test_no_recompile_across_parameter_values():
    stepper, params, fields = _problem()
    tm.simulate(stepper, fields, params, 2)
    before = len(TRACES)
    for u in (1.0, 3.0, 7.0):
        tm.simulate(stepper, fields, params | {"uptake": jnp.asarray(u)}, 2)
    assert len(TRACES) == before


def test_cells_stay_non_negative_and_bounded():
    stepper, params, fields = _problem()
    final, _ = tm.simulate(stepper, fields.at[2].set(0.999), params, 20)
    assert float(final[2].min()) >= 0.0 and float(final[2].max()) <= 1.0 + 1e-12
    assert float(final[:2].min()) >= 0.0


def _central_difference(f, x, rel=1e-6):
    h = rel * max(abs(float(x)), 1.0)
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.mark.parametrize("leaf", ["diffusion", "decay"])
def test_gradient_wrt_transport_coefficients(leaf):
    """d(probe oxygen)/dD and d/dλ through 10 steps (uptake in the operator)
    vs central differences."""
    stepper, params, fields = _problem()
    probe = (0, 5, 4, 3)
    channel = 0

    def objective(value):
        p = params | {leaf: params[leaf].at[channel].set(value)}
        return tm.simulate(stepper, fields, p, 10)[0][probe]

    x0 = params[leaf][channel] * (0.9 if leaf == "diffusion" else 1.0)
    grad = jax.grad(objective)(x0)
    fd = _central_difference(objective, x0)
    assert abs(float(fd)) > 1e-10
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_gradient_wrt_initial_field():
    stepper, params, fields = _problem()

    def objective(f):
        return jnp.sum(tm.simulate(stepper, f, params, 5)[0][1] ** 2)

    g = jax.grad(objective)(fields)
    rng = np.random.default_rng(1)
    direction = jnp.asarray(rng.normal(size=fields.shape))
    eps = 1e-6
    fd = (objective(fields + eps * direction) - objective(fields - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(g, direction), fd, rtol=1e-6)


@pytest.mark.parametrize("method", ["implicit", "lod"])
def test_gradient_through_implicit_solver(method):
    grid = tm.Grid((8, 6, 5), 20.0, tm.Dirichlet(38.0))
    table = tm.SpeciesTable((tm.Species("oxygen", diffusion=1e5, decay=0.1, method=method),))
    stepper = tm.Stepper(grid, table, 0.05)
    params = table.default_params(grid, jnp.float64)
    fields = jnp.full((1,) + grid.shape, 10.0)

    def objective(D):
        return tm.simulate(stepper, fields, params | {"diffusion": jnp.stack([D])},
                           4)[0][0, 4, 3, 2]

    D0 = jnp.asarray(5e4)
    np.testing.assert_allclose(jax.grad(objective)(D0), _central_difference(objective, D0),
                               rtol=1e-6)


def test_kernel_gradient_matches_reference_gradient():
    """check_grads on the fast explicit kernel (forward and reverse, order 2)."""
    rng = np.random.default_rng(5)
    c = jnp.asarray(rng.uniform(size=(1, 5, 4, 3)))
    bc = (None, None, None)

    def f(c, D):
        return K.explicit_step(c, 1e-3, (20.0,) * 3, jnp.stack([D]), jnp.zeros(1), bc)

    jax.test_util.check_grads(jax.jit(f), (c, jnp.asarray(1e3)), order=2, modes=["fwd", "rev"])


# -- validation ------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"shape": (2, 4, 4)}, "three integers"),
    ({"shape": (4, 4, 4), "spacing": -1.0}, "positive um"),
    ({"shape": (4, 4, 4), "boundary": {"x-": tm.Periodic()}}, "periodic on one face"),
    ({"shape": (4, 4, 4), "boundary": {"w+": tm.Neumann()}}, "unknown face"),
])
def test_grid_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tm.Grid(**kwargs)


def test_species_rejects_bad_input():
    with pytest.raises(ValueError, match="diffusion must be a finite number"):
        tm.Species("oxygen", diffusion=-1.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        tm.Species("oxygen", kind="gas")
    with pytest.raises(ValueError, match="duplicate names"):
        tm.SpeciesTable((tm.Species("a"), tm.Species("a")))


def test_euler_request_beyond_its_limit_is_refused():
    grid = tm.Grid((4, 4, 4), 20.0)
    table = tm.SpeciesTable((tm.Species("oxygen", diffusion=1e5, method="euler"),))
    with pytest.raises(ValueError, match="forward Euler is unstable"):
        tm.Stepper(grid, table, 0.01)


def test_diffusion_above_design_value_is_refused():
    stepper, params, fields = _problem()
    with pytest.raises(ValueError, match="exceeds the design value"):
        tm.simulate(stepper, fields, params | {"diffusion": params["diffusion"] * 2}, 1)
