"""The niche model: one direction-of-effect test per mechanism (M1-M18, docs/model.md),
non-negativity and the volume bound under extreme parameters, conservation of
conversions, and the parameter table.

Most tests use a well-mixed tissue box (3³ voxels of 200 um, no-flux faces):
every field is uniform, so a run is an ODE system for the whole model with
vessels as the source. The environment is set through parameters: the blood
pO2 sets the oxygen level (``HYPOXIC``: about 6 mmHg, HIF about 0.8;
``NORMOXIC``: about 45 mmHg), plasma drug levels set drug exposure. Runs
differ only in parameters or initial values, so one compiled program serves
them all. Each assertion compares two runs with a margin several times
larger than any numerical error at this step (first-order coupling at
dt = 2 min on processes with time scales of hours: below 1%).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tmesim as tm
from tmesim._model import O2_ONSET, _ramp_down, proliferation_o2
from tmesim._observables import ARREST_LEVEL, arrest_o2

DT = 2.0
DAY = 720  # steps of DT
HYPOXIC = {"blood_o2": 8.0}
NORMOXIC = {"blood_o2": 60.0}
# with sparse vessels (0.02 instead of 0.1) the blood pO2 of 30 mmHg gives about 7 mmHg
SPARSE_HYPOXIC = {"blood_o2": 30.0}
MIXED_INIT = {"tumor": 0.5, "csc": 0.03, "fibroblast": 0.1, "caf": 0.02, "msc": 0.01, "m1": 0.03,
              "m2": 0.02, "cd8": 0.03, "treg": 0.01, "vessel": 0.1, "ecm": 0.3, "oxygen": 38.0}


WELL_MIXED = tm.tissue(n=3, spacing=200.0, radius=100.0, dt=DT, dtype=jnp.float64)


def evolve(days=1, params=None, init=None, setup=None, steps=DAY):
    """Run ``days`` times ``steps`` steps (a day by default); returns {field: final array}.

    Without ``setup``: the well-mixed box from ``MIXED_INIT`` updated by ``init``.
    """
    if setup is None:
        setup = WELL_MIXED
        values = MIXED_INIT | (init or {})
        state = np.zeros((len(setup.table),) + setup.grid.shape)
        for name, v in values.items():
            state[setup.table.index(name)] = v
        state = jnp.asarray(state)
    else:
        state = setup.fields
        for name, v in (init or {}).items():
            state = state.at[setup.table.index(name)].set(jnp.asarray(v, state.dtype))
    values = tm.set_values(setup.values, params or {})
    for day in range(days):
        sol = tm.solve(setup.problem, values, state, n_steps=steps, start=day * steps)
        assert bool(sol.ok), sol.message(setup.problem)
        state = sol.fields
    out = np.asarray(state)
    return {n: out[i] for i, n in enumerate(setup.table.names)}


def mean(f, name):
    return float(np.mean(f[name]))


def csc_share(f):
    return mean(f, "csc") / (mean(f, "csc") + mean(f, "tumor"))


def tumor_load(f):
    return mean(f, "csc") + mean(f, "tumor")


def test_environment_levels():
    """The well-mixed box reaches the oxygen levels the tests rely on."""
    hyp, nor = evolve(1, HYPOXIC), evolve(1, NORMOXIC)
    assert 3.0 < mean(hyp, "oxygen") < 10.0
    assert 35.0 < mean(nor, "oxygen") < 60.0


def test_stromal_and_immune_cells_respire_less_than_tumour_cells():
    """Per volume, stromal and immune cells consume o2_uptake_stroma and o2_uptake_immune
    (0.3) of what tumour cells do at the same pO2; debris consumes none (the rates the
    model's reaction hands the oxygen solve)."""
    params = WELL_MIXED.problem.inputs(WELL_MIXED.values, 0)

    def uptake(cell):
        view = {n: jnp.zeros((3, 3, 3)) for n in WELL_MIXED.table.names}
        view |= {"oxygen": jnp.full((3, 3, 3), 50.0), cell: jnp.full((3, 3, 3), 0.5)}
        return float(jnp.mean(tm.niche_reaction(view, params).loss["oxygen"]))

    tumour = uptake("tumor")
    assert tumour > 0 and uptake("debris") == 0.0
    for cell in ("fibroblast", "caf", "msc"):
        assert uptake(cell) == pytest.approx(float(params["o2_uptake_stroma"]) * tumour)
    for cell in ("m1", "m2", "cd8", "treg", "car_t"):
        assert uptake(cell) == pytest.approx(float(params["o2_uptake_immune"]) * tumour)
    assert float(params["o2_uptake_stroma"]) < 1 and float(params["o2_uptake_immune"]) < 1


def test_m1_hypoxia_raises_stemness():
    hyp, nor = evolve(2, HYPOXIC), evolve(2, NORMOXIC)
    off = evolve(2, HYPOXIC | {"self_renewal_hif": 0.0, "dedifferentiation_hif": 0.0})
    assert csc_share(hyp) > 1.5 * csc_share(nor)
    assert csc_share(hyp) > 1.5 * csc_share(off)


def test_m2_hypoxia_drives_vegf_and_vessels_supply_oxygen():
    init = {"vessel": 0.02}
    hyp = evolve(3, SPARSE_HYPOXIC, init)
    nor = evolve(3, NORMOXIC, init)
    off = evolve(3, SPARSE_HYPOXIC | {"vegf_secretion": 0.0, "vegf_secretion_m2": 0.0}, init)
    assert mean(hyp, "vegf") > 5.0 * mean(nor, "vegf")  # measured 1.25 against 0.12 nM
    assert mean(hyp, "vessel") > 1.3 * mean(off, "vessel")  # measured 0.031 against 0.018
    sparse = evolve(1, {"angiogenesis_rate": 0.0}, {"vessel": 0.02})
    dense = evolve(1, {"angiogenesis_rate": 0.0}, {"vessel": 0.06})
    assert mean(dense, "oxygen") > 1.3 * mean(sparse, "oxygen")


def test_m3_severe_hypoxia_kills_into_debris():
    anoxic = evolve(1, {"blood_o2": 1.0})
    off = evolve(1, {"blood_o2": 1.0, "necrosis_rate": 0.0})
    assert mean(anoxic, "debris") > 0.3
    assert mean(anoxic, "debris") > 5.0 * mean(off, "debris")
    assert tumor_load(anoxic) < 0.5 * tumor_load(off)


def test_m4_caf_cytokines_raise_stemness():
    rich = evolve(2, NORMOXIC, {"caf": 0.2, "msc": 0.05})
    off = evolve(2, NORMOXIC | {"il6_secretion": 0.0, "cxcl12_secretion": 0.0},
                 {"caf": 0.2, "msc": 0.05})
    assert mean(rich, "il6") > 0.5 and mean(off, "il6") < 1e-6
    assert csc_share(rich) > 1.2 * csc_share(off)


def test_m5_exosomes_make_cafs_m2_and_tregs():
    init = {"csc": 0.1}
    on = evolve(2, NORMOXIC, init)
    off = evolve(2, NORMOXIC | {"exosome_secretion": 0.0}, init)
    assert mean(on, "caf") > 1.5 * mean(off, "caf")
    assert mean(on, "m2") > 1.5 * mean(off, "m2")
    assert mean(on, "treg") > 1.2 * mean(off, "treg")


def test_m6_il10_tgfb_suppress_t_cell_killing():
    init = {"m2": 0.1, "cd8": 0.05}
    on = evolve(1, NORMOXIC, init)
    off = evolve(1, NORMOXIC | {"il10_secretion_m2": 0.0, "tgfb_secretion_m2": 0.0,
                                "il10_secretion_treg": 0.0, "tgfb_secretion_treg": 0.0,
                                "tgfb_secretion_caf": 0.0}, init)
    assert mean(on, "debris") < 0.8 * mean(off, "debris")
    assert tumor_load(on) > tumor_load(off) + 0.02


def test_m7_tgfb_raises_dedifferentiation():
    init = {"m2": 0.1, "cd8": 0.0}
    on = evolve(2, NORMOXIC, init)
    off = evolve(2, NORMOXIC | {"dedifferentiation_tgfb": 0.0}, init)
    assert csc_share(on) > 1.2 * csc_share(off)


def test_m8_ccl2_recruits_and_attracts_macrophages():
    on = evolve(1, HYPOXIC)
    off = evolve(1, HYPOXIC | {"ccl2_secretion": 0.0, "ccl2_secretion_caf": 0.0})
    macs = lambda f: mean(f, "m1") + mean(f, "m2")  # noqa: E731
    assert macs(on) > 1.3 * macs(off)
    # Chemotaxis: tumor at the x- end of a 320 um channel, macrophages uniform.
    setup = tm.tissue(n=16, spacing=20.0, radius=20.0, dt=DT, dtype=jnp.float64)
    x = setup.grid.centers(0)[:, None, None] * np.ones(setup.grid.shape)
    init = {"tumor": np.where(x < 60.0, 0.7, 0.0), "csc": np.zeros(setup.grid.shape),
            "m1": np.full(setup.grid.shape, 0.02), "vessel": np.zeros(setup.grid.shape),
            "oxygen": np.full(setup.grid.shape, 38.0)}
    near = x < 100.0
    moved = evolve(1, {"macrophage_recruitment": 0.0}, init, setup)
    still = evolve(1, {"macrophage_recruitment": 0.0, "chemotaxis_macrophage": 0.0}, init, setup)
    near_share = lambda f: ((f["m1"] + f["m2"])[near].sum() / (f["m1"] + f["m2"]).sum())  # noqa: E731
    assert near_share(moved) > 1.1 * near_share(still)  # measured 0.216 against 0.187


def test_m9_pd_l1_protects_and_anti_pd1_restores_killing():
    init = {"cd8": 0.05, "m2": 0.0}
    treated = evolve(1, NORMOXIC | {"plasma_anti_pd1": 20.0}, init)
    untreated = evolve(1, NORMOXIC, init)
    assert tumor_load(treated) < tumor_load(untreated) - 0.03
    no_pdl1 = evolve(1, NORMOXIC | {"pdl1_tumor": 0.0, "pdl1_csc": 0.0}, init)
    assert tumor_load(no_pdl1) < tumor_load(untreated) - 0.03


def test_m10_chemo_spares_quiescent_effluxing_cscs():
    start = evolve(1, NORMOXIC, {"cd8": 0.0})
    after = evolve(2, NORMOXIC | {"plasma_chemo": 1000.0}, {"cd8": 0.0})
    assert tumor_load(after) < 0.6 * tumor_load(start)
    assert csc_share(after) > 1.5 * csc_share(start)
    no_efflux = evolve(2, NORMOXIC | {"plasma_chemo": 1000.0, "csc_efflux": 0.0}, {"cd8": 0.0})
    assert mean(after, "csc") > 1.1 * mean(no_efflux, "csc")  # measured 0.038 against 0.034


def test_m10_a_delayed_kill_makes_damaged_cells_that_die_later():
    """``chemo_delayed`` = 1: the kill first makes damaged cells (alive, PI-negative),
    which die into debris at ``damaged_death_rate`` r_d. With nothing else acting on them
    they decay as exp(-r_d t), their volume going to debris (closed form); under drug the
    debris after 6 hours is far below that of the immediate kill, the damaged cells hold
    the difference, and after 2 days (four mean delays of 12 h, the drug still killing)
    the debris outweighs the damaged cells."""
    off = {name: 0.0 for name in ("tumor_division_rate", "csc_division_rate", "apoptosis_rate",
                                  "debris_lysis_rate", "phagocytosis_rate", "t_cell_kill_rate")}
    r_d = 1e-3
    f = evolve(1, off | NORMOXIC | {"damaged_death_rate": r_d}, {"damaged": 0.1, "cd8": 0.0})
    # the exponential integrator is exact for a constant rate: round-off only
    assert mean(f, "damaged") == pytest.approx(0.1 * np.exp(-r_d * DAY * DT), rel=1e-12)
    assert mean(f, "debris") == pytest.approx(0.1 - mean(f, "damaged"), rel=1e-12)
    drug = NORMOXIC | {"plasma_chemo": 1000.0, "damaged_death_rate": 1 / 720.0}
    now = evolve(1, drug, {"cd8": 0.0}, steps=180)
    later = evolve(1, drug | {"chemo_delayed": 1.0}, {"cd8": 0.0}, steps=180)
    # measured: debris 0.016 against 0.070, damaged 0.058
    assert mean(later, "debris") < 0.5 * mean(now, "debris")
    assert mean(later, "damaged") > 0.5 * mean(now, "debris")
    assert mean(now, "damaged") == 0.0
    later = evolve(2, drug | {"chemo_delayed": 1.0}, {"cd8": 0.0})
    assert mean(later, "damaged") < 0.5 * mean(later, "debris")  # measured 0.065, 0.170


def test_m10_damaged_cells_that_shrink_keep_their_share_of_the_volume():
    """``damaged_volume`` w: a damaged cell keeps the share w of the killed cell's volume
    (the rest is lost at the kill), so it and the debris it dies into hold w of what they
    hold at w = 1, while the kill itself is the same. Under drug for 6 hours with w = 0.5:
    damaged cells at half their volume with w = 1 (measured 0.0293 against 0.0577; the
    ratio is not exactly 0.5 because the room the shrinkage leaves lets a little more
    volume divide and be killed), debris likewise (0.0090 against 0.0163), and the tumour
    cells the kill acts on within 0.5% (0.4252 against 0.4259)."""
    drug = NORMOXIC | {"plasma_chemo": 1000.0, "damaged_death_rate": 1 / 720.0,
                       "chemo_delayed": 1.0}
    whole = evolve(1, drug, {"cd8": 0.0}, steps=180)
    shrunk = evolve(1, drug | {"damaged_volume": 0.5}, {"cd8": 0.0}, steps=180)
    assert mean(shrunk, "damaged") / mean(whole, "damaged") == pytest.approx(0.5, abs=0.03)
    assert mean(shrunk, "debris") / mean(whole, "debris") == pytest.approx(0.5, abs=0.08)
    assert tumor_load(shrunk) == pytest.approx(tumor_load(whole), rel=5e-3)


def _organoid_small(**kw):
    # chemo uptake up to 25 times its default (M11), beyond the default bounds: widened
    # for every test here, so that they share one compiled program (the plan follows)
    return tm.organoid(n=12, spacing=25.0, radius=150.0, dt=DT, dtype=jnp.float64,
                       bounds={"chemo_uptake": (0.0, 0.5)}, **kw)


def test_m11_ecm_slows_drugs_and_immune_cells():
    dense = evolve(1, NORMOXIC, {"caf": 0.2, "ecm": 0.0})
    assert mean(dense, "ecm") > 0.05  # CAFs deposit matrix
    setup = _organoid_small(medium={"chemo": 1000.0})
    r = np.sqrt(sum(g**2 for g in setup.grid.mesh()))
    core = r < 100.0
    barrier = {"ecm": np.full(setup.grid.shape, 3.0)}
    clear = {"ecm": np.zeros(setup.grid.shape)}
    with_ecm = evolve(1, {"chemo_uptake": 0.5}, barrier, setup)
    without = evolve(1, {"chemo_uptake": 0.5}, clear, setup)
    # measured 677 against 947 nM
    assert with_ecm["chemo"][core].mean() < 0.8 * without["chemo"][core].mean()
    t_cells = {"cd8": np.where(r > 200.0, 0.05, 0.0)}
    # 6 h: before T cells (60 um²/min) have evened out over the organoid anyway
    with_ecm = evolve(1, {"t_cell_recruitment": 0.0}, barrier | t_cells, setup, steps=180)
    without = evolve(1, {"t_cell_recruitment": 0.0}, clear | t_cells, setup, steps=180)
    assert with_ecm["cd8"][core].sum() < 0.7 * without["cd8"][core].sum()


def test_m12_lactate_favours_cscs_and_suppresses_t_cells():
    no_t = {"cd8": 0.0, "vessel": 0.02}
    on = evolve(2, SPARSE_HYPOXIC, no_t)
    off = evolve(2, SPARSE_HYPOXIC | {"lactate_secretion": 0.0}, no_t)
    assert mean(on, "lactate") > 2e6
    # CSC survival and self-renewal (the share also moves through M2 TAMs,
    # VEGF and oxygen, so the direct effect is read on the CSCs themselves). At
    # about 10 mmHg CSCs barely divide, so survival carries the effect: its closed
    # form alone, exp(0.3·H(lactate)·r_apoptosis·2 days) with H = 0.7 at 11.5 mM,
    # is 1.032; measured 0.171 against 0.163 (1.049)
    assert mean(on, "csc") > 1.03 * mean(off, "csc")
    with_t = {"cd8": 0.05, "vessel": 0.02}
    on = evolve(1, SPARSE_HYPOXIC, with_t)
    off = evolve(1, SPARSE_HYPOXIC | {"lactate_secretion": 0.0}, with_t)
    assert tumor_load(on) > tumor_load(off) + 0.02


def test_m13_mscs_home_become_cafs_and_trail_mscs_kill():
    on = evolve(2, NORMOXIC, {"caf": 0.1})
    off = evolve(2, NORMOXIC | {"msc_recruitment": 0.0}, {"caf": 0.1})
    assert mean(on, "msc") > 1.2 * mean(off, "msc")
    to_caf = evolve(2, NORMOXIC, {"m2": 0.1, "msc": 0.1})
    no_caf = evolve(2, NORMOXIC | {"msc_to_caf": 0.0}, {"m2": 0.1, "msc": 0.1})
    assert mean(to_caf, "caf") > mean(no_caf, "caf") + 0.01
    trail = evolve(1, NORMOXIC, {"msc_trail": 0.05, "cd8": 0.0})
    plain = evolve(1, NORMOXIC, {"cd8": 0.0})
    assert tumor_load(trail) < 0.8 * tumor_load(plain)


def test_m14_pathway_inhibitor_lowers_self_renewal():
    treated = evolve(2, HYPOXIC | {"plasma_csc_inhibitor": 1000.0})
    untreated = evolve(2, HYPOXIC)
    assert csc_share(treated) < 0.7 * csc_share(untreated)


def test_m15_anti_vegf_lowers_vessels_and_oxygen():
    init = {"vessel": 0.02}
    params = {"blood_o2": 35.0}  # hypoxic enough for VEGF-driven angiogenesis (about 14 mmHg)
    treated = evolve(3, params | {"plasma_anti_vegf": 50.0}, init)
    untreated = evolve(3, params, init)
    # measured: vessels 0.0198 against 0.0266, oxygen 8.7 against 14.2 mmHg
    assert mean(treated, "vessel") < 0.8 * mean(untreated, "vessel")
    assert mean(treated, "oxygen") < 0.7 * mean(untreated, "oxygen")
    assert csc_share(treated) > 1.15 * csc_share(untreated)  # via M1; measured 0.58 against 0.45


def test_m16_radiotherapy_spares_hypoxic_cells_and_cscs():
    table = tm.niche_species()
    p = tm.default_parameters(jnp.float64)
    f = np.zeros((len(table), 2, 1, 1))
    f[table.index("tumor")] = 0.5
    f[table.index("csc")] = 0.05
    f[table.index("oxygen")] = [[[40.0]], [[0.5]]]  # oxic, anoxic
    out = np.asarray(tm.radiotherapy(jnp.asarray(f), table, p, 2.0))
    surv_t = out[table.index("tumor"), :, 0, 0] / 0.5
    surv_c = out[table.index("csc"), :, 0, 0] / 0.05
    assert surv_t[1] > surv_t[0] + 0.2  # hypoxia protects (OER)
    assert surv_c[0] > surv_t[0] + 0.1  # CSCs resist
    omf = (3.0 * 40.0 + 3.0) / (3.0 * (40.0 + 3.0))  # OER 3, K 3 mmHg
    expected = np.exp(-0.3 * 2 * omf - 0.03 * (2 * omf) ** 2)
    np.testing.assert_allclose(surv_t[0], expected, rtol=1e-12)
    killed = (0.5 - out[table.index("tumor")]) + (0.05 - out[table.index("csc")])
    np.testing.assert_allclose(out[table.index("debris")], killed, rtol=1e-12)


def test_m17_car_t_kills_cscs_first():
    init = {"car_t": 0.03, "cd8": 0.0, "csc": 0.1}
    car = evolve(1, NORMOXIC, init)
    none = evolve(1, NORMOXIC, init | {"car_t": 0.0})
    assert mean(car, "csc") < 0.7 * mean(none, "csc")
    assert mean(car, "tumor") > 0.8 * mean(none, "tumor")


@pytest.mark.parametrize("shape, threshold", [(1.0, 5.0), (0.02, 12.0), (0.02, 22.8)])
def test_oxygen_factor_of_division_has_a_smooth_onset(shape, threshold):
    """g is 0 well below the threshold, PhysiCell's ramp (or its saturating form) more than a
    few O2_ONSET above it, and its slope is continuous through the onset: no kink for a
    shell's pO2 to cross between two steps (the hard onset's slope jumped from 0 to
    1/(K·155 mmHg)). ``arrest_o2`` inverts it at ARREST_LEVEL."""
    p = tm.set_values(WELL_MIXED.values, {"o2_proliferation_shape": shape,
                                          "o2_proliferation_threshold": threshold})["params"]
    span = float(p["o2_reference"]) - threshold

    def hard(o2):
        x = np.clip((o2 - threshold) / span, 0.0, 1.0)
        return x / (shape + (1.0 - shape) * x)

    o2 = np.array([threshold - 50 * O2_ONSET, threshold + 40 * O2_ONSET, 100.0,
                   float(p["o2_reference"])])
    np.testing.assert_allclose(proliferation_o2(jnp.asarray(o2), p), hard(o2), rtol=1e-12,
                               atol=1e-12)
    slope = jax.vmap(jax.grad(lambda x: proliferation_o2(x, p)))
    near = threshold + O2_ONSET * np.linspace(-3.0, 3.0, 601)  # steps of 0.01 O2_ONSET
    jumps = np.abs(np.diff(np.asarray(slope(jnp.asarray(near)))))
    full = 1.0 / (shape * span)  # the hard onset's slope just above the threshold
    assert jumps.max() < 0.02 * full, jumps.max() / full
    np.testing.assert_allclose(proliferation_o2(arrest_o2(p), p), ARREST_LEVEL, rtol=1e-10)


@pytest.mark.parametrize("start, full", [(5.0, 2.5), (15.0, 4.0)])  # necrosis, HIF
def test_oxygen_ramps_have_rounded_corners(start, full):
    """PhysiCell's oxygen ramps (0 above ``start``, 1 below ``full``, linear between) with
    both corners rounded over O2_ONSET: the linear ramp within 1e-12 from 3 mmHg past
    each corner, decreasing, and a slope continuous through the corners (the hard
    corner's jumped by 1/(start − full): a kink in a fit's NLL each time a voxel's pO2
    crossed it between steps)."""
    def hard(o2):
        return np.clip((start - o2) / (start - full), 0.0, 1.0)

    o2 = np.concatenate([np.linspace(0.0, full - 3.0, 5) if full > 3 else [],
                         np.linspace(full + 3.0, start - 3.0, 5) if start - full > 6 else [],
                         np.linspace(start + 3.0, 160.0, 5)])
    np.testing.assert_allclose(_ramp_down(jnp.asarray(o2), start, full), hard(o2),
                               rtol=0, atol=1e-12)
    fine = np.linspace(0.0, start + 3.0, 20001)
    ramp = np.asarray(_ramp_down(jnp.asarray(fine), start, full))
    assert np.all(np.diff(ramp) <= 1e-15)  # decreasing, to round-off where saturated
    slope = np.asarray(jax.vmap(jax.grad(lambda x: _ramp_down(x, start, full)))(
        jnp.asarray(fine)))
    assert np.abs(np.diff(slope)).max() < 0.02 / (start - full)


def test_m18_growth_pushes_a_compact_body_outwards():
    """Pressure keeps the body at its packing density and moves the front out, sharp.

    Without the pressure flux (κ = 0) and the mixture flow, the new volume
    packs the core towards φ = 1 and the body cannot grow (adhesive tumor
    cells have no random motility): measured R(φ > 0.4) 153 against 178 um
    after 2 days, from 150. The front, R(φ > 0.1) − R(φ > 0.7), is 37 um
    wide: under two voxels (14 um, under one, before the mixture flow: its
    first-order upwind advection of the whole body smears the front by a voxel).
    """
    setup = _organoid_small()
    grown = evolve(2, None, None, setup)
    stuck = evolve(2, {"tissue_mobility": 0.0, "mixture_flow": 0.0}, None, setup)

    def radius(f, threshold):
        """Equal-volume radius (um) of the voxels with T + C + debris above ``threshold``."""
        body = f["tumor"] + f["csc"] + f["debris"]
        volume = np.sum(body > threshold) * setup.grid.voxel_volume * 8
        return float(tm.equal_volume_radius(volume))

    start = {n: np.asarray(setup.field(n)) for n in setup.table.names}
    assert radius(grown, 0.4) > radius(start, 0.4) + 20.0
    assert radius(grown, 0.4) > radius(stuck, 0.4) + 10.0
    phi_grown, phi_stuck = (sum(f[c] for c in tm.CELLS) for f in (grown, stuck))
    assert phi_grown[0, 0, 0] < 0.85 < 0.9 < phi_stuck[0, 0, 0]
    assert max(phi_grown.max(), phi_stuck.max()) <= 1.0 + 1e-9
    assert radius(grown, 0.1) - radius(grown, 0.7) < 2 * 20.0


def test_m18_free_surface_term_acts_near_the_medium_only():
    """``near_outside``: 1 − 2·(the least occupied share within 3 voxels), clipped to [0, 1],
    against a brute-force window minimum: the window is cut at closed faces and wraps on
    periodic axes; on shells, cut at the centre and the medium."""
    from tmesim._model import FREE_SURFACE_REACH, near_outside

    rng = np.random.default_rng(3)
    k = FREE_SURFACE_REACH
    for periodic in (False, True):
        x = tm.Periodic() if periodic else tm.Neumann()
        grid = tm.Grid((9, 6, 5), 10.0, boundary={"x-": x, "x+": x})
        occ = rng.random(grid.shape)
        want = np.empty_like(occ)
        for i, j, l in np.ndindex(*occ.shape):
            xs = [(i + d) % 9 for d in range(-k, k + 1)] if periodic else \
                range(max(0, i - k), min(9, i + k + 1))
            want[i, j, l] = occ[np.ix_(list(xs), range(max(0, j - k), min(6, j + k + 1)),
                                       range(max(0, l - k), min(5, l + k + 1)))].min()
        got = np.asarray(near_outside(jnp.asarray(occ, jnp.float64), grid))
        np.testing.assert_allclose(got, np.clip(1 - 2 * want, 0, 1), atol=1e-12)
    occ = rng.random(12)
    want = np.array([occ[max(0, i - k):i + k + 1].min() for i in range(12)])
    got = np.asarray(near_outside(jnp.asarray(occ, jnp.float64), tm.RadialGrid(12, 5.0)))
    np.testing.assert_allclose(got, np.clip(1 - 2 * want, 0, 1), atol=1e-12)


@pytest.mark.filterwarnings("ignore::tmesim.MediumLayerWarning")  # both runs share the box
def test_m18_volume_lost_in_a_core_draws_the_body_inward_packed():
    """A packed ball of 150 um with a debris core of 80 um that lyses (2e-3/min), nothing
    dividing or dying otherwise: with the mixture flow the tissue moves in and the
    centre stays packed (Greenspan); without it the core hollows. Measured after a
    day at 20 um voxels: centre φ 0.80 against 0.08, the same outer radius (143 um:
    the body's volume is what lysis left, either way)."""
    still = {"tumor_division_rate": 0.0, "csc_division_rate": 0.0, "apoptosis_rate": 0.0,
             "debris_lysis_rate": 2e-3}
    out = {}
    for m in (1.0, 0.0):
        s = tm.organoid(n=12, spacing=20.0, radius=150.0, dt=5.0, dtype=jnp.float64,
                        overrides=still | {"mixture_flow": m},
                        bounds={"debris_lysis_rate": (0.0, 0.01)})
        f = tm.start_state(s.problem, s.values)
        i = s.table.index
        core = tm.ball_fraction(s.grid, 80.0, (0.0, 0.0, 0.0))
        live = f[i("tumor")]
        f = f.at[i("debris")].set(live * core).at[i("tumor")].set(live * (1 - core))
        sol = tm.solve(s.problem, s.values, f, n_steps=288)
        assert sol.ok
        g = np.asarray(sol.fields)
        phi = g[[i(c) for c in tm.CELLS]].sum(0)
        out[m] = (phi[0, 0, 0], float(tm.observables(s.problem, sol.fields, s.values)["tumor_radius"]),
                  phi.max())
    assert out[1.0][0] > 0.75 and out[0.0][0] < 0.2
    np.testing.assert_allclose(out[1.0][1], out[0.0][1], rtol=1e-3)
    assert max(out[1.0][2], out[0.0][2]) <= 1.0 + 1e-9


def test_extreme_parameters_keep_densities_non_negative_and_bounded():
    """Every rate 20 times its default (bounds widened: the plan is sized for the larger uptakes)."""
    fast = {q.name: q.value * 20.0 for q in tm.PARAMETERS if q.unit == "1/min"}
    widened = {name: (0.0, v) for name, v in fast.items()}
    box = tm.tissue(n=3, spacing=200.0, radius=100.0, dt=DT, dtype=jnp.float64, bounds=widened)
    values = MIXED_INIT | {"cd8": 0.1, "car_t": 0.05, "msc_trail": 0.05}
    state = np.zeros((len(box.table),) + box.grid.shape)
    for name, v in values.items():
        state[box.table.index(name)] = v
    setup = tm.Setup(box.problem, box.values)
    for env in (HYPOXIC, NORMOXIC | {"plasma_chemo": 1e4, "plasma_anti_pd1": 100.0}):
        sol = tm.solve(setup.problem, tm.set_values(setup.values, fast | env), jnp.asarray(state),
                       n_steps=DAY)
        assert bool(sol.ok), sol.message(setup.problem)
        f = {n: np.asarray(sol.fields[i]) for i, n in enumerate(setup.table.names)}
        phi = sum(f[c] for c in tm.CELLS)
        assert phi.max() <= 1.0 + 1e-9
        for name in tm.FIELD_NAMES:
            assert f[name].min() >= -1e-9 * max(1.0, abs(f[name]).max()), name
            assert np.isfinite(f[name]).all(), name


def test_conversions_conserve_cell_volume():
    """With every creation and removal off, cells only convert: Σ cells conserved to round-off."""
    off = {q.name: 0.0 for q in tm.PARAMETERS if q.name in (
        "tumor_division_rate", "csc_division_rate", "apoptosis_rate", "debris_lysis_rate",
        "phagocytosis_rate", "macrophage_recruitment", "treg_recruitment", "t_cell_recruitment",
        "msc_recruitment", "macrophage_death", "t_cell_death", "t_cell_expansion",
        "t_cell_exhaustion", "stroma_division_rate", "stroma_death", "treg_expansion_exosome",
        "car_t_expansion")}
    init = {"cd8": 0.05, "car_t": 0.02, "msc_trail": 0.02, "vessel": 0.01}
    start = sum(v for k, v in (MIXED_INIT | init).items() if k in tm.CELLS)
    f = evolve(1, off | {"blood_o2": 3.0, "plasma_chemo": 500.0}, init)
    total = sum(mean(f, c) for c in tm.CELLS)
    assert mean(f, "debris") > 0.1  # plenty moved
    assert abs(total - start) < 1e-12


def test_apoptotic_remains_become_debris():
    """``apoptotic_remains`` = a: the share a of the volume apoptosis removes stays as debris
    (in culture, secondary necrosis), the rest is cleared. With every other creation,
    removal and kill of tumour cells off, the debris gained is a times the tumour volume
    lost, and at a = 0 (the default: bodies cleared at once) none forms."""
    off = {name: 0.0 for name in (
        "tumor_division_rate", "csc_division_rate", "debris_lysis_rate", "phagocytosis_rate",
        "t_cell_kill_rate")}
    start = MIXED_INIT["tumor"] + MIXED_INIT["csc"]
    for a in (0.0, 0.5, 1.0):
        f = evolve(1, off | NORMOXIC | {"apoptotic_remains": a})
        lost = start - tumor_load(f)
        # about 0.53 x (1 - exp(-5.3e-5 x 1440)) = 0.039 (CSCs die slower, IL-6 and lactate)
        assert 0.03 < lost < 0.04
        # round-off: 720 steps each exact to some ulps of the 0.5 volume fraction (measured
        # 1.7e-12 at a = 0.5); a share off by 0.1% would miss by 2e-5
        assert abs(mean(f, "debris") - a * lost) < 1e-10


def test_parameter_table_is_complete():
    names = {q.name for q in tm.PARAMETERS}
    processes = {p.name for p in tm.PROCESSES} | {"hif_activity", "immune_suppression",
                                                    "pd_l1", "self_renewal_share", "radiotherapy"}
    for q in tm.PARAMETERS:
        assert q.process in processes, q.name
        assert q.unit and q.meaning and q.source, q.name
        assert q.lower <= q.value <= q.upper and q.scale in ("lin", "log", "logit"), q.name
        assert q.lower >= 0 or q.scale == "lin", q.name  # rates may be 0: a process off
        assert q.scale != "logit" or (q.lower >= 0 and q.upper <= 1), q.name
    # Every parameter is read by the model: tracing every process touches all of them.
    read = set()

    class Spy(dict):
        def __getitem__(self, key):
            read.add(key)
            return dict.__getitem__(self, key)

    setup = WELL_MIXED
    params = setup.problem.inputs(setup.values, 0)
    view = {n: jnp.ones((3, 3, 3)) for n in setup.table.names}
    tm.niche_reaction(view, Spy(params))
    tm.radiotherapy(jnp.ones((len(setup.table), 2, 2, 2)), setup.table, Spy(params), 2.0)
    # an organoid's reaction adds its medium (medium_exchange)
    organoid = tm.organoid(n=3, spacing=200.0, radius=100.0, dt=DT, dtype=jnp.float64)
    organoid.stepper.reaction(view, Spy(organoid.problem.inputs(organoid.values, 0)))
    for proc in tm.PROCESSES:
        if proc.kind == "transport":
            proc.fn(jnp.ones((3, 3, 3)), Spy(params))
    assert names - read == set()
    with pytest.raises(KeyError, match="unknown model parameter"):
        tm.default_parameters(no_such_rate=1.0)


def test_model_command_lists_every_field_process_and_mechanism(capsys):
    assert tm.main(["model"]) == 0
    text = capsys.readouterr().out
    for name in tm.FIELD_NAMES:
        assert f"  {name} " in text
    for proc in tm.PROCESSES:
        assert proc.name in text
    for q in tm.PARAMETERS:
        assert f"{q.name} = " in text
    for m in range(1, 19):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"M{m}:"))
        assert len(line.split(":")[1].strip()) > 0
