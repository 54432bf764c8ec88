"""Calibration (issue 13): problem tables, the objective's gradient, recovery, no recompiles, resume.

The recovery problem is synthetic: a spheroid (tmesim.spheroid) simulated with known
parameters, its outer and necrotic radii sampled with 5% normal noise, fitted from
starts perturbed by up to 2x; each parameter the fit reports identifiable must lie
within its 95% profile interval, and the interval must cover the truth.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import signal
import tomllib
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tmesim
from tmesim import ProblemError, fit, load_problem  # the public calibration surface
from tmesim._fit import Objective, Optimiser, perturbed_points, to_scale

TRUTH = {"tumor_division_rate": 0.0011, "o2_uptake": 700.0}
NOMINAL = {"tumor_division_rate": 0.00072, "o2_uptake": 1000.0}
DAYS = (0.5, 1.0, 1.5, 2.0)
REPLICATES = 4

SCENARIO = """name = "synthetic spheroid"
[run]
days = 2.0
dt_min = 10.0
output_every_days = 0.5
dtype = "float64"
[grid]
n = 16
spacing_um = 30.0
[geometry]
kind = "{kind}"
radius_um = 300.0
"""


def write_problem(folder, measurements, *, kind="spheroid", fit_settings="", parameters=None,
                  observables=None, conditions=None, scenario=None, extra="", nominal=NOMINAL):
    os.makedirs(folder, exist_ok=True)
    files = {
        "scenario.toml": scenario or SCENARIO.format(kind=kind),
        "conditions.tsv": conditions or "conditionId\tgeometry.radius_um\nball\t300\n",
        "observables.tsv": observables or (
            "observableId\tobservableFormula\tnoiseFormula\tnoiseDistribution\n"
            "outer\ttumor_radius\t0.05 * tumor_radius\tnormal\n"
            "necrotic\tnecrotic_radius\t0.05 * necrotic_radius + 1\tnormal\n"),
        "parameters.tsv": parameters or (
            "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\n"
            f"tumor_division_rate\tlog\t0.0002\t0.004\t{nominal['tumor_division_rate']}\t1\n"
            f"o2_uptake\tlog\t300\t1500\t{nominal['o2_uptake']}\t1\n"),
        "measurements.tsv": measurements,
        "problem.toml": ('name = "synthetic"\nscenario = "scenario.toml"\n'
                         'measurements = "measurements.tsv"\nconditions = "conditions.tsv"\n'
                         'observables = "observables.tsv"\nparameters = "parameters.tsv"\n'
                         + extra + "[fit]\n" + fit_settings),
    }
    for name, text in files.items():
        with open(os.path.join(folder, name), "w") as fh:
            fh.write(text)
    return os.path.join(folder, "problem.toml")


def placeholder_measurements(days=DAYS):
    rows = ["observableId\tsimulationConditionId\ttime\tmeasurement"]
    for t in days:
        rows.append(f"outer\tball\t{t:g}\t300")
        rows.append(f"necrotic\tball\t{t:g}\t50")
    return "\n".join(rows) + "\n"


def synthetic_measurements(tmp_path, seed=7):
    """Outer and necrotic radii of the truth at DAYS, REPLICATES each, with 5% noise."""
    path = write_problem(tmp_path / "truth", placeholder_measurements())
    obj = Objective(load_problem(path))
    theta = np.array([to_scale(TRUTH[p], "log") for p in obj.ids])
    h, _, _ = obj.evaluate(jnp.asarray(theta))
    back = np.empty(len(obj.order), int)
    back[obj.order] = np.arange(len(obj.order))
    h = np.asarray(h)[back]
    rng = np.random.default_rng(seed)
    fp = obj.fp
    rows = ["observableId\tsimulationConditionId\ttime\tmeasurement\treplicateId"]
    for k in range(len(h)):
        oid = fp.observables[fp.measurements.observable[k]].id
        t = fp.measurements.time_min[k] / 1440.0
        sd = 0.05 * h[k] + (1.0 if oid == "necrotic" else 0.0)
        for r in range(REPLICATES):
            rows.append(f"{oid}\tball\t{t:g}\t{h[k] + sd * rng.standard_normal():.6f}\t{r}")
    return "\n".join(rows) + "\n", dict(zip(
        [f"{fp.observables[o].id}@{t / 1440:g}" for o, t in zip(fp.measurements.observable,
                                                                  fp.measurements.time_min)], h))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """``synthetic_measurements`` once for the module. The problems made from them compile
    the same programs (a fit on a CPU runs one point per compiled call), so the tests
    after the first find them in the persistent compilation cache."""
    return synthetic_measurements(tmp_path_factory.mktemp("synthetic"))


# --------------------------------------------------------------------------
# bad tables: file, row and column named; nothing written
BAD = [
    ("parameters.tsv", "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\n"
     "tumor_division_rate\tlog\t0.0002\t0.004\t0.0007\n", "row 1: missing column(s) estimate"),
    ("parameters.tsv", "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\n"
     "tumor_division_rate\tlog\t0\t0.004\t0.0007\t1\n", "row 2, column 'lowerBound'"),
    ("parameters.tsv", "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\n"
     "tumor_division_rate\tlog\t0.0002\t0.004\tfast\t1\n", "row 2, column 'nominalValue': expected a number"),
    ("parameters.tsv", "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\n"
     "tumor_division_rate\tlog\t0.0002\t0.004\t0.0007\t1\ntumor_division_rate\tlog\t0.0002\t0.004\t0.0007\t1\n",
     "row 3, column 'parameterId': 'tumor_division_rate' is listed twice"),
    ("parameters.tsv", "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\n"
     "tumor_division_rate\tlogg\t0.0002\t0.004\t0.0007\t1\n", "did you mean 'log'"),
    ("parameters.tsv", "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\n"
     "tumor_division_rate\tlog\t0.004\t0.0002\t0.0007\t1\n", "column 'upperBound'"),
    ("parameters.tsv", "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\n"
     "growth\tlog\t0.0002\t0.004\t0.0007\t1\n", "neither a model value"),
    ("parameters.tsv", "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\n"
     "diffusion.oxygn\tlog\t5e4\t1.5e5\t1e5\t1\n", "did you mean diffusion.oxygen"),
    ("parameters.tsv", "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\tobjectivePriorType\n"
     "tumor_division_rate\tlog\t0.0002\t0.004\t0.0007\t1\tnormal\n", "objectivePriorParameters"),
    ("observables.tsv", "observableId\tobservableFormula\nouter\ttumor_radiuss\nnecrotic\tnecrotic_radius\n",
     "row 2, column 'observableFormula': unknown name 'tumor_radiuss'"),
    ("observables.tsv", "observableId\tobservableFormula\nouter\t__import__('os').system('true')\n"
     "necrotic\tnecrotic_radius\n", "row 2, column 'observableFormula'"),
    ("observables.tsv", "observableId\tobservableFormula\tnoiseDistribution\nouter\ttumor_radius\tcauchy\n"
     "necrotic\tnecrotic_radius\tnormal\n", "row 2, column 'noiseDistribution'"),
    ("observables.tsv", "observableId\tobservableFormula\tnoiseFormula\nouter\ttumor_radius\tnoiseParameter1_outer\n"
     "necrotic\tnecrotic_radius\t1\n", "column 'noiseParameters'"),
    ("measurements.tsv", "observableId\tsimulationConditionId\ttime\tmeasurement\nouter\tball\t1\t300\n"
     "outr\tball\t2\t310\n", "row 3, column 'observableId': unknown observable 'outr'; did you mean 'outer'"),
    ("measurements.tsv", "observableId\tsimulationConditionId\ttime\tmeasurement\nouter\tball\t-1\t300\n",
     "row 2, column 'time'"),
    ("measurements.tsv", "observableId\tsimulationConditionId\ttime\tmeasurement\nouter\tbal\t1\t300\n",
     "row 2, column 'simulationConditionId': unknown condition 'bal'"),
    ("measurements.tsv", "observableId\tsimulationConditionId\ttime\tmeasurement\nouter\tball\t1\n",
     "row 2: 3 cells, expected 4"),
    ("measurements.tsv", "observableId,simulationConditionId,time,measurement\nouter,ball,1,300\n",
     "row 1: one column"),
    ("measurements.tsv", "", "the measurement table is empty"),
    ("conditions.tsv", "conditionId\tgeometry.radius_um\nball\t-300\n",
     "row 2, column 'conditionId': condition 'ball' does not make a valid scenario"),
    ("conditions.tsv", "conditionId\tgeometry.radius_um\to2_uptake\nball\t300\t800\n",
     "row 2, column 'o2_uptake': 'o2_uptake' is also in the parameter table"),
]


@pytest.mark.parametrize("name,text,expected", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_tables_are_refused_with_file_row_and_column(tmp_path, name, text, expected):
    path = write_problem(tmp_path, placeholder_measurements())
    with open(tmp_path / name, "w") as fh:
        fh.write(text)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ProblemError) as err:
        load_problem(path)
    message = str(err.value)
    assert expected in message, message
    if expected.startswith("row") or "row" in expected:
        assert str(tmp_path / name) in message, message
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


CALIBRATION = Path(__file__).parent.parent / "scenarios" / "calibration"
COMMITTED = sorted(p for p in CALIBRATION.glob("**/*.toml")  # the problem files
                   if p.name != "scenario.toml" and not p.name.endswith(".parameters.toml"))


@pytest.mark.parametrize("path", COMMITTED,
                         ids=lambda p: str(p.relative_to(CALIBRATION).with_suffix("")))
def test_the_committed_problems_load_and_their_domain_holds_the_spheroid(path):
    """Each real-data problem loads; where it measures the outer radius, its spheroid's
    domain holds the largest measured radius with 100 um to spare (room for the model to
    outgrow the data: cells must not reach the outer face, which is the medium's). An
    unstirred layer wider than the rest of the domain is the outer face's far field
    (``kernels.radial_diffusion_step``), so the domain need not hold it."""
    fp = load_problem(str(path))
    assert fp.estimated and len(fp.measurements) > 0
    radius = [i for i, o in enumerate(fp.observables) if o.formula.text.strip() == "tumor_radius"]
    if radius:
        grid = fp.scenario.data["grid"]
        assert fp.scenario.data["geometry"]["kind"] == "spheroid"
        largest = fp.measurements.value[np.isin(fp.measurements.observable, radius)].max()
        assert largest + 100.0 <= grid["n"] * grid["spacing_um"]


@pytest.mark.parametrize("dose", [100, 1000])
def test_a_held_out_dose_is_split_from_the_whole_problem(dose):
    """Matthews' dose held out: the fit's rows and the prediction's are the whole
    problem's, each once, and the prediction's model values are the fit's result."""
    folder = CALIBRATION / "matthews2022_gemcitabine"
    held = folder / f"held_out_{dose}nM"
    whole = load_problem(str(folder / "problem.toml"))
    fitted = load_problem(str(held / "fit.toml"))
    scored = load_problem(str(held / "predict.toml"))

    def rows(fp):
        return sorted(zip((fp.conditions[c].id for c in fp.measurements.condition),
                          (fp.observables[o].id for o in fp.measurements.observable),
                          fp.measurements.time_min, fp.measurements.value))

    assert {c.id for c in scored.conditions} == {f"gemcitabine_{dose}nM"}
    assert f"gemcitabine_{dose}nM" not in {c.id for c in fitted.conditions}
    assert sorted(rows(fitted) + rows(scored)) == rows(whole)
    assert {q.id for q in scored.estimated} == {"sigma_area", "sigma_pi"}  # closed form
    values = tomllib.loads((held / "fitted.parameters.toml").read_text())["parameters"]
    model = [q for q in fitted.estimated if q.model]
    assert model and all(scored.parameter(q.id).nominal == values[q.id] for q in model)


def test_bad_problem_file_and_settings(tmp_path):
    path = write_problem(tmp_path, placeholder_measurements(), fit_settings="startz = 3\n")
    with pytest.raises(ProblemError, match=r"fit.startz: unknown setting; did you mean 'starts'"):
        load_problem(path)
    path = write_problem(tmp_path, placeholder_measurements(), fit_settings="starts = 0\n")
    with pytest.raises(ProblemError, match=r"fit.starts: expected 1 to 10000, got 0"):
        load_problem(path)
    path = write_problem(tmp_path, placeholder_measurements())
    with open(tmp_path / "measurements.tsv", "wb") as fh:
        fh.write(b"observableId\t\xff\n")
    with pytest.raises(ProblemError, match=r"measurements.tsv: not a text file: byte 0xff"):
        load_problem(path)


def test_command_line_reports_a_bad_table(tmp_path, capsys):
    path = write_problem(tmp_path, "observableId\tsimulationConditionId\ttime\tmeasurement\n"
                                   "outer\tball\tsoon\t300\n")
    assert tmesim.main(["fit", str(path), "-o", str(tmp_path / "r.h5")]) == 2
    err = capsys.readouterr().err
    assert "measurements.tsv: row 2, column 'time': expected a number, got 'soon'" in err
    assert not (tmp_path / "r.h5").exists()


def test_formulas_and_noise_parameters(tmp_path):
    """A scale parameter in the formula, noise from the measurement table, log transform."""
    obs = ("observableId\tobservableFormula\tobservableTransformation\tnoiseFormula\n"
           "outer\tscale * tumor_radius\tlog\tnoiseParameter1_outer\n"
           "necrotic\tnecrotic_radius + 1\tlin\t2\n")
    pars = ("parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\n"
            "tumor_division_rate\tlog\t0.0002\t0.004\t0.00072\t1\n"
            "scale\tlin\t0.5\t2\t1\t0\n")
    meas = ("observableId\tsimulationConditionId\ttime\tmeasurement\tnoiseParameters\n"
            "outer\tball\t1\t320\t0.1\nnecrotic\tball\t1\t40\t\n")
    obj = Objective(load_problem(write_problem(tmp_path, meas, observables=obs,
                                               parameters=pars)))
    theta = jnp.asarray(obj.nominal)
    h, sigma, terms = obj.evaluate(theta)
    sim, ok = obj.simulate(theta)
    assert bool(ok)
    r = float(sim["tumor_radius"][list(obj.order).index(0)])
    k = list(obj.order).index(0)
    assert float(h[k]) == pytest.approx(r)
    assert float(sigma[k]) == pytest.approx(0.1)
    # log-normal NLL of 320 around the model's radius, with PEtab's Jacobian term log(m)
    want = 0.5 * math.log(2 * math.pi * 0.01) + 0.5 * ((math.log(320) - math.log(r)) / 0.1) ** 2 \
        + math.log(320)
    assert float(terms[k]) == pytest.approx(want, rel=1e-12)


@pytest.mark.slow  # measured 1.5-4.5 minutes on 2 cores (README: -m slow)
def test_closed_form_noise_parameters_are_the_optimum_of_the_full_likelihood(tmp_path):
    """``hierarchical = true``: a noise parameter that is the whole noise formula of its
    measurements (directly, or through noiseParameters) is set to its optimum given the
    model. Against the same problem with the noise parameters optimised: the NLL at that
    optimum is the same, the full NLL's derivative in each noise parameter vanishes there,
    and the gradient in the model parameters is the full one's (the envelope theorem);
    a noise parameter inside a larger formula stays an optimiser coordinate."""
    obs = ("observableId\tobservableFormula\tnoiseFormula\tnoiseDistribution\n"
           "outer\ttumor_radius\tsigma_outer\tnormal\n"
           "necrotic\tnecrotic_radius\tnoiseParameter1_necrotic\tlaplace\n"
           "outer2\ttumor_radius\t0.05 * tumor_radius + sigma_mixed\tnormal\n")
    pars = ("parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\n"
            "tumor_division_rate\tlog\t0.0002\t0.004\t0.0009\t1\n"
            "o2_uptake\tlog\t300\t1500\t800\t1\n"
            "sigma_outer\tlog\t0.01\t1000\t10\t1\n"
            "sigma_necrotic\tlog\t0.01\t1000\t10\t1\n"
            "sigma_mixed\tlog\t0.01\t1000\t10\t1\n")
    rows = ["observableId\tsimulationConditionId\ttime\tmeasurement\tnoiseParameters"]
    for t, outer, nec in ((0.5, 310, 20), (1.0, 335, 60), (1.5, 345, 95), (2.0, 372, 140)):
        rows += [f"outer\tball\t{t}\t{outer}\t", f"necrotic\tball\t{t}\t{nec}\tsigma_necrotic",
                 f"outer2\tball\t{t}\t{outer + 3}\t"]
    meas = "\n".join(rows) + "\n"
    full = Objective(load_problem(write_problem(tmp_path / "full", meas, observables=obs,
                                                parameters=pars)))
    hier = Objective(load_problem(write_problem(tmp_path / "hier", meas, observables=obs,
                                                parameters=pars,
                                                fit_settings="hierarchical = true\n")))
    assert hier.ids == ("tumor_division_rate", "o2_uptake", "sigma_mixed")
    assert set(hier.closed) == {"sigma_outer", "sigma_necrotic"}
    theta = jnp.asarray(hier.nominal + np.array([0.1, -0.1, 0.2]))
    closed: dict = {}
    hier.evaluate(theta, closed=closed)
    sigma = {p: float(v) for p, v in closed.items()}
    # the closed forms by hand: RMS of the outer residuals, mean |residual| of the necrotic
    sim, _ = hier.simulate(theta)
    obs_of = hier.fp.measurements.observable[hier.order]
    value = hier.fp.measurements.value[hier.order]
    r_out = value[obs_of == 0] - np.asarray(sim["tumor_radius"])[obs_of == 0]
    r_nec = value[obs_of == 1] - np.asarray(sim["necrotic_radius"])[obs_of == 1]
    assert sigma["sigma_outer"] == pytest.approx(np.sqrt(np.mean(r_out ** 2)), rel=1e-12)
    assert sigma["sigma_necrotic"] == pytest.approx(np.mean(np.abs(r_nec)), rel=1e-12)
    x = np.array([*np.asarray(theta)[:2], math.log(sigma["sigma_outer"]),
                  math.log(sigma["sigma_necrotic"]), float(theta[2])])
    assert full.ids == ("tumor_division_rate", "o2_uptake", "sigma_outer", "sigma_necrotic",
                        "sigma_mixed")
    v_full, g_full = full.value_and_grad_batch(x[None])
    v_hier, g_hier = hier.value_and_grad_batch(np.asarray(theta)[None])
    assert float(v_hier[0]) == pytest.approx(float(v_full[0]), rel=1e-12)
    # d NLL / d log sigma = n - sum r^2 / sigma^2 (normal), n - sum |r| / sigma (Laplace):
    # zero at the closed form, up to round-off of a sum of n = 4 terms of order 1
    assert abs(float(g_full[0, 2])) < 1e-9 and abs(float(g_full[0, 3])) < 1e-9
    np.testing.assert_allclose(np.asarray(g_hier[0]), np.asarray(g_full[0])[[0, 1, 4]],
                               rtol=1e-9, atol=1e-9)


def test_a_problem_with_nothing_estimated_scores_its_parameter_set(tmp_path, synthetic):
    """Every estimate 0 (a parameter set fitted elsewhere, scored on conditions it was not
    fitted to): one evaluation, no step; the NLL is the estimating problem's at the same
    values, and the parameter file holds the fixed values and the scenario's own."""
    meas, _ = synthetic
    fixed = write_problem(tmp_path / "fixed", meas, parameters=(
        "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\n"
        f"tumor_division_rate\tlog\t0.0002\t0.004\t{TRUTH['tumor_division_rate']}\t0\n"
        f"o2_uptake\tlog\t300\t1500\t{TRUTH['o2_uptake']}\t0\n"),
        scenario=SCENARIO.format(kind="spheroid") + "[parameters]\nnecrosis_rate = 0.002\n")
    out = str(tmp_path / "fixed" / "result.h5")
    fit(fixed, out, progress=None)
    with h5py.File(out, "r") as h5:
        assert h5["meta"].attrs["status"] == "complete"
        assert h5["starts/value"].shape == (1,)
        assert int(h5["starts/iterations"][0]) == 0 and int(h5["starts/evaluations"][0]) == 1
        value = float(h5["best/value"][0])
    assert "nothing estimated: the parameter set of the problem's tables, scored" in \
        tmesim.inspect_text(out)
    assert [os.path.basename(f) for f in tmesim.plot_fit(out)] == ["result_fit.png"]
    free = write_problem(tmp_path / "free", meas,
                         scenario=SCENARIO.format(kind="spheroid")
                         + "[parameters]\nnecrosis_rate = 0.002\n")
    obj = Objective(load_problem(free))
    theta = np.array([to_scale(TRUTH[p], "log") for p in obj.ids])
    assert value == pytest.approx(float(obj.nll(jnp.asarray(theta))), rel=1e-12)
    text = open(str(tmp_path / "fixed" / "result.parameters.toml")).read()
    assert f"tumor_division_rate = {TRUTH['tumor_division_rate']!r}  # not fitted: fixed" in text
    assert "necrosis_rate = 0.002  # not fitted: set by the problem's scenario" in text


def test_a_finished_result_is_summarised_again_without_fitting(tmp_path, synthetic):
    """``summarise`` (``tmesim fit --summarise``): a finished result's summary and parameter
    file are made again from its stored state, as the fit made them; nothing is fitted
    again. Without a finished result it is refused."""
    meas, _ = synthetic
    path = write_problem(tmp_path, meas, fit_settings=(
        "starts = 1\niterations = 2\npolish_iterations = 1\nprofiles = []\n"))
    out = str(tmp_path / "result.h5")
    with pytest.raises(tmesim.FitError, match="there is none"):
        fit(path, out, progress=None, summarise=True)
    fit(path, out, progress=None)
    params = tmp_path / "result.parameters.toml"
    text = params.read_text()
    with h5py.File(out, "r+") as h5:
        value = h5["summary/wald"][...]
        evaluations = h5["starts/evaluations"][...]
        seconds = h5["meta"].attrs["seconds"]
        h5["summary/wald"][...] = 0.0  # as an older version might have written it
    params.unlink()
    fit(path, out, progress=None, summarise=True)
    with h5py.File(out, "r") as h5:
        assert h5["meta"].attrs["status"] == "complete"
        np.testing.assert_array_equal(h5["summary/wald"][...], value)
        np.testing.assert_array_equal(h5["starts/evaluations"][...], evaluations)
        assert h5["meta"].attrs["seconds"] == seconds  # the fit's time, not the summary's
    assert params.read_text() == text
    with pytest.raises(tmesim.FitError, match="not overwrite"):
        fit(path, out, progress=None, summarise=True, overwrite=True)


# --------------------------------------------------------------------------
def test_no_recompilation_across_iterations(tmp_path, synthetic):
    """The fit's step (L-BFGS with its line search, one point per call as a fit on a CPU
    runs it) traces the objective once, then never again."""
    path = write_problem(tmp_path, synthetic[0])
    obj = Objective(load_problem(path))
    opt = Optimiser(obj, "lbfgs", 0.05)
    theta = np.asarray(obj.nominal)[None]
    state = opt.init(theta)
    value, grad = obj.value_and_grad_batch(theta)
    traced = obj.traces
    x = jnp.asarray(theta)
    mask = jnp.ones_like(x)
    done, rejected = jnp.zeros(1, bool), jnp.zeros(1, jnp.int32)
    counts = []
    for _ in range(4):
        x, state, value, grad, rejected, _ = opt.step(x, state, value, grad, mask, done,
                                                      rejected)
        counts.append(obj.traces)
    assert counts[0] > traced  # the step traced the objective once (value and line search)
    assert counts[1:] == [counts[0]] * 3, counts  # and never again
    assert np.all(np.isfinite(np.asarray(value)))


def test_conditions_solved_together_match_each_solved_alone(tmp_path):
    """Two conditions of one structure are one vmapped solve, saved at the union of their
    measurement steps; each measurement gets its own condition's value at its own time
    (against a problem holding that condition alone), and a batch of two points (vmap)
    gives what each point gives alone (a batch of one runs unbatched)."""
    rows = {"ball": ((0.5, 1.5, 2.0), 300), "small": ((1.0, 2.0), 250)}

    def table(which):
        out = ["observableId\tsimulationConditionId\ttime\tmeasurement"]
        for cid in which:
            for t in rows[cid][0]:
                out += [f"outer\t{cid}\t{t:g}\t{rows[cid][1]}", f"necrotic\t{cid}\t{t:g}\t40"]
        return "\n".join(out) + "\n"

    def simulated(folder, which):
        conditions = "conditionId\tgeometry.radius_um\n" + "".join(
            f"{cid}\t{rows[cid][1]}\n" for cid in which)
        obj = Objective(load_problem(write_problem(tmp_path / folder, table(which),
                                                   conditions=conditions)))
        h, _, _ = obj.evaluate(jnp.asarray(obj.nominal))
        back = np.empty(len(obj.order), int)
        back[obj.order] = np.arange(len(obj.order))
        return obj, np.asarray(h)[back]

    both, h = simulated("both", ("ball", "small"))
    assert len(both.groups) == 1 and len(both.groups[0].conditions) == 2
    _, ball = simulated("ball", ("ball",))
    _, small = simulated("small", ("small",))
    np.testing.assert_allclose(h, np.concatenate([ball, small]), rtol=1e-12)
    assert h[0] != h[len(ball)]  # two radii: the conditions differ
    thetas = np.stack([both.nominal, both.nominal + 0.05])
    value, grad = both.value_and_grad_batch(thetas)
    for k in range(2):
        v1, g1 = both.value_and_grad_batch(thetas[k:k + 1])
        np.testing.assert_allclose(value[k], v1[0], rtol=1e-12)
        np.testing.assert_allclose(grad[k], g1[0], rtol=1e-9)


def test_batched_maps_only_what_differs():
    """``batched``: a concrete leaf equal in every member goes in once, unbatched (a batched
    scalar in the cells' transport pass made XLA's CPU code 4 times slower); a leaf that
    differs, or a traced one, is mapped; the results are those of ``jax.vmap``."""
    from tmesim._fit import batched

    seen = {}

    def fn(v):
        seen.update({k: isinstance(x, jax.core.Tracer) for k, x in v.items()})
        return v["shared"] * v["differs"] + v["shared_vector"].sum()

    v = {"shared": np.full(3, 2.0), "differs": np.arange(3.0),
         "shared_vector": np.ones((3, 4))}
    out = batched(fn)(v)
    assert seen == {"shared": False, "differs": True, "shared_vector": False}
    np.testing.assert_array_equal(out, jax.vmap(fn)(v))
    same = {"a": np.ones(2), "b": np.ones((2, 3))}  # nothing differs: one leaf is still mapped
    np.testing.assert_array_equal(batched(lambda v: v["a"] + v["b"].sum())(same), [4.0, 4.0])
    traced = jax.jit(lambda x: batched(lambda v: v["x"] * 2)({"x": x}))(jnp.ones(3))
    np.testing.assert_array_equal(traced, [2.0, 2.0, 2.0])


def test_loss_gradient_of_a_spheroid_problem_against_finite_differences(tmp_path, synthetic):
    """The whole objective of a fit as it runs by default (the radially symmetric model, two
    days, noise that scales with the prediction) against central differences, each from
    the fit's own compiled call (the one the test above compiled). At the nominal values:
    0.1 above them on the log scale a kink of the loss (a clip in the model or an
    observable) lies within 1e-4 of the point, and the difference crosses it (measured
    there: 0.09% off at a step of 1e-4, 3e-9 at 1e-6). At the nominal values the step of
    1e-4 agrees to 5e-8 and 4e-7 (relative), both parameters."""
    obj = Objective(load_problem(write_problem(tmp_path, synthetic[0])))
    theta = np.asarray(obj.nominal)
    eps = 1e-4
    points = [theta] + [theta + s * eps * e for e in np.eye(len(theta)) for s in (1, -1)]
    out = [obj.value_and_grad_batch(p[None]) for p in points]
    value = [float(v[0]) for v, _ in out]
    for i in range(len(theta)):
        fd = (value[1 + 2 * i] - value[2 + 2 * i]) / (2 * eps)
        # float64, eps = 1e-4 on the log scale: truncation ~1e-8 relative, round-off
        # ~1e-16 * |NLL| / eps
        assert float(out[0][1][0, i]) == pytest.approx(fd, rel=1e-5, abs=1e-7), (obj.ids[i], fd)


def test_the_objective_is_finite_on_its_bounds(tmp_path, synthetic):
    """A log-scaled parameter on its bound: exp(log(0.0002)) rounds below 0.0002 and
    exp(log(0.004)) above 0.004, outside the bounds the plan checks, which made the NLL
    infinite on the bounds (EMT6/Ro's and Matthews' polish refused every step there).
    The value is clipped to the bound; the objective is continuous there, and its
    derivative on the bound is the one from inside (a plain clip halves it at the tie,
    which the profiles' first step at a bound divides by)."""
    obj = Objective(load_problem(write_problem(tmp_path, synthetic[0])))
    for bound in (obj.lower, obj.upper):
        theta = np.array(obj.nominal)
        theta[0] = bound[0]
        inside = theta.copy()
        inside[0] += 1e-7 * np.sign(obj.nominal[0] - bound[0])
        (v, g), (w, h) = (obj.value_and_grad_batch(t[None]) for t in (theta, inside))
        assert np.isfinite(float(v[0])) and np.all(np.isfinite(np.asarray(g)))
        assert float(v[0]) == pytest.approx(float(w[0]), abs=1e-3)
        assert float(g[0, 0]) == pytest.approx(float(h[0, 0]), rel=1e-3)
    # the summary (and the parameter file written from it) holds a value within the bounds
    from tmesim._fit import FitState, from_scale, summarise

    q, P = obj.fp.parameter(obj.ids[0]), len(obj.nominal)
    assert float(from_scale(obj.lower[0], "log")) < q.lower  # the rounding guarded against
    for bound in (obj.lower, obj.upper):
        best = np.array(obj.nominal)
        best[0] = bound[0]
        st = FitState("done", best[None], best[None], np.zeros(1), np.zeros((1, P)),
                      np.zeros((1, 1)), np.zeros(1, int), np.ones(1, bool), np.zeros(1, int),
                      None, best=best, best_value=0.0)
        value = summarise(obj, st)["parameters"][obj.ids[0]]["value"]
        assert q.lower <= value <= q.upper


def test_a_rejected_step_restarts_the_memory_and_a_second_stops_the_start():
    """L-BFGS on a quadratic told that its value is far lower than it is: every step
    "rises" and is rejected. The first rejection keeps the point and restarts the
    optimiser's memory (not the old state, which would repeat the same step); the second
    in a row, from that fresh memory, reaches REJECTIONS = 2."""
    from types import SimpleNamespace

    from tmesim._fit import REJECTIONS

    obj = SimpleNamespace(nll=lambda x: jnp.sum((x - 1.0) ** 2), dtype=jnp.float64,
                          lower=np.full(2, -10.0), upper=np.full(2, 10.0))
    opt = Optimiser(obj, "lbfgs", 0.05)
    x = jnp.asarray([[0.0, 3.0]])
    state = opt.init(x)
    mask, done = jnp.ones_like(x), jnp.zeros(1, bool)
    value, grad = jax.vmap(jax.value_and_grad(obj.nll))(x)
    x1, state1, value1, grad1, rejected, _ = opt.step(x, state, value, grad, mask, done,
                                                      jnp.zeros(1, jnp.int32))
    assert float(value1[0]) < float(value[0])  # an honest first step is taken
    x2, state2, _, _, rejected, _ = opt.step(x1, state1, value1 - 1e6, grad1, mask, done,
                                             rejected)
    np.testing.assert_array_equal(x2, x1)
    assert int(rejected[0]) == 1
    for got, fresh in zip(jax.tree_util.tree_leaves(state2),
                          jax.tree_util.tree_leaves(opt.init(x1))):
        np.testing.assert_array_equal(got, fresh)  # the memory of the first step is gone
    _, _, _, _, rejected, _ = opt.step(x2, state2, value1 - 1e6, grad1, mask, done, rejected)
    assert int(rejected[0]) == REJECTIONS


def test_a_step_counts_the_evaluations_its_line_search_made():
    """The step's count of loss-and-gradient evaluations (a fit's cost, in its result file
    and `tmesim inspect`) against the evaluations counted as they run, on Rosenbrock's
    valley, where the line search takes one to several trials a step."""
    from types import SimpleNamespace

    calls = []

    def nll(x):
        jax.debug.callback(lambda: calls.append(1))
        return 100.0 * (x[1] - x[0] ** 2) ** 2 + (1.0 - x[0]) ** 2

    obj = SimpleNamespace(nll=nll, dtype=jnp.float64, lower=np.full(2, -5.0),
                          upper=np.full(2, 5.0))
    opt = Optimiser(obj, "lbfgs", 0.05)
    x = jnp.asarray([[-1.2, 1.0]])
    state, mask, done = opt.init(x), jnp.ones_like(x), jnp.zeros(1, bool)
    value, grad = jax.vmap(jax.value_and_grad(nll))(x)
    rejected = jnp.zeros(1, jnp.int32)
    counted = []
    for _ in range(8):
        jax.effects_barrier()
        calls.clear()
        x, state, value, grad, rejected, evaluations = opt.step(x, state, value, grad, mask,
                                                                done, rejected)
        jax.effects_barrier()
        counted.append(int(evaluations[0]))
        assert counted[-1] == len(calls)
    assert min(counted) >= 1 and max(counted) > 1, counted
    _, _, _, _, _, evaluations = opt.step(x, state, value, grad, mask, jnp.ones(1, bool),
                                          rejected)
    assert int(evaluations[0]) == 0  # a finished start makes none


def test_a_start_where_the_objective_is_not_finite_is_drawn_again():
    """A start whose simulation fails (an infinite NLL) is replaced by a draw within the
    bounds, seeded, up to REDRAWS times; then it is left stopped at its infinite value."""
    from types import SimpleNamespace

    from tmesim._fit import REDRAWS, FitState, _starting_values, _Workers

    calls = []

    def value_and_grad_batch(thetas):
        calls.append(np.array(thetas))
        v = np.where(thetas[:, 0] > 0.5, np.inf, np.sum(thetas ** 2, axis=1))
        return v, 2 * thetas

    obj = SimpleNamespace(value_and_grad_batch=value_and_grad_batch,
                          lower=np.zeros(2), upper=np.ones(2))

    def state(starts):
        S = len(starts)
        return FitState("optimise", starts.copy(), starts.copy(), np.full(S, np.nan),
                        np.full((S, 2), np.nan), np.full((S, 3), np.nan),
                        np.zeros(S, np.int64), np.zeros(S, bool), np.zeros(S, np.int32), None)

    workers = _Workers(2)
    try:
        st = state(np.array([[0.9, 0.1], [0.2, 0.3]]))
        _starting_values(obj, st, 1, workers, {"seed": 3}, lambda: None, lambda *a, **k: None)
        assert st.theta[0, 0] <= 0.5 and np.all((0 <= st.theta[0]) & (st.theta[0] <= 1))
        np.testing.assert_array_equal(st.starts, st.theta)  # the start is the point used
        np.testing.assert_array_equal(st.theta[1], [0.2, 0.3])
        assert np.all(np.isfinite(st.value)) and not st.done.any()
        assert st.history[0, 0] == st.value[0] == np.sum(st.theta[0] ** 2)
        again = state(np.array([[0.9, 0.1], [0.2, 0.3]]))  # the same seed: the same draws
        _starting_values(obj, again, 1, workers, {"seed": 3}, lambda: None,
                         lambda *a, **k: None)
        np.testing.assert_array_equal(again.theta, st.theta)
        calls.clear()
        obj.lower = np.array([0.6, 0.0])  # nowhere finite
        st = state(np.array([[0.9, 0.1]]))
        _starting_values(obj, st, 1, workers, {"seed": 3}, lambda: None, lambda *a, **k: None)
        assert len(calls) == REDRAWS + 1 and st.done[0] and st.value[0] == np.inf
    finally:
        workers.close()


def _brute_force_model_decrease(H, g, theta, lower, upper, radius, n=200_000, seed=0):
    """The largest decrease of g·p + ½pᵀHp over random p in the scaled ball and the box."""
    rng = np.random.default_rng(seed)
    P = len(g)
    width = upper - lower
    d = rng.normal(size=(n, P))
    d *= (rng.random((n, 1)) ** (1 / P) * radius / np.linalg.norm(d, axis=1, keepdims=True))
    p = np.clip(theta + d * width, lower, upper) - theta
    return np.max(-(p @ g + 0.5 * np.einsum("ni,ij,nj->n", p, H, p)))


def test_trust_region_step_along_a_valley_that_leaves_the_box():
    """Two parameters in a narrow valley (curvatures 1 and 1000 at 45 degrees) that the
    gradient pushes up, one 1e-5 below its upper bound, the other 0.05: Matthews' chemo
    lethality and half-maximal level. Putting both on their bounds at once raised the
    model (by 0.58), and the polish stopped; the optimum has the first on its bound and
    the second at its conditional minimum, in closed form."""
    from tmesim._fit import trust_region_step

    R = np.array([[1.0, -1.0], [1.0, 1.0]]) / math.sqrt(2.0)
    H = R @ np.diag([1.0, 1000.0]) @ R.T
    g = np.array([-1.0, -1.0])
    lower, upper = np.array([-1.0, -1.0]), np.array([1e-5, 0.05])  # width 1 and 1.05
    p, decrease = trust_region_step(H, g, np.zeros(2), lower, upper, 0.1)
    q1 = -(g[1] + H[1, 0] * 1e-5) / H[1, 1]
    np.testing.assert_allclose(p, [1e-5, q1], rtol=1e-9, atol=1e-15)
    assert decrease == pytest.approx(-(g @ p + 0.5 * p @ H @ p), rel=1e-12) and decrease > 0


@pytest.mark.parametrize("negative", [0.0, 0.2])
def test_trust_region_step_never_raises_the_model(negative):
    """300 random quadratics in 4 parameters, each near, on or far from its bounds, with
    positive definite Hessians (curvatures 1e-3 to 1e3) or, at ``negative``, some of them
    negative: the step stays in the box and the region and never raises the model. With a
    positive definite Hessian the subproblem is convex and the step is its optimum: it
    lowers the model at least as much as any of 20000 random feasible points."""
    from tmesim._fit import trust_region_step

    rng = np.random.default_rng(1)
    P = 4
    for k in range(300):
        lower, upper = -rng.uniform(1, 10, P), rng.uniform(1, 10, P)
        width = upper - lower
        theta = rng.uniform(lower, upper)
        where = rng.random(P)
        near = width * 10 ** rng.uniform(-7, -1, P)
        theta = np.where(where < 0.25, upper - near, np.where(where < 0.5, lower + near, theta))
        theta = np.where((where >= 0.5) & (where < 0.6), upper, theta)
        Q, _ = np.linalg.qr(rng.normal(size=(P, P)))
        w = 10 ** rng.uniform(-3, 3, P) * np.where(rng.random(P) < negative, -1, 1)
        H = (Q @ np.diag(w) @ Q.T) / np.outer(width, width)
        g = rng.normal(size=P) * 10 ** rng.uniform(-2, 1, P) / width
        radius = 10 ** rng.uniform(-2, 0)
        p, decrease = trust_region_step(H, g, theta, lower, upper, radius)
        slack = 1e-12 * width  # a step onto a bound: theta + (bound - theta) rounds
        assert np.all(theta + p >= lower - slack) and np.all(theta + p <= upper + slack), k
        assert np.linalg.norm(p / width) <= radius * (1 + 1e-9), k
        assert decrease >= 0.0, (k, decrease)
        if negative == 0.0:
            best = _brute_force_model_decrease(H, g, theta, lower, upper, radius, n=20_000,
                                               seed=k)
            assert decrease >= best - 1e-12 * max(1.0, abs(best)), (k, decrease, best)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # "box": a face the region only touches
@pytest.mark.parametrize("case", ["newton", "small", "indefinite", "hard", "box"])
def test_trust_region_step_solves_its_subproblem(case):
    """The polish's step against the Newton step (inside the region) or, on the boundary,
    against the best of 200000 random points of the scaled ball and the box: it must
    lower the quadratic model at least as much (up to the sampling's reach)."""
    from tmesim._fit import trust_region_step

    rng = np.random.default_rng(5)
    P = 4
    lower, upper = np.full(P, -10.0), np.array([10.0, 20.0, 5.0, 10.0])
    theta = np.zeros(P)
    Q, _ = np.linalg.qr(rng.normal(size=(P, P)))
    w = {"newton": [1.0, 2.0, 5.0, 10.0], "small": [1e-3, 2.0, 50.0, 1e3],
         "indefinite": [-3.0, -0.5, 2.0, 10.0], "hard": [-1.0, 1.0, 2.0, 3.0],
         "box": [1.0, 2.0, 5.0, 10.0]}[case]
    H = Q @ np.diag(w) @ Q.T
    g = rng.normal(size=P)
    radius = 0.3
    if case == "hard":
        g -= (g @ Q[:, 0]) * Q[:, 0]  # nothing along the negative curvature's direction
    if case == "box":
        theta = np.array([-10.0, 0.0, 4.99, 0.0])
        g[0] = abs(g[0]) + 1.0  # at the lower bound, the gradient pointing out of the box
        g[2] = -1.0  # towards the upper bound, 0.01 away
        radius = 1.0
    p, decrease = trust_region_step(H, g, theta, lower, upper, radius)
    assert decrease == pytest.approx(-(g @ p + 0.5 * p @ H @ p), rel=1e-12)
    assert np.all(theta + p >= lower) and np.all(theta + p <= upper)
    size = np.linalg.norm(p / (upper - lower))
    if case == "newton":
        newton = -np.linalg.solve(H * ((upper - lower)[:, None] * (upper - lower)), g *
                                  (upper - lower)) * (upper - lower)
        assert np.linalg.norm(newton / (upper - lower)) < radius
        np.testing.assert_allclose(p, newton, rtol=1e-10, atol=1e-12)
        return
    assert size <= radius * (1 + 1e-9)
    if case != "box":
        assert size == pytest.approx(radius, rel=1e-9)  # on the boundary
    else:
        assert p[0] == 0.0 and theta[2] + p[2] <= upper[2]
    best = _brute_force_model_decrease(H, g, theta, lower, upper, radius)
    assert decrease >= best * (1 - 1e-6) - 1e-12, (decrease, best)


def test_polish_reaches_the_bottom_of_a_narrow_curved_valley():
    """The trust-region Newton polish on Rosenbrock's valley (curvature 1e3:1, as the
    WM983b objective's) scaled by 1e4 (an NLL's size: the polish stops where its model
    predicts less than POLISH_DECREASE = 1e-6), from the classic start: the minimum to
    1e-5 within 40 steps; the Hessian it leaves is the one at that point (the Laplace
    stage's)."""
    from types import SimpleNamespace

    from tmesim._fit import FitState, _polish, _Progress, _Workers

    def rosenbrock(x):
        return 1e4 * ((1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2)

    vg = jax.jit(jax.vmap(jax.value_and_grad(rosenbrock)))
    obj = SimpleNamespace(value_and_grad_batch=vg, dtype=jnp.float64,
                          lower=np.array([-3.0, -3.0]), upper=np.array([3.0, 3.0]))
    start = np.array([-1.2, 1.0])
    st = FitState("polish", start[None], start[None], np.zeros(1), np.zeros((1, 2)),
                  np.zeros((1, 1)), np.zeros(1, np.int64), np.ones(1, bool),
                  np.zeros(1, np.int32), None, best=start.copy(),
                  best_value=float(rosenbrock(start)))
    workers = _Workers(1)
    try:
        _polish(obj, st, 1, workers, {"polish_iterations": 40, "tolerance": 1e-8},
                lambda: None, _Progress(None))
    finally:
        workers.close()
    np.testing.assert_allclose(st.best, [1.0, 1.0], atol=1e-5)
    assert st.polish_iterations < 40 and st.best_value < 1e-6
    hist = st.polish_history[: st.polish_iterations + 1]
    assert np.all(np.diff(hist) <= 0)  # only steps that lower the NLL are taken
    np.testing.assert_allclose(st.hessian, [[8.02e6, -4e6], [-4e6, 2e6]], rtol=1e-4)


def test_profile_points_start_on_the_path_the_hessian_predicts():
    """On a quadratic NLL the Hessian's prediction of the profile path is exact: every
    profile point starts at its conditional optimum (the free gradient is zero there),
    and its NLL is δ²/(2Σ_ii), Σ = H⁻¹, the Wald curve, without an iteration."""
    from types import SimpleNamespace

    from tmesim._fit import CHI2_95, FitState, _profile_path, _profiles, _Progress, _Workers

    A = np.array([[4.0, 1.8, 0.5], [1.8, 1.0, -0.2], [0.5, -0.2, 2.0]])  # a tilted valley
    best = np.array([0.1, -0.2, 0.3])

    def nll(t):
        d = t - jnp.asarray(best)
        return 0.5 * d @ jnp.asarray(A) @ d

    vg = jax.jit(jax.vmap(jax.value_and_grad(nll)))
    obj = SimpleNamespace(nll=nll, value_and_grad_batch=vg, dtype=jnp.float64,
                          lower=np.full(3, -50.0), upper=np.full(3, 50.0), ids=("a", "b", "c"))
    for i in range(3):
        d = _profile_path(A, i, 3)
        g = A @ d  # the gradient at best + d: zero but for coordinate i
        np.testing.assert_allclose(np.delete(g, i), 0.0, atol=1e-13)
    st = FitState("profiles", best[None], best[None], np.zeros(1), np.zeros((1, 3)),
                  np.zeros((1, 1)), np.zeros(1, np.int64), np.ones(1, bool),
                  np.zeros(1, np.int32), None, best=best.copy(), best_value=0.0, hessian=A)
    workers = _Workers(1)
    try:
        _profiles(obj, Optimiser(obj, "lbfgs", 0.05), st, 1, workers,
                  {"profile_points": 2, "profiles": None, "profile_iterations": 1,
                   "tolerance": 1e-8, "restarts": 0}, lambda: None, _Progress(None))
    finally:
        workers.close()
    sigma = np.linalg.inv(A)
    for (i, _, x, done), value, theta in zip(st.profile_points, st.profile_values,
                                              st.profile_theta):
        i = int(i)
        assert done == 1.0
        assert value == pytest.approx((x - best[i]) ** 2 / (2 * sigma[i, i]), rel=1e-9)
        np.testing.assert_allclose(theta, best + (x - best[i]) * _profile_path(A, i, 3),
                                   atol=1e-12)
    assert st.profile_values.max() >= CHI2_95 / 2  # each side crossed the threshold


def test_a_profile_point_reaches_its_conditional_minimum_in_a_curved_valley():
    """A profile point of a curved valley (Rosenbrock's in x, y, with z tied to y) is
    re-optimised by trust-region steps from the Laplace Hessian with SR1 updates. The
    profile of y holds x at the root of the cubic 400x³ + (2 − 400y)x − 2 = 0 and z = y;
    at y = 0.5 and 1.4 it is reached to 1e-9 relative within 30 gradient evaluations."""
    from threading import Event
    from types import SimpleNamespace

    from tmesim._fit import _profile_path, _profile_point, laplace_hessian

    def f(t):
        x, y, z = t[0], t[1], t[2]
        return 1e4 * ((1 - x) ** 2 + 100 * (y - x * x) ** 2) + 1e3 * (z - y) ** 2

    vg = jax.jit(jax.vmap(jax.value_and_grad(f)))
    calls = []

    def counted(t):
        calls.append(len(t))
        return vg(jnp.asarray(t))

    obj = SimpleNamespace(value_and_grad_batch=counted, dtype=jnp.float64,
                          lower=np.full(3, -3.0), upper=np.full(3, 3.0))
    best = np.ones(3)
    H = laplace_hessian(obj, best, 1)
    for y in (0.5, 1.4):
        roots = np.roots([400.0, 0.0, 2.0 - 400.0 * y, -2.0])
        x = min(roots[np.abs(roots.imag) < 1e-12].real,
                key=lambda r: (1 - r) ** 2 + 100 * (y - r * r) ** 2)
        exact = 1e4 * ((1 - x) ** 2 + 100 * (y - x * x) ** 2)
        calls.clear()
        start = np.clip(best + (y - 1.0) * _profile_path(H, 1, 3), obj.lower, obj.upper)
        theta, value = _profile_point(obj, None, start[None], np.array([[1.0, 0.0, 1.0]]),
                                      30, 1e-9, Event(), H)
        assert theta[0, 1] == y
        assert value[0] == pytest.approx(exact, rel=1e-9), (theta, x)
        np.testing.assert_allclose(theta[0], [x, y, y], rtol=1e-6)
        assert sum(calls) <= 31


def test_a_profile_point_below_the_optimum_sends_the_fit_back_to_the_polish():
    """A tilted double well, V(x) = (x² − 1)² + 0.3x, with y tied to x: the polish from the
    right well stops in it (a local minimum, 0.60 above the left one); the profile of x
    crosses the barrier (0.72 above the right well, below the 1.92 that ends an interval)
    and finds the left well lower. The fit goes back to the polish from that point, then the Laplace Hessian
    and profiles again, and ends in the left well with no profile point below it. The
    first profiles stop at the lower point: the points after it are left unfinished. With
    restarts = 0 it stays in the right well (and the summary flags it), every profile
    point re-optimised."""
    from types import SimpleNamespace

    from tmesim._fit import LOWER, FitState, _Progress, _stages, _Workers

    def nll(t):
        x, y = t[0], t[1]
        return (x * x - 1.0) ** 2 + 0.3 * x + 10.0 * (y - x) ** 2

    vg = jax.jit(jax.vmap(jax.value_and_grad(nll)))
    obj = SimpleNamespace(nll=nll, value_and_grad_batch=vg, dtype=jnp.float64,
                          lower=np.full(2, -3.0), upper=np.full(2, 3.0), ids=("x", "y"))
    left = np.roots([4.0, 0.0, -4.0, 0.3]).real.min()  # V'(x) = 4x³ − 4x + 0.3
    cfg = {"batch": 1, "polish_iterations": 40, "tolerance": 1e-9, "profile_points": 2,
           "profiles": None, "profile_iterations": 30}
    for restarts in (2, 0):
        start = np.array([1.2, 1.1])
        st = FitState("polish", start[None], start[None], np.zeros(1), np.zeros((1, 2)),
                      np.zeros((1, 1)), np.zeros(1, np.int64), np.ones(1, bool),
                      np.zeros(1, np.int32), None, best=start.copy(),
                      best_value=float(nll(start)))
        workers = _Workers(1)
        saved = []  # the first profiles as each write saw them

        def save():
            if st.restarts == 0 and st.profile_points is not None:
                saved.append((st.profile_points[:, 3].copy(), st.profile_values.copy(),
                              st.best_value))

        try:
            _stages(obj, Optimiser(obj, "lbfgs", 0.05), st, workers, None,
                    dict(cfg, restarts=restarts), save, _Progress(None))
        finally:
            workers.close()
        assert st.stage == "done"
        lowest = np.nanmin(st.profile_values)
        done, values, first_best = saved[-1]
        below = values < first_best - LOWER
        if restarts:
            assert st.restarts == 1
            np.testing.assert_allclose(st.best, [left, left], atol=1e-6)
            assert lowest >= st.best_value - LOWER
            # one point re-optimised at a time: the first lower one ended the profiles
            assert below.sum() == 1 and not done.all()
            assert np.isnan(values[done == 0]).all()
        else:
            assert st.restarts == 0 and st.best[0] > 0.9
            assert lowest < st.best_value - 0.5
            assert done.all() and below.sum() >= 1


def test_profiles_stop_at_a_lower_point_and_wait_for_the_points_under_way(monkeypatch):
    """Two workers: one profile point comes back below the optimum while the other is under
    way. The pass tells that one to stop (``cancel``), waits for it (its error is not
    raised: the point is dropped), leaves every other point unfinished and returns with
    the event cleared for the next pass; the fit then restarts from the lower point."""
    import threading
    import time
    from types import SimpleNamespace

    import tmesim._fit as F

    obj = SimpleNamespace(ids=("x", "y"), lower=np.full(2, -3.0), upper=np.full(2, 3.0))
    st = F.FitState("profiles", np.zeros((1, 2)), np.zeros((1, 2)), np.zeros(1),
                    np.zeros((1, 2)), np.zeros((1, 1)), np.zeros(1, np.int64),
                    np.ones(1, bool), np.zeros(1, np.int32), None, best=np.zeros(2),
                    best_value=10.0, hessian=np.eye(2), best_grad=np.zeros(2))
    lock, calls = threading.Lock(), []

    def point(obj, opt, theta, mask, iters, tolerance, cancel, H=None):
        with lock:
            calls.append(theta.copy())
            k = len(calls)
        if k == 1:
            time.sleep(0.3)  # back, lower, while the other is under way
            return theta, np.full(len(theta), 9.0)
        deadline = time.monotonic() + 60
        while not cancel.is_set():  # under way until told to stop
            assert time.monotonic() < deadline, "never told to stop"
            time.sleep(0.01)
        raise RuntimeError("stopped under way")

    monkeypatch.setattr(F, "_profile_point", point)
    workers = F._Workers(2)
    try:
        F._profiles(obj, None, st, 1, workers, {"profile_points": 2, "profiles": None,
                                                 "profile_iterations": 5, "tolerance": 1e-8,
                                                 "restarts": 2}, lambda: None,
                    F._Progress(None))
        assert not workers.cancel.is_set()
    finally:
        workers.close()
    assert len(calls) == 2 and len(st.profile_points) > 2
    done = st.profile_points[:, 3] == 1
    assert done.sum() == 1 and st.profile_values[done] == 9.0
    assert np.isnan(st.profile_values[~done]).all()
    assert F._restart_from_profiles(st, 2) and st.best_value == 9.0 and st.restarts == 1


def test_profile_interval_ends_are_exact_for_a_quadratic_and_a_linear_rise():
    """The 95% interval's ends between coarse profile points: interpolated in the signed
    root sqrt(2 ΔNLL) at an interior optimum, exact where the profile is quadratic (points
    1 and 3 σ out give 1.96 σ, where interpolating ΔNLL gave 1.71 σ); linearly in ΔNLL
    at an optimum held on its bound, exact where the profile rises linearly from it."""
    from types import SimpleNamespace

    from tmesim._fit import CHI2_95, FitState, summarise

    sigma, g = 0.5, 4.0
    bounds = {"a": SimpleNamespace(lower=-5.0, upper=5.0),
              "b": SimpleNamespace(lower=0.0, upper=5.0)}
    obj = SimpleNamespace(ids=("a", "b"), scales=("lin", "lin"), lower=np.array([-5.0, 0.0]),
                          upper=np.array([5.0, 5.0]),
                          fp=SimpleNamespace(parameter=bounds.__getitem__))
    best = np.array([1.0, 0.0])  # b on its lower bound, the NLL rising inwards by g
    xa = [1 - 3 * sigma, 1 - sigma, 1 + sigma, 1 + 3 * sigma]
    rows = [(0, np.sign(x - 1), x, 1.0) for x in xa] + [(1, 1, x, 1.0) for x in (0.2, 0.6)]
    values = [10 + (x - 1) ** 2 / (2 * sigma ** 2) for x in xa] + [10 + g * x for x in (0.2, 0.6)]
    st = FitState("done", best[None], best[None], np.zeros(1), np.zeros((1, 2)),
                  np.zeros((1, 1)), np.zeros(1, np.int64), np.ones(1, bool),
                  np.zeros(1, np.int32), None, best=best, best_value=10.0,
                  hessian=np.diag([sigma ** -2, 0.0]), best_grad=np.array([0.0, g]),
                  profile_points=np.array(rows, float), profile_values=np.array(values),
                  profile_theta=np.tile(best, (6, 1)))
    out = summarise(obj, st)["parameters"]
    z = math.sqrt(CHI2_95)
    np.testing.assert_allclose(out["a"]["profile"], [1 - z * sigma, 1 + z * sigma], rtol=1e-12)
    np.testing.assert_allclose(out["a"]["wald"], [1 - 1.959963984540054 * sigma,
                                                  1 + 1.959963984540054 * sigma], rtol=1e-12)
    np.testing.assert_allclose(out["b"]["profile"], [0.0, CHI2_95 / 2 / g], rtol=1e-12)
    assert "optimum on the lower bound" in out["b"]["flags"]


def test_profile_points_reach_the_threshold_from_an_optimum_on_a_bound():
    """The first profile points on a side span 2.5 Laplace standard deviations from an
    interior optimum; from an optimum held on a bound by its gradient g (where the NLL
    rises linearly, and WM983b's profile of the oxygen factor's shape, spaced by the
    curvature, had risen by 0.97 of the 1.92 needed after 4 rounds) 1.25 CHI2_95 / 2 / g;
    none on a side whose bound the optimum is on; never past a bound."""
    from types import SimpleNamespace

    from tmesim._fit import CHI2_95, _first_profile_step

    obj = SimpleNamespace(lower=np.array([0.0, 0.0, 0.0]), upper=np.array([1.0, 1.0, 1.0]))
    st = SimpleNamespace(best=np.array([0.5, 0.0, 1.0]), best_grad=np.array([0.0, 20.0, -8.0]))
    assert _first_profile_step(obj, st, 0, 1, 2, 0.1) == pytest.approx(0.125)
    assert _first_profile_step(obj, st, 0, -1, 2, np.inf) == pytest.approx(0.25)  # span / K
    assert _first_profile_step(obj, st, 1, -1, 2, 0.001) is None
    assert _first_profile_step(obj, st, 1, 1, 2, 0.001) == pytest.approx(1.25 * CHI2_95 / 2 / 20 / 2)
    assert _first_profile_step(obj, st, 2, 1, 2, 0.001) is None
    assert _first_profile_step(obj, st, 2, -1, 2, 0.001) == pytest.approx(1.25 * CHI2_95 / 2 / 8 / 2)
    st.best_grad[1] = 0.5  # a shallow rise: the points stop at the bound
    assert _first_profile_step(obj, st, 1, 1, 2, 0.001) == pytest.approx(0.5)


def test_laplace_hessian_is_one_sided_at_a_bound():
    """Central differences inside the box; at a bound (where the objective clips), a
    one-sided difference against the gradient there: exact on a quadratic either way."""
    from types import SimpleNamespace

    from tmesim._fit import laplace_hessian

    A = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, -0.2], [0.5, -0.2, 2.0]])
    lower, upper = np.zeros(3), np.ones(3)

    def vg(t):
        t = np.asarray(t, float)
        inside = np.clip(t, lower, upper)
        return 0.5 * np.einsum("ni,ij,nj->n", inside, A, inside), (inside @ A) * (
            (t >= lower) & (t <= upper))

    obj = SimpleNamespace(value_and_grad_batch=vg, lower=lower, upper=upper,
                          dtype=jnp.float64)
    for theta in (np.array([0.5, 0.5, 0.5]), np.array([0.0, 0.5, 1.0])):
        np.testing.assert_allclose(laplace_hessian(obj, theta, 2), A, rtol=1e-8)


def test_a_minimum_on_a_bound_is_judged_on_the_free_parameters():
    """Two parameters of three on their upper bounds with the NLL falling outwards (as in
    the Matthews fit): the full Hessian curves down along one of them, yet the point is a
    minimum on the box. The free parameter's Laplace interval comes from its own block;
    the held ones get none; no note says "not a minimum"."""
    from types import SimpleNamespace

    from tmesim._fit import summarise

    H = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 2.0], [0.5, 2.0, -0.1]])
    lower, upper = np.full(3, -5.0), np.ones(3)
    bounds = SimpleNamespace(lower=math.exp(-5), upper=math.e)  # [-5, 1] on the log scale
    obj = SimpleNamespace(ids=["a", "b", "c"], scales=["log"] * 3, lower=lower,
                          upper=upper, fp=SimpleNamespace(parameter=lambda pid: bounds))
    st = SimpleNamespace(best=np.array([0.5, 1.0, 1.0]), best_value=10.0, hessian=H,
                         profile_points=None)
    st.best_grad = np.array([0.0, -1.0, -0.1])
    s = summarise(obj, st)
    assert not any("not a minimum" in n for n in s["notes"])
    assert any("b, c on their bounds" in n for n in s["notes"])
    sd_a = 1 / math.sqrt(4.0)  # conditional on b and c: the (a, a) block alone
    lo, hi = s["parameters"]["a"]["wald"]
    assert math.log(lo) == pytest.approx(0.5 - 1.959963984540054 * sd_a)
    assert math.log(hi) == pytest.approx(1.0)  # 0.5 + 0.98, clipped to the bound
    assert s["covariance"][0, 0] == pytest.approx(0.25)
    assert np.isnan(s["covariance"][1:]).all() and np.isnan(s["covariance"][:, 1:]).all()
    for pid in "bc":
        assert np.isnan(s["parameters"][pid]["wald"]).all()
    # the gradient of c turned inwards: c is free, and the (a, c) block is not positive
    # definite (det 4 * -0.1 - 0.25 < 0): not a minimum
    st.best_grad = np.array([0.0, -1.0, 0.1])
    notes = summarise(obj, st)["notes"]
    assert any("b on its bound" in n for n in notes)
    assert any("not positive definite over the parameters not held" in n for n in notes)
    assert summarise(obj, st)["covariance"] is None
    # a value held on its bound is the bound itself: exp(log(5.31667e-4)) rounds below it
    # (Matthews' parameter file had apoptosis_rate = 0.0005316669999999999)
    top = 5.31667e-4
    obj.lower[:], obj.upper[:] = math.log(1e-6), math.log(top)
    obj.fp = SimpleNamespace(parameter=lambda pid: SimpleNamespace(lower=1e-6, upper=top))
    st.best = np.array([-10.0, math.log(top), -9.0])
    assert math.exp(math.log(top)) < top
    assert summarise(obj, st)["parameters"]["b"]["value"] == top


@pytest.mark.slow  # compiles for about 2 minutes; the spheroid problem above runs by default
def test_loss_gradient_through_a_3d_organoid_against_finite_differences(tmp_path):
    """The whole objective (3D octant, 1 day, every process of an organoid) against central
    differences."""
    scenario = SCENARIO.format(kind="organoid").replace("n = 16", "n = 6").replace(
        "spacing_um = 30.0", "spacing_um = 60.0").replace("radius_um = 300.0", "radius_um = 200.0")
    meas = ("observableId\tsimulationConditionId\ttime\tmeasurement\n"
            "outer\tball\t0.5\t230\nouter\tball\t1\t250\nnecrotic\tball\t1\t40\n")
    path = write_problem(tmp_path, meas, scenario=scenario,
                         conditions="conditionId\tgeometry.radius_um\nball\t200\n")
    obj = Objective(load_problem(path))
    theta = np.array(obj.nominal) + 0.1
    _, grad = obj.value_and_grad_batch(theta[None])
    f = jax.jit(obj.nll)
    eps = 1e-4
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = eps
        fd = (float(f(jnp.asarray(theta + e))) - float(f(jnp.asarray(theta - e)))) / (2 * eps)
        # central differences in float64 at eps = 1e-4 on the log scale: truncation ~1e-8
        # relative, round-off ~1e-16 * |NLL| / eps
        assert float(grad[0, i]) == pytest.approx(fd, rel=1e-5, abs=1e-7), (obj.ids[i], fd)


# --------------------------------------------------------------------------
@pytest.mark.slow  # measured 1.5-4.5 minutes on 2 cores (README: -m slow)
def test_synthetic_recovery_with_intervals_covering_the_truth(tmp_path, synthetic):
    meas, _ = synthetic
    settings = ("starts = 3\niterations = 30\nprofile_points = 2\nprofile_iterations = 10\n"
                "batch = 1\n")
    # the truth as the nominal values, and three starts each perturbed from it by a factor
    # of up to 2 per parameter (log-uniform): the recovery protocol
    path = write_problem(tmp_path / "fit", meas, fit_settings=settings, nominal=TRUTH)
    fp = load_problem(path)
    obj = Objective(fp)
    starts = perturbed_points(obj, 3, seed=11, factor=2.0)
    assert np.all(np.abs(starts - obj.nominal) <= math.log(2.0) + 1e-12)
    out = str(tmp_path / "fit" / "result.h5")
    fit(fp, out, progress=None, starts=starts)
    with h5py.File(out, "r") as h5:
        ids = [x.decode() for x in h5["parameters/id"][...]]
        value = h5["summary/value"][...]
        prof = h5["summary/profile"][...]
        ident = h5["summary/identifiable"][...]
        assert h5["meta"].attrs["status"] == "complete"
        assert h5["starts/history"].shape[0] == 3
        assert np.isfinite(h5["laplace/covariance"][...]).all()
    for i, pid in enumerate(ids):
        assert ident[i] == 1, (pid, prof[i])
        assert prof[i, 0] <= value[i] <= prof[i, 1], (pid, value[i], prof[i])
        assert prof[i, 0] <= TRUTH[pid] <= prof[i, 1], (pid, TRUTH[pid], prof[i])
        # the data determine both rates: intervals well inside the bounds
        assert prof[i, 1] / prof[i, 0] < 3.0, (pid, prof[i])
    text = tmesim.inspect_text(out)
    assert "tumor_division_rate" in text and "NOT IDENTIFIABLE" not in text
    pngs = tmesim.plot_fit(out)
    assert all(os.path.getsize(p) > 1000 for p in pngs) and len(pngs) == 3
    with open(os.path.splitext(out)[0] + ".parameters.toml") as fh:
        assert "tumor_division_rate = " in fh.read()


@pytest.mark.slow  # measured 6-6.6 minutes on 2 cores shared with other jobs (README: -m slow)
def test_a_fit_interrupted_at_an_iteration_resumes_to_the_same_result(tmp_path, synthetic,
                                                                     monkeypatch):
    import tmesim._fit as F

    meas, _ = synthetic
    settings = "starts = 2\niterations = 4\nprofiles = []\n"
    path = write_problem(tmp_path / "fit", meas, fit_settings=settings)
    whole = str(tmp_path / "fit" / "whole.h5")
    fit(path, whole, progress=None)
    real = F._write_state

    def interrupted(name, when):
        """A copy of the fit stopped (as by kill) right after the write where ``when``."""
        out, calls = str(tmp_path / "fit" / name), []

        def dying(where, fp, obj, st, *args, **kwargs):
            real(where, fp, obj, st, *args, **kwargs)
            calls.append(1)
            if when(st, len(calls)):
                raise KeyboardInterrupt

        monkeypatch.setattr(F, "_write_state", dying)
        with pytest.raises(KeyboardInterrupt):
            fit(path, out, progress=None)
        monkeypatch.setattr(F, "_write_state", real)
        return out

    # both starts' starting values written, and a step
    cut = interrupted("cut.h5", lambda st, n: n == 3)
    with h5py.File(cut, "r") as h5:
        assert h5["meta"].attrs["stage"] == "optimise"
        assert 1 <= h5["starts/iterations"][...].sum() <= 2
    longer = str(tmp_path / "fit" / "longer.h5")
    shutil.copy(cut, longer)
    # in the polish, after its first step, its Hessian at the new point not yet taken
    in_polish = interrupted("polish.h5", lambda st, n: st.stage == "polish"
                            and st.polish_iterations == 1)
    with h5py.File(in_polish, "r") as h5:
        assert h5["meta"].attrs["stage"] == "polish"
        assert int(h5["polish/iterations"][0]) == 1
    for resumed in (cut, in_polish):
        fit(path, resumed, progress=None)
        with h5py.File(whole, "r") as a, h5py.File(resumed, "r") as b:
            for key in ("starts/theta", "starts/history", "best/theta", "polish/history",
                        "laplace/hessian"):
                np.testing.assert_array_equal(a[key][...], b[key][...], err_msg=key)
    with h5py.File(whole, "r") as h5:
        hist = h5["polish/history"][: int(h5["polish/iterations"][0]) + 1]
        assert len(hist) >= 2 and np.all(np.diff(hist) <= 0)
        assert h5["best/value"][0] <= np.nanmin(h5["starts/value"][...])
    # resumed with more iterations than it began with: the history grows to hold them
    fit(path, longer, progress=None, settings={"iterations": 6})
    with h5py.File(longer, "r") as h5:
        assert h5["meta"].attrs["status"] == "complete"
        assert h5["starts/history"].shape == (2, 7)
        assert h5["starts/iterations"][...].max() <= 6
    # a different problem file refuses to resume this result
    with open(tmp_path / "fit" / "parameters.tsv", "a") as fh:
        fh.write("apoptosis_rate\tlog\t1e-6\t1e-4\t5e-5\t0\n")
    with pytest.raises(F.FitError, match="different parameters file"):
        fit(path, cut, progress=None)
    # a result of another format (an older tmesim's) is refused, not misread
    with h5py.File(cut, "r+") as h5:
        h5["meta"].attrs["format"] = 1
    with pytest.raises(F.FitError, match="format 1"):
        fit(path, cut, progress=None)


def test_a_resumed_fit_profiles_the_parameters_asked_for_now(tmp_path, synthetic, monkeypatch):
    """A fit stopped in its profiles and resumed with another ``profiles`` setting drops the
    points of parameters no longer asked for and lays out those of new ones (``tmesim fit
    --no-profiles`` on a result in its profiles finishes it without them)."""
    import tmesim._fit as F

    meas, _ = synthetic
    # restarts = 0: from 2 iterations, a profile point is lower than the best (the fit would
    # polish again from it; test_a_profile_point_below_the_optimum_sends_the_fit_back...)
    settings = ('starts = 1\niterations = 2\nprofiles = ["tumor_division_rate"]\n'
                'profile_points = 1\nprofile_iterations = 1\npolish_iterations = 1\n'
                'restarts = 0\n')
    path = write_problem(tmp_path / "fit", meas, fit_settings=settings)
    out = str(tmp_path / "fit" / "result.h5")
    real = F._write_state

    def dying(where, fp, obj, st, *args, **kwargs):
        real(where, fp, obj, st, *args, **kwargs)
        if st.stage == "profiles" and st.profile_points is not None:
            # once the profile points are laid out: `kill PID`, as to `tmesim fit`
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(F, "_write_state", dying)
    with tmesim.stop_on_signals(), pytest.raises(tmesim.Interrupted, match="SIGTERM"):
        fit(path, out, progress=None)
    monkeypatch.setattr(F, "_write_state", real)
    with h5py.File(out, "r") as h5:
        assert h5["meta"].attrs["status"] == "interrupted"
        assert h5["meta"].attrs["message"] == "stopped by SIGTERM in stage profiles"
        assert h5["meta"].attrs["stage"] == "profiles"
        assert set(h5["profiles/points"][:, 0]) == {0.0}  # tumor_division_rate's
    fit(path, out, progress=None, settings={"profiles": ["o2_uptake"]})
    with h5py.File(out, "r") as h5:
        assert h5["meta"].attrs["status"] == "complete"
        points = h5["profiles/points"][...]
        assert len(points) and set(points[:, 0]) == {1.0} and points[:, 3].all()
        prof = h5["summary/profile"][...]
        assert np.isnan(prof[0]).all() and not np.isnan(prof[1]).all()
        # the polish took its one step from the best start, and kept the lower NLL
        assert int(h5["polish/iterations"][0]) == 1
        hist = h5["polish/history"][...]
        assert hist[1] <= hist[0] == np.nanmin(h5["starts/value"][...])
        assert h5["best/value"][0] == hist[1]
    # the public names do what `tmesim inspect` and `tmesim plot` do with a fit result
    text = tmesim.inspect_text(out)
    assert "status complete" in text
    with h5py.File(out, "r") as h5:  # the residual line of the outer radius, recomputed
        ms = h5["measurements"]
        sel = ms["observable"][...] == b"outer"
        r = ms["simulated"][...][sel] - ms["measurement"][...][sel]
    assert f"outer in ball: {sel.sum()} rows, RMS {np.sqrt(np.mean(r ** 2)):.4g}, " \
        f"mean {np.mean(r):+.4g}" in text


def test_progress_lines_are_best_effort():
    """A progress stream that cannot take a line (its reader gone, a full disk) is dropped
    and the work goes on: a fit's or a run's result must not depend on its stderr (and in
    a job of several processes, process 0, the one that speaks, must not stop alone)."""
    from tmesim._fit import _Progress
    from tmesim._run import Progress

    class Gone(io.TextIOBase):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    say = _Progress(Gone(), every=0.0)
    say("starts", force=True)
    assert say.stream is None
    say("polish", force=True)  # nothing more is tried
    run = Progress(10, 0, stream=Gone(), every=0.0)
    run.note("resuming")
    assert run.stream is None
    run(1, 1.0, final=True)
