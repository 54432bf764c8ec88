"""The one loop (``tmesim.solve``): the step clock and chunking, events inside the loop,
saving at traced steps, no recompilation for new values, the status guards, batching
over parameter sets and conditions, and checkpointing apart from saving."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tmesim as tm
from tmesim._solve import _solve

DT = 5.0
N = 12  # steps per test solve (one compiled loop for most tests here)
RT_STEP, INJECT_STEP, SWITCH_STEP = 5, 7, 9
TRACES = []


def _schedule(rt_gy=2.0, car_t=0.01, o2_after=20.0, chemo=300.0):
    medium = {s: 0.0 for s in tm.SOLUTES} | {"oxygen": o2_after}
    return tm.schedule(
        doses=[("chemo", 2 * DT, 2 * DT, chemo, 1e-3, np.inf)],
        medium_changes=[(SWITCH_STEP, medium)],
        radiotherapy=[(RT_STEP, rt_gy)],
        injections=[(INJECT_STEP, {"car_t": car_t})])


with warnings.catch_warnings():  # a small box on purpose: the loop, not the medium, is tested
    warnings.simplefilter("ignore", tm.MediumLayerWarning)
    SETUP = tm.organoid(n=6, spacing=40.0, radius=150.0, dt=DT, dtype=jnp.float64,
                        schedule_values=_schedule())
P = SETUP.problem


def with_schedule(**kw):
    values = dict(SETUP.values)
    values["schedule"] = jax.tree_util.tree_map(jnp.asarray, _schedule(**kw))
    return values


def counted(problem, fields, values, step):
    TRACES.append(1)  # runs when traced only: counts compilations
    return tm.observables(problem, fields, values)


# the fields at every step, and step RT_STEP once more (a step may be listed twice)
SAVE_ALL = tm.SaveAt(jnp.append(jnp.arange(N + 1), RT_STEP))


@jax.jit
def batched(values):
    """Solve a batch of value sets in one compiled call (vmap)."""
    return jax.vmap(lambda v: tm.solve(P, v, n_steps=N, save=tm.SaveAt(jnp.asarray([6, 12]),
                                                                        tm.observables)))(values)


def stack(*sets):
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *sets)


def run(values=None, y0=None, n=N, start=0, save=None):
    return tm.solve(P, SETUP.values if values is None else values, y0, n_steps=n, start=start,
                    save=save)


def test_chunks_repeat_one_solve_bit_for_bit():
    """Chunks of 4 steps through every event equal one solve of 12: the step clock is an
    integer, so a continued (or resumed) run repeats the uninterrupted one exactly."""
    whole = run(save=SAVE_ALL).fields
    y = None
    for start in range(0, N, 4):
        y = run(y0=y, n=4, start=start).fields
    np.testing.assert_array_equal(np.asarray(y), np.asarray(whole))


def test_events_act_at_their_step():
    saved = run(save=SAVE_ALL).saved
    quiet = run(with_schedule(rt_gy=0.0, car_t=0.0), save=SAVE_ALL).saved
    i = SETUP.table.index
    np.testing.assert_array_equal(saved[N + 1], saved[RT_STEP])
    # the same until the fraction; then the tumour's survival is LQ with the OMF of its pO2
    np.testing.assert_array_equal(saved[RT_STEP - 1], quiet[RT_STEP - 1])
    p = SETUP.values["params"]
    o2 = saved[RT_STEP, i("oxygen")]
    dose = 2.0 * (p["rt_oer"] * o2 + p["rt_oer_k"]) / (p["rt_oer"] * (o2 + p["rt_oer_k"]))
    survival = jnp.exp(-(p["rt_alpha"] * dose + p["rt_beta"] * dose**2))
    inside = quiet[RT_STEP, i("tumor")] > 0.1
    np.testing.assert_allclose(saved[RT_STEP, i("tumor")][inside],
                               (quiet[RT_STEP, i("tumor")] * survival)[inside], rtol=1e-12)
    # CAR-T cells injected into the organoid's initial unstirred layer at their step:
    # 0.01 per voxel of it (where crowding leaves room)
    added = saved[INJECT_STEP, i("car_t")] - saved[INJECT_STEP - 1, i("car_t")]
    layer = P.layer(SETUP.values)
    np.testing.assert_allclose(float(jnp.sum(added)), 0.01 * float(jnp.sum(layer)), rtol=0.02)
    assert float(jnp.sum(quiet[:, i("car_t")])) == 0.0
    # the medium's oxygen switches to 20 mmHg at its step, the dose starts at t = 10 min
    o2_face = [float(P.inputs(SETUP.values, k)["boundary_value"][1, i("oxygen")])
               for k in (SWITCH_STEP - 1, SWITCH_STEP)]
    assert o2_face == [160.0, 20.0]
    chemo_face = [float(P.inputs(SETUP.values, k)["boundary_value"][1, i("chemo")])
                  for k in (1, 2)]
    assert chemo_face[0] == 0.0 and chemo_face[1] == pytest.approx(300.0)


def test_new_values_and_save_steps_never_recompile():
    save = tm.SaveAt(jnp.asarray([4, 12]), counted)
    run(save=save)
    before = len(TRACES)
    changes = [{"tumor_division_rate": 1e-3}, {"medium.oxygen": 100.0},
               {"initial.radius_um": 120.0}, {"diffusion.oxygen": 8e4},
               {"decay.vegf": 0.02}, {"initial.cd8": 0.02}]
    for change in changes:
        run(tm.set_values(SETUP.values, change), save=save)
    run(with_schedule(rt_gy=4.0, chemo=50.0, o2_after=40.0), save=save)
    run(save=tm.SaveAt(jnp.asarray([2, 7]), counted))
    assert len(TRACES) == before


def _constant_bytes(lowered_text: str) -> int:
    """Bytes of the dense constants written out in a lowered program's text."""
    return sum(len(m) // 2 for m in re.findall(r'constant dense<"0x([0-9A-F]+)">', lowered_text))


@pytest.mark.parametrize("make", [tm.organoid, tm.tissue])
def test_the_compiled_loop_holds_no_copies_of_the_grid(make):
    """Geometry computed at trace time in NumPy becomes constants of the program: the ball
    of the initial state and of the injection layer was sub² = 16 constants of 4 fields,
    4.3 GB at 256³ (lowering on the GPU ran past its time): 128 fields' worth for the
    organoid, 64 for the tissue. What is left: the tissue's vessel map (one field) and
    small tables."""
    setup = make(n=16, spacing=30.0, radius=150.0, dt=2.0, dtype=jnp.float32)
    y0 = tm.start_state(setup.problem, setup.values)
    text = _solve.lower(
        setup.problem, None, 2, 2, setup.values, y0, 0, jnp.zeros((0,), jnp.int32)).as_text()
    field = 16**3 * 4
    assert _constant_bytes(text) < 2 * field


def test_non_finite_value_stops_the_loop_with_place_and_time():
    sol = run(with_schedule(car_t=float("nan")), save=SAVE_ALL)
    assert int(sol.status.code) == tm.Status.NONFINITE
    assert int(sol.status.step) == INJECT_STEP
    assert SETUP.table.names[int(sol.status.channel)] == "car_t"
    # the state is the last good one, that of step INJECT_STEP - 1
    np.testing.assert_array_equal(sol.fields, sol.saved[INJECT_STEP - 1])
    assert np.isfinite(np.asarray(sol.fields)).all()
    message = sol.message(P)
    assert "non-finite" in message and "car_t" in message and f"step {INJECT_STEP}" in message


def test_negative_density_stops_the_loop():
    sol = run(with_schedule(car_t=-0.5), save=SAVE_ALL)
    assert int(sol.status.code) == tm.Status.NEGATIVE and int(sol.status.step) == INJECT_STEP
    assert "negative density in car_t" in sol.message(P)


def test_values_outside_their_bounds_are_refused_or_flagged():
    bad = tm.set_values(SETUP.values, {"o2_uptake": 5000.0})
    with pytest.raises(ValueError, match=r"o2_uptake = 5000 \(bounds \[0, 1500\]\)"):
        run(bad)
    # traced (inside jit, vmap, grad or a fit), the status says so and nothing runs
    out = batched(stack(SETUP.values, bad, SETUP.values))
    assert [int(c) for c in out.status.code] == [0, tm.Status.OUT_OF_BOUNDS, 0]
    np.testing.assert_array_equal(out.fields[1], tm.start_state(P, bad))


def test_vmap_over_parameter_sets_and_conditions_equals_a_loop():
    """Parameter sets and conditions (medium level, dose schedule, initial radius) batched
    with vmap in one compiled call give what a loop over them gives."""
    sets = [SETUP.values,
            tm.set_values(with_schedule(chemo=50.0, rt_gy=0.0),
                          {"tumor_division_rate": 1e-3, "medium.oxygen": 60.0}),
            tm.set_values(with_schedule(o2_after=80.0), {"initial.radius_um": 110.0,
                                                         "necrosis_rate": 1e-2})]
    out = batched(stack(*sets))
    for j, values in enumerate(sets):
        one = run(values, save=SAVE_ALL)
        np.testing.assert_allclose(out.fields[j], one.fields, rtol=1e-10, atol=1e-12)
        for n, step in enumerate((6, 12)):
            obs = tm.observables(P, one.saved[step], values)
            for k in ("tumor_volume", "hypoxic_fraction", "chemo_exposure"):
                np.testing.assert_allclose(out.saved[k][j, n], obs[k], rtol=1e-10, atol=1e-14)
    assert not np.allclose(out.fields[0], out.fields[2])


def _oxygen_problem():
    """A small bare-Stepper problem: oxygen consumed by a static cell field at rate k."""
    grid = tm.Grid((8, 6, 5), 20.0, tm.Dirichlet(38.0))
    table = tm.SpeciesTable((tm.Species("oxygen", diffusion=1e5, decay=0.1, uptake=20.0),
                             tm.Species("cells", kind="matrix")))

    def uptake(f, params, t):
        return tm.Rates().lose("oxygen", params["k"] * f["cells"])

    stepper = tm.Stepper(grid, table, 0.05, uptake)
    params = table.default_params(grid, jnp.float64) | {"k": jnp.asarray(10.0)}
    rng = np.random.default_rng(0)
    y0 = jnp.asarray(np.concatenate([np.full((1,) + grid.shape, 38.0),
                                     rng.uniform(0, 1, (1,) + grid.shape)]))
    return stepper, params, y0


def test_checkpointing_is_chosen_apart_from_saving():
    """One or three nested checkpoint levels: the same gradient, and that of finite
    differences, with the saving unchanged; a save step past the end stays empty even
    where the levels round the loop up (37 steps run as 3 x 4 x 4 = 48)."""
    stepper, params, y0 = _oxygen_problem()
    problem = tm.StepperProblem(stepper)
    save = tm.SaveAt(jnp.asarray([10, 37, 40]))

    def solved(k, levels):
        return tm.solve(problem, params | {"k": k}, y0, n_steps=37, save=save,
                        checkpoints=levels)

    def loss(k, levels):
        return jnp.sum(solved(k, levels).saved[:2, 0] ** 2)

    assert not np.asarray(solved(10.0, 3).saved[2]).any()
    grads = [jax.grad(loss)(jnp.asarray(10.0), levels) for levels in (1, 3)]
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12)
    h = 1e-4
    fd = (loss(10.0 + h, 3) - loss(10.0 - h, 3)) / (2 * h)
    np.testing.assert_allclose(grads[0], fd, rtol=1e-7)


def test_simulate_raises_where_solve_reports():
    """A bare run that fails raises with the field and step; solve without y0 starts at 0."""
    stepper, params, y0 = _oxygen_problem()
    with pytest.raises(FloatingPointError, match=r"non-finite value .* in oxygen .* step 1 "):
        tm.simulate(stepper, y0, params | {"k": jnp.asarray(np.nan)}, 4)
    with pytest.raises(ValueError, match=r"solve\(start=5\): pass y0"):
        tm.solve(SETUP.problem, SETUP.values, n_steps=2, start=5)
