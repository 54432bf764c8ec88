"""Exact gradients through the whole niche model over a simulated day.

Two problems run every process of the model for one day (288 steps of 5 min)
through ``tmesim.solve``: an organoid of radius 220 um in 60 mmHg medium,
whose core turns anoxic and necrotic within hours (72% of its body is
debris by the end), with nine stromal and immune populations in the medium,
seven drugs dosed, a medium change that drops the oxygen to 30 mmHg, a
radiotherapy fraction and an injection of CAR-T cells and TRAIL-MSCs; and a
vascularised tissue block with the same drugs in plasma, a fraction and an
injection at the vessels. The loss is a sum of logs of every field's mean
and of the observables at four save points, so every process moves it.

Reverse-mode gradients are compared with central differences in float64
(step 1e-7 relative; a value at its lower bound, such as a drug's medium
level of 0, gets the second-order one-sided difference of the right-hand
derivative; every perturbed value set of a problem runs in one vmapped
call). The differences cross kinks (clips at oxygen thresholds, the packing
fraction, the speed caps, the upwind switch where the mixture flow turns)
in some of the 512 voxels × 288 steps, an O(h) error of the difference, not
of the gradient. Since the mixture flow (issue 11) a step of 1e-5 crossed
enough of them to put the differences 1.3% off for o2_uptake (0.2% for
the initial radius); at 1e-7 they agree with the gradient to 1e-8
(measured for o2_uptake, rt_alpha and the initial radius). Where the loss
moves little, 1e-7 is too small instead (the implicit solves' tolerance shows),
so a value whose gradient misses the 1e-7 difference is compared with the
1e-4 one (``check``). rtol = 1e-3. The default run checks a representative
set (at least one parameter per process family, diffusion coefficients, a
decay, a medium level and the level after the medium change, a dose level, the
initial radius and CSC share);
``-m slow`` checks every parameter and every transport, medium and initial
value, and float32 against float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tmesim as tm

DT = 5.0
DAY = 288  # steps
SAVES = jnp.arange(72, DAY + 1, 72)
MIN_PER_DAY = 1440.0
DOSED = {"chemo": 200.0, "anti_pd1": 5.0, "anti_vegf": 1.0, "csc_inhibitor": 50.0,
         "exosome_inhibitor": 50.0, "hif_inhibitor": 20.0, "ferroptosis_inducer": 200.0}
CO_CULTURE = {"cd8": 0.02, "m1": 0.01, "m2": 0.01, "treg": 0.005, "car_t": 0.005, "msc": 0.005,
              "msc_trail": 0.005, "fibroblast": 0.01, "caf": 0.01}
FD_STEP = 1e-7
FD_STEP_WIDE = 1e-4
RTOL = 1e-3


def _schedule(medium_switch: bool) -> dict:
    half_life = np.log(2.0) / (0.5 * MIN_PER_DAY)
    doses = [(d, 0.1 * MIN_PER_DAY, 0.6 * MIN_PER_DAY, level, half_life, np.inf)
             for d, level in DOSED.items()]
    medium = [(DAY // 2, {s: 0.0 for s in tm.SOLUTES} | {"oxygen": 30.0, "tgfb": 0.2,
                                                            "il6": 0.2})] if medium_switch else []
    return tm.schedule(doses, medium, [(DAY // 2, 2.0)],
                    [(DAY // 4, {"car_t": 0.005, "msc_trail": 0.005})])


def organoid(dtype=jnp.float64):
    return tm.organoid(n=8, spacing=40.0, radius=220.0, dt=DT, dtype=dtype,
                       medium={"oxygen": 60.0, "tgfb": 0.5, "il6": 0.5, "il10": 0.2,
                               "cxcl12": 0.5, "ccl2": 0.5},
                       immune_medium=CO_CULTURE, schedule_values=_schedule(True))


def tissue(dtype=jnp.float64):
    return tm.tissue(n=8, spacing=40.0, radius=100.0, dt=DT, dtype=dtype, vessel_spacing=80.0,
                     vessel_density=0.02, schedule_values=_schedule(False))


def summary(problem, fields, values, step):
    return {"means": jnp.mean(fields, axis=(1, 2, 3)), **tm.observables(problem, fields, values)}


OBSERVED = ("tumor_volume", "tumor_radius", "csc_fraction", "hypoxic_fraction",
            "necrotic_fraction", "tumor_oxygen", "vessel_density")


def loss(problem, values):
    # one checkpoint level: 288 states of 8³ voxels are small, and the program compiles faster
    sol = tm.solve(problem, values, n_steps=DAY, save=tm.SaveAt(SAVES, summary), checkpoints=1)
    saved = sol.saved
    total = jnp.sum(jnp.log(saved["means"] + 1e-3))
    for k in OBSERVED:
        total = total + jnp.sum(jnp.log(saved[k] + 1e-3))
    return total


GRADIENT = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
BATCH = jax.jit(jax.vmap(loss, in_axes=(None, 0)), static_argnums=0)
_CACHE = {}


def scheduled(path):
    """A schedule value's place, or None: ``dose.DRUG`` the first dose's level,
    ``switch.SOLUTE`` the medium's level after the first medium change."""
    if path.startswith("dose."):
        return "dose", (tm.DRUGS.index(path[5:]), 0)
    if path.startswith("switch."):
        return "medium", (0, tm.SOLUTES.index(path[7:]))
    return None


def value(values, path):
    place = scheduled(path)
    if place is None:
        return tm.get_value(values, path)
    kind, index = place
    return values["schedule"][kind]["level"][index]


def with_value(values, path, x):
    place = scheduled(path)
    if place is None:
        return tm.set_values(values, {path: x})
    kind, index = place
    block = dict(values["schedule"][kind])
    block["level"] = block["level"].at[index].set(x)
    return dict(values, schedule=dict(values["schedule"], **{kind: block}))


def differences(name, setup, paths, step=FD_STEP):
    """Finite differences of the loss for every path, all in one vmapped call.

    Step h = step·|x| (step where x = 0): central, (L(x+h) − L(x−h))/2h;
    at a lower bound (a switched-off process, a medium level of 0) one-sided
    and second order, (−3L(x) + 4L(x+h) − L(x+2h))/2h, so that it is the
    right-hand derivative at x itself (at an upper bound the left-hand one) (the effects of a drug are steepest at 0:
    a first-order difference there was off by up to 0.8%).
    """
    key = ("fd", name, tuple(paths), step)
    if key not in _CACHE:
        sets, stencils = [], []
        for path in paths:
            x = float(value(setup.values, path))
            h = step * abs(x) if x else step
            lower, upper = (setup.problem.bounds.get(path)[:2] if path in setup.problem.bounds
                            else (-np.inf, np.inf))
            if x - h < lower:
                stencil = ((x, -1.5 / h), (x + h, 2.0 / h), (x + 2 * h, -0.5 / h))
            elif x + h > upper:  # a share at 1 (mixture_flow): the left-hand derivative
                stencil = ((x, 1.5 / h), (x - h, -2.0 / h), (x - 2 * h, 0.5 / h))
            else:
                stencil = ((x - h, -0.5 / h), (x + h, 0.5 / h))
            stencils.append((len(sets), [w for _, w in stencil]))
            sets += [with_value(setup.values, path, a) for a, _ in stencil]
        batched = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *sets)
        out = np.asarray(BATCH(setup.problem, batched))
        _CACHE[key] = {p: float(np.dot(w, out[i:i + len(w)]))
                       for p, (i, w) in zip(paths, stencils)}
    return _CACHE[key]


def gradient(name, setup):
    """The whole gradient (every value) of the loss, once per problem."""
    if ("grad", name) not in _CACHE:
        _CACHE[("grad", name)] = GRADIENT(setup.problem, setup.values)
    return _CACHE[("grad", name)]


def check(setup, name, path, paths):
    """x·∂loss/∂x of ``path`` against its difference at FD_STEP, else at FD_STEP_WIDE.

    Each step has its own way to be wrong, and the gradient must match one of
    them: the small step is off where the loss moves little, because the implicit
    solves stop at 1e-10 of their right-hand side, a noise of that order in the
    loss that h = 1e-7 magnifies a thousandfold (stroma_death, in the slow sweep:
    −0.228345 at 1e-4 against the gradient's −0.228347); the wide step is off where it
    crosses kinks (o2_uptake: 1.3% at 1e-5).
    """
    fd = differences(name, setup, paths)[path]
    scale = abs(float(value(setup.values, path))) or 1.0
    assert abs(fd * scale) > 1e-6, f"{path}: the loss does not depend on it (fd = {fd})"
    if not agrees(setup, name, path, fd):
        wide = differences(name, setup, paths, FD_STEP_WIDE)[path]
        assert agrees(setup, name, path, wide), f"{path}: FD {fd} at {FD_STEP}, {wide} at " \
            f"{FD_STEP_WIDE}, AD {float(value(gradient(name, setup), path))}"


def agrees(setup, name, path, fd):
    """x·∂loss/∂x from the gradient within RTOL (or 1e-6) of x times the difference fd."""
    x = float(value(setup.values, path))
    scale = abs(x) if x else 1.0
    ad = float(value(gradient(name, setup), path))
    return bool(np.isclose(ad * scale, fd * scale, rtol=RTOL, atol=1e-6))


ORGANOID = organoid()
TISSUE = tissue()

ORGANOID_SET = [
    "o2_uptake", "necrosis_rate", "tumor_division_rate", "self_renewal_hif",
    "dedifferentiation_tgfb", "tissue_mobility", "phagocytosis_rate", "exosome_secretion",
    "m2_polarisation_exosome", "t_cell_kill_rate", "car_t_kill_rate", "trail_kill_rate",
    "chemo_lethality", "rt_alpha", "ecm_deposition", "diffusion.oxygen", "diffusion.cd8",
    "decay.tgfb", "medium.oxygen", "switch.oxygen", "dose.chemo", "initial.radius_um",
    "initial.csc_fraction",
]
TISSUE_SET = [
    "vessel_o2_exchange", "angiogenesis_rate", "vegf_secretion", "macrophage_recruitment",
    "t_cell_recruitment", "msc_recruitment", "blood_o2", "vessel_drug_exchange",
    "diffusion.vegf", "dose.anti_vegf", "initial.vessel_density", "initial.stroma",
]


def test_organoid_forms_a_necrotic_core_under_every_treatment():
    sol = tm.solve(ORGANOID.problem, ORGANOID.values, n_steps=DAY,
                   save=tm.SaveAt(SAVES, tm.observables))
    assert bool(sol.ok)
    obs = {k: np.asarray(v) for k, v in sol.saved.items()}
    assert obs["necrotic_fraction"][0] > 0.05 and obs["necrotic_fraction"][-1] > 0.5
    assert obs["car_t_total"][-1] > 0 and obs["chemo_exposure"][-1] > 10.0


@pytest.mark.parametrize("path", ORGANOID_SET)
def test_organoid_gradient_matches_central_differences(path):
    check(ORGANOID, "organoid", path, ORGANOID_SET)


@pytest.mark.slow  # the tissue step compiles for 2 minutes; the organoid set runs by default
@pytest.mark.parametrize("path", TISSUE_SET)
def test_tissue_gradient_matches_central_differences(path):
    check(TISSUE, "tissue", path, TISSUE_SET)


@pytest.mark.slow
def test_float32_gradient_agrees_with_float64():
    """float32 through the same day: every gradient component of the representative set
    within 2% of float64 (measured: below 0.3%; float32 rounding of 288 steps of
    hundreds of RKL stages each)."""
    g64 = gradient("organoid", ORGANOID)
    single = organoid(jnp.float32)
    g32 = GRADIENT(single.problem, single.values)
    for path in ORGANOID_SET:
        a, b = value(g32, path), value(g64, path)
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(float(a), float(b), rtol=0.02, err_msg=path)


@pytest.mark.slow
@pytest.mark.parametrize("geometry", ["organoid", "tissue"])
def test_every_value_gradient_matches_central_differences(geometry):
    """Every value at 1e-7; those that miss it, again in one batch at 1e-4 (``check``)."""
    setup = ORGANOID if geometry == "organoid" else TISSUE
    paths = tm.value_paths(setup.values)
    fd = differences(geometry, setup, paths)
    misses = [p for p in paths if not agrees(setup, geometry, p, fd[p])]
    wide = differences(geometry, setup, misses, FD_STEP_WIDE) if misses else {}
    failures = [f"{p}: FD {fd[p]} at {FD_STEP}, {wide[p]} at {FD_STEP_WIDE}, "
                f"AD {float(value(gradient(geometry, setup), p))}"
                for p in misses if not agrees(setup, geometry, p, wide[p])]
    assert not failures, "\n".join(failures)
